"""The RPC router's fast path (``RpcRouter.start_call``) against raw upstreams.

The fast path takes a call only when a kept-alive connection is at hand, so each
test first makes one call on the ordinary path to open it, then checks that the
next call was taken by the fast path (``start_call`` did not return None) and
that it ends exactly as ``handle()`` would: split answers, ``Connection: close``,
bytes nobody asked for, error statuses and their retries, timeouts, the
keep-alive race and cancellation. Servers bind 127.0.0.1 port 0; tests wait for
server-side events, never for time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from channel.rpc import RpcResponse, RpcRouter
from channel.rpc.model import RpcRequest
from channel.wire.errors import ErrorCode
from tests.rpc_upstream import cluster, rpc_request, running_router
from tests.test_rpc_h1pool import RawConn, RawServer, raw_server


@asynccontextmanager
async def router_for(server: RawServer, **route: Any) -> AsyncIterator[RpcRouter]:
    cluster_extra = route.pop("cluster_extra", {})
    rpc = {
        "clusters": {"svc": cluster(server.url, **cluster_extra)},
        "routes": [{"match": "svc.", "cluster": "svc", **route}],
    }
    async with running_router(rpc) as router:
        yield router


def start(router: RpcRouter, request: RpcRequest) -> asyncio.Future[RpcResponse]:
    """``request`` on the fast path (it must take it); the future of its answer."""
    answer: asyncio.Future[RpcResponse] = asyncio.get_running_loop().create_future()
    call = router.start_call(request, answer.set_result)
    assert call is not None, "the fast path did not take the call"
    return answer


async def fast(router: RpcRouter, op: str = "svc.a") -> RpcResponse:
    return await asyncio.wait_for(start(router, rpc_request(op)), 5)


async def warm(router: RpcRouter, op: str = "svc.a") -> None:
    """One call on the ordinary path: the connection the fast path needs."""
    response = await router.handle(rpc_request(op))
    assert response.status == 0, response


def quiet(router: RpcRouter) -> None:
    """Nothing left held: the pool's holds, the device's in-flight count."""
    pool = router._state.pools["svc"]
    assert pool.in_flight == 0
    assert pool.devices.describe()["devices_in_flight"] == 0


def answer(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


async def test_fast_path_answers_and_keeps_the_connection() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            await conn.answer(b"ok-%d" % server.requests, b"X-Trace: t\r\n")

    async with raw_server(script) as server, router_for(server) as router:
        await warm(router)
        for n in (2, 3):
            response = await fast(router)
            assert (response.status, response.body) == (0, b"ok-%d" % n)
            assert response.route == "svc." and response.cluster == "svc"
            assert ("x-trace", "t") in response.headers
        assert server.connections == 1
        metrics = router.metrics
        assert metrics.attempts[("svc", "http_2xx")] == 3
        assert metrics.selections[("svc.", "route")] == 3
        quiet(router)


async def _answer_ok(server: RawServer, conn: RawConn) -> None:
    while await server.counted_request(conn) is not None:
        await conn.answer(b"ok")


async def test_the_answer_goes_before_the_bookkeeping() -> None:
    """The caller gets the answer before the connection goes back to the pool and the
    call's holds and metrics are settled (they follow in the same callback)."""

    async with raw_server(_answer_ok) as server, router_for(server) as router:
        await warm(router)
        pool = router._state.pools["svc"]
        seen: list[tuple[int, int, int, int]] = []
        answer: asyncio.Future[RpcResponse] = asyncio.get_running_loop().create_future()

        def on_done(response: RpcResponse) -> None:
            seen.append(
                (
                    pool._get_pool().stats()["idle"],
                    pool.in_flight,
                    pool.devices.describe()["devices_in_flight"],
                    sum(router.metrics.calls.values()),
                )
            )
            answer.set_result(response)

        observed = sum(router.metrics.calls.values())
        assert router.start_call(rpc_request("svc.a"), on_done) is not None
        response = await asyncio.wait_for(answer, 5)
        assert (response.status, response.body) == (0, b"ok")
        # Inside on_done: the connection still out, the call still held and unobserved.
        assert seen == [(0, 1, 1, observed)]
        # Once the callback returned: all settled, the connection ready for the next call.
        assert pool._get_pool().stats()["idle"] == 1
        assert sum(router.metrics.calls.values()) == observed + 1
        quiet(router)
        assert (await fast(router)).body == b"ok"
        assert server.connections == 1


async def test_the_request_goes_before_the_bookkeeping(monkeypatch: Any) -> None:
    """The request is written before the call's selection metric, holds, device count
    and breaker permit are taken (they follow in the same call, before any answer)."""

    async with raw_server(_answer_ok) as server, router_for(server) as router:
        await warm(router)
        pool = router._state.pools["svc"]
        seen: list[tuple[int, int, int]] = []

        def state() -> tuple[int, int, int]:
            return (
                router.metrics.selections[("svc.", "route")],
                pool.in_flight,
                pool.devices.describe()["devices_in_flight"],
            )

        start_fast = pool.start_fast

        def spy(*args: Any) -> Any:
            seen.append(state())
            return start_fast(*args)

        monkeypatch.setattr(pool, "start_fast", spy)
        answer = start(router, rpc_request("svc.a"))
        assert seen == [(1, 0, 0)]  # the warm call's selection only
        assert state() == (2, 1, 1)
        assert (await asyncio.wait_for(answer, 5)).body == b"ok"
        quiet(router)


async def test_an_answer_split_across_reads() -> None:
    half_sent = asyncio.Event()
    rest = asyncio.Event()

    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            if server.requests == 1:
                await conn.answer(b"first")
                continue
            whole = answer(b"hello, split world")
            conn.writer.write(whole[:20])  # inside the head
            await conn.writer.drain()
            half_sent.set()
            await rest.wait()
            conn.writer.write(whole[20:-5])
            await conn.writer.drain()
            conn.writer.write(whole[-5:])
            await conn.writer.drain()

    async with raw_server(script) as server, router_for(server) as router:
        await warm(router)
        pending = start(router, rpc_request("svc.a"))
        await asyncio.wait_for(half_sent.wait(), 5)
        assert not pending.done()
        rest.set()
        response = await asyncio.wait_for(pending, 5)
        assert (response.status, response.body) == (0, b"hello, split world")
        assert server.connections == 1
        quiet(router)


async def test_connection_close_answer_is_not_reused() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            if server.requests == 2:
                await conn.answer(b"bye", b"Connection: close\r\n")
                return
            await conn.answer(b"ok")

    async with raw_server(script) as server, router_for(server) as router:
        await warm(router)
        assert (await fast(router)).body == b"bye"
        # No kept-alive connection any more: the next call is not the fast path's.
        assert router.start_call(rpc_request("svc.a"), lambda response: None) is None
        assert (await router.handle(rpc_request("svc.a"))).body == b"ok"
        assert server.connections == 2
        quiet(router)


async def test_bytes_after_the_answer_drop_the_connection() -> None:
    """An answer and, in the same write, a second one nobody asked for: the stray one
    must never be taken for the answer to the next call."""

    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            if server.requests == 2:
                conn.writer.write(answer(b"mine") + answer(b"stray"))
                await conn.writer.drain()
            else:
                await conn.answer(b"ok-%d" % server.requests)

    async with raw_server(script) as server, router_for(server) as router:
        await warm(router)
        assert (await fast(router)).body == b"mine"
        assert (await router.handle(rpc_request("svc.a"))).body == b"ok-3"
        assert server.connections == 2
        quiet(router)


async def test_upstream_error_status_is_retried_as_on_the_ordinary_path() -> None:
    # A 503 for an idempotent op: one retry, then the answer.
    async def flaky(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            if server.requests == 2:
                conn.writer.write(answer(b"internals", b"503 Service Unavailable"))
                await conn.writer.drain()
                continue
            await conn.answer(b"ok-%d" % server.requests)

    async with (
        raw_server(flaky) as server,
        router_for(server, idempotent=True, retries=1) as router,
    ):
        await warm(router)
        response = await fast(router)
        assert (response.status, response.body) == (0, b"ok-3")
        assert router.metrics.retries["svc"] == 1
        assert router.metrics.attempts[("svc", "http_5xx")] == 1
        quiet(router)

    # The same for an op that must not run twice: the error, with no body and no retry.
    async with raw_server(flaky) as server, router_for(server, retries=1) as router:
        await warm(router)
        response = await fast(router)
        assert response.status == ErrorCode.UNAVAILABLE
        assert response.body == b""
        assert server.requests == 2
        assert router.metrics.retries["svc"] == 0
        quiet(router)


async def test_client_error_status_ends_on_the_fast_path() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            status = b"404 Not Found" if server.requests == 2 else b"200 OK"
            conn.writer.write(answer(b'{"error":"no such thing"}', status))
            await conn.writer.drain()

    async with raw_server(script) as server, router_for(server, idempotent=True) as router:
        await warm(router)
        response = await fast(router)
        assert response.status == ErrorCode.NOT_FOUND
        assert response.body == b'{"error":"no such thing"}'
        assert router.metrics.retries["svc"] == 0
        assert router._state.pools["svc"].breaker.describe()["state"] == "closed"
        # 4xx is not a failure: the connection stays and the next call is fast too.
        assert (await fast(router)).status == 0
        assert server.connections == 1
        quiet(router)


async def test_timeout_on_the_fast_path_closes_the_connection() -> None:
    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            if server.requests >= 2:
                await conn.reader.read()  # never answers; returns when the gateway closes
                return
            await conn.answer(b"ok")

    async with raw_server(script) as server, router_for(server, timeout_ms=150) as router:
        await warm(router)
        response = await fast(router)
        assert response.status == ErrorCode.TIMEOUT
        assert router.metrics.attempts[("svc", "timeout")] == 1
        await server.wait_for(lambda: server.closed_connections == 1)
        quiet(router)


async def test_keep_alive_race_on_the_fast_path() -> None:
    """The upstream closes a kept-alive connection as the request arrives: an
    idempotent op is sent again on a new connection, any other one breaks."""

    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            if server.requests == 2:
                return  # read it, close without a byte of answer
            await conn.answer(b"ok-%d" % server.requests)

    async with raw_server(script) as server, router_for(server, idempotent=True) as router:
        await warm(router)
        response = await fast(router)
        assert (response.status, response.body) == (0, b"ok-3")
        assert server.connections == 2
        quiet(router)

    async with raw_server(script) as server, router_for(server) as router:
        await warm(router)
        response = await fast(router)
        assert response.status == ErrorCode.UPSTREAM_ERROR
        assert "broke off" in response.message
        assert server.requests == 2
        quiet(router)


async def test_cancel_on_the_fast_path() -> None:
    arrived = asyncio.Event()

    async def script(server: RawServer, conn: RawConn) -> None:
        while await server.counted_request(conn) is not None:
            if server.requests == 2:
                arrived.set()
                await conn.reader.read()  # until the gateway closes
                return
            await conn.answer(b"ok")

    async with raw_server(script) as server, router_for(server) as router:
        await warm(router)
        answers: list[RpcResponse] = []
        call = router.start_call(rpc_request("svc.a"), answers.append)
        assert call is not None
        await asyncio.wait_for(arrived.wait(), 5)
        call.cancel()
        await server.wait_for(lambda: server.closed_connections == 1)
        assert answers == []
        pool = router._state.pools["svc"]
        assert pool.breaker.describe()["state"] == "closed"
        assert sum(router.metrics.attempts.values()) == 1  # the warm-up's only
        quiet(router)
        # The pool slot came back: a new connection answers.
        assert (await router.handle(rpc_request("svc.a"))).body == b"ok"
