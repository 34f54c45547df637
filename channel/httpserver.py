"""Serving an aiohttp application with bounds a slow or greedy client cannot get past.

aiohttp gives a connection that never finishes its request headers until its
keep-alive timeout (3630 s by default) and counts no connections at all, so 100
clients sending one header byte every 2 s held the push API's sockets for as long
as they liked. ``GuardedSite`` (used by the push API and the admin port) wraps
each connection's aiohttp protocol and adds, from ``[http]``:

* ``max_connections`` / ``max_connections_per_ip`` per server: a connection beyond
  either gets 503 ``UNAVAILABLE`` / 429 ``RATE_LIMITED`` (JSON) and is closed,
  before aiohttp sees a byte of it;
* ``header_timeout_s``: from the first byte of a request to the end of its headers;
  then 408 ``TIMEOUT`` and the connection is closed;
* ``idle_timeout_s``: a connection with no request under way (aiohttp's keep-alive
  timeout, counted from its opening or its last answer) is closed;
* ``body_timeout_s``: ``read_body`` bounds a handler's read of the body (408).

The guard learns that a request's headers are complete from ``guard_middleware``
(aiohttp calls the application only then), so it relies on no aiohttp internals.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from channel import fastjson
from channel.config import HttpConfig
from channel.logs import fields

log = logging.getLogger("channel.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REASONS = {408: "Request Timeout", 429: "Too Many Requests", 503: "Service Unavailable"}


def error_bytes(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection (JSON body)."""
    body = fastjson.dumps({"error": {"code": code, "message": message}})
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    )
    if status in (429, 503):
        head += "Retry-After: 1\r\n"
    return (head + "\r\n").encode("ascii") + body


#: After an answer that ends a connection (408, 429, 503) the server sends FIN and drops
#: what the client still sends for this long before closing: closing at once, with the
#: client still writing, makes the kernel reset the connection, and a reset can destroy
#: the answer before the client reads it.
LINGER_S = 2.0


class ConnectionGate:
    """Open connections of one server, in all and per client address."""

    def __init__(self, config: HttpConfig, server: str) -> None:
        self.config = config
        self.server = server
        self.open = 0
        self._per_ip: Counter[str] = Counter()
        #: Connections refused at the caps, for tests and logs.
        self.refused = 0
        #: Refused connections still lingering (bounded by ``max_connections``).
        self.lingering = 0

    def admit(self, ip: str) -> bytes | None:
        """None when the connection is counted, else the answer that refuses it."""
        config = self.config
        if self.open >= config.max_connections:
            refusal = error_bytes(
                503,
                "UNAVAILABLE",
                f"the {self.server} is at [http] max_connections ({config.max_connections})",
            )
        elif self._per_ip[ip] >= config.max_connections_per_ip:
            refusal = error_bytes(
                429,
                "RATE_LIMITED",
                f"too many connections from this address "
                f"([http] max_connections_per_ip = {config.max_connections_per_ip})",
            )
        else:
            self.open += 1
            self._per_ip[ip] += 1
            return None
        self.refused += 1
        if self.refused & (self.refused - 1) == 0:  # 1st, 2nd, 4th, 8th ...: bounded logs
            log.warning(
                "HTTP connections refused at the caps",
                extra=fields(server=self.server, refused=self.refused, open=self.open),
            )
        return refusal

    def release(self, ip: str) -> None:
        self.open -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]


class GuardedProtocol(asyncio.Protocol):
    """One connection: counted by the gate, timed while its request headers arrive,
    everything else handed to aiohttp's own protocol."""

    def __init__(self, gate: ConnectionGate, make_handler: Callable[[], RequestHandler]) -> None:
        self._gate = gate
        self._make_handler = make_handler
        self._inner: RequestHandler | None = None
        self._transport: asyncio.Transport | None = None
        self._ip = ""
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        #: Set once a final answer went out: what the client still sends is dropped.
        self._linger: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, base_transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        transport = cast(asyncio.Transport, base_transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refusal = self._gate.admit(ip)
        if refusal is not None:
            self._refused = True
            if self._gate.lingering >= self._gate.config.max_connections:
                transport.write(refusal)
                transport.close()  # too many lingering already: no courtesy
                return
            self._gate.lingering += 1
            self._answer_and_linger(refusal)
            return
        self._ip = ip
        self._inner = self._make_handler()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None or self._linger is not None:
            return
        if not self._in_request and self._header_timer is None:
            # The first byte of a request: its headers must be complete in time.
            self._header_timer = asyncio.get_running_loop().call_later(
                self._gate.config.header_timeout_s, self._headers_too_slow
            )
        self._inner.data_received(data)

    def eof_received(self) -> None:
        # None, as aiohttp answers too: the transport then closes (no half-close). While
        # lingering this ends the linger: the client has read the answer and gone.
        if self._inner is not None and self._linger is None:
            self._inner.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        if self._linger is not None:
            self._linger.cancel()
        if self._refused:
            self._refused = False
            self._gate.lingering -= 1
        if self._inner is not None:
            self._gate.release(self._ip)
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    # -- what guard_middleware reports -------------------------------------------

    def request_started(self) -> None:
        self._in_request = True
        self._cancel_header_timer()

    def request_finished(self) -> None:
        self._in_request = False

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._in_request or self._inner is None or self._linger is not None:
            return
        timeout_s = self._gate.config.header_timeout_s
        self._answer_and_linger(
            error_bytes(
                408,
                "TIMEOUT",
                f"the request headers did not arrive within {timeout_s:g} s "
                "([http] header_timeout_s)",
            )
        )

    def _answer_and_linger(self, answer: bytes) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = asyncio.get_running_loop().call_later(LINGER_S, self._close)

    def _close(self) -> None:
        if self._inner is not None:
            self._inner.force_close()
        elif self._transport is not None:
            self._transport.close()


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the connection's guard that a request's headers are in, and when it ends."""
    transport = request.transport
    guard = transport.get_protocol() if transport is not None else None
    if not isinstance(guard, GuardedProtocol):
        return await handler(request)
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.request_finished()


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The whole body, or ``TimeoutError`` when it takes longer than ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        return await request.read()


def runner_options(config: HttpConfig) -> dict[str, Any]:
    """aiohttp ``AppRunner`` options that go with the guard."""
    return {
        # aiohttp closes a connection waiting for a request this long after it opened
        # or after its last answer (its keep-alive timeout).
        "keepalive_timeout": config.idle_timeout_s,
        # After an answer sent before the body was read (413, 401 ...), aiohttp reads and
        # drops the rest at most this long, so the client gets the answer, then closes.
        "lingering_time": min(10.0, config.body_timeout_s),
    }


class GuardedSite(web.TCPSite):
    """A ``TCPSite`` whose connections go through a ``GuardedProtocol``."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, gate: ConnectionGate, **options: Any
    ) -> None:
        super().__init__(runner, host, port, **options)
        self.gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        gate = self.gate
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GuardedProtocol(gate, server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
