"""Typed exceptions of the client SDK, one per kind of failure an app reacts to.

Every failure the SDK raises is a ``ChannelError`` carrying the MMTP error
``code`` (``channel.wire.ErrorCode`` value, or an unknown number from a newer
server), a human-readable ``message`` and the server's ``retry_after_ms``
hint (0 = none). Apps catch the subclass that matches what they would do::

    try:
        resp = await client.call("account.balance.get", body)
    except NotFound:        # do not retry
        ...
    except Timeout:         # retry if the operation is idempotent
        ...
    except Unavailable:     # try later; the client is reconnecting
        ...

``error_for(code, message, retry_after_ms)`` builds the right subclass from a
code (``ERROR_CLASSES`` is the table it uses).
"""

from __future__ import annotations

from channel.wire.errors import ErrorCode, code_name


class ChannelError(Exception):
    """Base of every SDK failure: an MMTP error code, a message and a retry hint."""

    def __init__(self, code: int, message: str = "", retry_after_ms: int = 0) -> None:
        text = f"{code_name(code)}: {message}" if message else code_name(code)
        super().__init__(text)
        #: The MMTP error code (``ErrorCode`` value; unknown codes stay plain ints).
        self.code = code
        #: What went wrong, from the server or the SDK.
        self.message = message
        #: Do not retry before this many milliseconds (0: no advice).
        self.retry_after_ms = retry_after_ms

    @property
    def code_name(self) -> str:
        """The code's name (``"NOT_FOUND"``), or ``"CODE_<n>"`` for unknown codes."""
        return code_name(self.code)


class AuthError(ChannelError):
    """The server refused the device's credential (AUTH_*, TICKET_INVALID, FORBIDDEN).

    Raised by ``connect()`` and to waiting calls; the client stops reconnecting
    because retrying with the same credential cannot succeed. Obtain a new token
    (``AUTH_EXPIRED``) or re-authenticate the user (``AUTH_INVALID``).
    """


class Forbidden(AuthError):
    """The device or user may not do this (FORBIDDEN): do not retry."""


class RateLimited(ChannelError):
    """Too many requests or connections (RATE_LIMITED): wait ``retry_after_ms``."""


class Timeout(ChannelError):
    """The call's own timeout passed, or the server/its backend timed out (TIMEOUT)."""


class Unavailable(ChannelError):
    """The service or the connection is not there (UNAVAILABLE, connection lost, closed).

    Also raised for a call refused twice with REFUSED_STREAM and for a call
    that was in flight when its connection died (unless it was idempotent and
    could be retried in time).
    """


class NotFound(ChannelError):
    """Unknown operation or resource (NOT_FOUND): do not retry."""


class BadRequest(ChannelError):
    """The request is invalid, or too large for the server's limits (BAD_REQUEST)."""


class UpstreamError(ChannelError):
    """A backend failed (UPSTREAM_ERROR): retry only if the operation is idempotent."""


class InternalError(ChannelError):
    """Unexpected failure inside the gateway or the device handler (INTERNAL_ERROR)."""


class Cancelled(ChannelError):
    """The call was cancelled (CANCELLED)."""


class ProtocolViolation(ChannelError):
    """One side broke the MMTP protocol (codes 1–16); the connection was reset."""


class SessionEnded(ChannelError):
    """The server ended the session for good: KICKED or SESSION_REPLACED.

    The client does not reconnect on its own (two instances of one device
    would keep replacing each other); connect again on user action.
    """


#: Which exception class each error code raises.
ERROR_CLASSES: dict[ErrorCode, type[ChannelError]] = {
    ErrorCode.AUTH_REQUIRED: AuthError,
    ErrorCode.AUTH_INVALID: AuthError,
    ErrorCode.AUTH_EXPIRED: AuthError,
    ErrorCode.TICKET_INVALID: AuthError,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.RATE_LIMITED: RateLimited,
    ErrorCode.TIMEOUT: Timeout,
    ErrorCode.HANDSHAKE_TIMEOUT: Unavailable,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.REFUSED_STREAM: Unavailable,
    ErrorCode.SLOW_CONSUMER: Unavailable,
    ErrorCode.IDLE_TIMEOUT: Unavailable,
    ErrorCode.SHUTTING_DOWN: Unavailable,
    ErrorCode.NO_ERROR: Unavailable,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.UPSTREAM_ERROR: UpstreamError,
    ErrorCode.INTERNAL_ERROR: InternalError,
    ErrorCode.CANCELLED: Cancelled,
    ErrorCode.KICKED: SessionEnded,
    ErrorCode.SESSION_REPLACED: SessionEnded,
    **{
        code: ProtocolViolation
        for code in ErrorCode
        if ErrorCode.PROTOCOL_ERROR <= code <= ErrorCode.UNSUPPORTED_VERSION
    },
}


def error_for(code: int, message: str = "", retry_after_ms: int = 0) -> ChannelError:
    """The exception for ``code``; codes this SDK does not know give a plain ``ChannelError``."""
    try:
        cls = ERROR_CLASSES[ErrorCode(code)]
    except (ValueError, KeyError):
        cls = ChannelError
    return cls(code, message, retry_after_ms)


def is_fatal(error: ChannelError) -> bool:
    """True if reconnecting cannot help: credential refused or session ended for good."""
    if isinstance(error, (AuthError, SessionEnded)):
        # A kick with a retry hint only asks the device to stay away for a while.
        return not (error.code == ErrorCode.KICKED and error.retry_after_ms > 0)
    return False
