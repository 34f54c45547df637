"""``loadgen mmtp-churn`` against a real gateway: each mode makes the handshakes it names."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from stress.compare.clients import run_json, write_ids
from stress.compare.procs import Reaper, build_loadgen
from stress.compare.servers import Channel


def handshakes_by_kind(server: Channel) -> dict[str, float]:
    url = f"http://127.0.0.1:{server.gateway.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    kinds = {}
    for line in text.splitlines():
        if line.startswith("channel_handshakes_total{"):
            labels, value = line.rsplit(" ", 1)
            kinds[labels.split('kind="')[1].split('"')[0]] = float(value)
    return kinds


def test_full_mode_shows_the_token_on_every_connection(tmp_path: Path) -> None:
    # It used to show the MMTP resume ticket its predecessor got: after each loop's
    # first connection the gateway resumed instead of checking the token.
    build_loadgen()
    with Reaper() as reaper:
        server = Channel(reaper, tmp_path, engine="native", protocol="mmtp", devices=16)
        ids = write_ids(tmp_path / "ids.txt", server, ["churn-0000", "churn-0001"])
        argv = ["mmtp-churn", "--port", str(server.port), "--ids", str(ids), "--workers", "2"]
        full = run_json([*argv, "--seconds", "1", "--mode", "full"], None, 60)
        assert full["handshakes"] > 2 and full["errors"] == 0
        kinds = handshakes_by_kind(server)
        assert kinds.get("resumed", 0) == 0
        assert kinds["full"] >= full["handshakes"]
        resumed = run_json([*argv, "--seconds", "1", "--mode", "resumed"], None, 60)
        assert resumed["errors"] == 0
        after = handshakes_by_kind(server)
        # Each loop's first connection has no ticket yet; every later one resumes.
        assert after["resumed"] >= resumed["handshakes"] - 2
        server.stop()
