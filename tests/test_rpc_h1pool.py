"""The keep-alive HTTP/1.1 pool (``channel.rpc.h1pool``) and ``ClusterPool`` on top of it.

Against a real aiohttp upstream for the ordinary cases, and against raw
asyncio servers written here for the misbehaving ones (idle close, reset,
``Connection: close``, chunked, oversized, stalled, garbage). Every server
binds 127.0.0.1 port 0; tests wait for server-side events, never for time.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from channel.rpc import ClusterConfig, RpcMetrics
from channel.rpc.h1pool import ConnectError, ConnectionBroken, H1Pool, H1Response, PoolClosed
from channel.rpc.http1 import BodyTooLarge, H1ProtocolError, Headers, Limits, encode_chunked
from channel.rpc.upstream import ClusterPool, Endpoint
from channel.security.devcert import ensure_dev_certificates
from channel.wire.errors import ErrorCode

# -- servers ---------------------------------------------------------------------


class AioUpstream:
    """A real aiohttp upstream: echoes the body, records each request's connection."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.requests: list[web.Request] = []
        self.bodies: list[bytes] = []
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with self.arrived:
            self.peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
            self.requests.append(request)
            self.bodies.append(body)
            self.arrived.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        if request.headers.get("x-compress"):
            response = web.Response(body=body * 50)
            response.enable_compression(web.ContentCoding.gzip)
            return response
        return web.Response(body=body, headers={"x-op": request.match_info["op"]})

    async def wait_requests(self, count: int) -> None:
        async with asyncio.timeout(5), self.arrived:
            await self.arrived.wait_for(lambda: len(self.requests) >= count)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_post("/rpc/{op}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()


@asynccontextmanager
async def aio_upstream(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[AioUpstream]:
    upstream = AioUpstream()
    await upstream.start(ssl_context)
    try:
        yield upstream
    finally:
        await upstream.stop()


Script = Callable[["RawConn"], Awaitable[None]]


class RawConn:
    """One accepted connection of a ``RawServer``, for scripts to read requests and misbehave."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_request(self) -> bytes | None:
        """One request (head + Content-Length body), or None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return head + await self.reader.readexactly(length)

    async def answer(self, body: bytes = b"ok", extra: bytes = b"") -> None:
        self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra))
        self.writer.write(body)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with RST instead of FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class RawServer:
    """An asyncio server running ``script`` per connection; counts requests and connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests = 0
        self.closed_connections = 0
        self.changed = asyncio.Condition()
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._bump("connections")
        try:
            await self.script(RawConn(reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            await self._bump("closed_connections")

    async def _bump(self, counter: str) -> None:
        async with self.changed:
            setattr(self, counter, getattr(self, counter) + 1)
            self.changed.notify_all()

    async def counted_request(self, conn: RawConn) -> bytes | None:
        request = await conn.read_request()
        if request is not None:
            await self._bump("requests")
        return request

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(predicate)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@asynccontextmanager
async def raw_server(
    script: Callable[[RawServer, RawConn], Awaitable[None]],
) -> AsyncIterator[RawServer]:
    server = RawServer(lambda conn: script(server, conn))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def h1pool(**options: Any) -> AsyncIterator[H1Pool]:
    pool = H1Pool(**{"max_connections": 10, **options})
    try:
        yield pool
    finally:
        await pool.close()


async def post(pool: H1Pool, url: str, body: bytes = b"{}", op: str = "svc.x") -> bytes:
    response = await pool.request(url, f"/rpc/{op}", [("content-type", "application/json")], body)
    assert response.status == 200
    return response.body


# -- against a real aiohttp upstream ----------------------------------------------


async def test_keep_alive_reuses_one_connection() -> None:
    async with aio_upstream() as up, h1pool() as pool:
        for i in range(5):
            assert await post(pool, up.url, b"n%d" % i) == b"n%d" % i
        assert len(set(up.peers)) == 1
        assert pool.stats() == {"open": 1, "idle": 1, "waiting": 0}
        request = up.requests[0]
        assert request.headers["Host"] == up.url.removeprefix("http://")
        assert request.headers["User-Agent"] == "channel-gateway"
        assert request.headers["Content-Type"] == "application/json"
        assert request.path == "/rpc/svc.x"


async def test_keepalive_zero_closes_after_each_request() -> None:
    async with aio_upstream() as up, h1pool(keepalive_s=0) as pool:
        for _ in range(3):
            await post(pool, up.url)
        assert len(set(up.peers)) == 3
        assert pool.stats()["open"] == 0


async def test_endpoint_path_prefix_is_kept() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        request = await server.counted_request(conn)
        assert request is not None
        await conn.answer(request.split(b" ")[1])

    async with raw_server(script) as server, h1pool() as pool:
        assert await post(pool, server.url + "/base") == b"/base/rpc/svc.x"


async def test_https_with_a_verified_context(tmp_path: Path) -> None:
    certs = ensure_dev_certificates(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certs.cert, certs.key)
    async with aio_upstream(server_context) as up:
        trusted = ssl.create_default_context(cafile=str(certs.ca_cert))
        async with h1pool(ssl_context=trusted) as pool:
            assert await post(pool, up.url, b"secret") == b"secret"
            assert await post(pool, up.url, b"again") == b"again"
            assert len(set(up.peers)) == 1
        # The default context does not know the dev CA: the handshake fails, nothing sent.
        async with h1pool() as pool:
            with pytest.raises(ConnectError):
                await post(pool, up.url)
        assert len(up.requests) == 2


async def test_idle_connections_close_after_keepalive() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            await conn.answer()

    async with raw_server(script) as server, h1pool(keepalive_s=0.05) as pool:
        await post(pool, server.url)
        await server.wait_for(lambda: server.closed_connections == 1)
        assert pool.stats()["open"] == 0
        await post(pool, server.url)
        assert server.connections == 2


# -- misbehaving servers ------------------------------------------------------------


async def test_server_closing_an_idle_connection_is_noticed() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        await conn.answer()  # keep-alive answer, then the server closes anyway

    async with raw_server(script) as server, h1pool() as pool:
        await post(pool, server.url)
        await server.wait_for(lambda: server.closed_connections == 1)
        assert await post(pool, server.url) == b"ok"
        assert server.connections == 2 and server.requests == 2


@pytest.mark.parametrize("reset", [False, True])
async def test_keep_alive_race_is_retried_once_on_a_new_connection(reset: bool) -> None:
    """The server closes a reused connection just as our request arrives: EOF/RST, no answer."""

    async def script(server: RawServer, conn: RawConn) -> None:
        if server.connections == 1:
            await server.counted_request(conn)
            await conn.answer()
            await server.counted_request(conn)
            if reset:
                conn.reset()
            return  # close without a byte of an answer
        while await server.counted_request(conn) is not None:
            await conn.answer(b"fresh")

    async with raw_server(script) as server, h1pool() as pool:
        await post(pool, server.url)
        assert await post(pool, server.url) == b"fresh"
        assert server.connections == 2
        assert server.requests == 3  # the upstream did see the raced request once


@pytest.mark.parametrize("reset", [False, True])
async def test_keep_alive_race_is_not_replayed_for_a_request_that_must_not_run_twice(
    reset: bool,
) -> None:
    """The upstream may have read the raced request: a non-idempotent op is not resent."""

    async def script(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        await conn.answer()
        await server.counted_request(conn)
        if reset:
            conn.reset()

    async with raw_server(script) as server, h1pool() as pool:
        await post(pool, server.url)
        with pytest.raises(ConnectionBroken):
            await pool.request(server.url, "/rpc/pay", [], b"{}", replay_if_stale=False)
        assert server.connections == 1 and server.requests == 2  # sent once, never again


async def test_a_new_connection_closed_without_answer_is_not_retried() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)

    async with raw_server(script) as server, h1pool() as pool:
        with pytest.raises(ConnectionBroken):
            await post(pool, server.url)
        assert server.requests == 1
        assert pool.stats()["open"] == 0


async def test_connection_close_answer_is_not_reused() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            await conn.answer(extra=b"Connection: close\r\n")

    async with raw_server(script) as server, h1pool() as pool:
        await post(pool, server.url)
        assert pool.stats()["open"] == 0
        await post(pool, server.url)
        assert server.connections == 2


async def test_chunked_answer() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            conn.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            conn.writer.write(encode_chunked([b"hello ", b"chunked ", b"world"], [("x-sum", "1")]))
            await conn.writer.drain()

    async with raw_server(script) as server, h1pool() as pool:
        assert await post(pool, server.url) == b"hello chunked world"
        assert await post(pool, server.url) == b"hello chunked world"
        assert server.connections == 1


async def test_data_nobody_asked_for_drops_the_connection() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            await conn.answer()
            await conn.answer(b"unasked")

    async with raw_server(script) as server, h1pool() as pool:
        await post(pool, server.url)
        await server.wait_for(lambda: server.closed_connections == 1)
        await post(pool, server.url)
        assert server.connections == 2


async def test_oversized_answer() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        conn.writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000)  # close-delimited
        await conn.writer.drain()
        await conn.reader.read()

    async with raw_server(script) as server, h1pool(limits=Limits(max_body_bytes=4096)) as pool:
        with pytest.raises(BodyTooLarge):
            await post(pool, server.url)
        await server.wait_for(lambda: server.closed_connections == 1)
        assert pool.stats()["open"] == 0


async def test_stall_mid_body_times_out_and_the_connection_is_closed() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await conn.writer.drain()
        await conn.reader.read()  # until the client gives up

    async with raw_server(script) as server, h1pool() as pool:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await post(pool, server.url)
        await server.wait_for(lambda: server.closed_connections == 1)
        assert pool.stats() == {"open": 0, "idle": 0, "waiting": 0}


async def test_timeout_s_bounds_a_request_on_a_new_and_on_a_reused_connection() -> None:
    """The first request answers, the second stalls: ``timeout_s`` ends it either way (the
    reused connection takes the one-timer path) and neither connection is reused."""

    async def script(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.writer.drain()
        await server.counted_request(conn)
        await conn.reader.read()  # never answers the second; until the client gives up

    async with raw_server(script) as server, h1pool() as pool:
        target = "/rpc/svc.x"
        first = await pool.request(server.url, target, [], b"", timeout_s=5.0)
        assert first.body == b"ok" and pool.stats()["idle"] == 1
        with pytest.raises(TimeoutError):
            await pool.request(server.url, target, [], b"", timeout_s=0.05)  # reused
        await server.wait_for(lambda: server.closed_connections == 1)
        assert pool.stats() == {"open": 0, "idle": 0, "waiting": 0}
        assert (await pool.request(server.url, target, [], b"", timeout_s=5.0)).body == b"ok"
        with pytest.raises(TimeoutError):
            await pool.request(server.url, target, [], b"", timeout_s=0.05)  # reused again
        await server.wait_for(lambda: server.closed_connections == 2)
        assert pool.stats() == {"open": 0, "idle": 0, "waiting": 0}
        assert server.connections == 2 and server.requests == 4


async def test_timeout_s_while_waiting_for_a_slot() -> None:
    """The pool is full (one connection, busy): ``timeout_s`` also bounds the wait."""

    async def script(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        await conn.reader.read()

    async with raw_server(script) as server, h1pool(max_connections=1) as pool:
        busy = asyncio.ensure_future(pool.request(server.url, "/rpc/svc.x", [], b""))
        await server.wait_for(lambda: server.requests == 1)
        with pytest.raises(TimeoutError):
            await pool.request(server.url, "/rpc/svc.x", [], b"", timeout_s=0.05)
        assert pool.stats() == {"open": 1, "idle": 0, "waiting": 0}
        busy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await busy


async def test_garbage_is_a_protocol_error() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        conn.writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await conn.reader.read()

    async with raw_server(script) as server, h1pool() as pool:
        with pytest.raises(H1ProtocolError):
            await post(pool, server.url)
        await server.wait_for(lambda: server.closed_connections == 1)


async def test_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: refuses
    try:
        async with h1pool() as pool:
            with pytest.raises(ConnectError):
                await post(pool, f"http://127.0.0.1:{sock.getsockname()[1]}")
            assert pool.stats()["open"] == 0
    finally:
        sock.close()


# -- caps and queueing ---------------------------------------------------------------


async def test_per_endpoint_cap_queues_callers_in_order() -> None:
    async with aio_upstream() as up, h1pool(max_connections_per_endpoint=1) as pool:
        up.gate = asyncio.Event()
        finished: list[int] = []

        async def call(i: int) -> None:
            await post(pool, up.url, b"%d" % i)
            finished.append(i)

        tasks = [asyncio.create_task(call(i)) for i in range(4)]
        await up.wait_requests(1)
        assert pool.stats() == {"open": 1, "idle": 0, "waiting": 3}
        up.gate.set()
        await asyncio.gather(*tasks)
        assert finished == [0, 1, 2, 3]
        assert len(set(up.peers)) == 1
        assert up.bodies == [b"0", b"1", b"2", b"3"]


async def test_cluster_cap_closes_an_idle_connection_to_another_endpoint() -> None:
    async with aio_upstream() as a, aio_upstream() as b, h1pool(max_connections=1) as pool:
        await post(pool, a.url)
        assert pool.stats() == {"open": 1, "idle": 1, "waiting": 0}
        await post(pool, b.url)
        assert pool.stats() == {"open": 1, "idle": 1, "waiting": 0}
        await post(pool, a.url)
        assert len(a.peers) == 2 and len(set(a.peers)) == 2


async def test_cancelled_waiter_gives_its_turn_away() -> None:
    async with aio_upstream() as up, h1pool(max_connections=1) as pool:
        up.gate = asyncio.Event()
        first = asyncio.create_task(post(pool, up.url, b"1"))
        await up.wait_requests(1)
        second = asyncio.create_task(post(pool, up.url, b"2"))
        third = asyncio.create_task(post(pool, up.url, b"3"))
        await asyncio.sleep(0)  # one turn: both run until they queue
        assert pool.stats()["waiting"] == 2
        second.cancel()
        up.gate.set()
        assert await first == b"1" and await third == b"3"
        with pytest.raises(asyncio.CancelledError):
            await second
        assert pool.stats() == {"open": 1, "idle": 1, "waiting": 0}


async def test_close_fails_calls_in_flight_and_waiting_then_refuses() -> None:
    async with aio_upstream() as up:
        pool = H1Pool(max_connections=1)
        up.gate = asyncio.Event()
        in_flight = asyncio.create_task(post(pool, up.url))
        await up.wait_requests(1)
        waiting = asyncio.create_task(post(pool, up.url))
        await asyncio.sleep(0)  # one turn: it runs until it queues
        await pool.close()
        with pytest.raises(ConnectionBroken):
            await in_flight
        with pytest.raises(PoolClosed):
            await waiting
        with pytest.raises(PoolClosed):
            await post(pool, up.url)
        assert pool.stats()["open"] == 0


# -- ClusterPool outcomes ------------------------------------------------------------


def cluster_pool(*urls: str, max_response_bytes: int = 1 << 20, **extra: Any) -> ClusterPool:
    return ClusterPool(
        ClusterConfig(name="svc", endpoints=urls, **extra),
        clock=time.monotonic,
        metrics=RpcMetrics(),
        endpoint_down_s=3.0,
        max_response_bytes=max_response_bytes,
    )


async def attempt(pool: ClusterPool, headers: list[tuple[str, str]] | None = None) -> Any:
    return await pool.post(pool.endpoints[0], "svc.x", headers or [], b"{}", 1.0, idempotent=True)


_ANSWER_HEADERS = [
    [],
    [("content-type", "application/json"), ("date", "x"), ("server", "y")],
    [("retry-after", "3"), ("x-a", "1"), ("retry-after", "9"), ("connection", "keep-alive")],
    [("retry-after", "soon"), ("content-length", "2")],
    [("content-encoding", "gzip")],
    [("content-encoding", "identity"), ("x-a", "1")],
]


@pytest.mark.parametrize("status", [200, 201, 204, 299, 301, 400, 404, 429, 500, 503])
@pytest.mark.parametrize("headers", _ANSWER_HEADERS)
def test_fast_answer_is_the_classified_one(status: int, headers: list[tuple[str, str]]) -> None:
    """Whenever the one-pass ``fast_answer`` takes an answer, it is what ``_classify``
    gives (labelled as the router labels it) and counted alike; it takes every 2xx
    without a content-coding and nothing else."""
    fast, slow = cluster_pool("http://up"), cluster_pool("http://up")
    answer = H1Response(status, "", Headers(headers), b'{"a":1}', "1.1")
    got = fast.fast_answer(answer, "svc.")
    plain = 200 <= status < 300 and not any(n == "content-encoding" for n, _ in headers)
    assert (got is not None) == plain
    if got is None:
        assert not fast._metrics.attempts
        return
    attempt = slow.fast_attempt(answer, "svc.x", slow.endpoints[0])
    assert not attempt.failure
    expected = attempt.response
    assert got == expected
    assert (got.route, got.cluster, got.retry_after_ms) == ("svc.", "svc", expected.retry_after_ms)
    assert (got.headers, got.message) == (expected.headers, expected.message)
    assert fast._metrics.attempts == slow._metrics.attempts


async def test_cluster_pool_outcomes() -> None:
    async def garbage(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        conn.writer.write(b"nonsense\r\n\r\n")

    async def big(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        conn.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.writer.write(encode_chunked([b"y" * 600] * 2))

    async def slow(server: RawServer, conn: RawConn) -> None:
        await server.counted_request(conn)
        await conn.reader.read()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with (
        aio_upstream() as up,
        raw_server(garbage) as bad,
        raw_server(big) as large,
        raw_server(slow) as stall,
    ):
        pools = {
            "ok": cluster_pool(up.url),
            "broken": cluster_pool(bad.url),
            "too_large": cluster_pool(large.url, max_response_bytes=1000),
            "connect_error": cluster_pool(dead),
        }
        try:
            ok = await attempt(pools["ok"])
            assert (ok.outcome, ok.response.status, ok.response.body) == ("http_2xx", 0, b"{}")
            assert dict(ok.response.headers) == {
                "content-type": "application/octet-stream",
                "x-op": "svc.x",
            }
            broken = await attempt(pools["broken"])
            assert (broken.outcome, broken.sent, broken.failure) == ("broken", True, True)
            too_large = await attempt(pools["too_large"])
            assert too_large.outcome == "too_large" and "1000 bytes" in too_large.response.message
            refused = await attempt(pools["connect_error"])
            assert (refused.outcome, refused.sent) == ("connect_error", False)
            assert refused.response.status == ErrorCode.UNAVAILABLE
            assert not pools["connect_error"].healthy()
            timeout_pool = cluster_pool(stall.url)
            pools["timeout"] = timeout_pool
            timed_out = await timeout_pool.post(
                timeout_pool.endpoints[0], "svc.x", [], b"", 0.05, idempotent=True
            )
            assert timed_out.outcome == "timeout" and timed_out.response.status == ErrorCode.TIMEOUT
        finally:
            for pool in pools.values():
                await pool.close()
            sock.close()
        closed = await attempt(pools["ok"])
        assert (closed.outcome, closed.sent, closed.failure) == ("closed", False, False)


async def test_cluster_pool_decodes_gzip_within_the_limit() -> None:
    async with aio_upstream() as up:
        pool = cluster_pool(up.url, max_response_bytes=150)
        try:
            headers = [("accept-encoding", "gzip"), ("x-compress", "1")]
            ok = await pool.post(pool.endpoints[0], "svc.x", headers, b"ab", 1.0, idempotent=True)
            assert ok.outcome == "http_2xx" and ok.response.body == b"ab" * 50
            assert "content-encoding" not in dict(ok.response.headers)
            big = await pool.post(
                pool.endpoints[0], "svc.x", headers, b"abcd", 1.0, idempotent=True
            )
            assert big.outcome == "too_large"  # 200 bytes once decoded, from a few on the wire
        finally:
            await pool.close()


def test_gzip_helper_matches_stdlib() -> None:
    from channel.rpc.upstream import _decode_content

    data = b"hello " * 100
    assert _decode_content("gzip", gzip.compress(data), 1000) == data
    assert _decode_content("GZIP", gzip.compress(data), 100) is None
    assert _decode_content("identity", data, 1000) == data


async def test_retired_cluster_pool_closes_when_idle() -> None:
    async with aio_upstream() as up:
        pool = cluster_pool(up.url)
        await pool.start()
        pool.hold()
        assert (await attempt(pool)).outcome == "http_2xx"
        pool.retire()
        assert not pool.closed
        pool.unhold()
        await pool.close()
        assert pool.closed
        assert isinstance(pool.endpoints[0], Endpoint)
