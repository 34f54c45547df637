"""The push and presence benchmarks run end to end at toy sizes and write their JSON.

Smoke tests only: a real ``redis-server``, real gateway, device and load-generator
processes, a few dozen devices, sub-second phases; no figure is checked, only
that every phase ran, nothing was lost, and the JSON has every figure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


def run_tool(module: str, out: Path, *args: str) -> dict[str, Any]:
    # ~25 s on the 2-core dev VM for the push tool (three gateways and a fan-out).
    completed = subprocess.run(
        [sys.executable, "-m", module, "--quiet", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"wrote {out}" in completed.stdout
    doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return doc


def test_push_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "push.json"
    doc = run_tool(
        "stress.push",
        out,
        "--devices", "20",
        "--rate", "400",
        "--batch", "20",
        "--seconds", "0.5",
        "--warmup-s", "0.2",
        "--drain-s", "3",
        "--nodes", "2",
        "--fanout-devices", "30",
        "--baseline-devices", "10",
        "--broadcasts", "3",
        "--min-deliveries", "1",
        "--idle-window-s", "0.2",
        "--ack-delays-ms", "0,100",
        "--fanout-linger-ms", "20",
        "--no-pin",
    )  # fmt: skip
    assert {"machine", "unicast", "fanout", "ratios"} <= doc.keys()
    assert doc["fanout"]["fanout_linger_ms"] == 20
    assert set(doc["unicast"]) == {"memory", "redis", "redisx2"}
    for label, side in doc["unicast"].items():
        assert side["devices_held"] == 20, label
        for mode in ("rate", "max", "half"):
            phase = side[mode]
            assert phase["accepted"] > 0 and phase["api_errors"] == 0, (label, mode)
            assert phase["lost"] == 0 and phase["unexpected"] == 0, (label, mode)
            assert phase["latency_ms"]["p50"] is not None, (label, mode)
            assert phase["cpu_s_per_1000"]["generator"] >= 0
    assert "redis" in doc["unicast"]["redis"]["rate"]["cpu_s"]
    fan = doc["fanout"]
    assert fan["full"]["devices"] == 30 and fan["baseline"]["devices"] == 10
    for side in (fan["full"], fan["baseline"], fan["full"]["ack_delay_100ms"]):
        for scenario in ("batch", "separate", "single"):
            result = side[scenario]
            assert result["complete"] and result["deliveries"] == result["expected"]
            assert result["per_gateway_cpu_s"] is not None
    assert "fanout_batch_full_vs_baseline" in doc["ratios"]
    assert "unicast_redis_vs_memory_rate" in doc["ratios"]


def test_presence_benchmark_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "presence.json"
    doc = run_tool(
        "stress.presence",
        out,
        "--devices", "3000",
        "--single", "200",
        "--lookups", "2000",
        "--offline", "500",
        "--queue-devices", "200",
        "--layout-devices", "5000",
    )  # fmt: skip
    memory = doc["memory"]
    assert memory["bytes_per_device"] > 0
    assert memory["by_kind"]["presence"]["keys"] == doc["layout"]["presence_buckets"]
    assert memory["by_kind"]["presence"]["entries"] == 3000
    for key in (
        "set_online_pipelined",
        "set_online_single",
        "lookup_pipelined",
        "lookup_single",
        "set_offline_pipelined",
    ):
        assert doc[key]["per_s"] > 0, key
    assert doc["lookup_pipelined"]["found"] == doc["lookup_pipelined"]["distinct_per_batch"]
    assert doc["queue"]["one_per_device"]["bytes_per_push"] > 0
    assert doc["directory"]["keys"]["entries"] == 3000
    assert doc["directory"]["bytes_per_device"] > 0
    assert doc["statuses"]["bytes_per_status"] > 0
    assert doc["statuses"]["memory_usage_bytes_per_status"] > 0
    assert doc["inbox"]["bytes_per_envelope"] > 0
    assert doc["receipt_stream"]["memory_usage_bytes_per_receipt"] > 0
    assert doc["fleet"]["heartbeat_writes_per_s"] == 0
    assert len(doc["layouts"]) >= 2 and all(x["bytes_per_device"] > 0 for x in doc["layouts"])


def test_inbox_benchmark_compares_stream_and_spublish(tmp_path: Path) -> None:
    out = tmp_path / "inbox.json"
    done = subprocess.run(
        [sys.executable, "-m", "stress.inbox", "--batches", "200", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["stream"]["batches_per_s"] > 0 and doc["spublish"]["batches_per_s"] > 0
    # The reason Channel's inboxes are streams: a reader that was away reads back all.
    assert doc["stream"]["recovered_after_absence"] == 100
    assert "stream (Channel)" in done.stdout


def test_push_benchmark_on_a_redis_cluster(tmp_path: Path) -> None:
    out = tmp_path / "push.json"
    doc = run_tool(
        "stress.push",
        out,
        "--backends", "cluster",
        "--modes", "max",
        "--devices", "10",
        "--batch", "10",
        "--seconds", "0.5",
        "--warmup-s", "0.2",
        "--drain-s", "3",
        "--fanout-devices", "0",
        "--no-pin",
    )  # fmt: skip
    phase = doc["unicast"]["cluster"]["max"]
    assert phase["accepted"] > 0 and phase["lost"] == 0 and phase["api_errors"] == 0
    # Every master's CPU is counted, and Redis's time per push by command is there.
    assert {"redis0", "redis1", "redis2"} <= phase["cpu_s"].keys()
    assert phase["redis_usec_per_push"]["evalsha"] > 0
