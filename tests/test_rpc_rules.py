"""Traffic rules: gray, app version, platform, header, zone fail-over, stress, colour.

Pure rule evaluation is tested on parsed configs; the zone, stress and colour
behaviours go through a real ``RpcRouter`` to real HTTP upstreams.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

import channel.rpc.config as config_module
from channel.rpc import RoutingConfig, gray_bucket, parse_version
from channel.rpc.rules import select
from tests.rpc_upstream import (
    FakeClock,
    cluster,
    rpc_request,
    running_router,
    upstream_farm,
)

DUMMY = "http://127.0.0.1:1"


def parsed(rules: list[dict[str, Any]], *names: str) -> RoutingConfig:
    clusters = {name: cluster(DUMMY) for name in ("main", *names)}
    return RoutingConfig.from_dict(
        {"clusters": clusters, "routes": [{"match": "account.", "cluster": "main", "rules": rules}]}
    )


def picked(config: RoutingConfig, op: str = "account.balance.get", **kw: Any) -> str:
    route = config.routes[0]
    return select(route.rules, route.cluster, rpc_request(op, **kw)).clusters[0]


# -- gray ------------------------------------------------------------------------


def test_gray_bucket_is_pinned_across_processes() -> None:
    # Fixed values: a per-process salted hash() would not reproduce these.
    assert gray_bucket("dev-1", "account.") == 7995
    assert gray_bucket("device-000042", "account.") == 676
    assert gray_bucket("dev-1", "other") == 5993


def test_gray_ten_percent_of_20k_devices() -> None:
    config = parsed([{"kind": "gray", "percent": 10, "cluster": "canary"}], "canary")
    ids = [f"device-{i:06d}" for i in range(20_000)]
    canary = {i for i in ids if picked(config, device_id=i) == "canary"}
    assert 1800 <= len(canary) <= 2200  # 10 % ± 1 %
    # Stable: same answer on a second pass and after a fresh parse.
    again = parsed([{"kind": "gray", "percent": 10, "cluster": "canary"}], "canary")
    assert canary == {i for i in ids if picked(again, device_id=i) == "canary"}
    # Growing the percentage only adds devices (a canary widens, nobody flips back).
    wider = parsed([{"kind": "gray", "percent": 20, "cluster": "canary"}], "canary")
    assert canary < {i for i in ids if picked(wider, device_id=i) == "canary"}
    # Another salt reshuffles who is in.
    salted = parsed([{"kind": "gray", "percent": 10, "cluster": "canary", "salt": "x"}], "canary")
    other = {i for i in ids if picked(salted, device_id=i) == "canary"}
    assert len(canary & other) < 400


def test_gray_by_user_keeps_a_users_devices_together() -> None:
    config = parsed(
        [{"kind": "gray", "percent": 50, "cluster": "canary", "key": "user_id"}], "canary"
    )
    for user in range(50):
        got = {picked(config, user_id=f"u{user}", device_id=f"d{n}") for n in range(5)}
        assert len(got) == 1


def test_gray_edges() -> None:
    none = parsed([{"kind": "gray", "percent": 0, "cluster": "canary"}], "canary")
    everyone = parsed([{"kind": "gray", "percent": 100, "cluster": "canary"}], "canary")
    for i in range(200):
        assert picked(none, device_id=str(i)) == "main"
        assert picked(everyone, device_id=str(i)) == "canary"


# -- app version, platform, header ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.12.0", (8, 12)),
        ("8.12", (8, 12)),
        ("8.12.10", (8, 12, 10)),
        ("10.0.1-beta.2", (10, 0, 1)),
        ("9", (9,)),
        ("0.0", (0,)),
        ("beta", None),
        ("", None),
    ],
)
def test_parse_version(text: str, expected: tuple[int, ...] | None) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize(
    ("version", "cluster_name"),
    [
        ("8.11.99", "main"),
        ("8.12", "v2"),  # min is inclusive, 8.12 == 8.12.0
        ("8.12.0", "v2"),
        ("8.9.0", "main"),  # numeric, not string, comparison
        ("8.100.0", "v2"),
        ("9.0.0", "main"),  # max is exclusive
        ("8.99.99-rc1", "v2"),
        ("garbage", "main"),
    ],
)
def test_app_version_range(version: str, cluster_name: str) -> None:
    rules = [{"kind": "app_version", "min": "8.12.0", "max": "9.0.0", "cluster": "v2"}]
    assert picked(parsed(rules, "v2"), app_version=version) == cluster_name


def test_app_version_open_ended_and_per_app() -> None:
    rules = [
        {"kind": "app_version", "max": "8.0", "cluster": "old", "app_id": "wallet"},
        {"kind": "app_version", "min": "10", "cluster": "new"},
    ]
    config = parsed(rules, "old", "new")
    assert picked(config, app_version="7.9") == "old"
    assert picked(config, app_version="7.9", app_id="pos") == "main"
    assert picked(config, app_version="10.0.0") == "new"
    assert picked(config, app_version="9.9") == "main"


def test_platform_and_header_rules_first_match_wins() -> None:
    rules = [
        {"kind": "header", "header": "X-Region", "values": ["eu"], "cluster": "eu"},
        {"kind": "platform", "platforms": ["iOS", "ipados"], "cluster": "ios"},
    ]
    config = parsed(rules, "eu", "ios")
    assert picked(config, platform="ios") == "ios"
    assert picked(config, platform="IPADOS") == "ios"
    assert picked(config, platform="android") == "main"
    assert picked(config, platform="ios", headers=(("x-region", "eu"),)) == "eu"
    assert picked(config, headers=(("X-REGION", "us"),)) == "main"


def test_zone_rule_candidates() -> None:
    rules = [
        {
            "kind": "zone",
            "clusters": {"hz": "hz", "sh": "sh"},
            "failover": ["sh", "hz", "backup"],
        }
    ]
    config = parsed(rules, "hz", "sh", "backup")
    route = config.routes[0]

    def candidates(zone: str) -> tuple[str, ...]:
        return select(route.rules, route.cluster, rpc_request("account.x", zone=zone)).clusters

    assert candidates("hz") == ("hz", "sh", "backup")
    assert candidates("sh") == ("sh", "hz", "backup")
    assert candidates("") == ("main",)
    assert candidates("gz") == ("main",)


# -- through the router ----------------------------------------------------------


async def test_zone_fails_over_when_zone_upstream_is_down() -> None:
    clock = FakeClock()
    async with upstream_farm() as farm:
        sh = await farm.start("sh")
        default = await farm.start("default")
        rpc = {
            "endpoint_down_s": 5,
            "clusters": {
                "hz": cluster(farm.dead_url(), zone="hz"),
                "sh": cluster(sh.url, zone="sh"),
                "default": cluster(default.url),
            },
            "routes": [
                {
                    "match": "account.",
                    "cluster": "default",
                    "rules": [
                        {"kind": "zone", "clusters": {"hz": "hz", "sh": "sh"}, "failover": ["sh"]}
                    ],
                }
            ],
        }
        async with running_router(rpc, clock=clock) as router:
            # Not idempotent: a refused connection sent nothing, so failing over is safe.
            first = await router.handle(rpc_request("account.transfer", zone="hz"))
            assert (first.status, first.body) == (0, b"sh")
            assert router.metrics.attempts[("hz", "connect_error")] == 1
            # The hz endpoint now rests: hz is skipped without a connection attempt.
            second = await router.handle(rpc_request("account.transfer", zone="hz"))
            assert second.body == b"sh"
            assert router.metrics.attempts[("hz", "connect_error")] == 1
            assert router.metrics.failovers[("hz", "sh")] == 2
            assert (await router.handle(rpc_request("account.x", zone="sh"))).body == b"sh"
            assert (await router.handle(rpc_request("account.x", zone="gz"))).body == b"default"
            # After the rest hz is tried again (and refuses again).
            clock.advance(5)
            assert (await router.handle(rpc_request("account.x", zone="hz"))).body == b"sh"
            assert router.metrics.attempts[("hz", "connect_error")] == 2
        assert len(sh.hits) == 4


async def test_zone_fails_over_while_zone_breaker_is_open() -> None:
    clock = FakeClock()
    async with upstream_farm() as farm:
        hz = await farm.start("hz", status=500)
        sh = await farm.start("sh")
        rpc = {
            "clusters": {
                "hz": cluster(
                    hz.url,
                    breaker={"failures": 2, "window_s": 10, "open_s": 30, "min_devices": 1},
                ),
                "sh": cluster(sh.url),
            },
            "routes": [
                {
                    "match": "account.",
                    "cluster": "sh",
                    "rules": [
                        {"kind": "zone", "clusters": {"hz": "hz", "sh": "sh"}, "failover": ["sh"]}
                    ],
                }
            ],
        }
        async with running_router(rpc, clock=clock) as router:
            for _ in range(2):  # sent and failed: no fail-over for these (not idempotent)
                response = await router.handle(rpc_request("account.pay", zone="hz"))
                assert response.status != 0
            assert router.describe()["clusters"]["hz"]["breaker"]["state"] == "open"  # type: ignore[index]
            assert (await router.handle(rpc_request("account.pay", zone="hz"))).body == b"sh"
            assert len(hz.hits) == 2
            hz.status = 200
            clock.advance(30)  # half-open: hz gets its probe again
            assert (await router.handle(rpc_request("account.pay", zone="hz"))).body == b"hz"


async def test_stress_traffic_routed_tagged_and_never_mirrored() -> None:
    async with upstream_farm() as farm:
        main = await farm.start("main")
        stress = await farm.start("stress")
        shadow = await farm.start("shadow")
        rpc = {
            "clusters": {
                "main": cluster(main.url),
                "stress": cluster(stress.url),
                "shadow": cluster(shadow.url),
                "gated": cluster(stress.url),
            },
            "routes": [
                {
                    "match": "account.",
                    "cluster": "main",
                    "mirror": {"cluster": "shadow", "percent": 100},
                    "rules": [{"kind": "stress", "header": "x-stress-test", "cluster": "stress"}],
                },
                {
                    "match": "order.",
                    "cluster": "main",
                    "rules": [
                        {
                            "kind": "stress",
                            "header": "x-stress-test",
                            "value": "yes",
                            "scope": "stress",
                            "cluster": "gated",
                        }
                    ],
                },
            ],
        }
        async with running_router(rpc) as router:
            tag = (("X-Stress-Test", "1"),)
            for _ in range(5):
                assert (
                    await router.handle(rpc_request("account.a", headers=tag))
                ).body == b"stress"
                assert (await router.handle(rpc_request("account.a"))).body == b"main"
            off = (("x-stress-test", "0"),)
            assert (await router.handle(rpc_request("account.a", headers=off))).body == b"main"
            await router.drain_mirrors()

            yes = (("x-stress-test", "yes"),)
            assert (await router.handle(rpc_request("order.a", headers=yes))).body == b"main"
            gated = rpc_request("order.a", headers=yes, scopes=("rpc", "stress"))
            assert (await router.handle(gated)).body == b"stress"

            assert router.metrics.selections[("account.", "0:stress")] == 5
            assert router.metrics.selections[("account.", "route")] == 6
        assert len(shadow.hits) == 6  # only the untagged calls
        assert all(h.headers.get("x-stress-test") in (None, "0") for h in shadow.hits)
        assert all(h.headers["x-channel-mirror"] == "1" for h in shadow.hits)
        assert len(stress.hits) == 6
        assert all(h.headers["x-channel-stress"] == "1" for h in stress.hits)
        assert all(h.headers["x-stress-test"] in ("1", "yes") for h in stress.hits)
        assert all("x-channel-stress" not in h.headers for h in main.hits)


async def test_color_switch_by_reload() -> None:
    async with upstream_farm() as farm:
        blue = await farm.start("blue")
        green = await farm.start("green")

        def rpc(active: str) -> dict[str, Any]:
            return {
                "clusters": {"blue": cluster(blue.url), "green": cluster(green.url)},
                "routes": [
                    {
                        "match": "*",
                        "cluster": "blue",
                        "rules": [
                            {
                                "kind": "color",
                                "active": active,
                                "clusters": {"blue": "blue", "green": "green"},
                            }
                        ],
                    }
                ],
            }

        async with running_router(rpc("blue")) as router:
            pools_before = dict(router._state.pools)
            assert (await router.handle(rpc_request("any.op"))).body == b"blue"
            router.reload(RoutingConfig.from_dict(rpc("green")))
            assert (await router.handle(rpc_request("any.op"))).body == b"green"
            # Unchanged clusters keep their pools (keep-alive connections, breakers).
            assert router._state.pools == pools_before
            router.reload(RoutingConfig.from_dict(rpc("blue")))
            assert (await router.handle(rpc_request("any.op"))).body == b"blue"
        assert (len(blue.hits), len(green.hits)) == (2, 1)


# -- the documented example ------------------------------------------------------


def test_docstring_example_parses() -> None:
    doc = config_module.__doc__ or ""
    block = doc.split("``cluster`` are required)::", 1)[1].split("\nRule keys", 1)[0]
    data = tomllib.loads("\n".join(line[4:] for line in block.splitlines()))
    mentioned = re.findall(r'"(account-[a-z0-9-]+)"', block)
    for name in mentioned:
        data["rpc"]["clusters"].setdefault(name, {"endpoints": [DUMMY]})
    data["rpc"]["clusters"]["account-sh"]["zone"] = "sh"
    config = RoutingConfig.from_dict(data["rpc"])
    route = config.routes[0]
    assert [r.kind for r in route.rules] == [
        "stress",
        "gray",
        "app_version",
        "platform",
        "header",
        "zone",
        "color",
    ]
    assert route.is_idempotent("account.balance.get")
    assert not route.is_idempotent("account.transfer")
    assert config.clusters["account"].breaker.failures == 5
