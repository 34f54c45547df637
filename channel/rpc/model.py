"""What the gateway hands the RPC proxy and what it gets back.

These are plain frozen values: the gateway builds a ``RpcRequest`` from a
REQUEST frame and the device's verified identity, and turns the
``RpcResponse`` into a RESPONSE (``status == 0``) or an error the SDK maps to
an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from channel.wire.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """Verified identity of the calling device (from its token / ticket and HELLO).

    Nothing in here comes from request headers: the router forwards it to
    upstreams as ``x-channel-*`` headers and strips any the device sent.
    """

    device_id: str
    user_id: str
    app_id: str
    app_version: str
    platform: str
    #: Logical data centre the device belongs to ("" = unknown).
    zone: str = ""
    scopes: tuple[str, ...] = ()
    session_id: str = ""


@dataclass(frozen=True)
class RpcRequest:
    """One device call: operation type (``account.balance.get``), app headers, body."""

    op: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    device: DeviceContext
    #: Calls the native engine serves for the device on its connection beside this one:
    #: counted with Python's own against the device's in-flight cap on the cluster.
    beside: int = 0

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True)
class RpcResponse:
    """The upstream's answer, or why there is none.

    ``status`` is 0 for success, else an ``ErrorCode`` value (TIMEOUT,
    UNAVAILABLE, UPSTREAM_ERROR, NOT_FOUND, BAD_REQUEST, FORBIDDEN,
    RATE_LIMITED ...). ``retry_after_ms`` > 0 tells the device when trying
    again makes sense; ``message`` is a human-readable detail for the SDK.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    retry_after_ms: int = 0
    message: str = ""
    #: Which route (its ``match``) and cluster answered, for metrics and logs;
    #: "" when none did. Set by the router; not part of equality.
    route: str = field(default="", compare=False)
    cluster: str = field(default="", compare=False)

    @property
    def ok(self) -> bool:
        return self.status == 0

    @classmethod
    def error(cls, code: ErrorCode, message: str, *, retry_after_ms: int = 0) -> RpcResponse:
        return cls(status=int(code), retry_after_ms=retry_after_ms, message=message)


class Call(Protocol):
    """A call being served: a task, or the RPC router's fast path; either cancels alike."""

    def cancel(self) -> object: ...


#: Starts a call without a task when it can (``RpcRouter.start_call``): the answer goes
#: to the callback; None: not started, await the upstream call instead.
StartCall = Callable[[RpcRequest, Callable[[RpcResponse], None]], Call | None]
