"""Keep-alive HTTP/1.1 connections to one upstream cluster's endpoints.

The asyncio side of ``channel.rpc.http1``: each connection is an
``asyncio.Protocol`` (no streams) that feeds ``data_received`` into a
``ClientConnection`` and resolves one future per request. ``H1Pool.request()``
takes an idle connection to the endpoint (most recently used first) or opens
one (``TCP_NODELAY``, TLS for ``https://`` with the default verified
context, ``connect_timeout_s``), writes the request in one call and waits
for the whole response.

Caps: at most ``max_connections`` open (or opening) connections in the pool
and ``max_connections_per_endpoint`` per endpoint (0 = no cap); callers
beyond them wait in FIFO order (a waiter that cannot go yet does not hold
back one for another endpoint). An idle connection to another endpoint is
closed to make room. Idle connections close after ``keepalive_s``; with 0
every connection closes after its request.

A connection that broke, answered ``Connection: close``, sent bytes nobody
asked for, or whose request was cancelled or ran out of ``timeout_s`` is
closed, never handed out again. The one retry here is the keep-alive race:
a *reused* connection that the server closes (EOF or reset) before a single
byte of the response arrived is retried once on a new connection, if the
caller says the request may run twice (``replay_if_stale``; the server may
have read it before closing). Every other failure is the caller's to handle.

Errors: ``ConnectError`` (nothing was sent), ``ConnectionBroken`` (the
request may have been sent; no complete answer), ``H1ProtocolError`` and
``BodyTooLarge`` from the codec, ``PoolClosed``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

from channel.rpc.http1 import (
    USER_AGENT,
    ClientConnection,
    Data,
    EndOfMessage,
    H1ErrorCode,
    H1ProtocolError,
    Headers,
    Limits,
    Response,
    encode_request,
)


class ConnectError(Exception):
    """The endpoint could not be reached (refused, DNS, TLS handshake, connect timeout)."""


class ConnectionBroken(Exception):
    """The connection ended before a complete response; the request may have been processed."""


class PoolClosed(Exception):
    """The pool was closed."""


class _StaleConnection(ConnectionBroken):
    """A reused connection closed before any byte of the response: the keep-alive race."""


@dataclass(frozen=True, slots=True)
class H1Response:
    status: int
    reason: str
    headers: Headers
    body: bytes
    http_version: str


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an endpoint URL points: ``scheme://host[:port][/prefix]``."""

    url: str
    host: str
    port: int
    tls: bool
    #: The ``Host`` header value.
    authority: str
    #: Path prefix for request targets, without a trailing slash.
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http://host[:port] or https://host[:port], got {url!r}")
        tls = parts.scheme == "https"
        return cls(
            url=url,
            host=parts.hostname,
            port=parts.port or (443 if tls else 80),
            tls=tls,
            authority=parts.netloc.rpartition("@")[2],
            prefix=parts.path.rstrip("/"),
        )


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """Verified TLS (system CAs, hostname check), made once per process."""
    return ssl.create_default_context()


class _Answer(Protocol):
    """Where a connection puts its answer: a future, or a ``_Callback`` (the fast path)."""

    def done(self) -> bool: ...

    def set_result(self, result: H1Response, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Callback:
    """An answer slot that calls a function instead of waking a task: the fast path's.

    Settles once, like a future: a late answer after a timeout is dropped."""

    __slots__ = ("_done", "_on_done")

    def __init__(self, on_done: Callable[[H1Response | BaseException], None]) -> None:
        self._on_done = on_done
        self._done = False

    def done(self) -> bool:
        return self._done

    def discard(self) -> None:
        """Nobody wants the answer any more: whatever comes is dropped."""
        self._done = True

    def set_result(self, result: H1Response, /) -> None:
        self._done = True
        self._on_done(result)

    def set_exception(self, exception: BaseException, /) -> None:
        self._done = True
        self._on_done(exception)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and its HTTP/1.1 state."""

    def __init__(self, pool: H1Pool, origin: Origin, limits: Limits) -> None:
        self.pool = pool
        self.origin = origin
        self.codec = ClientConnection(limits)
        self.transport: asyncio.Transport | None = None
        #: Has carried a request before the current one.
        self.reused = False
        #: Counted in the pool's open-connection totals.
        self.counted = True
        self.idle_since = 0.0
        self.lost = False
        self.closed_event = asyncio.Event()
        self._waiter: _Answer | None = None
        self._response: Response | None = None
        self._body: list[bytes] = []

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None:
            # Bytes while idle: nothing can be trusted on this connection any more.
            self.abort()
            self.pool._forget(self)
            return
        whole = self.codec.receive_whole(data)
        if whole is not None:
            # The common answer, whole in one read: no events, no body list.
            self._waiter = None
            _answer(waiter, *whole)
            return
        try:
            events = self.codec.receive_data(data)
        except H1ProtocolError as exc:
            self._fail(exc)
            return
        for event in events:
            if type(event) is Data:
                self._body.append(event.data)
            elif type(event) is Response:
                self._response = event
            elif type(event) is EndOfMessage:
                self._complete()

    def eof_received(self) -> bool | None:
        if self._waiter is not None:
            try:
                for event in self.codec.receive_data(b""):
                    if type(event) is EndOfMessage:
                        self._complete()
            except H1ProtocolError as exc:
                self._fail(self._lost_error(exc))
        else:
            self.codec.keep_alive = False
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.codec.keep_alive = False
        if self._waiter is not None:
            self._fail(self._lost_error(exc))
        self.pool._connection_lost(self)
        self.closed_event.set()

    # -- requests --------------------------------------------------------------

    def _lost_error(self, exc: BaseException | None) -> Exception:
        if isinstance(exc, H1ProtocolError) and exc.code is not H1ErrorCode.NO_RESPONSE:
            return exc
        if self.reused and not self.codec.response_started:
            return _StaleConnection(f"{self.origin.url}: idle connection closed by the server")
        detail = f": {exc}" if exc is not None else ""
        return ConnectionBroken(f"{self.origin.url}: connection closed before the answer{detail}")

    def _complete(self) -> None:
        waiter, response = self._waiter, self._response
        assert waiter is not None and response is not None
        body = self._body
        self._waiter = self._response = None
        self._body = []
        _answer(waiter, response, body[0] if len(body) == 1 else b"".join(body))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        self._waiter = self._response = None
        self._body = []
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def send(self, request: bytes) -> asyncio.Future[H1Response]:
        waiter: asyncio.Future[H1Response] = self.pool.loop.create_future()
        self.send_to(request, waiter)
        return waiter

    def send_to(self, request: bytes, waiter: _Answer) -> None:
        assert self._waiter is None
        if self.transport is None or not self.usable:
            raise self._lost_error(None)
        self.codec.begin_request()
        self._waiter = waiter
        self.transport.write(request)

    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.codec.keep_alive = False
        if self.transport is not None:
            self.transport.abort()


class _AdoptedConnection(_Connection):
    """A connection the native engine opened and sent a request on: the answer's bytes
    it read come first, before anything the socket brings."""

    def __init__(
        self, pool: H1Pool, origin: Origin, limits: Limits, received: bytes, unsent: bytes
    ) -> None:
        super().__init__(pool, origin, limits)
        self._received = received
        self._unsent = unsent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._unsent:
            self.transport.write(self._unsent)  # type: ignore[union-attr]
        received, self._received = self._received, b""
        if received:
            self.data_received(received)


def _expire(waiter: _Answer) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def is_stale(exc: BaseException) -> bool:
    """``exc`` is the keep-alive race: a reused connection closed before any answer."""
    return isinstance(exc, _StaleConnection)


class FastExchange:
    """One request on a kept-alive connection, answered through a callback.

    Does what ``H1Pool._exchange`` does around ``await``: one timer on the answer, the
    connection back to the pool after a whole answer, aborted and forgotten after
    anything else (a timeout, an error, ``cancel()``)."""

    __slots__ = ("_answer", "_conn", "_on_done", "_pool", "_timer", "deadline")

    def __init__(
        self,
        pool: H1Pool,
        conn: _Connection,
        payload: bytes,
        deadline: float,
        on_done: Callable[[H1Response | BaseException], None],
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._on_done = on_done
        #: When the answer times out (a keep-alive replay must be done by then too).
        self.deadline = deadline
        self._answer = _Callback(self._settled)
        self._timer: asyncio.TimerHandle | None = None
        try:
            conn.send_to(payload, self._answer)
        except BaseException as exc:
            # As in ``_exchange``: the connection's state is unknown. The answer comes
            # back through ``on_done`` all the same, after this call returns.
            self._answer.discard()
            conn.abort()
            pool._forget(conn)
            pool.loop.call_soon(on_done, exc)
            return
        self._timer = pool.loop.call_at(deadline, _expire, self._answer)

    def _settled(self, result: H1Response | BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if isinstance(result, BaseException):
            self._conn.abort()
            self._pool._forget(self._conn)
            self._on_done(result)
            return
        # The answer first, then the connection back to the pool (or to a waiter): the
        # caller's answer does not wait for the pool's bookkeeping.
        try:
            self._on_done(result)
        finally:
            self._pool._release(self._conn)

    def cancel(self) -> None:
        """The caller gave up: the connection's state is unknown, so it closes."""
        if self._answer.done():
            return
        self._answer.discard()
        if self._timer is not None:
            self._timer.cancel()
        self._conn.abort()
        self._pool._forget(self._conn)


@dataclass(eq=False, slots=True)
class _Waiter:
    origin: Origin
    #: Resolves to an idle connection to reuse, or None: a slot is reserved, open one.
    future: asyncio.Future[_Connection | None]
    fresh: bool


class H1Pool:
    """Keep-alive connections to a set of endpoints under shared caps; see the module doc."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_connections_per_endpoint: int = 0,
        keepalive_s: float = 15.0,
        connect_timeout_s: float = 1.0,
        limits: Limits | None = None,
        user_agent: str = USER_AGENT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.max_connections = max_connections
        self.max_connections_per_endpoint = max_connections_per_endpoint
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.limits = limits or Limits()
        self.user_agent = user_agent
        self._ssl_context = ssl_context
        self._origins: dict[str, Origin] = {}
        self._idle: dict[str, list[_Connection]] = {}
        self._open: dict[str, int] = {}
        self._total = 0
        self._connections: set[_Connection] = set()
        self._waiters: deque[_Waiter] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._granting = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """Open (incl. opening), idle connections and queued callers."""
        return {
            "open": self._total,
            "idle": sum(len(conns) for conns in self._idle.values()),
            "waiting": len(self._waiters),
        }

    # -- requests --------------------------------------------------------------

    async def request(
        self,
        url: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        method: str = "POST",
        replay_if_stale: bool = True,
        timeout_s: float | None = None,
    ) -> H1Response:
        """``method {url's path}{target}`` on a pooled connection to ``url``; the whole answer.

        ``replay_if_stale``: send again on a new connection when a reused one is closed
        before any byte of the answer (the keep-alive race). The upstream may have read
        the request before closing, so pass False for a request that must not run twice:
        the race is then a ``ConnectionBroken``.

        ``timeout_s`` bounds the whole request (waiting for a connection included) and
        raises ``TimeoutError``, as ``asyncio.timeout`` around the call would."""
        if self._closed:
            raise PoolClosed("the upstream pool is closed")
        origin = self.origin(url)
        payload = self.encode(origin, target, headers, body, method)
        if timeout_s is None or timeout_s == math.inf:
            return await self._request(origin, payload, replay_if_stale)
        deadline = self.loop.time() + timeout_s
        conn = self._take_idle(origin)
        if conn is None:
            async with asyncio.timeout_at(deadline):
                return await self._request(origin, payload, replay_if_stale)
        # The common case: a kept-alive connection at hand, nothing to wait for before the
        # request goes out. One timer on the answer instead of ``asyncio.timeout``, whose
        # task bookkeeping cost more than the rest of the exchange.
        try:
            return await self._exchange(conn, payload, deadline)
        except _StaleConnection as exc:
            return await self.after_stale(origin, payload, deadline, replay_if_stale, exc)

    def origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = Origin.parse(url)
        return origin

    def encode(
        self,
        origin: Origin,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        method: str = "POST",
    ) -> bytes:
        """The bytes of ``method {origin's path}{target}``; raises LocalProtocolError."""
        return encode_request(
            method,
            origin.prefix + target,
            host=origin.authority,
            headers=headers,
            body=body,
            user_agent=self.user_agent,
        )

    async def after_stale(
        self,
        origin: Origin,
        payload: bytes,
        deadline: float,
        replay_if_stale: bool,
        exc: BaseException,
    ) -> H1Response:
        """After the keep-alive race on a reused connection: the request once more on a
        new connection by ``deadline``, or ``ConnectionBroken`` if it must not run twice."""
        if not replay_if_stale:
            raise ConnectionBroken(str(exc)) from None
        async with asyncio.timeout_at(deadline):
            return await self._fresh_exchange(origin, payload)

    async def adopt(
        self,
        origin: Origin,
        sock: socket.socket,
        received: bytes,
        unsent: bytes,
        reused: bool,
        deadline: float,
    ) -> H1Response:
        """The answer to a request the native engine wrote on ``sock`` (``unsent``: its
        tail still to write; ``received``: the answer's bytes it read), read here as if
        this pool had sent it: same codec, limits and errors; the connection then joins
        the pool (counted beside the caps: it exists already) or closes."""
        loop = self.loop
        waiter: asyncio.Future[H1Response] = loop.create_future()
        conn = _AdoptedConnection(self, origin, self.limits, received, unsent)
        conn.reused = reused
        conn.codec.begin_request()
        conn._waiter = waiter
        self._reserve(origin)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            try:
                await loop.create_connection(lambda: conn, sock=sock)
            except OSError as exc:
                sock.close()
                self._forget(conn)
                raise ConnectionBroken(f"{origin.url}: {exc}") from exc
            if not conn.lost:
                self._connections.add(conn)
            response = await waiter
        except BaseException:
            if conn.transport is None:
                sock.close()
            conn.abort()
            self._forget(conn)
            raise
        finally:
            timer.cancel()
        self._release(conn)
        return response

    # -- the fast path: no task, no coroutine --------------------------------------

    def idle_ready(self, origin: Origin) -> bool:
        """``request()`` would take a kept-alive connection to ``origin`` at once: nothing
        to wait for, nothing to open. Changes nothing."""
        if self._closed:
            return False
        conns = self._idle.get(origin.url)
        if not conns:
            return False
        conn = conns[-1]
        return conn.usable and self.loop.time() - conn.idle_since < self.keepalive_s

    def start_exchange(
        self,
        origin: Origin,
        payload: bytes,
        timeout_s: float,
        on_done: Callable[[H1Response | BaseException], None],
    ) -> FastExchange:
        """``payload`` on the kept-alive connection ``idle_ready()`` vouched for; ``on_done``
        gets the whole answer or the exception ``request()`` would have seen before its
        keep-alive replay (``is_stale()`` tells that one; ``after_stale()`` goes on)."""
        conn = self._take_idle(origin)
        assert conn is not None, "start_exchange() without idle_ready()"
        return FastExchange(self, conn, payload, self.loop.time() + timeout_s, on_done)

    async def _request(self, origin: Origin, payload: bytes, replay_if_stale: bool) -> H1Response:
        conn = await self._acquire(origin, fresh=False)
        try:
            return await self._exchange(conn, payload)
        except _StaleConnection as exc:
            if not replay_if_stale:
                raise ConnectionBroken(str(exc)) from None
        return await self._fresh_exchange(origin, payload)

    async def _fresh_exchange(self, origin: Origin, payload: bytes) -> H1Response:
        conn = await self._acquire(origin, fresh=True)
        try:
            return await self._exchange(conn, payload)
        except _StaleConnection as exc:  # not reused: cannot happen, but never loop
            raise ConnectionBroken(str(exc)) from None

    async def _exchange(
        self, conn: _Connection, payload: bytes, deadline: float | None = None
    ) -> H1Response:
        timer: asyncio.TimerHandle | None = None
        try:
            waiter = conn.send(payload)
            if deadline is not None:
                timer = self.loop.call_at(deadline, _expire, waiter)
            response = await waiter
        except BaseException:
            # Cancelled, timed out or failed half way: this connection's state is unknown.
            conn.abort()
            self._forget(conn)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self._release(conn)
        return response

    # -- acquiring and releasing ----------------------------------------------

    def _can_open(self, origin: Origin) -> bool:
        cap = self.max_connections_per_endpoint
        if cap and self._open.get(origin.url, 0) >= cap:
            return False
        if self._total < self.max_connections:
            return True
        return self._evict_idle()

    def _evict_idle(self) -> bool:
        """Close the oldest idle connection anywhere to free a slot."""
        oldest: _Connection | None = None
        for conns in self._idle.values():
            if conns and (oldest is None or conns[0].idle_since < oldest.idle_since):
                oldest = conns[0]
        if oldest is None:
            return False
        self._drop(oldest, grant=False)  # the caller takes the slot
        return True

    def _reserve(self, origin: Origin) -> None:
        self._total += 1
        self._open[origin.url] = self._open.get(origin.url, 0) + 1

    def _take_idle(self, origin: Origin) -> _Connection | None:
        conns = self._idle.get(origin.url)
        while conns:
            conn = conns.pop()
            if conn.usable and self.loop.time() - conn.idle_since < self.keepalive_s:
                conn.reused = True
                return conn
            self._drop(conn)
        return None

    async def _acquire(self, origin: Origin, *, fresh: bool) -> _Connection:
        if self._closed:
            raise PoolClosed("the upstream pool is closed")
        if not fresh:
            conn = self._take_idle(origin)
            if conn is not None:
                return conn
        if self._can_open(origin):
            self._reserve(origin)
            return await self._connect(origin)
        waiter = _Waiter(origin, self.loop.create_future(), fresh)
        self._waiters.append(waiter)
        try:
            granted = await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                # Granted just as we were cancelled: give it back.
                if waiter.future.exception() is None:
                    self._give_back(origin, waiter.future.result())
            elif waiter in self._waiters:  # close() may have emptied the queue already
                self._waiters.remove(waiter)
            raise
        if granted is not None:
            return granted
        return await self._connect(origin)

    def _give_back(self, origin: Origin, granted: _Connection | None) -> None:
        if granted is not None:
            self._release(granted)
        else:
            self._unreserve(origin)
            self._grant()

    async def _connect(self, origin: Origin) -> _Connection:
        """Open a connection in a slot already reserved for ``origin``."""
        limits = self.limits
        context = None
        if origin.tls:
            context = self._ssl_context or default_ssl_context()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self, origin, limits),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            self._unreserve(origin)
            self._grant()
            raise ConnectError(
                f"{origin.url}: no connection within {round(self.connect_timeout_s * 1000)} ms"
            ) from None
        except OSError as exc:
            self._unreserve(origin)
            self._grant()
            raise ConnectError(f"{origin.url}: {exc}") from exc
        except BaseException:
            self._unreserve(origin)
            self._grant()
            raise
        if self._closed:
            conn.abort()
            self._forget(conn)
            raise PoolClosed("the upstream pool closed while connecting")
        if not conn.lost:
            self._connections.add(conn)
        return conn

    def _unreserve(self, origin: Origin) -> None:
        self._total -= 1
        self._open[origin.url] -= 1

    def _release(self, conn: _Connection) -> None:
        """A finished request's connection: back to idle if it may carry another one."""
        if not (conn.codec.keep_alive and conn.usable and self.keepalive_s > 0) or self._closed:
            self._drop(conn)
            return
        conn.codec.start_next_cycle()
        for waiter in self._waiters:
            if waiter.origin.url == conn.origin.url and not waiter.fresh:
                self._waiters.remove(waiter)
                conn.reused = True
                waiter.future.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        idle = self._idle.get(conn.origin.url)
        if idle is None:
            idle = self._idle[conn.origin.url] = []
        idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_at(conn.idle_since + self.keepalive_s, self._sweep_idle)
        if self._waiters:
            self._grant()

    def _drop(self, conn: _Connection, *, grant: bool = True) -> None:
        """Close ``conn`` (between requests) and free its slot for a waiter."""
        conn.close()
        self._forget(conn, grant=grant)

    def _connection_lost(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        self._forget(conn)

    def _forget(self, conn: _Connection, *, grant: bool = True) -> None:
        """Take ``conn`` out of the counts and the idle lists (once)."""
        if not conn.counted:
            return
        conn.counted = False
        self._unreserve(conn.origin)
        idle = self._idle.get(conn.origin.url)
        if idle and conn in idle:
            idle.remove(conn)
        if grant:
            self._grant()

    def _grant(self) -> None:
        """Let queued callers go, in order, as far as the caps allow."""
        if not self._waiters or self._closed or self._granting:
            return
        self._granting = True
        try:
            progressed = True
            while progressed and self._waiters:
                progressed = False
                total = self._total
                for waiter in list(self._waiters):
                    if waiter.future.done():
                        continue
                    conn = None if waiter.fresh else self._take_idle(waiter.origin)
                    if conn is not None:
                        self._waiters.remove(waiter)
                        waiter.future.set_result(conn)
                        progressed = True
                    elif self._can_open(waiter.origin):
                        self._waiters.remove(waiter)
                        self._reserve(waiter.origin)
                        waiter.future.set_result(None)
                        progressed = True
                # Slots freed while passing (stale idle connections) may fit earlier waiters.
                progressed = progressed or self._total < total
        finally:
            self._granting = False

    def _sweep_idle(self) -> None:
        self._sweep = None
        now = self.loop.time()
        next_due: float | None = None
        for conns in list(self._idle.values()):
            for conn in list(conns):
                due = conn.idle_since + self.keepalive_s
                if due <= now:
                    self._drop(conn)
                elif next_due is None or due < next_due:
                    next_due = due
        if next_due is not None and not self._closed:
            self._sweep = self.loop.call_at(next_due, self._sweep_idle)

    # -- lifecycle -------------------------------------------------------------

    async def close(self) -> None:
        """Close every connection; calls in flight fail with ``ConnectionBroken``."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(PoolClosed("the upstream pool closed"))
        connections = [conn for conn in self._connections if conn.transport is not None]
        for conn in connections:
            conn.abort()
        for conn in connections:
            await conn.closed_event.wait()
        self._connections.clear()


def _answer(waiter: _Answer, response: Response, body: bytes) -> None:
    """Hand a whole answer to the call waiting for it (unless it gave up)."""
    if not waiter.done():
        waiter.set_result(
            H1Response(
                response.status, response.reason, response.headers, body, response.http_version
            )
        )
