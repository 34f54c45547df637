"""The native engine's own RPC path (``native/engine/src/engine/rpc.rs``) against Python's.

Each scenario runs twice on the native engine against the same real upstream: with
``[rpc] native = true`` (the engine sends the call and answers simple 2xx itself) and
``false`` (Python's fast path, the reference). The device must get the same answers
and the upstream the same request bytes; the engine's counters say which path ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import RunningGateway, gateway
from test_gateway_handshake import admin_text
from test_gateway_rpc import call, connect, route
from test_rpc_h1pool import RawConn, RawServer, raw_server

from channel.rpc.router import RpcRouter
from channel.wire import ResponseReceived, StreamErrorReceived

Script = Callable[[RawServer, RawConn], Awaitable[None]]
Outcome = tuple[Any, ...]
Calls = Callable[[RunningGateway], Awaitable[list[Outcome]]]


def outcome(event: ResponseReceived | StreamErrorReceived) -> Outcome:
    if isinstance(event, ResponseReceived):
        return ("response", event.status, tuple(event.headers), event.body)
    return ("error", event.code, event.message, event.retry_after_ms)


def ok_head(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-up: 1\r\n"
        b"date: Mon, 07 Dec 2026 08:00:00 GMT\r\ncontent-length: %d\r\n%s\r\n" % (len(body), extra)
    )


async def echo(server: RawServer, conn: RawConn) -> None:
    while (request := await recorded(server, conn)) is not None:
        body = request.partition(b"\r\n\r\n")[2]
        conn.writer.write(ok_head(body) + body)
        await conn.writer.drain()


#: Raw requests each upstream saw, in order (keyed by server).
_SEEN: dict[int, list[bytes]] = {}


async def recorded(server: RawServer, conn: RawConn) -> bytes | None:
    request = await server.counted_request(conn)
    if request is not None:
        _SEEN.setdefault(id(server), []).append(request)
    return request


def normalized(requests: list[bytes]) -> list[bytes]:
    # The session id and the upstream's port are the run's own; the rest must match
    # byte for byte.
    out = [re.sub(rb"x-channel-session: [^\r]*", b"x-channel-session: *", r) for r in requests]
    return [re.sub(rb"host: 127.0.0.1:[0-9]+", b"host: *", r) for r in out]


def rpc_config(url: str, native: bool, **extra: Any) -> dict[str, Any]:
    cluster = {"endpoints": [url], **extra.pop("cluster", {})}
    return {
        "clusters": {"svc": cluster},
        "routes": [route("svc.", "svc", **extra.pop("route", {}))],
        "native": native,
        **extra,
    }


def stats(gw: RunningGateway) -> dict[str, Any]:
    return gw.node.engine.stats()  # type: ignore[attr-defined, no-any-return]


async def run(
    tmp_path: Path,
    script: Script,
    calls: Calls,
    *,
    sections: dict[str, Any] | None = None,
    **rpc: Any,
) -> tuple[dict[bool, list[Outcome]], dict[bool, list[bytes]], dict[bool, dict[str, Any]]]:
    """The scenario with the native path on, then off: answers, upstream requests, stats."""
    answers: dict[bool, list[Outcome]] = {}
    seen: dict[bool, list[bytes]] = {}
    counters: dict[bool, dict[str, Any]] = {}
    for native in (True, False):
        async with raw_server(script) as upstream:
            config = rpc_config(upstream.url, native, **dict(rpc))
            state = tmp_path / ("native" if native else "python")
            async with gateway(
                state, rpc=config, server={"engine": "native"}, **(sections or {})
            ) as gw:
                answers[native] = await calls(gw)
                counters[native] = stats(gw)
            seen[native] = normalized(_SEEN.pop(id(upstream), []))
    assert counters[False]["rpc_native_started"] == 0
    return answers, seen, counters


async def warmed(gw: RunningGateway, device_id: str = "dev-1") -> Any:
    """A device whose first call went through Python (no route: NOT_FOUND, nothing sent
    upstream): the engine is handed its native calls at its first call."""
    device = await connect(gw, device_id)
    first = await call(device, "nowhere.warm")
    assert isinstance(first, ResponseReceived) and first.status != 0
    return device


def plain_calls(*ops: tuple[str, bytes], headers: tuple[tuple[str, str], ...] = ()) -> Calls:
    async def calls(gw: RunningGateway) -> list[Outcome]:
        device = await warmed(gw)
        return [outcome(await call(device, op, body, headers)) for op, body in ops]

    return calls


async def test_a_plain_call_is_answered_by_the_engine_as_python_answers_it(
    tmp_path: Path,
) -> None:
    headers = (("accept", "application/json"), ("x-trace", "a\tb"))
    answers, seen, counters = await run(
        tmp_path, echo, plain_calls(("svc.get", b'{"n":1}'), ("svc.get", b"{}"), headers=headers)
    )
    assert answers[True] == answers[False]
    status, got_headers, body = answers[True][0][1:]
    assert status == 0 and body == b'{"n":1}'
    assert got_headers == (("content-type", "application/json"), ("x-up", "1"))
    assert seen[True] == seen[False] and len(seen[True]) == 2
    assert counters[True]["rpc_native_answered"] == 2
    assert counters[True]["rpc_upstream_connects"] == 1  # the second call reused it


async def test_the_native_calls_are_counted_on_metrics(tmp_path: Path) -> None:
    async with raw_server(echo) as upstream:
        config = rpc_config(upstream.url, True)
        async with gateway(tmp_path, rpc=config, server={"engine": "native"}) as gw:
            device = await warmed(gw)
            for _ in range(3):
                assert isinstance(await call(device, "svc.get"), ResponseReceived)
            async with asyncio.timeout(5):
                while True:
                    text = await admin_text(gw, "/metrics")
                    if "channel_rpc_native_calls_total 3.0" in text:
                        break
                    await asyncio.sleep(0.01)  # the engine reports every 10 ms
            assert (
                'channel_rpc_duration_seconds_count{cluster="svc",route="svc.",status="OK"} 3.0'
                in text
            )
            router: RpcRouter = gw.node.router
            assert router.metrics.attempts[("svc", "http_2xx")] == 3
            assert router.metrics.calls[("svc.", "svc", "OK")] == 3


async def test_headers_python_filters_keep_the_call_in_python(tmp_path: Path) -> None:
    headers = (("X-Channel-Device-Id", "spoof"), ("Accept", "x"), ("connection", "close"))
    answers, seen, counters = await run(
        tmp_path, echo, plain_calls(("svc.get", b"{}"), headers=headers)
    )
    assert answers[True] == answers[False]
    assert seen[True] == seen[False]
    assert b"spoof" not in seen[True][0]
    assert counters[True]["rpc_native_started"] == 0


async def test_the_devices_own_user_agent_goes_upstream_as_python_sends_it(
    tmp_path: Path,
) -> None:
    calls = plain_calls(("svc.get", b"{}"), headers=(("user-agent", "app/1"),))
    answers, seen, counters = await run(tmp_path, echo, calls)
    assert answers[True] == answers[False] and seen[True] == seen[False]
    assert b"user-agent: app/1\r\n" in seen[True][0] and b"channel-gateway" not in seen[True][0]
    assert counters[True]["rpc_native_answered"] == 1


def answering(*responses: bytes, close_after: bool = False) -> Script:
    """Answers the n-th request (over all connections) with ``responses[n]``."""

    async def script(server: RawServer, conn: RawConn) -> None:
        while await recorded(server, conn) is not None:
            index = min(server.requests, len(responses)) - 1
            conn.writer.write(responses[index])
            await conn.writer.drain()
            if close_after:
                return

    return script


CHUNKED = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
CLOSE = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
FAILED = b"HTTP/1.1 500 Oops\r\ncontent-length: 9\r\n\r\ninternals"
NOT_FOUND = b"HTTP/1.1 404 No\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nnope"
RETRY = b"HTTP/1.1 200 OK\r\nretry-after: 3\r\ncontent-length: 2\r\n\r\nok"
GZIPPED = (
    b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 22\r\n\r\n"
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\xcf\x06\x00\x47\xdd\xdc\x79\x02\x00\x00\x00"
)


@pytest.mark.parametrize(
    ("answer", "close_after"),
    [
        (CHUNKED, False),
        (CLOSE, True),
        (FAILED, False),
        (NOT_FOUND, False),
        (RETRY, False),
        (GZIPPED, False),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n" + b"x" * 5000, False),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA", False),
        (b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", True),
        (b"NONSENSE\r\n\r\n", False),
    ],
    ids=[
        "chunked",
        "connection-close",
        "500",
        "404",
        "retry-after",
        "gzip",
        "too-large",
        "extra-bytes",
        "bad-length",
        "close-delimited",
        "garbage",
    ],
)
async def test_any_other_answer_is_handed_to_python_and_answered_as_python_does(
    tmp_path: Path, answer: bytes, close_after: bool
) -> None:
    calls = plain_calls(("svc.get", b"{}"), ("svc.get", b"{}"))
    answers, seen, counters = await run(
        tmp_path, answering(answer, close_after=close_after), calls, max_response_bytes=1000
    )
    assert answers[True] == answers[False]
    assert seen[True] == seen[False]
    assert counters[True]["rpc_handoffs"] >= 1
    assert counters[True]["rpc_native_answered"] == 0


async def test_a_slow_answer_is_handed_off_and_still_arrives(tmp_path: Path) -> None:
    async def slow(server: RawServer, conn: RawConn) -> None:
        while (request := await recorded(server, conn)) is not None:
            await asyncio.sleep(0.5)  # past the engine's sweep: Python reads on
            body = request.partition(b"\r\n\r\n")[2]
            conn.writer.write(ok_head(body) + body)

    answers, _, counters = await run(tmp_path, slow, plain_calls(("svc.get", b"{}")))
    assert answers[True] == answers[False]
    assert answers[True][0][0] == "response"
    assert counters[True]["rpc_handoffs"] == 1


async def test_a_timeout_is_pythons_timeout(tmp_path: Path) -> None:
    async def silent(server: RawServer, conn: RawConn) -> None:
        while await recorded(server, conn) is not None:
            pass

    answers, _, counters = await run(
        tmp_path, silent, plain_calls(("svc.get", b"{}")), route={"timeout_ms": 300}
    )
    assert answers[True] == answers[False]
    # Python's error answers are RESPONSEs with the code as status, the message as body.
    assert answers[True][0][1] == 30 and b"within 300 ms" in answers[True][0][3]
    assert counters[True]["rpc_handoffs"] == 1


async def test_an_upstream_that_is_down_answers_as_python_does(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    answers: dict[bool, Outcome] = {}
    counters: dict[bool, dict[str, Any]] = {}
    for native in (True, False):
        async with gateway(
            tmp_path / str(native), rpc=rpc_config(url, native), server={"engine": "native"}
        ) as gw:
            device = await warmed(gw)
            answers[native] = outcome(await call(device, "svc.get"))
            counters[native] = stats(gw)
    assert answers[True] == answers[False]
    assert answers[True][1] == 31  # UNAVAILABLE
    assert counters[True]["rpc_upstream_connect_failures"] + counters[True]["rpc_unsent"] >= 1


@pytest.mark.parametrize("idempotent", [True, False])
async def test_the_keep_alive_race_is_pythons(tmp_path: Path, idempotent: bool) -> None:
    async def closes_reused(server: RawServer, conn: RawConn) -> None:
        served = 0
        while (request := await recorded(server, conn)) is not None:
            if served:
                return  # closes a kept-alive connection with the request unanswered
            served += 1
            body = request.partition(b"\r\n\r\n")[2]
            conn.writer.write(ok_head(body) + body)
            await conn.writer.drain()

    calls = plain_calls(("svc.get", b"1"), ("svc.get", b"2"))
    answers, seen, counters = await run(
        tmp_path, closes_reused, calls, route={"idempotent": idempotent}
    )
    assert answers[True] == answers[False]
    assert seen[True] == seen[False]
    if idempotent:
        assert answers[True][1][1] == 0  # replayed on a new connection
    else:
        assert answers[True][1][1] != 0  # never sent twice: UPSTREAM_ERROR
    assert counters[True]["rpc_handoffs"] == 1


async def test_an_open_breaker_keeps_calls_in_python(tmp_path: Path) -> None:
    breaker = {"failures": 1, "min_devices": 1, "open_s": 60}
    calls = plain_calls(("svc.get", b"{}"), ("svc.get", b"{}"), ("svc.get", b"{}"))
    answers, _, counters = await run(
        tmp_path, answering(FAILED), calls, cluster={"breaker": breaker}
    )
    assert answers[True] == answers[False]
    assert answers[True][1][1:3] == (answers[True][2][1:3])  # circuit open, twice
    # The first call went native (and was handed back with its 500); once the breaker
    # opened, the engine sent none.
    assert counters[True]["rpc_native_started"] == 1


async def test_a_reload_moves_native_calls_to_the_new_cluster(tmp_path: Path) -> None:
    async with raw_server(echo) as first, raw_server(echo) as second:
        config = rpc_config(first.url, True)
        async with gateway(tmp_path, rpc=config, server={"engine": "native"}) as gw:
            device = await warmed(gw)
            assert isinstance(await call(device, "svc.get"), ResponseReceived)
            reloaded = gw.node.config
            reloaded.rpc = rpc_config(second.url, True)
            gw.node.reload(reloaded)
            assert isinstance(await call(device, "svc.get"), ResponseReceived)
            assert (first.requests, second.requests) == (1, 1)
            assert stats(gw)["rpc_native_answered"] == 2
            reloaded.rpc = {**rpc_config(second.url, True), "native": False}
            gw.node.reload(reloaded)
            assert isinstance(await call(device, "svc.get"), ResponseReceived)
            assert second.requests == 2 and stats(gw)["rpc_native_answered"] == 2
    _SEEN.clear()


async def test_the_request_rate_limit_is_applied_as_python_applies_it(tmp_path: Path) -> None:
    calls = plain_calls(("svc.get", b"{}"), ("svc.get", b"{}"), ("svc.get", b"{}"))
    # The first (warm-up) call takes a token in Python; the engine goes on from what is left.
    limits = {"limits": {"requests_per_second": 0.5, "request_burst": 3}}
    answers, seen, counters = await run(tmp_path, echo, calls, sections=limits)
    assert [a[:2] for a in answers[True]] == [a[:2] for a in answers[False]]
    limited = answers[True][2]
    assert limited[:3] == answers[False][2][:3] and limited[1] == 23  # RATE_LIMITED
    assert abs(limited[3] - answers[False][2][3]) < 500  # retry-after, ~2 s both
    assert len(seen[True]) == len(seen[False]) == 2
    assert counters[True]["rpc_native_answered"] == 2


async def test_a_cancelled_native_call_closes_its_upstream_connection(tmp_path: Path) -> None:
    async def silent(server: RawServer, conn: RawConn) -> None:
        while await recorded(server, conn) is not None:
            pass

    async with raw_server(silent) as upstream:
        config = rpc_config(upstream.url, True)
        async with gateway(tmp_path, rpc=config, server={"engine": "native"}) as gw:
            device = await warmed(gw)
            stream_id = device.conn.send_request("svc.get", b"{}", ())
            await device.flush()
            await upstream.wait_for(lambda: upstream.requests == 1)
            device.conn.send_cancel(stream_id)
            await device.flush()
            await upstream.wait_for(lambda: upstream.closed_connections == 1)
            assert stats(gw)["rpc_native_started"] == 1
    _SEEN.clear()


async def test_a_devices_first_call_is_pythons_and_hands_the_rest_to_the_engine(
    tmp_path: Path,
) -> None:
    async with raw_server(echo) as upstream:
        config = rpc_config(upstream.url, True)
        async with gateway(tmp_path, rpc=config, server={"engine": "native"}) as gw:
            idle = await connect(gw, "dev-idle")
            device = await connect(gw, "dev-1")
            assert isinstance(await call(device, "svc.get"), ResponseReceived)
            assert stats(gw)["rpc_native_started"] == 0  # an idle device costs the engine nothing
            assert isinstance(await call(device, "svc.get"), ResponseReceived)
            assert stats(gw)["rpc_native_answered"] == 1
            assert isinstance(await call(idle, "svc.get"), ResponseReceived)
            assert stats(gw)["rpc_native_answered"] == 1
    _SEEN.clear()


async def test_bodies_of_native_calls_are_sampled_even_when_the_device_leaves_at_once(
    tmp_path: Path,
) -> None:
    compression = {
        "compression": {
            "sample_apps": ["demo"],
            "sample_fraction": 1.0,
            "sample_per_device": 1000,
            "dict_budget_bytes": 0,
        }
    }
    body = b'{"feed": "home", "page": 1, "items": 20}'
    async with raw_server(echo) as upstream:
        config = rpc_config(upstream.url, True)
        async with gateway(tmp_path, rpc=config, server={"engine": "native"}, **compression) as gw:
            device = await warmed(gw)
            for _ in range(3):
                assert isinstance(await call(device, "svc.get", body), ResponseReceived)
            await device.close()
            sampler = gw.node.compression.sampler
            # Each call's request and answer (the echo), reported after the answers and
            # before the connection's end, while the gateway still knows the device.
            async with asyncio.timeout(5):
                while gw.node.engine.connection_count != 0:  # type: ignore[attr-defined]
                    await asyncio.sleep(0.01)
            assert sampler.count("demo") == 6
            assert stats(gw)["rpc_native_answered"] == 3
    _SEEN.clear()


def sockets_to(port: int) -> int:
    """This process's open fds that are TCP sockets connected to ``port`` on loopback."""
    inodes: set[str] = set()
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields_ = line.split()
        if int(fields_[2].rpartition(":")[2], 16) == port:
            inodes.add(fields_[9])
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            count += target.startswith("socket:[") and target[8:-1] in inodes
    return count


async def test_a_handoff_nobody_took_closes_its_socket_at_shutdown(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def held(server: RawServer, conn: RawConn) -> None:
        while await recorded(server, conn) is not None:
            await release.wait()
            conn.writer.write(FAILED)  # not simple: handed to Python
            await conn.writer.drain()

    async with raw_server(held) as upstream:
        port = int(upstream.url.rpartition(":")[2])
        config = rpc_config(upstream.url, True)
        server = {"engine": "native", "drain_timeout_s": 0.1}
        async with gateway(tmp_path, rpc=config, server=server) as gw:
            device = await warmed(gw)
            device.conn.send_request("svc.get", b"{}", ())
            await device.flush()
            await upstream.wait_for(lambda: upstream.requests == 1)
            # Python stops taking events, as it does when the engine shuts down: the
            # handoff that comes now stays queued.
            native = gw.node.engine
            asyncio.get_running_loop().remove_reader(native._engine.event_fd())  # type: ignore[attr-defined]
            release.set()
            async with asyncio.timeout(5):
                while stats(gw)["rpc_handoffs"] != 1:
                    await asyncio.sleep(0.01)
            assert sockets_to(port) == 1
        assert sockets_to(port) == 0
        await upstream.wait_for(lambda: upstream.closed_connections == 1)
    _SEEN.clear()


def together(count: int) -> Script:
    """Echoes each request once ``count`` requests arrived (over all connections)."""

    async def script(server: RawServer, conn: RawConn) -> None:
        while (request := await recorded(server, conn)) is not None:
            await server.wait_for(lambda: server.requests >= count)
            body = request.partition(b"\r\n\r\n")[2]
            conn.writer.write(ok_head(body) + body)
            await conn.writer.drain()

    return script


async def answers_to(device: Any, stream_ids: list[int]) -> list[Outcome]:
    """The answers to the streams, in the order of ``stream_ids``."""
    got: dict[int, Outcome] = {}
    while len(got) < len(stream_ids):
        events = await device.events()
        assert events, "the gateway closed the connection"
        for event in events:
            if isinstance(event, ResponseReceived | StreamErrorReceived):
                got[event.stream_id] = outcome(event)
    return [got[s] for s in stream_ids]


def at_once(*bodies: bytes) -> Calls:
    """A warmed device sends every call before it reads any answer."""

    async def calls(gw: RunningGateway) -> list[Outcome]:
        device = await warmed(gw)
        stream_ids = [device.conn.send_request("svc.get", body, ()) for body in bodies]
        await device.flush()
        return await answers_to(device, stream_ids)

    return calls


async def test_several_calls_in_flight_on_a_connection_are_all_native(tmp_path: Path) -> None:
    bodies = [b'{"n":%d}' % n for n in range(4)]
    answers, seen, counters = await run(tmp_path, together(4), at_once(*bodies))
    assert answers[True] == answers[False]
    assert [a[3] for a in answers[True]] == bodies
    assert sorted(seen[True]) == sorted(seen[False]) and len(seen[True]) == 4
    assert counters[True]["rpc_native_answered"] == 4
    assert counters[True]["rpc_upstream_connects"] == 4  # each on its own connection


@pytest.mark.parametrize(
    ("sections", "cluster"),
    [
        ({}, {"breaker": {"device_max_in_flight": 2}}),
        ({"limits": {"max_pending_requests": 2}}, {}),
    ],
    ids=["device_max_in_flight", "max_pending_requests"],
)
async def test_native_and_python_calls_count_together_against_the_caps(
    tmp_path: Path, sections: dict[str, Any], cluster: dict[str, Any]
) -> None:
    answers, seen, counters = await run(
        tmp_path, together(2), at_once(b"1", b"2", b"3"), sections=sections, cluster=cluster
    )
    assert answers[True] == answers[False]
    assert [a[0] for a in answers[True][:2]] == ["response", "response"]
    assert answers[True][2][1] != 0  # the third is refused, whoever serves the first two
    assert len(seen[True]) == len(seen[False]) == 2
    assert counters[True]["rpc_native_answered"] == 2


async def test_a_cancel_ends_only_its_own_native_call(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def held(server: RawServer, conn: RawConn) -> None:
        while (request := await recorded(server, conn)) is not None:
            await release.wait()
            body = request.partition(b"\r\n\r\n")[2]
            conn.writer.write(ok_head(body) + body)
            await conn.writer.drain()

    async with raw_server(held) as upstream:
        config = rpc_config(upstream.url, True)
        async with gateway(tmp_path, rpc=config, server={"engine": "native"}) as gw:
            device = await warmed(gw)
            stream_ids = [device.conn.send_request("svc.get", b, ()) for b in (b"1", b"2", b"3")]
            await device.flush()
            await upstream.wait_for(lambda: upstream.requests == 3)
            port = int(upstream.url.rpartition(":")[2])
            assert sockets_to(port) == 3
            device.conn.send_cancel(stream_ids[1])
            await device.flush()
            async with asyncio.timeout(5):
                while sockets_to(port) != 2:  # the cancelled call's connection closed
                    await asyncio.sleep(0.01)
            release.set()
            kept = [stream_ids[0], stream_ids[2]]
            assert [a[3] for a in await answers_to(device, kept)] == [b"1", b"3"]
            counted = stats(gw)
            assert counted["rpc_native_answered"] == 2 and counted["rpc_native_cancelled"] == 1
    _SEEN.clear()
