"""A fleet the way operators run one, on this machine: nodes in network namespaces
behind HAProxy (PROXY v2), a 3+3 Redis Cluster, faults while pushes and calls flow.

These start real processes in namespaces (root, iproute2, haproxy, redis-server:
``scripts/test.sh`` installs them). The chaos and rolling-upgrade runs here are the
small, bounded size of ``stress/fleet_chaos.py`` (its bar-size run is in
``docs/deploy.md``); each asserts that no accepted push was lost or reached an app
twice, and that no RPC call failed that the SDK did not retry.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mqtt_harness import PahoBox

from channel.fleet import Fleet, FleetSettings
from channel.fleet.netns import RECORDS_DIR, run
from channel.mqtt import MQTT_5
from channel.security.tokens import encode_token_text
from sdk_client import AuthError, Client
from stress.fleet_chaos import Plan, run_scenario

NEEDED = ("ip", "haproxy", "redis-server", "redis-cli")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(tool) is None for tool in NEEDED),
    reason=f"the fleet needs root and {', '.join(NEEDED)} (scripts/test.sh installs them)",
)


def leftovers(run_id: str) -> list[str]:
    """Namespaces, links and records of run ``run_id`` still on the machine."""
    found = [n for n in run("ip", "netns", "list").stdout.split() if run_id in n]
    found += [line for line in run("ip", "-o", "link").stdout.splitlines() if run_id in line]
    found += [str(p) for p in RECORDS_DIR.glob(f"{run_id}.json")]
    return found


async def test_fleet_serves_through_the_balancer_and_removes_everything(tmp_path: Path) -> None:
    fleets = [Fleet(FleetSettings(nodes=1, prometheus=False)) for _ in range(2)]
    # Two at once: their names, subnets and ports never collide.
    threads = [threading.Thread(target=f.__enter__) for f in fleets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert all(f.nodes and f.nodes[0].info for f in fleets), "a fleet did not start"
        # The production default: the native engine reads HAProxy's PROXY v2 header.
        assert [f.nodes[0].info["engine"] for f in fleets] == ["native", "native"]
        first, second = fleets
        assert first.network.subnet != second.network.subnet
        assert first.network.run_id != second.network.run_id
        host, port = first.device_endpoint
        client = Client(
            host,
            port,
            device_id="d1",
            token=first.token("d1"),
            ca_file=first.ca_cert,
            app_id="fleet",
        )
        async with client:
            response = await client.call("channel.echo", b'{"hi":1}')
            assert response.body == b'{"hi":1}'
        # The node saw this machine's address (the PROXY v2 header), not the balancer's.
        liar = Client(
            host, port, device_id="liar", token=b"bad", ca_file=first.ca_cert, reconnect=False
        )
        with pytest.raises(AuthError):
            await liar.connect()
        log = first.nodes[0].proc.log_path if first.nodes[0].proc else None
        assert log is not None
        refusals = [
            json.loads(line) for line in log.read_text().splitlines() if '"hello refused"' in line
        ]
        assert refusals and refusals[0]["peer"] == first.machine_address, refusals
        directories = [f.directory for f in fleets]
    finally:
        for fleet in fleets:
            fleet.close()
    for fleet, directory in zip(fleets, directories, strict=True):
        assert leftovers(fleet.network.run_id) == []
        assert not directory.exists()


class _LocalhostContext(ssl.SSLContext):
    """A box's TLS context that checks the fleet's certificate against the name it was
    made for ("localhost"): paho would check it against the balancer's address."""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["server_hostname"] = "localhost"
        return super().wrap_socket(sock, *args, **kwargs)


def box_context(ca: Path) -> ssl.SSLContext:
    context = _LocalhostContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and name
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(str(ca))
    return context


def device_record(fleet: Fleet, device_id: str) -> tuple[str, dict[str, Any]]:
    """(node name, GET /admin/devices/{id}) from the node the device is connected to."""
    for node in fleet.nodes:
        request = urllib.request.Request(
            f"{node.admin_url}/admin/devices/{device_id}",
            headers={"Authorization": f"Bearer {fleet.api_key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                record: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                continue
            raise
        if record.get("online", True):
            return node.name, record
    raise AssertionError(f"{device_id} is on no node")


async def test_an_mqtt_box_connects_through_the_balancer_and_gets_a_push() -> None:
    """A real box (paho, MQTT 5 over TLS, token as password) reaches a node through
    HAProxy's MQTT frontend, gets a push sent through the push API, and the node knows
    the box's address from the PROXY v2 header, not the balancer's."""
    with Fleet(FleetSettings(nodes=2, prometheus=False)) as fleet:
        assert all(n.info["mqtt_port"] == 8883 for n in fleet.nodes), fleet.nodes[0].info
        host, port = fleet.mqtt_endpoint
        assert f"{host}:{port}" in fleet.describe()
        till = PahoBox(port, "till-1", MQTT_5, host=host, username="till-1",
                       password=encode_token_text(fleet.token("till-1")),
                       context=box_context(fleet.ca_cert))  # fmt: skip
        _flags, reason, _props = await till.connect()
        assert reason == 0, reason
        try:
            _node, record = device_record(fleet, "till-1")
            assert record["protocol"] == "mqtt", record
            assert record["peer_ip"] == fleet.machine_address != host, record
            request = urllib.request.Request(
                f"{fleet.api_url}/v1/push",
                data=json.dumps({"device_id": "till-1", "body": "price update"}).encode(),
                headers={"Authorization": f"Bearer {fleet.api_key}",
                         "Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 202
                accepted = json.load(response)
            message = await till.message()
            assert (message.topic, message.payload) == ("devices/till-1/push", b"price update")
            assert message.user_properties()["message-id"] == accepted["message_id"]
            await plain_tcp_box_gets_a_push(fleet)
        finally:
            await till.disconnect()


async def plain_tcp_box_gets_a_push(fleet: Fleet) -> None:
    """The plain TCP MQTT port (on in the local fleet) through HAProxy, PROXY v2 too."""
    host, port = fleet.mqtt_tcp_endpoint
    assert f"{host}:{port}" in fleet.describe()
    scale = PahoBox(port, "scale-1", MQTT_5, host=host, username="scale-1",
                    password=encode_token_text(fleet.token("scale-1")))  # fmt: skip
    _flags, reason, _props = await scale.connect()
    assert reason == 0, reason
    try:
        _node, record = device_record(fleet, "scale-1")
        assert (record["protocol"], record["tls"]) == ("mqtt", False), record
        assert record["peer_ip"] == fleet.machine_address != host, record
        request = urllib.request.Request(
            f"{fleet.api_url}/v1/push",
            data=json.dumps({"device_id": "scale-1", "body": "tare"}).encode(),
            headers={"Authorization": f"Bearer {fleet.api_key}",
                     "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 202
        message = await scale.message()
        assert (message.topic, message.payload) == ("devices/scale-1/push", b"tare")
    finally:
        await scale.disconnect()


def test_ctrl_c_removes_everything_at_any_moment(tmp_path: Path) -> None:
    """``channel fleet up`` interrupted while it starts, and once it runs."""
    for wait_for in ("starting", "running"):
        before = set(RECORDS_DIR.glob("*.json")) if RECORDS_DIR.is_dir() else set()
        proc = subprocess.Popen(
            [sys.executable, "-m", "channel", "fleet", "up", "--nodes", "1", "--no-prometheus"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            run_id = ""
            while not run_id and time.monotonic() < deadline:
                new = set(RECORDS_DIR.glob("*.json")) - before if RECORDS_DIR.is_dir() else set()
                run_id = next(iter(new)).stem if new else ""
                time.sleep(0.02)
            assert run_id, "the fleet never recorded its run"
            if wait_for == "running":
                assert proc.stdout is not None
                printed = []
                for line in proc.stdout:
                    printed.append(line)
                    if "Ctrl-C stops the fleet" in line:
                        break
                # Every address a user needs, the MQTT boxes' among them.
                assert any(line.strip().startswith("MQTT boxes:") for line in printed), printed
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert leftovers(run_id) == [], (wait_for, leftovers(run_id))


async def test_chaos_loses_and_repeats_no_push(tmp_path: Path) -> None:
    plan = Plan(devices=24, rate_per_s=60, duration_s=20, batch=20, partition_s=3, boxes=8)
    report = await run_scenario("chaos", plan, tmp_path / "fleet")
    pushes = report.pushes
    assert pushes["accepted_pushes"] >= 1_000, pushes
    assert pushes["lost"] == 0 and pushes["duplicates"] == 0, pushes
    # MQTT boxes (QoS 1, persistent sessions, through HAProxy's 8883) alike: nothing
    # lost, no repeat without DUP; the kills cut some off and their sessions came back.
    assert pushes["box_expected"] >= 100 and pushes["box_lost"] == 0, pushes
    assert pushes["box_duplicates"] == 0, (pushes, report.boxes)
    assert report.boxes["reconnects"] > 0, report.boxes
    assert report.boxes["sessions_present"] == report.boxes["reconnects"], report.boxes
    assert pushes["fanout_duplicates"] == 0, pushes
    assert pushes["delivered"] + pushes["expired_or_failed"] == pushes["expected_deliveries"]
    done = [what for _, what in report.faults if what.startswith("done: ")]
    assert len(done) == 7, report.faults
    # The devices the kills cut off came back through the balancer and resumed.
    assert report.reconnects > 0 and report.resumed == report.reconnects, report


async def test_rolling_upgrade_fails_no_call_and_loses_no_push(tmp_path: Path) -> None:
    plan = Plan(devices=16, rate_per_s=30, duration_s=15, batch=10)
    report = await run_scenario("upgrade", plan, tmp_path / "fleet")
    assert report.calls is not None and report.calls["ok"] > 100, report.calls
    assert report.calls["failed"] == 0, report.calls
    assert report.pushes["lost"] == 0 and report.duplicates == 0, report.pushes
    assert len(report.out_of_rotation_s) == plan.nodes
    # Every device was drained off its node at least once, and resumed its session.
    assert report.reconnects >= plan.devices and report.resumed == report.reconnects


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="apt-get install prometheus")
def test_prometheus_scrapes_every_node_and_runs_the_rules_and_dashboard_queries() -> None:
    from test_deploy_observability import dashboard_exprs

    with Fleet(FleetSettings(nodes=2, scrape_interval="1s")) as fleet:

        def query(expr: str) -> dict[str, Any]:
            url = f"{fleet.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            with urllib.request.urlopen(url, timeout=10) as response:
                result: dict[str, Any] = json.load(response)
            return result

        # Prometheus scrapes its targets one by one: HAProxy may come a scrape after the nodes.
        deadline = time.monotonic() + 60
        while True:
            up = query('up{job="channel"} == 1')["data"]["result"]
            haproxy = query('up{job="haproxy"} == 1')["data"]["result"]
            if len(up) == 2 and len(haproxy) == 1:
                break
            assert time.monotonic() < deadline, (up, haproxy)
            time.sleep(0.5)
        for expr in dashboard_exprs():
            assert query(expr)["status"] == "success", expr
        # Some queries have data already: devices, certificates, process memory.
        assert query("sum(channel_sessions)")["data"]["result"]
        days = query("min((channel_tls_certificate_expiry_timestamp_seconds - time()) / 86400)")
        assert float(days["data"]["result"][0]["value"][1]) > 300
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"{fleet.prometheus_url}/api/v1/rules", timeout=10) as r:
                groups = json.load(r)["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            if rules and all(rule.get("health") == "ok" for rule in rules):
                break
            assert time.monotonic() < deadline, rules
            time.sleep(0.5)
        assert {rule["name"] for rule in rules} >= {"ChannelNodeDown", "ChannelRedisErrors"}
        # A node killed: the rule goes pending (it fires after 30 s: not waited for here).
        fleet.kill_node(1)
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"{fleet.prometheus_url}/api/v1/alerts", timeout=10) as r:
                alerts = json.load(r)["data"]["alerts"]
            if any(a["labels"]["alertname"] == "ChannelNodeDown" for a in alerts):
                break
            assert time.monotonic() < deadline, alerts
            time.sleep(0.5)
