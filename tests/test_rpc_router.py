"""RpcRouter against real HTTP upstreams on 127.0.0.1 port 0.

Identity headers, status mapping, deadlines, retries, breaker, mirroring,
reload with calls in flight, response size cap and config validation.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.rpc import RoutingConfig
from channel.rpc.http1 import VettedHeaders, encode_request
from channel.rpc.model import DeviceContext, RpcRequest
from channel.rpc.upstream import (
    HOP_BY_HOP,
    _no_control_chars,
    identity_headers,
    upstream_headers,
)
from channel.wire.errors import ErrorCode
from tests import rpc_upstream
from tests.rpc_upstream import (
    FakeClock,
    Upstream,
    cluster,
    rpc_request,
    running_router,
    upstream_farm,
)


@pytest.fixture(autouse=True, params=["task", "fast"])
def call_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test once on the ordinary path (a task per call, as ``handle()``) and once
    as the gateway calls the router: its fast path whenever it takes the call."""
    monkeypatch.setattr(rpc_upstream, "FAST_FIRST", request.param == "fast")
    return str(request.param)


def one_route(url: str | list[str], **route: Any) -> dict[str, Any]:
    urls = [url] if isinstance(url, str) else url
    cluster_extra = route.pop("cluster_extra", {})
    rpc_extra = route.pop("rpc_extra", {})
    return {
        "clusters": {"svc": cluster(*urls, **cluster_extra)},
        "routes": [{"match": "svc.", "cluster": "svc", **route}],
        **rpc_extra,
    }


# -- headers and bodies ----------------------------------------------------------


async def test_identity_headers_arrive_and_spoofs_are_stripped() -> None:
    async with upstream_farm() as farm:
        up = await farm.start(
            "svc", body=b'{"balance":1}', headers={"X-Trace": "t1", "Content-Type": "app/json"}
        )
        async with running_router(one_route(up.url)) as router:
            request = rpc_request(
                "svc.balance.get",
                body=b'{"q":1}',
                headers=(
                    ("Content-Type", "application/json"),
                    ("x-app-flag", "on"),
                    ("X-Channel-User-Id", "evil"),
                    ("x-channel-device-id", "someone-else"),
                    ("x-channel-anything", "x"),
                    ("connection", "close"),
                    ("transfer-encoding", "chunked"),
                    (":path", "/admin"),
                    ("x-injected", "a\r\nx-channel-user-id: evil"),
                ),
                scopes=("rpc", "push"),
            )
            response = await router.handle(request)
        assert response.status == 0
        assert response.body == b'{"balance":1}'
        headers = dict(response.headers)
        assert headers["x-trace"] == "t1"
        assert headers["content-type"] == "app/json"
        assert not {"content-length", "date", "server"} & headers.keys()

        (hit,) = up.hits
        assert hit.op == "svc.balance.get"
        assert hit.body == b'{"q":1}'
        h = hit.headers
        assert h.getall("x-channel-user-id") == ["user-1"]
        assert h.getall("x-channel-device-id") == ["dev-1"]
        assert h["x-channel-app-id"] == "wallet"
        assert h["x-channel-app-version"] == "8.12.3"
        assert h["x-channel-platform"] == "android"
        assert h["x-channel-zone"] == "hz"
        assert h["x-channel-scopes"] == "rpc push"
        assert h["x-channel-session"] == "sess-1"
        assert "x-channel-anything" not in h
        assert "x-injected" not in h
        assert h["x-app-flag"] == "on"
        assert h["content-type"] == "application/json"
        assert h.get("connection", "keep-alive").lower() == "keep-alive"


async def test_route_matching_exact_beats_longest_prefix() -> None:
    async with upstream_farm() as farm:
        ups = {n: await farm.start(n) for n in ("a", "ab", "exact", "default")}
        rpc = {
            "clusters": {n: cluster(u.url) for n, u in ups.items()},
            "routes": [
                {"match": "a.", "cluster": "a"},
                {"match": "a.b.", "cluster": "ab"},
                {"match": "a.b.c", "cluster": "exact"},
                {"match": "*", "cluster": "default"},
            ],
        }
        async with running_router(rpc) as router:

            async def body(op: str) -> bytes:
                return (await router.handle(rpc_request(op))).body

            assert await body("a.b.c") == b"exact"
            assert await body("a.b.c.d") == b"ab"
            assert await body("a.b.x") == b"ab"
            assert await body("a.x") == b"a"
            assert await body("ab.x") == b"default"
            assert await body("zzz") == b"default"


async def test_unknown_op_and_malformed_op() -> None:
    async with upstream_farm() as farm:
        up = await farm.start()
        async with running_router(one_route(up.url)) as router:
            missing = await router.handle(rpc_request("payments.refund"))
            assert missing.status == ErrorCode.NOT_FOUND
            assert "payments.refund" in missing.message
            for op in ("svc./../admin", "svc.a/b", "", "svc.a?x=1", "svc.a b"):
                bad = await router.handle(rpc_request(op))
                assert bad.status == ErrorCode.BAD_REQUEST, op
        assert up.hits == []


# -- status mapping --------------------------------------------------------------


@pytest.mark.parametrize(
    ("http_status", "code"),
    [
        (400, ErrorCode.BAD_REQUEST),
        (401, ErrorCode.FORBIDDEN),
        (403, ErrorCode.FORBIDDEN),
        (404, ErrorCode.NOT_FOUND),
        (409, ErrorCode.BAD_REQUEST),
        (500, ErrorCode.UPSTREAM_ERROR),
        (502, ErrorCode.UPSTREAM_ERROR),
        (503, ErrorCode.UNAVAILABLE),
        (302, ErrorCode.UPSTREAM_ERROR),
    ],
)
async def test_status_mapping(http_status: int, code: ErrorCode) -> None:
    async with upstream_farm() as farm:
        up = await farm.start(status=http_status, body=b"detail")
        async with running_router(one_route(up.url)) as router:
            response = await router.handle(rpc_request("svc.x"))
        assert response.status == code
        assert str(http_status) in response.message
        # 4xx details are for the app; 5xx bodies may hold internals and are dropped.
        assert response.body == (b"detail" if 400 <= http_status < 500 else b"")


async def test_429_with_retry_after() -> None:
    async with upstream_farm() as farm:
        up = await farm.start(status=429, headers={"Retry-After": "3"})
        async with running_router(one_route(up.url, idempotent=True, retries=3)) as router:
            response = await router.handle(rpc_request("svc.x"))
        assert response.status == ErrorCode.RATE_LIMITED
        assert response.retry_after_ms == 3000
        assert len(up.hits) == 1  # 429 is an answer, not a failure: never retried


async def test_timeout() -> None:
    async with upstream_farm() as farm:
        up = await farm.start(gate=asyncio.Event())
        async with running_router(one_route(up.url, timeout_ms=100)) as router:
            loop = asyncio.get_running_loop()
            started = loop.time()
            response = await router.handle(rpc_request("svc.slow"))
            elapsed = loop.time() - started
        assert response.status == ErrorCode.TIMEOUT
        assert 0.09 <= elapsed < 1.0


async def test_connection_refused_is_unavailable() -> None:
    async with upstream_farm() as farm, running_router(one_route(farm.dead_url())) as router:
        response = await router.handle(rpc_request("svc.x"))
        assert response.status == ErrorCode.UNAVAILABLE
        # The endpoint now rests; the next call fails fast with a hint.
        again = await router.handle(rpc_request("svc.x"))
        assert again.status == ErrorCode.UNAVAILABLE
        assert 0 < again.retry_after_ms <= 3000
        assert router.metrics.endpoints_marked_down["svc"] == 1


# -- retries ---------------------------------------------------------------------


async def test_retries_only_for_idempotent_ops() -> None:
    async with upstream_farm() as farm:
        up = await farm.start(status=500)
        rpc = one_route(up.url, idempotent_ops=["svc.get"], cluster_extra={"retries": 2})
        async with running_router(rpc) as router:
            assert (await router.handle(rpc_request("svc.get"))).status == ErrorCode.UPSTREAM_ERROR
            assert len(up.hits) == 3
            assert (await router.handle(rpc_request("svc.pay"))).status == ErrorCode.UPSTREAM_ERROR
            assert len(up.hits) == 4
            assert router.metrics.retries["svc"] == 2


async def test_retry_goes_to_another_endpoint() -> None:
    async with upstream_farm() as farm:
        bad = await farm.start("bad", status=502)
        good = await farm.start("good")
        rpc = one_route([bad.url, good.url], idempotent=True, retries=1)
        async with running_router(rpc) as router:
            response = await router.handle(rpc_request("svc.get"))
        assert (response.status, response.body) == (0, b"good")
        assert (len(bad.hits), len(good.hits)) == (1, 1)


async def test_retry_after_attempt_timeout_within_deadline() -> None:
    async with upstream_farm() as farm:
        slow = await farm.start("slow", gate=asyncio.Event())
        fast = await farm.start("fast")
        rpc = one_route(
            [slow.url, fast.url],
            idempotent=True,
            timeout_ms=3000,
            cluster_extra={"retries": 1, "attempt_timeout_ms": 100},
        )
        async with running_router(rpc) as router:
            response = await router.handle(rpc_request("svc.get"))
        assert (response.status, response.body) == (0, b"fast")
        assert router.metrics.attempts[("svc", "timeout")] == 1


async def test_refused_connection_moves_on_even_for_non_idempotent_ops() -> None:
    async with upstream_farm() as farm:
        good = await farm.start("good")
        async with running_router(one_route([farm.dead_url(), good.url])) as router:
            response = await router.handle(rpc_request("svc.pay"))
        assert (response.status, response.body) == (0, b"good")
        assert len(good.hits) == 1


# -- breaker ---------------------------------------------------------------------


async def test_breaker_opens_fails_fast_and_half_open_probe_closes_it() -> None:
    clock = FakeClock()
    async with upstream_farm() as farm:
        up = await farm.start(status=500)
        rpc = one_route(
            up.url, cluster_extra={"breaker": {"failures": 3, "window_s": 10, "open_s": 20}}
        )
        async with running_router(rpc, clock=clock) as router:
            # Failing for three devices (min_devices): the upstream, not one caller.
            for i in range(3):
                assert (await router.handle(rpc_request("svc.x", device_id=f"d{i}"))).status == (
                    ErrorCode.UPSTREAM_ERROR
                )
            assert router.metrics.breaker_opens["svc"] == 1

            clock.advance(5)
            fast = await router.handle(rpc_request("svc.x", device_id="a-fourth-one"))
            assert fast.status == ErrorCode.UNAVAILABLE
            assert fast.retry_after_ms == 15_000
            assert len(up.hits) == 3  # never reached the upstream

            up.status = 200
            clock.advance(15)
            probe = await router.handle(rpc_request("svc.x"))
            assert probe.status == 0
            described = router.describe()["clusters"]["svc"]  # type: ignore[index]
            assert described["breaker"]["state"] == "closed"
            assert (await router.handle(rpc_request("svc.x"))).status == 0
            assert len(up.hits) == 5


async def test_half_open_admits_one_probe_at_a_time() -> None:
    clock = FakeClock()
    async with upstream_farm() as farm:
        up = await farm.start(status=500)
        breaker = {"failures": 1, "window_s": 10, "open_s": 1, "min_devices": 1}
        rpc = one_route(up.url, cluster_extra={"breaker": breaker})
        async with running_router(rpc, clock=clock) as router:
            await router.handle(rpc_request("svc.x"))
            clock.advance(1)
            up.status, up.gate = 200, asyncio.Event()
            probe = asyncio.create_task(router.handle(rpc_request("svc.x")))
            await up.wait_hits(2)
            other = await router.handle(rpc_request("svc.x"))
            assert other.status == ErrorCode.UNAVAILABLE
            up.gate.set()
            assert (await probe).status == 0
            assert (await router.handle(rpc_request("svc.x"))).status == 0


async def _slow_or_fast(never: asyncio.Event) -> Any:
    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.match_info["op"].startswith("svc.slow"):
            await never.wait()
        return web.Response(body=b"fast")

    return respond


async def test_one_devices_timeouts_do_not_open_the_breaker_for_others() -> None:
    never = asyncio.Event()
    async with upstream_farm() as farm:
        up = await farm.start(responder=await _slow_or_fast(never))
        rpc = one_route(up.url, cluster_extra={"timeout_ms": 100})
        async with running_router(rpc, clock=FakeClock()) as router:
            for _ in range(5):
                slow = await router.handle(rpc_request("svc.slow.report", device_id="mallory"))
                assert slow.status == ErrorCode.TIMEOUT
            # Its sixth call: turned away by its own breaker, before the upstream.
            sixth = await router.handle(rpc_request("svc.slow.report", device_id="mallory"))
            assert sixth.status == ErrorCode.UNAVAILABLE and "this device" in sixth.message
            assert sixth.retry_after_ms == 15_000 and len(up.hits) == 5
            # Everyone else's calls go on: the cluster's breaker stayed closed.
            other = await router.handle(rpc_request("svc.balance", device_id="alice"))
            assert other.status == 0 and other.body == b"fast"
            described: Any = router.describe()["clusters"]
            assert described["svc"]["breaker"]["state"] == "closed"
            assert router.metrics.breaker_opens["svc"] == 0
            assert router.metrics.device_breaker_opens["svc"] == 1
        never.set()


async def test_an_upstream_failing_for_many_devices_still_opens_its_breaker() -> None:
    never = asyncio.Event()
    async with upstream_farm() as farm:
        up = await farm.start(responder=await _slow_or_fast(never))
        rpc = one_route(up.url, cluster_extra={"timeout_ms": 100})
        async with running_router(rpc, clock=FakeClock()) as router:
            for i in range(5):
                slow = await router.handle(rpc_request("svc.slow.x", device_id=f"d{i}"))
                assert slow.status == ErrorCode.TIMEOUT
            assert router.metrics.breaker_opens["svc"] == 1
            refused = await router.handle(rpc_request("svc.balance", device_id="alice"))
            assert refused.status == ErrorCode.UNAVAILABLE and "circuit open" in refused.message
            assert len(up.hits) == 5
        never.set()


async def test_one_device_cannot_hold_every_call_slot() -> None:
    gate = asyncio.Event()
    async with upstream_farm() as farm:
        up = await farm.start(responder=await _slow_or_fast(gate))
        breaker = {"device_max_in_flight": 2}
        rpc = one_route(up.url, cluster_extra={"breaker": breaker, "timeout_ms": 10_000})
        async with running_router(rpc) as router:
            held = [
                asyncio.create_task(router.handle(rpc_request("svc.slow", device_id="mallory")))
                for _ in range(2)
            ]
            await up.wait_hits(2)
            third = await router.handle(rpc_request("svc.slow", device_id="mallory"))
            assert third.status == ErrorCode.RATE_LIMITED and third.retry_after_ms > 0
            assert len(up.hits) == 2
            assert (await router.handle(rpc_request("svc.fast", device_id="alice"))).status == 0
            gate.set()
            assert [(await task).status for task in held] == [0, 0]
            # Its slots are back.
            assert (await router.handle(rpc_request("svc.slow", device_id="mallory"))).status == 0


# -- mirroring -------------------------------------------------------------------


async def test_mirror_sends_a_share_to_the_shadow() -> None:
    async with upstream_farm() as farm:
        main = await farm.start("main")
        shadow = await farm.start("shadow", status=500)
        rpc = {
            "clusters": {
                "main": cluster(main.url),
                # No breaker, so every failing mirror call still goes out.
                "shadow": cluster(shadow.url, breaker={"failures": 0}),
            },
            "routes": [
                {
                    "match": "svc.",
                    "cluster": "main",
                    "mirror": {"cluster": "shadow", "percent": 25},
                }
            ],
        }
        async with running_router(rpc) as router:
            for i in range(200):
                response = await router.handle(rpc_request("svc.x", body=str(i).encode()))
                assert response.body == b"main"  # the shadow's 500 never reaches the device
            await router.drain_mirrors()
            metrics = router.metrics
            assert metrics.mirror_sent["shadow"] == len(shadow.hits)
            assert metrics.mirror_failed["shadow"] == len(shadow.hits)
        assert len(main.hits) == 200
        assert 25 <= len(shadow.hits) <= 75  # 50 expected; > 4 standard deviations of slack
        assert all(h.headers["x-channel-mirror"] == "1" for h in shadow.hits)
        assert all(h.headers["x-channel-device-id"] == "dev-1" for h in shadow.hits)
        main_bodies = {h.body for h in main.hits}
        assert {h.body for h in shadow.hits} <= main_bodies


async def test_mirror_concurrency_is_bounded() -> None:
    async with upstream_farm() as farm:
        main = await farm.start("main")
        shadow = await farm.start("shadow", gate=asyncio.Event())
        rpc = {
            "mirror_max_in_flight": 2,
            "clusters": {"main": cluster(main.url), "shadow": cluster(shadow.url)},
            "routes": [
                {"match": "svc.", "cluster": "main", "mirror": {"cluster": "shadow"}},
            ],
        }
        async with running_router(rpc) as router:
            for _ in range(10):
                assert (await router.handle(rpc_request("svc.x"))).status == 0
            assert router.metrics.mirror_dropped["shadow"] == 8
            await shadow.wait_hits(2)
            assert shadow.gate is not None
            shadow.gate.set()
            await router.drain_mirrors()
            assert router.metrics.mirror_sent["shadow"] == 2


# -- reload ----------------------------------------------------------------------


async def test_reload_while_calls_are_in_flight() -> None:
    async with upstream_farm() as farm:
        old = await farm.start("old", gate=asyncio.Event())
        new = await farm.start("new")
        async with running_router(one_route(old.url, timeout_ms=5000)) as router:
            in_flight = asyncio.create_task(router.handle(rpc_request("svc.slow")))
            await old.wait_hits(1)

            router.reload(RoutingConfig.from_dict(one_route(new.url)))
            assert router.describe()["retiring_pools"] == ["svc"]
            assert (await router.handle(rpc_request("svc.fast"))).body == b"new"

            assert old.gate is not None
            old.gate.set()
            finished = await in_flight
            assert (finished.status, finished.body) == (0, b"old")
            assert old.ops() == ["svc.slow"]
            assert new.ops() == ["svc.fast"]
            (retired,) = router._retired
            await retired.close()  # the close task started when the last call ended
            assert router.describe()["retiring_pools"] == []


async def test_reload_keeps_unchanged_pools_and_breaker_state() -> None:
    clock = FakeClock()
    async with upstream_farm() as farm:
        up = await farm.start(status=500)
        config = one_route(up.url, cluster_extra={"breaker": {"failures": 1, "open_s": 60}})
        async with running_router(config, clock=clock) as router:
            await router.handle(rpc_request("svc.x"))
            config["routes"][0]["timeout_ms"] = 1234
            router.reload(RoutingConfig.from_dict(config))
            assert (await router.handle(rpc_request("svc.x"))).status == ErrorCode.UNAVAILABLE
            assert len(up.hits) == 1


# -- limits ----------------------------------------------------------------------


async def _streamed(request: web.Request, body: bytes) -> web.StreamResponse:
    response = web.StreamResponse()  # chunked: no Content-Length to check up front
    await response.prepare(request)
    for _ in range(40):
        await response.write(b"x" * 1024)
    await response.write_eof()
    return response


@pytest.mark.parametrize("streamed", [False, True])
async def test_oversized_response_is_upstream_error(streamed: bool) -> None:
    async with upstream_farm() as farm:
        up = await farm.start(body=b"y" * 40_000)
        if streamed:
            up.responder = _streamed
        ok = await farm.start(body=b"z" * 32_000)
        rpc = {
            "max_response_bytes": 32_000,
            "clusters": {"big": cluster(up.url), "ok": cluster(ok.url)},
            "routes": [{"match": "big", "cluster": "big"}, {"match": "ok", "cluster": "ok"}],
        }
        async with running_router(rpc) as router:
            response = await router.handle(rpc_request("big"))
            assert response.status == ErrorCode.UPSTREAM_ERROR
            assert "32000 bytes" in response.message
            assert response.body == b""
            assert len((await router.handle(rpc_request("ok"))).body) == 32_000


# -- introspection, metrics, lifecycle -------------------------------------------


async def test_metrics_describe_and_close() -> None:
    async with upstream_farm() as farm:
        up: Upstream = await farm.start()
        router_cm = running_router(one_route(up.url))
        async with router_cm as router:
            await router.handle(rpc_request("svc.x"))
            await router.handle(rpc_request("nope"))
            metrics = router.metrics
            assert metrics.calls[("svc.", "svc", "OK")] == 1
            answered = await router.handle(rpc_request("svc.x"))
            assert (answered.route, answered.cluster) == ("svc.", "svc")
            assert metrics.calls[("", "", "NOT_FOUND")] == 1
            assert metrics.latency_ms["svc."].count == 2
            assert metrics.attempts[("svc", "http_2xx")] == 2
            described = router.describe()
            json.dumps(described)
            assert described["routes"][0]["match"] == "svc."  # type: ignore[index]
        closed = await router.handle(rpc_request("svc.x"))
        assert closed.status == ErrorCode.UNAVAILABLE
        assert len(up.hits) == 2


async def test_empty_rpc_section_answers_not_found() -> None:
    async with running_router({}) as router:
        response = await router.handle(rpc_request("svc.x"))
        assert response.status == ErrorCode.NOT_FOUND


# -- config validation -----------------------------------------------------------

GOOD: dict[str, Any] = {
    "clusters": {"a": {"endpoints": ["http://127.0.0.1:1"]}, "b": {"endpoints": ["http://h:2"]}},
    "routes": [{"match": "a.", "cluster": "a"}, {"match": "b.", "cluster": "b"}],
}


def bad(path: list[Any], value: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(GOOD))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


R = "rpc.routes[0]."


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ["routes", 1, "cluster"],
            "payments-b",
            "rpc.routes[1].cluster: unknown cluster 'payments-b'",
        ),
        (["clusters", "a", "timout_ms"], 5, "rpc.clusters.a.timout_ms: unknown key"),
        (["clusters", "a", "timeout_ms"], "fast", "rpc.clusters.a.timeout_ms: expected int"),
        (["clusters", "a", "timeout_ms"], 0, "rpc.clusters.a.timeout_ms: must be >= 1"),
        (["clusters", "a", "endpoints"], ["ftp://x"], "rpc.clusters.a.endpoints[0]: expected http"),
        (["clusters", "a", "endpoints"], [], "rpc.clusters.a.endpoints: list at least one"),
        (
            ["clusters", "a", "breaker"],
            {"failures": -1},
            "rpc.clusters.a.breaker.failures: must be >= 0",
        ),
        (["clusters"], [], "rpc.clusters: expected dict, got array"),
        (["routes", 0, "match"], "a/b", R + "match: expected an op"),
        (["routes", 1, "match"], "a.", "rpc.routes[1].match: 'a.' already used by rpc.routes[0]"),
        (
            ["routes", 0, "idempotent_ops"],
            ["b.get"],
            R + "idempotent_ops[0]: 'b.get' is not matched",
        ),
        (["routes", 0, "mirror"], {"cluster": "a"}, R + "mirror.cluster: must differ"),
        (
            ["routes", 0, "mirror"],
            {"cluster": "b", "percent": 150},
            R + "mirror.percent: must be between 0 and 100",
        ),
        (["routes", 0, "rules"], [{"kind": "grey"}], R + "rules[0].kind: unknown rule kind 'grey'"),
        (
            ["routes", 0, "rules"],
            [{"kind": "gray", "percent": 5}],
            R + "rules[0].cluster: required",
        ),
        (
            ["routes", 0, "rules"],
            [{"kind": "gray", "percent": 5, "cluster": "zz"}],
            R + "rules[0].cluster: unknown cluster 'zz'",
        ),
        (
            ["routes", 0, "rules"],
            [{"kind": "app_version", "min": "x", "cluster": "b"}],
            R + "rules[0].min: not a dotted version",
        ),
        (
            ["routes", 0, "rules"],
            [{"kind": "app_version", "min": "9", "max": "8", "cluster": "b"}],
            R + "rules[0].max: must be greater",
        ),
        (
            ["routes", 0, "rules"],
            [{"kind": "stress", "header": "x-channel-stress", "cluster": "b"}],
            R + "rules[0].header: x-channel-* headers are stripped",
        ),
        (
            ["routes", 0, "rules"],
            [{"kind": "zone", "clusters": {"hz": "a"}, "failover": ["q"]}],
            R + "rules[0].failover[0]: unknown cluster 'q'",
        ),
        (
            ["routes", 0, "rules"],
            [{"kind": "color", "active": "red", "clusters": {"blue": "a"}}],
            R + "rules[0].active: 'red' is not one of blue",
        ),
        (
            ["routes", 0, "rules"],
            [{"kind": "gray", "percent": 5, "cluster": "b", "pct": 1}],
            R + "rules[0].pct: unknown key",
        ),
    ],
)
def test_config_errors_name_the_field(path: list[Any], value: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        RoutingConfig.from_dict(bad(path, value))


def test_zone_rule_checks_cluster_zone() -> None:
    data = bad(["clusters", "a", "zone"], "sh")
    data["routes"][0]["rules"] = [{"kind": "zone", "clusters": {"hz": "a"}}]
    with pytest.raises(ValueError, match=r"rules\[0\]\.clusters\.hz: cluster 'a' serves zone 'sh'"):
        RoutingConfig.from_dict(data)


@pytest.mark.parametrize(
    "headers",
    [
        (("trace-id", "1"), ("content-type", "application/json")),
        (("Trace-ID", "1"), ("ts", "2")),
        (("x-channel-user-id", "spoof"), ("a", "1")),
        (("a", "1"), ("x-channel-anything", "spoof")),
        (("connection", "close"), ("keep-alive", "5"), ("host", "h"), ("hostname", "kept")),
        (("a", "bad\nvalue"), ("b", "ok")),
        (("a b", "x"), ("c", "ok")),
        (("a\nb", "x"), ("c", "ok")),
        (("x", "tab\tis fine"), ("y", "del\x7f")),
        (("foo-x-channel-bar", "kept"),),
    ],
)
def test_upstream_headers_keep_exactly_the_allowed_ones(
    headers: tuple[tuple[str, str], ...],
) -> None:
    """Whether all headers pass in bulk or one by one, the same ones are forwarded."""
    device = DeviceContext("d1", "u1", "app", "1.0", "ios", "z1", ("s",), "sess")
    expected = [
        (name.lower(), value)
        for name, value in headers
        if not name.lower().startswith("x-channel-")
        and name.lower() not in HOP_BY_HOP
        and re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~\-]+", name.lower())
        and not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", value)
    ]
    request = RpcRequest("svc.op", headers, b"", device)
    assert upstream_headers(request) == [*expected, *identity_headers(device)]


_FIELD_TEXT = st.text(
    st.characters(codec="latin-1") | st.sampled_from(["\r", "\n", "\x00", ":", " "]), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            _FIELD_TEXT | st.sampled_from(["user-agent", "Host", "content-length", "x-channel-x"]),
            _FIELD_TEXT,
        ),
        max_size=6,
    ).map(tuple)
)
def test_vetted_upstream_headers_encode_as_checked_ones(
    headers: tuple[tuple[str, str], ...],
) -> None:
    """``upstream_headers`` keeps only what ``encode_request`` would accept: encoding
    its ``VettedHeaders`` unchecked gives the bytes the checked path gives."""
    device = DeviceContext("d1", "u1", "app", "1.0", "ios", "z1", ("s",), "sess")
    vetted = upstream_headers(RpcRequest("svc.op", headers, b"{}", device))
    assert type(vetted) is VettedHeaders
    checked = encode_request("POST", "/rpc/op", host="up", headers=list(vetted), body=b"{}")
    assert encode_request("POST", "/rpc/op", host="up", headers=vetted, body=b"{}") == checked


def test_a_device_user_agent_replaces_the_gateway_one_in_vetted_headers() -> None:
    device = DeviceContext("d1", "u1", "app", "1.0", "ios", "z1", ("s",), "sess")
    for headers in ((("user-agent", "app/1"),), (("a", "user-agent: no"), ("user-agent", "app/1"))):
        vetted = upstream_headers(RpcRequest("svc.op", headers, b"", device))
        data = encode_request("POST", "/rpc/svc.op", host="h", headers=vetted, body=b"")
        assert data.count(b"user-agent: ") == 1 + (len(headers) == 2)
        assert b"\r\nuser-agent: app/1\r\n" in data
    plain = upstream_headers(RpcRequest("svc.op", (("a", "user-agent: no"),), b"", device))
    data = encode_request("POST", "/rpc/svc.op", host="h", headers=plain, body=b"")
    assert b"\r\nuser-agent: channel-gateway\r\n" in data


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40) | st.text(st.characters(max_codepoint=0x7F), max_size=40))
def test_the_control_character_shortcut_agrees_with_the_regex(text: str) -> None:
    assert _no_control_chars(text) == (re.search(r"[\x00-\x08\x0a-\x1f\x7f]", text) is None)
