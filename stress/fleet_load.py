"""Devices, pushes and RPC calls against a local fleet (``channel.fleet``), counted exactly.

What the chaos and rolling-upgrade runs (``stress/fleet_chaos.py``, and
``tests/test_fleet.py`` at a small size) share:

* ``Devices``: SDK clients connecting through the fleet's balancer, two per
  user, half of them subscribed to a topic, and, if asked, MQTT boxes (QoS 1,
  persistent sessions, through the balancer's MQTT over TLS port: ``fleet_boxes``),
  two per user of their own. Every push that reaches a device's app (the SDK's
  push handler after the SDK's own de-duplication; a box's after dropping DUP
  copies it has seen) is counted per (device, message id): a count above one is a
  duplicate the app saw.
* ``PushLoad``: pushes through the balancer's push API in batches (devices and
  users, now and then a topic and a broadcast), each request with an
  ``Idempotency-Key`` and retried until it gets an answer, so "accepted" means
  exactly what the API said: the message ids it returned. Each accepted device
  or user push names the devices that must get it.
* ``CallLoad``: devices calling an RPC (``app.echo``, served by ``EchoUpstream``
  on this machine) in a loop: a call that raises is one the SDK did not retry.
* ``settle()``: waits until every expected delivery arrived (or a deadline), then
  asks the API about each missing one: expired or failed with a receipt, or lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from channel.fleet import Fleet
from channel.security.tokens import encode_token_text
from sdk_client import Backoff, Client, Push
from stress.fleet_boxes import MqttBox, box_tls_context

TOPIC = "public.chaos"


class Devices:
    """``count`` SDK devices through the fleet's balancer (see the module doc)."""

    def __init__(self, fleet: Fleet, count: int, boxes: int = 0) -> None:
        host, port = fleet.device_endpoint
        self.clients: dict[str, Client] = {}
        self.boxes: dict[str, MqttBox] = {}
        self.received: dict[str, Counter[str]] = {}
        self.user_of: dict[str, str] = {}
        self.subscribed: set[str] = set()
        for index in range(count):
            device_id, user_id = f"d{index}", f"u{index // 2}"
            client = Client(
                host,
                port,
                device_id=device_id,
                token=fleet.token(device_id, user_id=user_id),
                ca_file=fleet.ca_cert,
                app_id="fleet",
                backoff=Backoff(initial_s=0.1, max_s=1.0),
                call_timeout_s=30.0,
            )
            self.clients[device_id] = client
            self.received[device_id] = Counter()
            self.user_of[device_id] = user_id
            client.on_push(self._handler(device_id))

            @client.handle("app.ping")
            async def ping(request: Any) -> bytes:
                return b"pong"

        if boxes:
            mqtt_host, mqtt_port = fleet.mqtt_endpoint
            context = box_tls_context(fleet.ca_cert)
        for index in range(boxes):
            box_id, user_id = f"b{index}", f"bu{index // 2}"
            token = encode_token_text(fleet.token(box_id, user_id=user_id)).encode()
            self.received[box_id] = Counter()
            self.user_of[box_id] = user_id
            self.boxes[box_id] = MqttBox(
                mqtt_host, mqtt_port, context, box_id, token, self.received[box_id]
            )

    @property
    def device_ids(self) -> list[str]:
        """Every push target: SDK devices, then boxes."""
        return [*self.clients, *self.boxes]

    def _handler(self, device_id: str) -> Any:
        counts = self.received[device_id]

        def on_push(push: Push) -> None:
            counts[push.message_id.decode()] += 1

        return on_push

    @property
    def users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {}
        for device_id, user_id in self.user_of.items():
            users.setdefault(user_id, []).append(device_id)
        return users

    async def connect(self) -> None:
        async def one(device_id: str, client: Client) -> None:
            await client.connect(retry=True)
            if int(device_id[1:]) % 2 == 0:
                await client.subscribe(TOPIC)
                self.subscribed.add(device_id)

        await asyncio.gather(*(one(d, c) for d, c in self.clients.items()))
        for box in self.boxes.values():
            box.start()
        async with asyncio.timeout(60):
            await asyncio.gather(*(box.connected.wait() for box in self.boxes.values()))

    async def wait_known(
        self, fleet: Fleet, http: aiohttp.ClientSession, timeout_s: float = 30.0
    ) -> None:
        """Until the fleet's presence lists every device under its user: a user push
        accepted before a node wrote a device's presence and directory entry (batched,
        a few ms after its HELLO) would rightly not target it, and count as lost here."""
        headers = {"Authorization": f"Bearer {fleet.api_key}"}
        deadline = time.monotonic() + timeout_s
        for user_id, devices in self.users.items():
            while True:
                async with http.get(
                    f"{fleet.api_url}/v1/users/{user_id}/devices", headers=headers
                ) as response:
                    found = (await response.json()).get("devices", []) if response.ok else []
                if {d["device_id"] for d in found} >= set(devices):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"presence of {user_id} lists {found}, not {devices}")
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
        await asyncio.gather(*(b.stop() for b in self.boxes.values()), return_exceptions=True)

    def reconnects(self) -> tuple[int, int]:
        """(connections after the first, of which resumed the session) over all devices."""
        connects = sum(max(0, c.stats.connects - 1) for c in self.clients.values())
        resumed = sum(c.stats.resumed_sessions for c in self.clients.values())
        return connects, resumed


@dataclass
class PushLedger:
    """Every accepted push and who must get it."""

    #: (device, message id) pairs that must each reach the app exactly once.
    expected: set[tuple[str, str]] = field(default_factory=set)
    stored_messages: set[str] = field(default_factory=set)
    fanout_messages: set[str] = field(default_factory=set)
    #: Seconds into the load each message was accepted (for the report of lost ones).
    accepted_at: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    retries: int = 0
    accepted_by_kind: Counter[str] = field(default_factory=Counter)


class PushLoad:
    """Pushes through the balancer's API at ``rate_per_s`` (see the module doc)."""

    def __init__(
        self,
        fleet: Fleet,
        devices: Devices,
        *,
        rate_per_s: float,
        batch: int = 50,
        fanout_every: int = 20,
        seed: int = 1,
    ) -> None:
        self.url = fleet.api_url
        self.headers = {"Authorization": f"Bearer {fleet.api_key}"}
        self.devices = devices
        self.rate_per_s = rate_per_s
        self.batch = batch
        self.fanout_every = fanout_every
        self.ledger = PushLedger()
        self._rng = random.Random(seed)

    async def run(self, duration_s: float, http: aiohttp.ClientSession) -> None:
        self.ledger.started = time.monotonic()
        interval_s = self.batch / self.rate_per_s
        deadline = time.monotonic() + duration_s
        tick = 0
        in_flight: set[asyncio.Task[None]] = set()
        while time.monotonic() < deadline:
            started = time.monotonic()
            tick += 1
            task = asyncio.create_task(self._send(http, self._messages(tick)))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
        if in_flight:
            await asyncio.gather(*in_flight)

    def _messages(self, tick: int) -> list[dict[str, Any]]:
        ids = self.devices.device_ids
        users = list(self.devices.users)
        messages: list[dict[str, Any]] = []
        for index in range(self.batch):
            if index % 5 == 4:
                messages.append({"user_id": self._rng.choice(users), "body": f"t{tick}u{index}"})
            else:
                messages.append({"device_id": self._rng.choice(ids), "body": f"t{tick}d{index}"})
        if tick % self.fanout_every == 0:
            messages.append({"topic": TOPIC, "body": f"t{tick}topic"})
        if tick % (self.fanout_every * 2) == 0:
            messages.append({"broadcast": True, "body": f"t{tick}all", "ttl_s": 0})
        for message in messages:
            message.setdefault("ttl_s", 600)
        return messages

    async def _send(self, http: aiohttp.ClientSession, messages: list[dict[str, Any]]) -> None:
        """POST until the API answers: the same Idempotency-Key makes a retry safe."""
        headers = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
        deadline = time.monotonic() + 120
        self.ledger.requests += 1
        attempt = 0
        while True:
            try:
                async with http.post(
                    f"{self.url}/v1/push/batch",
                    json={"messages": messages},
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=20),
                ) as response:
                    if response.status in (200, 202):
                        self._record(messages, (await response.json())["results"])
                        return
                    reason = f"{response.status} {await response.text()}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = repr(exc)
            attempt += 1
            self.ledger.retries += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"push API gave no answer in 120 s: {reason}")
            await asyncio.sleep(min(1.0, 0.05 * 2**attempt))

    def _record(self, messages: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        ledger = self.ledger
        users = self.devices.users
        for message, result in zip(messages, results, strict=True):
            message_id = result.get("message_id")
            if not message_id:
                raise RuntimeError(f"push refused: {result}")
            ledger.accepted_at[message_id] = round(time.monotonic() - ledger.started, 2)
            if "device_id" in message:
                ledger.expected.add((message["device_id"], message_id))
                ledger.stored_messages.add(message_id)
                ledger.accepted_by_kind["device"] += 1
            elif "user_id" in message:
                for device_id in users[message["user_id"]]:
                    ledger.expected.add((device_id, message_id))
                ledger.stored_messages.add(message_id)
                ledger.accepted_by_kind["user"] += 1
            else:
                ledger.fanout_messages.add(message_id)
                ledger.accepted_by_kind["topic" if "topic" in message else "broadcast"] += 1


@dataclass
class PushOutcome:
    accepted_pushes: int
    accepted_by_kind: dict[str, int]
    expected_deliveries: int
    delivered: int
    duplicates: int
    lost: int
    expired_or_failed: int
    fanout_deliveries: int
    fanout_duplicates: int
    api_requests: int
    api_retries: int
    settle_s: float
    #: (device, message id, seconds into the load it was accepted, its status) of some.
    lost_examples: list[tuple[str, str, float, Any]]
    #: The MQTT boxes' share of the expected deliveries (device and user pushes).
    box_expected: int = 0
    box_delivered: int = 0
    box_lost: int = 0
    box_duplicates: int = 0


async def settle(
    load: PushLoad, http: aiohttp.ClientSession, timeout_s: float = 60.0
) -> PushOutcome:
    """Wait for every expected delivery (or ``timeout_s``), then account for each."""
    ledger = load.ledger
    received = load.devices.received
    started = time.monotonic()

    def missing() -> list[tuple[str, str]]:
        return [(d, m) for d, m in ledger.expected if received[d][m] == 0]

    while missing() and time.monotonic() - started < timeout_s:
        await asyncio.sleep(0.2)
    settle_s = time.monotonic() - started
    gone = missing()
    final = 0
    lost: list[tuple[str, str, float, Any]] = []
    for device_id, message_id in gone:
        status = await _status(load, http, message_id)
        device_status = (status or {}).get("devices", {}).get(device_id)
        if device_status in ("expired", "failed", "revoked"):
            final += 1
        else:
            lost.append((device_id, message_id, ledger.accepted_at.get(message_id, -1), status))
    delivered = sum(1 for d, m in ledger.expected if received[d][m] > 0)
    duplicates = sum(max(0, received[d][m] - 1) for d, m in ledger.expected)
    boxes = load.devices.boxes
    box_pairs = [(d, m) for d, m in ledger.expected if d in boxes]
    fanout = [
        count for counts in received.values() for m, count in counts.items()
        if m in ledger.fanout_messages
    ]  # fmt: skip
    return PushOutcome(
        accepted_pushes=sum(ledger.accepted_by_kind.values()),
        accepted_by_kind=dict(ledger.accepted_by_kind),
        expected_deliveries=len(ledger.expected),
        delivered=delivered,
        duplicates=duplicates,
        lost=len(lost),
        expired_or_failed=final,
        fanout_deliveries=len(fanout),
        fanout_duplicates=sum(c - 1 for c in fanout if c > 1),
        api_requests=ledger.requests,
        api_retries=ledger.retries,
        settle_s=round(settle_s, 1),
        lost_examples=lost[:10],
        box_expected=len(box_pairs),
        box_delivered=sum(1 for d, m in box_pairs if received[d][m] > 0),
        box_lost=sum(1 for d, _m, _at, _status in lost if d in boxes),
        box_duplicates=sum(max(0, received[d][m] - 1) for d, m in box_pairs),
    )


async def _status(
    load: PushLoad, http: aiohttp.ClientSession, message_id: str
) -> dict[str, Any] | None:
    for _ in range(5):
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(
                f"{load.url}/v1/messages/{message_id}", headers=load.headers
            ) as response:
                if response.status == 200:
                    result: dict[str, Any] = await response.json()
                    return result
                if response.status == 404:
                    return None
        await asyncio.sleep(0.5)
    return None


# ------------------------------------------------------------------ RPC


class EchoUpstream:
    """The backend the devices' ``app.*`` calls reach: echoes the body after a short
    wait (calls are in flight when a node drains). Listens on every address of this
    machine (port 0): the fleet's nodes reach it over the bridge."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.port = 0
        self.calls = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        async def rpc(request: web.Request) -> web.Response:
            self.calls += 1
            body = await request.read()
            await asyncio.sleep(self.delay_s)
            return web.Response(body=body, content_type="application/octet-stream")

        app = web.Application()
        app.router.add_post("/rpc/{op}", rpc)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # A backlog as a real backend's: when every device's first call lands at once
        # (the native engine admits 200 devices in a blink) the nodes open dozens of
        # connections while this process's loop is busy with the devices' TLS; with
        # aiohttp's 128 the kernel drops SYNs, the nodes' 1 s connect timeout fires and
        # their circuit breaker opens: a fault of this stand-in, not of the fleet.
        site = web.TCPSite(self._runner, "0.0.0.0", 0, backlog=4096)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class CallOutcome:
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class CallLoad:
    """Each device calls ``app.echo`` in a loop, one call at a time, with a pause."""

    def __init__(self, devices: Devices, *, pause_s: float = 0.2) -> None:
        self.devices = devices
        self.pause_s = pause_s
        self.outcome = CallOutcome()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._loop(c) for c in self.devices.clients.values()))

    def stop(self) -> None:
        self._stop.set()

    async def _loop(self, client: Client) -> None:
        index = 0
        while not self._stop.is_set():
            index += 1
            body = json.dumps({"n": index, "device": client.device_id}).encode()
            try:
                response = await client.call("app.echo", body)
                if response.body != body:
                    raise RuntimeError("echo answered another body")
                self.outcome.ok += 1
            except Exception as exc:
                self.outcome.failed += 1
                self.outcome.errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.pause_s)
