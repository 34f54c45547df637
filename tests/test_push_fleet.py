"""Pushes across a fleet: real ``channel serve`` processes sharing a real Redis.

Two gateway processes use the Redis push backend (a single Redis and a
3-master Redis Cluster), devices are real SDK clients, pushes go in through
the HTTP API of either node. The unhappy paths are the point: a device moving
between nodes, a node killed with SIGKILL while pushes flow (nothing accepted
may be lost), Redis restarted empty under a running node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sdk_client import Backoff, Client, Push
from tests.test_gateway_process import ServeProcess, token_for

pytestmark = pytest.mark.both_engines

WAIT_S = 20.0


class Node:
    """One gateway process and its addresses."""

    def __init__(self, serve: ServeProcess, info: dict[str, Any], state_dir: Path) -> None:
        self.serve = serve
        self.info = info
        self.port = int(info["port"])
        self.api = f"http://127.0.0.1:{info['api_port']}"
        self.api_key = (state_dir / "api" / "dev.key").read_text().strip()
        self.ca_cert = Path(str(info["ca_cert"]))

    async def post(self, http: aiohttp.ClientSession, path: str, body: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with http.post(self.api + path, json=body, headers=headers) as response:
            assert response.status in (200, 202), await response.text()
            return await response.json()

    async def get(self, http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        async with http.get(self.api + path, headers=headers) as response:
            return response.status, await response.json()


class Fleet:
    def __init__(self, tmp_path: Path, redis_url: str, cluster: bool) -> None:
        self.state_dir = tmp_path / "state"
        prefix = f"t{uuid.uuid4().hex[:8]}"
        self.env = {
            "CHANNEL_PUSH__RECEIPT_STREAM": f"{prefix}:receipts",
            "CHANNEL_PUSH__REQUEST_STREAM": f"{prefix}:push",
            "CHANNEL_PUSH__BACKEND": "redis",
            "CHANNEL_PUSH__REDIS_URL": redis_url,
            "CHANNEL_PUSH__REDIS_CLUSTER": "true" if cluster else "false",
            # One prefix per test: tests share the session's Redis.
            "CHANNEL_PUSH__KEY_PREFIX": prefix,
            "CHANNEL_PUSH__LEASE_MS": "2000",
            "CHANNEL_API__PORT": "0",
            "CHANNEL_SERVER__DRAIN_TIMEOUT_S": "1",
        }
        self.nodes: list[Node] = []

    async def start_node(self) -> Node:
        # Nodes share the state dir: the same dev CA, token key, ticket secret and
        # API key, as a fleet shares them. Started one at a time (the first makes them).
        serve = ServeProcess(self.state_dir, "--port", "0", "--admin-port", "0", env=self.env)
        (info,) = await asyncio.to_thread(serve.wait_listening)
        node = Node(serve, info, self.state_dir)
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.serve.stop()


@pytest.fixture(params=["redis", "cluster"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        instance = Fleet(tmp_path, server.url, cluster=False)
    else:
        cluster = request.getfixturevalue("redis_cluster")
        instance = Fleet(tmp_path, cluster.url, cluster=True)
    try:
        yield instance
    finally:
        instance.stop()


class Device:
    def __init__(self, node: Node, device_id: str, *others: Node) -> None:
        self.device_id = device_id
        self.received: dict[str, bytes] = {}
        self._changed = asyncio.Event()
        self.client = Client(
            "127.0.0.1",
            node.port,
            endpoints=[("127.0.0.1", other.port) for other in others],
            device_id=device_id,
            token=token_for(node.info, device_id),
            ca_file=node.ca_cert,
            app_id="demo",
            backoff=Backoff(initial_s=0.05, max_s=0.5),
        )
        self.client.on_push(self._on_push)

    def _on_push(self, push: Push) -> None:
        self.received[push.message_id.decode()] = push.body
        self._changed.set()

    async def wait_for(self, message_ids: set[str], timeout_s: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while not message_ids <= self.received.keys():
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def connected(*devices: Device) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for device in devices:
            await stack.enter_async_context(device.client)
            await device.client.connect()
        yield


async def wait_online(http: aiohttp.ClientSession, node: Node, device: Device, on: Node) -> None:
    """Wait until a probe pushed through ``node`` reaches ``device``, then check that
    presence names node ``on``.

    The probe is the event to wait for: the API queues a push before it looks
    presence up, and a node writes a device's presence before it reads its queue, so
    the probe is either routed or replayed, never stuck. When it arrives, the
    device's presence has been written."""
    probe = await node.post(http, "/v1/push", {"device_id": device.device_id, "body": "probe"})
    await device.wait_for({probe["message_id"]})
    status, body = await node.get(http, f"/v1/devices/{device.device_id}")
    assert status == 200 and body["node"] == on.info["node"], body


async def test_a_device_moving_between_nodes_gets_its_pushes_on_each(fleet: Fleet) -> None:
    a = await fleet.start_node()
    b = await fleet.start_node()
    async with aiohttp.ClientSession() as http:
        device = Device(a, "mover")
        async with connected(device):
            await wait_online(http, b, device, on=a)
            first = await b.post(http, "/v1/push", {"device_id": "mover", "body": "via b"})
            await device.wait_for({first["message_id"]})
        # Offline now (presence may lag a few ms, then the push waits in the queue all
        # the same): queued, then delivered by the other node on connect.
        second = await a.post(http, "/v1/push", {"device_id": "mover", "body": "while away"})
        assert second["queued"] == 1
        moved = Device(b, "mover")
        async with connected(moved):
            await moved.wait_for({second["message_id"]})
            await wait_online(http, a, moved, on=b)
            third = await a.post(http, "/v1/push", {"device_id": "mover", "body": "via a"})
            assert third["online"] == 1
            await moved.wait_for({third["message_id"]})
            # Backend -> device RPC through the node that does not hold the device.

            @moved.client.handle("app.ping")
            async def ping(request: Any) -> bytes:
                return b"pong"

            answer = await a.post(
                http, "/v1/devices/mover/rpc", {"op": "app.ping", "body": "", "timeout_ms": 5000}
            )
            assert answer["status"] == 0 and answer["body"] == "pong"


async def test_no_push_is_lost_when_a_node_is_killed_mid_stream(fleet: Fleet) -> None:
    a = await fleet.start_node()
    b = await fleet.start_node()
    devices = [Device(a, f"k{i}", b) for i in range(8)]
    accepted: dict[str, set[str]] = {d.device_id: set() for d in devices}
    async with aiohttp.ClientSession() as http, connected(*devices):
        for device in devices:
            await wait_online(http, b, device, on=a)

        async def push_rounds(rounds: int) -> None:
            for index in range(rounds):
                body = {
                    "messages": [
                        {"device_id": d.device_id, "body": f"r{index}", "ttl_s": 600}
                        for d in devices
                    ]
                }
                reply = await b.post(http, "/v1/push/batch", body)
                for device, result in zip(devices, reply["results"], strict=True):
                    accepted[device.device_id].add(result["message_id"])

        await push_rounds(10)
        # Kill A while pushes keep coming: some are in flight to it, some routed to
        # its inbox after it died (its lease is still valid for a while).
        killer = asyncio.get_running_loop().run_in_executor(
            None, os.kill, a.serve.proc.pid, signal.SIGKILL
        )
        await asyncio.gather(push_rounds(30), killer)
        await asyncio.to_thread(a.serve.proc.wait, 10)
        for device in devices:
            await device.wait_for(accepted[device.device_id], timeout_s=30)
        lost = {d.device_id: accepted[d.device_id] - d.received.keys() for d in devices}
        assert all(not missing for missing in lost.values()), lost


async def test_node_rewrites_presence_after_redis_restarts_empty(
    tmp_path: Path, redis_server: Any
) -> None:
    fleet = Fleet(tmp_path, redis_server.url, cluster=False)
    try:
        node = await fleet.start_node()
        device = Device(node, "survivor")
        async with aiohttp.ClientSession() as http, connected(device):
            await wait_online(http, node, device, on=node)
            await asyncio.to_thread(redis_server.restart)
            # The lease renewal finds the node forgotten, writes its devices again and
            # replays their queues: a probe accepted meanwhile arrives either way.
            await wait_online(http, node, device, on=node)
            reply = await node.post(http, "/v1/push", {"device_id": "survivor", "body": "back"})
            await device.wait_for({reply["message_id"]})
    finally:
        fleet.stop()


async def test_a_node_paused_past_its_inbox_limit_replays_its_devices_queues(
    fleet: Fleet,
) -> None:
    """A node stopped (SIGSTOP: a long GC pause, a starved VM) while pushes for its devices
    pile up past ``inbox_max_entries``: Redis trims its inbox before it reads it. When it
    runs again it sees the gap in the entry numbers and replays its devices' queues, so
    the devices get every push now, not at their next reconnect."""
    fleet.env["CHANNEL_PUSH__INBOX_MAX_ENTRIES"] = "5"
    fleet.env["CHANNEL_PUSH__LEASE_MS"] = "60000"  # the pause must not look like a death
    a = await fleet.start_node()
    b = await fleet.start_node()
    devices = [Device(a, f"p{i}") for i in range(4)]  # on A only: they wait for it
    accepted: dict[str, set[str]] = {d.device_id: set() for d in devices}
    async with aiohttp.ClientSession() as http, connected(*devices):
        for device in devices:
            await wait_online(http, b, device, on=a)
        os.kill(a.serve.proc.pid, signal.SIGSTOP)
        try:
            # One inbox entry per request: 320 entries, Redis keeps the newest ~100-200;
            # 80 pushes per device stay within queue_cap (100).
            for index in range(320):
                device = devices[index % len(devices)]
                body = {"device_id": device.device_id, "body": f"n{index}", "ttl_s": 600}
                reply = await b.post(http, "/v1/push", body)
                accepted[device.device_id].add(reply["message_id"])
        finally:
            os.kill(a.serve.proc.pid, signal.SIGCONT)
        for device in devices:
            await device.wait_for(accepted[device.device_id], timeout_s=30)
        # Operators see it happen.
        metrics_url = f"http://127.0.0.1:{a.info['admin_port']}/metrics"
        async with http.get(metrics_url) as response:
            text = await response.text()
        (resyncs,) = [
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("channel_inbox_resyncs_total ")
        ]
        assert resyncs >= 1
