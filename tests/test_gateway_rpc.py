"""Device RPC through a real gateway to real aiohttp upstreams."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from gateway_harness import RunningGateway, gateway, http_upstream
from raw_device import RawDevice
from test_gateway_handshake import admin_text
from test_rpc_h1pool import RawConn, RawServer, raw_server

from channel.engine.native import NativeEngine
from channel.wire import (
    ErrorCode,
    GoAwayReceived,
    Hello,
    HelloAccepted,
    ResponseReceived,
    StreamErrorReceived,
)

pytestmark = pytest.mark.both_engines


async def connect(
    gw: RunningGateway, device_id: str, receive_buffer_bytes: int = 0, **hello_fields: Any
) -> RawDevice:
    device = await RawDevice.connect(gw.port, gw.ca_cert, receive_buffer_bytes=receive_buffer_bytes)
    await device.send_hello(
        Hello(
            device_id=device_id,
            app_id="demo",
            token=gw.token(device_id),
            preset_id=2,
            app_version=str(hello_fields.pop("app_version", "8.12.3")),
            platform=str(hello_fields.pop("platform", "android")),
            client_time_ms=int(time.time() * 1000),
        )
    )
    (accepted,) = await device.events()
    assert isinstance(accepted, HelloAccepted)
    return device


async def call(
    device: RawDevice, op: str, body: bytes = b"{}", headers: tuple[tuple[str, str], ...] = ()
) -> ResponseReceived | StreamErrorReceived:
    stream_id = device.conn.send_request(op, body, headers)
    await device.flush()
    while True:
        for event in await device.events():
            if isinstance(event, ResponseReceived | StreamErrorReceived) and (
                event.stream_id == stream_id
            ):
                return event


class Upstream:
    """A recording aiohttp upstream: every call's op, headers and body."""

    def __init__(self, name: str, *, status: int = 200, delay_s: float = 0.0) -> None:
        self.name = name
        self.status = status
        self.delay_s = delay_s
        self.calls: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.called = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append(
            {"op": request.match_info["op"], "headers": dict(request.headers), "body": body}
        )
        self.called.set()
        await self.release.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        reply = json.dumps({"served_by": self.name, "echo": body.decode()}).encode()
        return web.Response(status=self.status, body=reply, content_type="application/json")


def route(match: str, cluster: str, **extra: Any) -> dict[str, Any]:
    return {"match": match, "cluster": cluster, **extra}


async def test_call_reaches_upstream_with_verified_identity(tmp_path: Path) -> None:
    account = Upstream("account")
    async with http_upstream({"/rpc/{op}": account.handle}) as url:
        rpc = {
            "clusters": {"account": {"endpoints": [url]}},
            "routes": [route("account.", "account")],
        }
        async with gateway(tmp_path, rpc=rpc) as gw:
            device = await connect(gw, "dev-7")
            response = await call(
                device,
                "account.balance.get",
                b'{"currency":"CNY"}',
                (("locale", "zh-CN"), ("x-channel-user-id", "someone-else")),
            )
            assert isinstance(response, ResponseReceived) and response.status == 0
            assert json.loads(response.body)["served_by"] == "account"
            seen = account.calls[0]
            assert seen["op"] == "account.balance.get"
            assert seen["headers"]["x-channel-device-id"] == "dev-7"
            assert seen["headers"]["x-channel-user-id"] == "u1"  # the token's, not the device's
            assert seen["headers"]["locale"] == "zh-CN"
            # Built-in echo needs no upstream.
            echo = await call(device, "channel.echo", b"ping")
            assert isinstance(echo, ResponseReceived) and echo.body == b"ping"
            await device.close()


async def test_upstream_failures_map_to_codes_and_breaker_opens(tmp_path: Path) -> None:
    slow = Upstream("slow", delay_s=2.0)
    broken = Upstream("broken", status=500)
    async with (
        http_upstream({"/rpc/{op}": slow.handle}) as slow_url,
        http_upstream({"/rpc/{op}": broken.handle}) as broken_url,
    ):
        rpc = {
            "clusters": {
                "slow": {"endpoints": [slow_url], "timeout_ms": 200},
                "broken": {
                    "endpoints": [broken_url],
                    "breaker": {"failures": 3, "window_s": 30, "open_s": 30},
                },
            },
            "routes": [route("slow.", "slow"), route("broken.", "broken")],
        }
        async with gateway(tmp_path, rpc=rpc) as gw:
            device = await connect(gw, "d1")
            timed_out = await call(device, "slow.op")
            assert timed_out.status == ErrorCode.TIMEOUT  # type: ignore[union-attr]
            for _ in range(3):
                failed = await call(device, "broken.op")
                assert isinstance(failed, ResponseReceived)
                assert failed.status == ErrorCode.UPSTREAM_ERROR
            hits = len(broken.calls)
            refused = await call(device, "broken.op")
            assert isinstance(refused, ResponseReceived)
            assert refused.status == ErrorCode.UNAVAILABLE
            assert len(broken.calls) == hits  # the open breaker kept the upstream out of it
            missing = await call(device, "nobody.home")
            assert missing.status == ErrorCode.NOT_FOUND  # type: ignore[union-attr]
            await device.close()


async def test_gray_split_and_zone_failover_and_mirroring(tmp_path: Path) -> None:
    stable, canary = Upstream("stable"), Upstream("canary")
    sh, shadow = Upstream("sh"), Upstream("shadow")
    async with (
        http_upstream({"/rpc/{op}": stable.handle}) as stable_url,
        http_upstream({"/rpc/{op}": canary.handle}) as canary_url,
        http_upstream({"/rpc/{op}": sh.handle}) as sh_url,
        http_upstream({"/rpc/{op}": shadow.handle}) as shadow_url,
    ):
        rpc = {
            "clusters": {
                "stable": {"endpoints": [stable_url]},
                "canary": {"endpoints": [canary_url]},
                # hz's only endpoint refuses connections: nothing listens there.
                "hz": {"endpoints": ["http://127.0.0.1:9"], "zone": "hz"},
                "sh": {"endpoints": [sh_url], "zone": "sh"},
                "shadow": {"endpoints": [shadow_url]},
            },
            "routes": [
                route(
                    "feed.", "stable", rules=[{"kind": "gray", "percent": 50, "cluster": "canary"}]
                ),
                route(
                    "pay.",
                    "hz",
                    rules=[
                        {"kind": "zone", "clusters": {"hz": "hz", "sh": "sh"}, "failover": ["sh"]}
                    ],
                    mirror={"cluster": "shadow", "percent": 100},
                ),
            ],
        }
        async with gateway(tmp_path, rpc=rpc, server={"zone": "hz"}) as gw:
            served: dict[str, int] = {}
            for i in range(40):
                device = await connect(gw, f"gray-{i}")
                first = await call(device, "feed.list")
                second = await call(device, "feed.list")
                assert isinstance(first, ResponseReceived) and isinstance(second, ResponseReceived)
                name = json.loads(first.body)["served_by"]
                assert json.loads(second.body)["served_by"] == name  # stable per device
                served[name] = served.get(name, 0) + 1
                await device.close()
            assert 10 <= served.get("canary", 0) <= 30, served
            device = await connect(gw, "payer")
            paid = await call(device, "pay.create", b'{"amount":"1.00"}')
            assert isinstance(paid, ResponseReceived) and paid.status == 0
            assert json.loads(paid.body)["served_by"] == "sh"
            await gw.node.router.drain_mirrors()
            assert [c["op"] for c in shadow.calls] == ["pay.create"]
            assert shadow.calls[0]["headers"].get("x-channel-mirror") == "1"
            await device.close()


async def test_route_reload_keeps_devices_connected(tmp_path: Path) -> None:
    blue, green = Upstream("blue"), Upstream("green")
    async with (
        http_upstream({"/rpc/{op}": blue.handle}) as blue_url,
        http_upstream({"/rpc/{op}": green.handle}) as green_url,
    ):

        def config_text(active: str) -> str:
            return (
                f'[rpc.clusters.blue]\nendpoints = ["{blue_url}"]\n'
                f'[rpc.clusters.green]\nendpoints = ["{green_url}"]\n'
                '[[rpc.routes]]\nmatch = "app."\ncluster = "blue"\n'
                '[[rpc.routes.rules]]\nkind = "color"\n'
                f'active = "{active}"\nclusters = {{ blue = "blue", green = "green" }}\n'
            )

        config_file = tmp_path / "channel.toml"
        config_file.write_text(config_text("blue"))
        from channel.config import load_config

        async with gateway(tmp_path, rpc=load_config(config_file).rpc) as gw:
            gw.node.config.source = str(config_file)
            device = await connect(gw, "d1")
            before = await call(device, "app.home")
            assert json.loads(before.body)["served_by"] == "blue"  # type: ignore[union-attr]
            blue.release.clear()  # a call in flight across the reload
            blue.called.clear()
            in_flight = device.conn.send_request("app.slow", b"{}")
            await device.flush()
            await asyncio.wait_for(blue.called.wait(), 5)
            config_file.write_text(config_text("green"))
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"http://127.0.0.1:{gw.admin_port}/admin/reload",
                    headers={"Authorization": f"Bearer {gw.api_key}"},
                ) as reply,
            ):
                assert reply.status == 200
            blue.release.set()
            finished = await device.until(ResponseReceived)
            done = [e for e in finished if isinstance(e, ResponseReceived)]
            assert done[0].stream_id == in_flight and done[0].status == 0
            after = await call(device, "app.home")
            assert json.loads(after.body)["served_by"] == "green"  # type: ignore[union-attr]
            assert gw.node.connection_count == 1  # the same connection throughout
            await device.close()


async def test_drain_finishes_calls_in_flight_then_closes(tmp_path: Path) -> None:
    slow = Upstream("slow")
    slow.release.clear()
    async with http_upstream({"/rpc/{op}": slow.handle}) as url:
        rpc = {
            "clusters": {"slow": {"endpoints": [url], "timeout_ms": 10_000}},
            "routes": [route("slow.", "slow")],
        }
        async with gateway(tmp_path, rpc=rpc, server={"reconnect_after_ms": 1000}) as gw:
            device = await connect(gw, "d1")
            stream_id = device.conn.send_request("slow.op", b"{}")
            await device.flush()
            await asyncio.wait_for(slow.called.wait(), 5)
            drain = asyncio.create_task(gw.node.drain(timeout_s=10))
            (goaway,) = await device.events()
            assert isinstance(goaway, GoAwayReceived)
            assert goaway.code == ErrorCode.SHUTTING_DOWN
            assert 1000 <= goaway.reconnect_after_ms <= 1500
            slow.release.set()
            (response,) = await device.events()
            assert isinstance(response, ResponseReceived) and response.stream_id == stream_id
            assert response.status == 0
            assert await device.closed_by_peer()
            await drain
            assert gw.node.connection_count == 0


async def test_device_cancels_a_call_on_the_fast_path(tmp_path: Path) -> None:
    """The second call of a device finds a kept-alive upstream connection and goes out
    without a task of its own (the router's fast path). A CANCEL from the device closes
    that upstream connection, the device gets no answer, and the next call works."""
    arrived = asyncio.Event()

    async def script(server: RawServer, conn: RawConn) -> None:
        while (request := await server.counted_request(conn)) is not None:
            if server.requests == 2:
                arrived.set()
                await conn.reader.read()  # never answers; returns when the gateway closes
                return
            await conn.answer(request.partition(b"\r\n\r\n")[2])

    async with raw_server(script) as upstream:
        # Python's fast path: the native engine's own is off (tests/test_rpc_native.py).
        rpc = {
            "clusters": {"svc": {"endpoints": [upstream.url]}},
            "routes": [route("svc.", "svc")],
            "native": False,
        }
        async with gateway(tmp_path, rpc=rpc) as gw:
            device = await connect(gw, "d1")
            first = await call(device, "svc.op", b'{"n":1}')
            assert isinstance(first, ResponseReceived) and first.body == b'{"n":1}'
            stream_id = device.conn.send_request("svc.op", b"{}")
            await device.flush()
            await asyncio.wait_for(arrived.wait(), 5)
            (session,) = gw.node.by_device.values()
            served = session._tasks  # type: ignore[attr-defined]
            assert served is not None and not isinstance(served[stream_id], asyncio.Task)
            device.conn.send_cancel(stream_id)
            await device.flush()
            await upstream.wait_for(lambda: upstream.closed_connections == 1)
            third = await call(device, "svc.op", b'{"n":3}')
            assert isinstance(third, ResponseReceived) and third.stream_id != stream_id
            assert third.body == b'{"n":3}'
            assert upstream.connections == 2
            assert session.in_flight == 0


@pytest.mark.engine_only("native")
async def test_a_pinned_gateway_steps_aside_for_the_engine_after_an_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Confined to one CPU, the asyncio thread yields it once it handed an answer to the
    engine thread (which could not run before this thread stops); on several CPUs it
    does not. The answer is the same either way."""
    yields: list[int] = []
    real_yield = os.sched_yield
    monkeypatch.setattr(os, "sched_yield", lambda: yields.append(1) or real_yield())
    cpus = os.sched_getaffinity(0)
    async with http_upstream({"/rpc/{op}": Upstream("svc").handle}) as url:
        # Python's answers (the native engine's own path answers without Python).
        rpc = {
            "clusters": {"svc": {"endpoints": [url]}},
            "routes": [route("svc.", "svc")],
            "native": False,
        }
        async with gateway(tmp_path, rpc=rpc) as gw:
            engine = gw.node.engine
            device = await connect(gw, "d1")
            try:
                os.sched_setaffinity(0, {min(cpus)})
                engine._affinity_read_at = -math.inf  # type: ignore[union-attr]
                pinned = await call(device, "svc.op", b'{"n":1}')
                assert isinstance(pinned, ResponseReceived) and pinned.status == 0
                assert yields
            finally:
                os.sched_setaffinity(0, cpus)
            if len(cpus) > 1:
                yields.clear()
                engine._affinity_read_at = -math.inf  # type: ignore[union-attr]
                free = await call(device, "svc.op", b'{"n":2}')
                assert isinstance(free, ResponseReceived) and free.status == 0
                assert not yields
            await device.close()


@pytest.mark.engine_only("native")
async def test_a_flush_with_nothing_queued_does_not_hold_back_the_next(tmp_path: Path) -> None:
    """A session flush that found nothing to submit (a push replay with nothing to
    replay) left the turn marked as flushed: the next answer waited for the turn's end."""
    async with gateway(tmp_path) as gw:
        engine = gw.node.engine
        assert isinstance(engine, NativeEngine)
        engine.flush_early()  # nothing queued
        before = engine.stats()["commands"]
        engine.command(("ABORT", (1 << 40) | 7))  # no such connection: counted, ignored
        engine.flush_early()
        assert engine.stats()["commands"] == before + 1


async def test_rate_limit_answers_with_retry_after(tmp_path: Path) -> None:
    limits = {"requests_per_second": 1.0, "request_burst": 2}
    async with gateway(tmp_path, limits=limits) as gw:
        device = await connect(gw, "d1")
        results = [await call(device, "channel.echo", b"x") for _ in range(3)]
        assert [isinstance(r, ResponseReceived) for r in results] == [True, True, False]
        limited = results[2]
        assert isinstance(limited, StreamErrorReceived)
        assert limited.code == ErrorCode.RATE_LIMITED and 0 < limited.retry_after_ms <= 1000
        await device.close()


async def test_device_that_stops_reading_is_dropped(tmp_path: Path) -> None:
    limits = {
        "send_buffer_high_water_bytes": 65536,
        "slow_consumer_grace_s": 0.5,
        "requests_per_second": 1000.0,
        "request_burst": 1000,
    }
    async with gateway(tmp_path, limits=limits) as gw:
        device = await connect(gw, "reader-on-strike", receive_buffer_bytes=32768)
        session = gw.node.by_device["reader-on-strike"]
        gone = gw.node.wait_closed(session)
        body = os.urandom(200_000)  # incompressible: every answer is as big as the question
        for _ in range(40):
            device.conn.send_request("channel.echo", body)
            # Never read: the gateway's send buffer fills, it stops reading our requests,
            # our own writes then stall, and after the grace period it drops us.
            device.writer.write(device.conn.data_to_send())
        await asyncio.wait_for(gone, 10)
        assert not session.connected and "reader-on-strike" not in gw.node.by_device
        text = await admin_text(gw, "/metrics")
        assert "channel_slow_consumers_total 1.0" in text
        device.writer.transport.abort()


@pytest.mark.parametrize("with_cert", [True, False])
async def test_mutual_tls_identifies_iot_devices(tmp_path: Path, with_cert: bool) -> None:
    from channel.security.devcert import ensure_dev_certificates, issue_client_certificate
    from channel.security.tls import client_ssl_context

    dev = ensure_dev_certificates(tmp_path / "tls")
    tls = {"client_ca": str(dev.ca_cert), "require_client_cert": False}
    async with gateway(tmp_path, tls=tls) as gw:
        if with_cert:
            cert, key = issue_client_certificate(
                dev.ca_cert, dev.ca_key, common_name="till-42", directory=tmp_path / "client"
            )
            context = client_ssl_context(gw.ca_cert, cert=cert, key=key)
        else:
            context = client_ssl_context(gw.ca_cert)
        device = await RawDevice.connect(gw.port, gw.ca_cert, context=context)
        await device.send_hello(Hello(device_id="till-42", app_id="pos"))
        events = await device.events()
        if with_cert:
            assert isinstance(events[0], HelloAccepted)
            assert gw.node.by_device["till-42"].auth.device.scopes == ("mtls",)  # type: ignore[union-attr]
            await device.close()
        else:
            assert events[0].code == ErrorCode.AUTH_REQUIRED  # type: ignore[union-attr]


async def test_backend_call_to_a_silent_device_times_out_and_cancels(tmp_path: Path) -> None:
    from channel.wire import RequestReceived, StreamCancelled

    async with gateway(tmp_path) as gw:
        device = await connect(gw, "mute")
        call_task = asyncio.create_task(
            gw.node.call_device("mute", "device.ring", b"{}", timeout_s=0.3)
        )
        (request,) = await device.events()
        assert isinstance(request, RequestReceived) and request.stream_id % 2 == 0
        answer = await call_task
        assert answer.status == ErrorCode.TIMEOUT
        # The device is told to stop; answering afterwards is harmless.
        events = await device.events()
        assert [type(e) for e in events] == [StreamCancelled]
        await device.close()
