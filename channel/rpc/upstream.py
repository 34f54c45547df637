"""HTTP side of the RPC proxy: one keep-alive pool per upstream cluster.

A ``ClusterPool`` owns the cluster's endpoints (round robin over those not
marked down), its circuit breaker and one ``H1Pool`` (``channel.rpc.h1pool``:
our own HTTP/1.1 keep-alive client over ``channel.rpc.http1``) that caps
connections for the whole cluster and per endpoint. ``post()`` makes one
HTTP try and classifies it as an ``Attempt``; retries, fail-over and
deadlines are the router's business. (The pool itself repeats a request
once, on a new connection, when a reused keep-alive connection was closed
by the server before any byte of the answer: the idle-close race.)

Memory: a pool is at most ``max_connections`` sockets with a small parser
each, independent of how many devices call through it.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import re
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from channel.rpc.breaker import CircuitBreaker
from channel.rpc.config import ClusterConfig
from channel.rpc.devices import DeviceGuard
from channel.rpc.h1pool import (
    ConnectError,
    ConnectionBroken,
    FastExchange,
    H1Pool,
    H1Response,
    Origin,
    PoolClosed,
    is_stale,
)
from channel.rpc.http1 import BodyTooLarge, H1ProtocolError, Headers, Limits, VettedHeaders
from channel.rpc.metrics import RpcMetrics
from channel.rpc.model import DeviceContext, RpcRequest, RpcResponse
from channel.wire.errors import ErrorCode

log = logging.getLogger(__name__)

#: Connection-level headers never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)
#: Response headers a device never gets: hop-by-hop, framing, and ``date``/``server``
#: (bytes on a mobile link for nothing; the body is already decoded, hence no
#: ``content-encoding``).
_STRIPPED_RESPONSE_HEADERS = HOP_BY_HOP | {"content-encoding", "date", "server"}
_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~\-]+")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TCHAR_LOWER = r"[a-z0-9!#$%&'*+.^_`|~\-]"
#: Names joined by "\n", each a lower-case token.
_LOWER_TOKEN_LINES = re.compile(f"{_TCHAR_LOWER}+(?:\n{_TCHAR_LOWER}+)*")
_MAX_RETRY_AFTER_MS = 3_600_000
#: What ``post()`` turns into a failed ``Attempt`` (anything else is a bug and propagates).
_ATTEMPT_ERRORS = (
    ConnectError,
    TimeoutError,
    H1ProtocolError,
    ConnectionBroken,
    PoolClosed,
    OSError,
)


async def _raise(exc: BaseException) -> H1Response:
    raise exc


def identity_headers(device: DeviceContext) -> list[tuple[str, str]]:
    """The verified identity as ``x-channel-*`` headers; raises ValueError on control chars."""
    fields = [
        ("x-channel-device-id", device.device_id),
        ("x-channel-user-id", device.user_id),
        ("x-channel-app-id", device.app_id),
        ("x-channel-app-version", device.app_version),
        ("x-channel-platform", device.platform),
        ("x-channel-zone", device.zone),
        ("x-channel-scopes", " ".join(device.scopes)),
        ("x-channel-session", device.session_id),
    ]
    for name, value in fields:
        if _CONTROL_CHARS.search(value):
            raise ValueError(f"device identity {name[10:]} contains control characters")
    return fields


def upstream_headers(
    request: RpcRequest, *, stress: bool = False, mirror: bool = False
) -> VettedHeaders:
    """Headers for the upstream HTTP call.

    The device's app headers are kept except pseudo headers, hop-by-hop
    headers, malformed ones and every ``x-channel-*`` (a device must not be
    able to spoof identity); then the verified identity is appended. What is kept
    is what ``VettedHeaders`` promises (lower-case token names, none of the
    framing ones, no control characters in values), so encoding does not check again.
    """
    headers = request.headers
    out = VettedHeaders(headers if headers and _all_forwarded(headers) else _forwarded(headers))
    out.extend(_identity_block(request.device))
    if stress:
        out.append(("x-channel-stress", "1"))
    if mirror:
        out.append(("x-channel-mirror", "1"))
    return out


def _all_forwarded(headers: tuple[tuple[str, str], ...]) -> bool:
    """Every header is kept as it is (the common case), checked in a few C calls
    instead of several per header; False sends them through ``_forwarded``."""
    names = "\n".join([name for name, _ in headers])
    # Substring and set tests, not a regex with alternatives: Python's re tries those
    # at every position, several µs for a dozen names.
    return (
        names.count("\n") == len(headers) - 1
        and _LOWER_TOKEN_LINES.fullmatch(names) is not None
        and "\nx-channel-" not in "\n" + names
        and HOP_BY_HOP.isdisjoint(names.split("\n"))
        and _no_control_chars("".join([value for _, value in headers]))
    )


def _no_control_chars(text: str) -> bool:
    # Printable text holds none of _CONTROL_CHARS (all unprintable); checking that is a
    # plain C loop, several times cheaper than the regex, which only tabs (allowed,
    # but unprintable) and unusual Unicode still need.
    return text.isprintable() or _CONTROL_CHARS.search(text) is None


@functools.lru_cache(maxsize=4096)
def _identity_block(device: DeviceContext) -> tuple[tuple[str, str], ...]:
    # A device's identity is the same on every call of its session.
    return tuple(identity_headers(device))


def _forwarded(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in headers:
        lowered = name.lower()
        if (
            lowered.startswith("x-channel-")
            or lowered in HOP_BY_HOP
            or not _TOKEN.fullmatch(lowered)
            or _CONTROL_CHARS.search(value)
        ):
            continue
        out.append((lowered, value))
    return out


def parse_retry_after(value: str | None, *, now: float | None = None) -> int:
    """``Retry-After`` (seconds or HTTP date) in ms, clamped to [0, 1 h]; 0 if absent/bad."""
    if not value:
        return 0
    value = value.strip()
    if value.isdigit():
        ms = int(value) * 1000
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0
        if when.tzinfo is None:
            return 0
        ms = int((when.timestamp() - (time.time() if now is None else now)) * 1000)
    return max(0, min(ms, _MAX_RETRY_AFTER_MS))


def error_for_http_status(status: int) -> ErrorCode | None:
    """The ``ErrorCode`` for an upstream HTTP status, None for 2xx."""
    if 200 <= status < 300:
        return None
    if status == 400:
        return ErrorCode.BAD_REQUEST
    if status in (401, 403):
        return ErrorCode.FORBIDDEN
    if status == 404:
        return ErrorCode.NOT_FOUND
    if status == 429:
        return ErrorCode.RATE_LIMITED
    if status == 503:
        return ErrorCode.UNAVAILABLE
    if 400 <= status < 500:
        return ErrorCode.BAD_REQUEST
    return ErrorCode.UPSTREAM_ERROR


def response_headers(headers: Headers) -> tuple[tuple[str, str], ...]:
    """The headers a device gets: lowercased, without hop-by-hop, framing, date, server."""
    return tuple((name, value) for name, value in headers if name not in _STRIPPED_RESPONSE_HEADERS)


class _UnsupportedCoding(Exception):
    pass


def _decode_content(coding: str, body: bytes, limit: int) -> bytes | None:
    """``body`` without its gzip/deflate content-coding; None if it decodes past ``limit``.

    The gateway asks for no content-coding, but a device may forward
    ``accept-encoding``; the device always gets the decoded body.
    """
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif coding == "deflate":
        # RFC 9110 says zlib-wrapped; some servers send raw deflate.
        raw = bool(body) and body[0] & 0x0F != 8
        decoder = zlib.decompressobj(wbits=-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    else:
        raise _UnsupportedCoding(coding)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _UnsupportedCoding(f"{coding} ({exc})") from None
    if len(out) > limit:
        return None
    return out


@dataclass(frozen=True)
class Attempt:
    """One HTTP try, classified."""

    response: RpcResponse
    #: Metrics label: ``http_2xx``, ``http_4xx``, ``http_5xx``, ``timeout``,
    #: ``connect_error``, ``broken``, ``too_large``, ``closed``.
    outcome: str
    #: False when the request certainly never reached the upstream.
    sent: bool
    #: Counts against the breaker and may be retried (connect error, timeout, 5xx).
    failure: bool


@dataclass(eq=False)
class Endpoint:
    url: str
    down_until: float = 0.0

    def describe(self, now: float) -> dict[str, object]:
        return {"url": self.url, "down_for_s": round(max(0.0, self.down_until - now), 3)}


class ClusterPool:
    """Endpoints, breaker and keep-alive HTTP connections of one cluster."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        clock: Callable[[], float],
        metrics: RpcMetrics,
        endpoint_down_s: float,
        max_response_bytes: int,
    ) -> None:
        self.config = config
        self.name = config.name
        self.endpoints = [Endpoint(url) for url in config.endpoints]
        breaker = config.breaker
        self.breaker = CircuitBreaker(
            failures=breaker.failures,
            window_s=breaker.window_s,
            open_s=breaker.open_s,
            min_devices=breaker.min_devices,
            clock=clock,
        )
        #: Each device's own breaker and in-flight cap on this cluster.
        self.devices = DeviceGuard(
            failures=breaker.failures,
            window_s=breaker.window_s,
            open_s=breaker.open_s,
            max_in_flight=breaker.device_max_in_flight,
            clock=clock,
        )
        self.endpoint_down_s = endpoint_down_s
        self.max_response_bytes = max_response_bytes
        self._clock = clock
        self._metrics = metrics
        self._next = 0
        self._pool: H1Pool | None = None
        self._in_flight = 0
        self._retired = False
        self._closing: asyncio.Task[None] | None = None

    # -- endpoints -------------------------------------------------------------

    def healthy(self) -> bool:
        now = self._clock()
        return any(ep.down_until <= now for ep in self.endpoints)

    def available(self, device: str | None = None) -> bool:
        """Worth trying now: the breakers (the cluster's, and ``device``'s own) let a
        call through and some endpoint is up."""
        if device is not None and self.devices.refusal(device) is not None:
            return False
        return self.breaker.would_allow() and self.healthy()

    def pick(self, avoid: Collection[Endpoint] = ()) -> Endpoint | None:
        """Next endpoint round robin, skipping down ones and preferring those not in ``avoid``."""
        now = self._clock()
        count = len(self.endpoints)
        fallback: Endpoint | None = None
        for i in range(count):
            endpoint = self.endpoints[(self._next + i) % count]
            if endpoint.down_until > now:
                continue
            if endpoint in avoid:
                fallback = fallback or endpoint
                continue
            self._next = (self._next + i + 1) % count
            return endpoint
        return fallback

    def peek(self) -> Endpoint | None:
        """What ``pick()`` would return now, without moving the round robin."""
        now = self._clock()
        count = len(self.endpoints)
        for i in range(count):
            endpoint = self.endpoints[(self._next + i) % count]
            if endpoint.down_until <= now:
                return endpoint
        return None

    def mark_down(self, endpoint: Endpoint) -> None:
        endpoint.down_until = self._clock() + self.endpoint_down_s
        self._metrics.endpoints_marked_down[self.name] += 1

    def next_endpoint_in_s(self) -> float:
        """Time until the first down endpoint comes back (0 if one is up)."""
        now = self._clock()
        return max(0.0, min(ep.down_until for ep in self.endpoints) - now)

    # -- HTTP ------------------------------------------------------------------

    async def start(self) -> None:
        self._get_pool()

    def _get_pool(self) -> H1Pool:
        if self._pool is None:
            cfg = self.config
            self._pool = H1Pool(
                max_connections=cfg.max_connections,
                max_connections_per_endpoint=cfg.max_connections_per_endpoint,
                keepalive_s=cfg.keepalive_s,
                connect_timeout_s=cfg.connect_timeout_ms / 1000,
                limits=Limits(max_body_bytes=self.max_response_bytes),
            )
        return self._pool

    async def post(
        self,
        endpoint: Endpoint,
        op: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
        *,
        idempotent: bool,
        pending: Callable[[], Awaitable[H1Response]] | None = None,
    ) -> Attempt:
        """One ``POST {endpoint}/rpc/{op}`` within ``timeout_s``; never raises for I/O trouble.

        ``idempotent``: a reused keep-alive connection that the upstream closed before
        answering (it may have read the request) is tried again on a new one; otherwise
        that is a broken attempt, so a non-idempotent op never runs twice.

        ``pending``: the answer of a request already sent (the fast path's, going on
        after it), to classify instead of sending one."""
        # One coroutine (no inner ``_post``): a frame less to create and resume per call.
        pool = self._get_pool()
        attempt: Attempt
        if pending is None and pool.closed:
            attempt = Attempt(
                RpcResponse.error(ErrorCode.UNAVAILABLE, "upstream pool closed"),
                "closed",
                sent=False,
                failure=False,
            )
        else:
            try:
                if pending is None:
                    response = await pool.request(
                        endpoint.url,
                        f"/rpc/{op}",
                        headers,
                        body,
                        replay_if_stale=idempotent,
                        timeout_s=timeout_s,
                    )
                else:
                    response = await pending()
            except _ATTEMPT_ERRORS as exc:
                attempt = self._failed(endpoint, op, timeout_s, exc)
            else:
                attempt = self._classify(response, op, endpoint)
        self._metrics.attempts[(self.name, attempt.outcome)] += 1
        return attempt

    # -- the fast path (see RpcRouter.start_call) -------------------------------------

    def fast_exchange(
        self, endpoint: Endpoint, op: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[Origin, bytes] | None:
        """What to send on a kept-alive connection to ``endpoint`` that ``post()`` would
        take at once, or None (no such connection, a closed pool, a bad field: ``post()``
        deals with those). Changes nothing."""
        pool = self._get_pool()
        try:
            origin = pool.origin(endpoint.url)
            if not pool.idle_ready(origin):
                return None
            return origin, pool.encode(origin, f"/rpc/{op}", headers, body)
        except ValueError:
            return None

    def start_fast(
        self,
        origin: Origin,
        payload: bytes,
        timeout_s: float,
        on_done: Callable[[H1Response | BaseException], None],
    ) -> FastExchange:
        return self._get_pool().start_exchange(origin, payload, timeout_s, on_done)

    def fast_answer(self, response: H1Response, route_label: str) -> RpcResponse | None:
        """The common answer, a 2xx without content-coding, as the device gets it
        (labelled with ``route_label`` and this cluster) and counted as ``post()``
        counts it; in one pass over the headers instead of ``_classify``'s several.
        None for anything else, uncounted: ``fast_attempt()`` classifies it."""
        if not 200 <= response.status < 300:
            return None
        kept: list[tuple[str, str]] = []
        retry_after: str | None = None
        for name, value in response.headers:
            if name in _STRIPPED_RESPONSE_HEADERS:
                if name == "content-encoding":
                    return None
                continue
            if name == "retry-after" and retry_after is None:
                retry_after = value
            kept.append((name, value))
        self._metrics.attempts[(self.name, "http_2xx")] += 1
        return RpcResponse(
            0,
            tuple(kept),
            response.body,
            parse_retry_after(retry_after),
            "",
            route_label,
            self.name,
        )

    def fast_attempt(self, response: H1Response, op: str, endpoint: Endpoint) -> Attempt:
        """``post()``'s classification of a whole answer the fast path got."""
        attempt = self._classify(response, op, endpoint)
        self._metrics.attempts[(self.name, attempt.outcome)] += 1
        return attempt

    def fast_failure(
        self,
        exc: BaseException,
        origin: Origin,
        payload: bytes,
        deadline: float,
        idempotent: bool,
    ) -> Awaitable[H1Response]:
        """What ``post()`` awaits after the fast path's exchange failed with ``exc``: the
        keep-alive replay, or the failure itself."""
        if is_stale(exc):
            return self._get_pool().after_stale(origin, payload, deadline, idempotent, exc)
        return _raise(exc)

    async def adopt_exchange(
        self,
        endpoint: Endpoint,
        op: str,
        headers: list[tuple[str, str]],
        body: bytes,
        sock: socket.socket,
        received: bytes,
        unsent: bytes,
        reused: bool,
        deadline: float,
        idempotent: bool,
    ) -> H1Response:
        """What ``post()`` awaits for a call the native engine sent on ``sock``: its
        answer read on by this pool (``H1Pool.adopt``), with the keep-alive replay."""
        pool = self._get_pool()
        origin = pool.origin(endpoint.url)
        try:
            return await pool.adopt(origin, sock, received, unsent, reused, deadline)
        except ConnectionBroken as exc:
            if not is_stale(exc):
                raise
            payload = pool.encode(origin, f"/rpc/{op}", headers, body)
            return await pool.after_stale(origin, payload, deadline, idempotent, exc)

    def _failed(self, endpoint: Endpoint, op: str, timeout_s: float, exc: Exception) -> Attempt:
        if isinstance(exc, ConnectError):
            return self._unreachable(endpoint, op, exc)
        if isinstance(exc, TimeoutError):
            return Attempt(
                RpcResponse.error(
                    ErrorCode.TIMEOUT,
                    f"no answer for {op!r} within {round(timeout_s * 1000)} ms",
                ),
                "timeout",
                sent=True,
                failure=True,
            )
        if isinstance(exc, BodyTooLarge):
            return self._too_large(op)
        log.info("rpc cluster %s: %s broke: %r", self.name, endpoint.url, exc)
        return self._broken(op)

    def _unreachable(self, endpoint: Endpoint, op: str, exc: ConnectError) -> Attempt:
        self.mark_down(endpoint)
        log.warning(
            "rpc cluster %s: %s marked down for %.1fs: %s",
            self.name,
            endpoint.url,
            self.endpoint_down_s,
            exc,
        )
        return Attempt(
            RpcResponse.error(ErrorCode.UNAVAILABLE, f"service for {op!r} unreachable"),
            "connect_error",
            sent=False,
            failure=True,
        )

    def _too_large(self, op: str) -> Attempt:
        return Attempt(
            RpcResponse.error(
                ErrorCode.UPSTREAM_ERROR,
                f"upstream answer for {op!r} exceeds {self.max_response_bytes} bytes",
            ),
            "too_large",
            sent=True,
            failure=False,
        )

    def _broken(self, op: str) -> Attempt:
        return Attempt(
            RpcResponse.error(ErrorCode.UPSTREAM_ERROR, f"upstream for {op!r} broke off"),
            "broken",
            sent=True,
            failure=True,
        )

    def _classify(self, resp: H1Response, op: str, endpoint: Endpoint) -> Attempt:
        body = resp.body
        headers = resp.headers
        coding = headers.get("content-encoding")
        if coding is not None:
            try:
                decoded = _decode_content(coding, body, self.max_response_bytes)
            except _UnsupportedCoding as exc:
                log.info(
                    "rpc cluster %s: %s answered with content-encoding %s",
                    self.name,
                    endpoint.url,
                    exc,
                )
                return self._broken(op)
            if decoded is None:
                return self._too_large(op)
            body = decoded
        status = resp.status
        code = error_for_http_status(status)
        retry_after_ms = parse_retry_after(headers.get("retry-after"))
        outcome = f"http_{status // 100}xx"
        if code is None:
            return Attempt(
                RpcResponse(
                    status=0,
                    headers=response_headers(headers),
                    body=body,
                    retry_after_ms=retry_after_ms,
                ),
                outcome,
                sent=True,
                failure=False,
            )
        if status < 500 and status >= 400:
            # The backend's own error detail is meant for the app.
            return Attempt(
                RpcResponse(
                    status=int(code),
                    headers=response_headers(headers),
                    body=body,
                    retry_after_ms=retry_after_ms,
                    message=f"upstream answered HTTP {status} for {op!r}",
                ),
                outcome,
                sent=True,
                failure=False,
            )
        # 5xx (and stray 3xx): the body may hold internals; the device gets none of it.
        return Attempt(
            RpcResponse.error(
                code, f"upstream answered HTTP {status} for {op!r}", retry_after_ms=retry_after_ms
            ),
            outcome,
            sent=True,
            failure=status >= 500,
        )

    # -- lifecycle -------------------------------------------------------------

    def hold(self) -> None:
        """A call (or mirror) uses this pool until ``unhold()``."""
        self._in_flight += 1

    def unhold(self) -> None:
        self._in_flight -= 1
        self._maybe_close()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def retire(self) -> None:
        """Replaced by a reload: close the pool once the last call using it ends."""
        self._retired = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if not self._retired or self._in_flight or self._closing is not None:
            return
        if self._pool is None or self._pool.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: ``close()`` will do it
        self._closing = loop.create_task(self._pool.close())

    @property
    def closed(self) -> bool:
        """Retired and fully closed (or never opened a pool)."""
        if not self._retired or self._in_flight:
            return False
        if self._closing is not None:
            return self._closing.done()
        return self._pool is None or self._pool.closed

    async def close(self) -> None:
        if self._closing is not None:
            await self._closing
        elif self._pool is not None and not self._pool.closed:
            await self._pool.close()

    def describe(self) -> dict[str, object]:
        now = self._clock()
        return {
            "endpoints": [ep.describe(now) for ep in self.endpoints],
            "breaker": self.breaker.describe(),
            "devices": self.devices.describe(),
            "in_flight": self._in_flight,
            "zone": self.config.zone,
            "timeout_ms": self.config.timeout_ms,
            "retries": self.config.retries,
            "max_connections": self.config.max_connections,
        }
