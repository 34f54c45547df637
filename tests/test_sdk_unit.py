"""Client SDK parts that need no socket: backoff, dedupe, error mapping, TLS context, CLI."""

from __future__ import annotations

import errno
import gc
import os
import random
import socket
import ssl
from pathlib import Path

import pytest

from channel.cli import build_parser
from channel.cli import main as channel_main
from channel.wire import ErrorCode
from channel.wire.hello import ALPN_PROTOCOL
from sdk_client import (
    ERROR_CLASSES,
    AuthError,
    Backoff,
    BadRequest,
    Cancelled,
    ChannelError,
    Client,
    DedupeWindow,
    Forbidden,
    InternalError,
    NotFound,
    ProtocolViolation,
    RateLimited,
    SessionEnded,
    Timeout,
    Unavailable,
    UpstreamError,
    error_for,
)
from sdk_client.errors import is_fatal
from sdk_client.protocol import ResumingSSLContext, client_tls_context
from sdk_client.tcp import release_after_failed_handoff


class _Extreme(random.Random):
    """A random source whose ``uniform`` always returns its upper (or lower) bound."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


# ------------------------------------------------------------------ backoff


def test_backoff_full_jitter_stays_within_the_growing_ceiling() -> None:
    policy = Backoff(initial_s=0.2, max_s=30, multiplier=2)
    rng = random.Random(7)
    for attempt, ceiling in enumerate([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]):
        assert policy.ceiling(attempt) == pytest.approx(ceiling)
        delays = [policy.delay(attempt, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        # Full jitter: the whole range is used, not just the top of it.
        assert min(delays) < ceiling * 0.1
        assert max(delays) > ceiling * 0.9


def test_backoff_cap_holds_for_long_outages() -> None:
    policy = Backoff(initial_s=0.5, max_s=10, multiplier=3)
    assert policy.ceiling(10_000) == 10
    assert policy.delay(10_000, rng=_Extreme(high=True)) == 10


def test_server_hint_is_a_minimum_with_up_to_half_extra() -> None:
    policy = Backoff(initial_s=0.2, max_s=1)
    low, high = _Extreme(high=False), _Extreme(high=True)
    # Hint above the policy's ceiling: at least the hint, at most 1.5x, cap ignored.
    assert policy.delay(0, hint_s=4.0, rng=low) == 4.0
    assert policy.delay(0, hint_s=4.0, rng=high) == 6.0
    rng = random.Random(3)
    assert all(4.0 <= policy.delay(5, hint_s=4.0, rng=rng) <= 6.0 for _ in range(200))
    # Hint below what backoff picked: backoff's larger delay wins.
    assert policy.delay(5, hint_s=0.1, rng=high) == 1.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(initial_s=0)
    with pytest.raises(ValueError):
        Backoff(initial_s=5, max_s=1)
    with pytest.raises(ValueError):
        Backoff(multiplier=0.5)


# ------------------------------------------------------------------ dedupe


def test_dedupe_window_drops_repeats() -> None:
    window = DedupeWindow(4)
    assert window.check_and_add(b"a")
    assert not window.check_and_add(b"a")
    assert b"a" in window
    assert len(window) == 1


def test_dedupe_window_is_bounded_and_forgets_the_oldest() -> None:
    window = DedupeWindow(3)
    for message_id in (b"1", b"2", b"3", b"4"):
        assert window.check_and_add(message_id)
    assert len(window) == 3
    assert b"1" not in window
    # A forgotten id counts as new again (the window is what bounds memory).
    assert window.check_and_add(b"1")
    assert b"2" not in window


def test_dedupe_window_is_lru_a_repeat_refreshes_the_id() -> None:
    window = DedupeWindow(3)
    for message_id in (b"1", b"2", b"3"):
        window.add(message_id)
    assert window.seen(b"1")  # now the most recent
    window.add(b"4")  # evicts b"2", the least recently seen
    assert b"1" in window
    assert b"2" not in window
    assert [m for m in (b"1", b"3", b"4") if m in window] == [b"1", b"3", b"4"]


def test_dedupe_window_needs_a_capacity() -> None:
    with pytest.raises(ValueError):
        DedupeWindow(0)


# ----------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.AUTH_REQUIRED, AuthError),
        (ErrorCode.AUTH_INVALID, AuthError),
        (ErrorCode.AUTH_EXPIRED, AuthError),
        (ErrorCode.TICKET_INVALID, AuthError),
        (ErrorCode.FORBIDDEN, Forbidden),
        (ErrorCode.RATE_LIMITED, RateLimited),
        (ErrorCode.TIMEOUT, Timeout),
        (ErrorCode.UNAVAILABLE, Unavailable),
        (ErrorCode.REFUSED_STREAM, Unavailable),
        (ErrorCode.SHUTTING_DOWN, Unavailable),
        (ErrorCode.IDLE_TIMEOUT, Unavailable),
        (ErrorCode.NOT_FOUND, NotFound),
        (ErrorCode.BAD_REQUEST, BadRequest),
        (ErrorCode.UPSTREAM_ERROR, UpstreamError),
        (ErrorCode.INTERNAL_ERROR, InternalError),
        (ErrorCode.CANCELLED, Cancelled),
        (ErrorCode.KICKED, SessionEnded),
        (ErrorCode.SESSION_REPLACED, SessionEnded),
        (ErrorCode.PROTOCOL_ERROR, ProtocolViolation),
        (ErrorCode.HEADER_ERROR, ProtocolViolation),
        (ErrorCode.UNSUPPORTED_VERSION, ProtocolViolation),
    ],
)
def test_error_codes_map_to_exception_classes(code: ErrorCode, cls: type[ChannelError]) -> None:
    error = error_for(code, "why", 250)
    assert type(error) is cls
    assert isinstance(error, ChannelError)
    assert (error.code, error.message, error.retry_after_ms) == (code, "why", 250)
    assert str(error) == f"{code.name}: why"
    assert error.code_name == code.name


def test_every_error_code_has_a_class() -> None:
    assert set(ERROR_CLASSES) == set(ErrorCode)


def test_unknown_codes_from_newer_servers_stay_plain_channel_errors() -> None:
    error = error_for(999, "new")
    assert type(error) is ChannelError
    assert error.code_name == "CODE_999"


def test_forbidden_is_an_auth_error() -> None:
    assert issubclass(Forbidden, AuthError)


def test_fatal_errors_stop_reconnecting() -> None:
    assert is_fatal(error_for(ErrorCode.AUTH_INVALID))
    assert is_fatal(error_for(ErrorCode.AUTH_EXPIRED))
    assert is_fatal(error_for(ErrorCode.SESSION_REPLACED))
    assert is_fatal(error_for(ErrorCode.KICKED))
    # A kick with a hint only asks the device to stay away for a while.
    assert not is_fatal(error_for(ErrorCode.KICKED, retry_after_ms=60_000))
    assert not is_fatal(error_for(ErrorCode.UNAVAILABLE))
    assert not is_fatal(error_for(ErrorCode.IDLE_TIMEOUT))
    assert not is_fatal(error_for(ErrorCode.RATE_LIMITED, retry_after_ms=100))


# ------------------------------------------------------------- TLS context


def test_tls_context_is_tls13_only_with_alpn_and_verification() -> None:
    context = client_tls_context(None)
    assert isinstance(context, ResumingSSLContext)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.resume_session is None
    with pytest.raises(ValueError):
        client_tls_context(None, client_key=Path("k.pem"))
    assert ALPN_PROTOCOL == "mmtp/1"


# --------------------------------------------------------------------- CLI


def test_device_cli_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert channel_main(["device", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ("call", "listen", "ping", "--token-file", "--resume-state", "examples:"):
        assert text in out


def test_device_cli_parses_headers_and_rejects_bad_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(
        [
            "device",
            "--port",
            "1",
            "--device",
            "d1",
            "--token",
            "AAAA",
            "call",
            "a.b",
            "x",
            "--header",
            "Locale=zh-CN",
            "--header",
            "k=v=w",
        ]
    )
    assert args.header == [("locale", "zh-CN"), ("k", "v=w")]
    assert args.timeout == 5.0
    code = channel_main(
        [
            "device",
            "--port",
            "1",
            "--device",
            "d1",
            "--token",
            "AAAA",
            "call",
            "a.b",
            "--header",
            "novalue",
        ]
    )
    assert code == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_device_cli_bad_token_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = channel_main(
        ["device", "--port", "1", "--device", "d1", "--token", "not base64!", "ping"]
    )
    assert code == 2
    assert "bad token" in capsys.readouterr().err


def test_token_bytes_accepts_the_printed_text_and_bytes() -> None:
    from channel.security.tokens import encode_token_text
    from sdk_client.client import token_bytes

    raw = bytes(range(200))
    assert token_bytes(raw) == raw
    assert token_bytes(bytearray(raw)) == raw
    assert token_bytes(encode_token_text(raw)) == raw
    assert token_bytes("  " + encode_token_text(raw) + "\n") == raw
    assert token_bytes("") == b""


@pytest.mark.parametrize("text", ["not base64!", "abcde", "x" * 3000, "tökén"])
def test_token_text_that_is_not_a_token_is_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="channel token issue"):
        Client("127.0.0.1", 1, device_id="d1", token=text)


@pytest.mark.parametrize("token", [12345, None, ["abc"]])
def test_token_of_another_type_is_a_clear_type_error(token: object) -> None:
    with pytest.raises(TypeError, match="token must be"):
        Client("127.0.0.1", 1, device_id="d1", token=token)  # type: ignore[arg-type]


def test_token_can_be_replaced_with_text() -> None:
    from channel.security.tokens import encode_token_text

    client = Client("127.0.0.1", 1, device_id="d1", token=b"old")
    client.token = encode_token_text(b"new token")  # type: ignore[assignment]
    assert client.token == b"new token"


class _FirstWriteInProgress:
    """An event loop whose first TLS connect fails as Linux's fast open does without a
    cookie (EINPROGRESS from the ClientHello's write); the second succeeds."""

    def __init__(self) -> None:
        self.attempts = 0

    async def create_connection(self, *args: object, **kwargs: object) -> None:
        self.attempts += 1
        if self.attempts == 1:
            raise OSError(errno.EINPROGRESS, "Operation now in progress")


async def test_fast_open_without_a_cookie_is_tried_again_not_reported_unavailable() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = Client("127.0.0.1", listener.getsockname()[1], device_id="d1", token=b"t")
        loop = _FirstWriteInProgress()
        await client._connect_tls(None, loop)  # type: ignore[arg-type]
        assert loop.attempts == 2 and client.stats.fast_open_retries == 1
        # Without fast open an EINPROGRESS is a real failure: no second try.
        client = Client(
            "127.0.0.1", listener.getsockname()[1], device_id="d1", token=b"t", tcp_fast_open=False
        )
        with pytest.raises(OSError):
            await client._connect_tls(None, _FirstWriteInProgress())  # type: ignore[arg-type]
    finally:
        listener.close()


def test_a_socket_whose_descriptor_the_loop_closed_never_closes_a_reused_number() -> None:
    # uvloop may close the descriptor of a socket handed to create_connection when the
    # connect fails, without the Python object knowing; collected later, the object
    # closed the same number again, by then another connection's (EBADF / EEXIST on
    # unrelated sockets). The SDK and the tools release every socket a connect failed
    # with through release_after_failed_handoff.
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        handed = socket.create_connection(listener.getsockname())
        number = handed.fileno()
        os.close(number)  # what the loop did
        release_after_failed_handoff(handed)
        reused = socket.socket()  # the lowest free number: that one
        assert reused.fileno() == number
        del handed
        gc.collect()
        os.fstat(reused.fileno())  # still open: nobody closed it behind our back
        reused.close()
        # A socket the loop never took is closed; one already closed is left alone.
        untouched = socket.create_connection(listener.getsockname())
        release_after_failed_handoff(untouched)
        assert untouched.fileno() == -1
        release_after_failed_handoff(untouched)
    finally:
        listener.close()
