"""HTTP side of the RPC proxy: one keep-alive pool per upstream cluster.

A ``ClusterPool`` owns the cluster's endpoints (round robin over those not
marked down), its circuit breaker and one ``aiohttp.ClientSession`` whose
connector caps connections for the whole cluster. ``post()`` makes exactly
one HTTP try and classifies it as an ``Attempt``; retries, fail-over and
deadlines are the router's business.

Memory: a pool is one session plus at most ``max_connections`` idle
sockets, independent of how many devices call through it.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDictProxy

from channel.rpc.breaker import CircuitBreaker
from channel.rpc.config import ClusterConfig
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
_MAX_RETRY_AFTER_MS = 3_600_000
_READ_CHUNK = 64 * 1024
USER_AGENT = "channel-gateway"


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
) -> list[tuple[str, str]]:
    """Headers for the upstream HTTP call.

    The device's app headers are kept except pseudo headers, hop-by-hop
    headers, malformed ones and every ``x-channel-*`` (a device must not be
    able to spoof identity); then the verified identity is appended.
    """
    out: list[tuple[str, str]] = []
    for name, value in request.headers:
        lowered = name.lower()
        if (
            lowered.startswith("x-channel-")
            or lowered in HOP_BY_HOP
            or not _TOKEN.fullmatch(lowered)
            or _CONTROL_CHARS.search(value)
        ):
            continue
        out.append((lowered, value))
    out.extend(identity_headers(request.device))
    if stress:
        out.append(("x-channel-stress", "1"))
    if mirror:
        out.append(("x-channel-mirror", "1"))
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


def response_headers(headers: CIMultiDictProxy[str]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name.lower(), value)
        for name, value in headers.items()
        if name.lower() not in _STRIPPED_RESPONSE_HEADERS
    )


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
    """Endpoints, breaker and keep-alive HTTP session of one cluster."""

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
        self.breaker = CircuitBreaker(
            failures=config.breaker.failures,
            window_s=config.breaker.window_s,
            open_s=config.breaker.open_s,
            clock=clock,
        )
        self.endpoint_down_s = endpoint_down_s
        self.max_response_bytes = max_response_bytes
        self._clock = clock
        self._metrics = metrics
        self._next = 0
        self._session: aiohttp.ClientSession | None = None
        self._in_flight = 0
        self._retired = False
        self._closing: asyncio.Task[None] | None = None

    # -- endpoints -------------------------------------------------------------

    def healthy(self) -> bool:
        now = self._clock()
        return any(ep.down_until <= now for ep in self.endpoints)

    def available(self) -> bool:
        """Worth trying now: breaker lets a call through and some endpoint is up."""
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

    def mark_down(self, endpoint: Endpoint) -> None:
        endpoint.down_until = self._clock() + self.endpoint_down_s
        self._metrics.endpoints_marked_down[self.name] += 1

    def next_endpoint_in_s(self) -> float:
        """Time until the first down endpoint comes back (0 if one is up)."""
        now = self._clock()
        return max(0.0, min(ep.down_until for ep in self.endpoints) - now)

    # -- HTTP ------------------------------------------------------------------

    async def start(self) -> None:
        self._get_session()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            cfg = self.config
            if cfg.keepalive_s > 0:
                connector = aiohttp.TCPConnector(
                    limit=cfg.max_connections,
                    limit_per_host=cfg.max_connections_per_endpoint,
                    keepalive_timeout=cfg.keepalive_s,
                )
            else:
                connector = aiohttp.TCPConnector(
                    limit=cfg.max_connections,
                    limit_per_host=cfg.max_connections_per_endpoint,
                    force_close=True,
                )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=cfg.connect_timeout_ms / 1000
                ),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,
            )
        return self._session

    async def post(
        self,
        endpoint: Endpoint,
        op: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> Attempt:
        """One ``POST {endpoint}/rpc/{op}`` within ``timeout_s``; never raises for I/O trouble."""
        attempt = await self._post(endpoint, op, headers, body, timeout_s)
        self._metrics.attempts[(self.name, attempt.outcome)] += 1
        return attempt

    async def _post(
        self,
        endpoint: Endpoint,
        op: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> Attempt:
        if self._session is not None and self._session.closed:
            return Attempt(
                RpcResponse.error(ErrorCode.UNAVAILABLE, "upstream pool closed"),
                "closed",
                sent=False,
                failure=False,
            )
        session = self._get_session()
        url = f"{endpoint.url}/rpc/{op}"
        try:
            async with asyncio.timeout(timeout_s):
                async with session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    return await self._read(resp, op)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
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
        except TimeoutError:
            return Attempt(
                RpcResponse.error(
                    ErrorCode.TIMEOUT, f"no answer for {op!r} within {round(timeout_s * 1000)} ms"
                ),
                "timeout",
                sent=True,
                failure=True,
            )
        except (aiohttp.ClientError, OSError) as exc:
            log.info("rpc cluster %s: %s broke: %r", self.name, endpoint.url, exc)
            return Attempt(
                RpcResponse.error(ErrorCode.UPSTREAM_ERROR, f"upstream for {op!r} broke off"),
                "broken",
                sent=True,
                failure=True,
            )

    async def _read(self, resp: aiohttp.ClientResponse, op: str) -> Attempt:
        limit = self.max_response_bytes
        too_large = Attempt(
            RpcResponse.error(
                ErrorCode.UPSTREAM_ERROR, f"upstream answer for {op!r} exceeds {limit} bytes"
            ),
            "too_large",
            sent=True,
            failure=False,
        )
        if resp.content_length is not None and resp.content_length > limit:
            resp.close()
            return too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                resp.close()
                return too_large
            chunks.append(chunk)
        body = b"".join(chunks)
        status = resp.status
        code = error_for_http_status(status)
        retry_after_ms = parse_retry_after(resp.headers.get("Retry-After"))
        outcome = f"http_{status // 100}xx"
        if code is None:
            return Attempt(
                RpcResponse(
                    status=0,
                    headers=response_headers(resp.headers),
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
                    headers=response_headers(resp.headers),
                    body=body,
                    retry_after_ms=retry_after_ms,
                    message=f"upstream answered HTTP {status} for {op!r}",
                ),
                outcome,
                sent=True,
                failure=False,
            )
        # 5xx (and stray 1xx/3xx): the body may hold internals; the device gets none of it.
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
        """Replaced by a reload: close the session once the last call using it ends."""
        self._retired = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if not self._retired or self._in_flight or self._closing is not None:
            return
        if self._session is None or self._session.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: ``close()`` will do it
        self._closing = loop.create_task(self._session.close())

    @property
    def closed(self) -> bool:
        """Retired and fully closed (or never opened a session)."""
        if not self._retired or self._in_flight:
            return False
        if self._closing is not None:
            return self._closing.done()
        return self._session is None or self._session.closed

    async def close(self) -> None:
        if self._closing is not None:
            await self._closing
        elif self._session is not None and not self._session.closed:
            await self._session.close()

    def describe(self) -> dict[str, object]:
        now = self._clock()
        return {
            "endpoints": [ep.describe(now) for ep in self.endpoints],
            "breaker": self.breaker.describe(),
            "in_flight": self._in_flight,
            "zone": self.config.zone,
            "timeout_ms": self.config.timeout_ms,
            "retries": self.config.retries,
            "max_connections": self.config.max_connections,
        }
