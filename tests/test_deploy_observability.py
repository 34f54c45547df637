"""The Grafana dashboard and the alert rules read metrics a live node really exports,
and the alert rules pass their ``promtool`` unit tests.

A node is started on each engine (with the Redis push backend, as a fleet runs)
and its ``/metrics`` families are the truth: a renamed metric breaks this test,
not a dashboard in production.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from gateway_harness import gateway
from promql_names import exported_names, metric_names

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "channel-fleet.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
#: Made by Prometheus itself for every scrape target, not by the node.
PROMETHEUS_OWN = {"up"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def test_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, cluster) (rate(x_bucket{a="b{c}"}[5m])))'
        " / ignoring (q) y_total > 14 * 86400 and on (instance) z"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "z"}


async def exported(tmp_path: Path, engine: str, redis_url: str) -> set[str]:
    push = {"backend": "redis", "redis_url": redis_url, "key_prefix": f"obs-{engine}"}
    async with gateway(tmp_path / engine, server={"engine": engine}, push=push) as gw:
        url = f"http://127.0.0.1:{gw.admin_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200
            return exported_names(await response.text())


async def test_dashboard_and_alerts_read_only_exported_metrics(
    tmp_path: Path, redis_server: Any
) -> None:
    names = {e: await exported(tmp_path, e, redis_server.url) for e in ("python", "native")}
    for engine, exported_here in names.items():
        for expr in dashboard_exprs():
            missing = metric_names(expr) - exported_here - PROMETHEUS_OWN
            assert not missing, f"dashboard query {expr!r} reads {missing}, not on {engine}"
    for alert, expr in alert_exprs().items():
        assert metric_names(expr), alert
        used = metric_names(expr) - PROMETHEUS_OWN
        # channel_engine_* are the native engine's; everything else both engines export.
        for name in used:
            engines = ["native"] if name.startswith("channel_engine_") else ["python", "native"]
            for engine in engines:
                assert name in names[engine], f"alert {alert} reads {name}, not on {engine}"


def test_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: apt-get install prometheus")
def test_alert_rules_pass_promtool() -> None:
    check = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    # Every alert has at least one test that expects it to fire.
    spec = yaml.safe_load((ALERTS.parent / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for test in spec["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == set(alert_exprs())
