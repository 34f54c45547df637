"""Pushes end to end on one node: accept → queue → route → device → ACK → receipt.

Real gateway (TLS 1.3 on port 0), real SDK devices, every test on the
in-memory push backend and on a real Redis (tests/test_push_fleet.py runs
several gateway processes and a Redis Cluster).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from channel.push import envelopes
from channel.push.model import (
    Priority,
    PushMessage,
    PushRequest,
    PushStatus,
    Target,
    TargetKind,
    new_message_id,
    now_ms,
)
from channel.push.service import PushService
from sdk_client import Backoff, BadRequest, Client, Push
from tests.gateway_harness import RunningGateway, gateway

pytestmark = pytest.mark.both_engines

WAIT_S = 5.0


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The [push] section: the in-memory stores, or a real Redis (the same paths)."""
    return push_section(request)


def push_section(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``backend``'s value, for modules that parametrize a fixture of their own."""
    if request.param == "memory":
        return {}
    server = request.getfixturevalue("redis_server")
    prefix = f"e{uuid.uuid4().hex[:8]}"
    # Tests share the session's Redis: every key and stream of this one is its own.
    return {
        "backend": "redis",
        "redis_url": server.url,
        "key_prefix": prefix,
        "receipt_stream": f"{prefix}:receipts",
        "request_stream_enabled": False,
    }


def service(gw: RunningGateway) -> PushService:
    assert gw.node.push is not None
    return gw.node.push


def to_device(device_id: str, body: bytes, **options: Any) -> PushRequest:
    return PushRequest(Target(TargetKind.DEVICE, (device_id,)), body, **options)


class Device:
    """An SDK client that records its pushes and wakes waiters."""

    def __init__(self, gw: RunningGateway, device_id: str, user_id: str = "u1") -> None:
        self.device_id = device_id
        self.pushes: list[Push] = []
        self._changed = asyncio.Event()
        self.client = Client(
            "127.0.0.1",
            gw.port,
            device_id=device_id,
            token=gw.token(device_id, user_id=user_id),
            ca_file=gw.ca_cert,
            app_id="demo",
            backoff=Backoff(initial_s=0.01, max_s=0.05),
        )
        self.client.on_push(self._on_push)

    def _on_push(self, push: Push) -> None:
        self.pushes.append(push)
        self._changed.set()

    async def wait_pushes(self, count: int) -> list[Push]:
        async with asyncio.timeout(WAIT_S):
            while len(self.pushes) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.pushes

    @property
    def bodies(self) -> list[bytes]:
        return [p.body for p in self.pushes]


@asynccontextmanager
async def online(
    gw: RunningGateway, *device_ids: str, user_id: str = "u1"
) -> AsyncIterator[list[Device]]:
    devices = [Device(gw, d, user_id) for d in device_ids]
    async with AsyncExitStack() as stack:
        for device in devices:
            await stack.enter_async_context(device.client)
            await device.client.connect()
        for device in devices:
            await asyncio.wait_for(gw.node.wait_authenticated(device.device_id), WAIT_S)
        # Presence is written in batches just after the handshake: wait for that write.
        assert gw.node.delivery is not None
        await asyncio.wait_for(gw.node.delivery.wait_flushed(), WAIT_S)
        yield devices


async def wait_status(svc: PushService, message_id: str, status: str) -> dict[str, Any]:
    """Wait on the receipt stream (a blocking read) until the message reaches ``status``."""
    cursor = "0"
    async with asyncio.timeout(WAIT_S):
        while True:
            current = await svc.status(message_id)
            assert current is not None
            if current.get("status") == status:
                return current
            _, cursor = await svc.receipts(cursor, 1000, 1000)


async def test_online_device_gets_the_push_and_the_status_becomes_delivered(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw, online(gw, "d1") as (device,):
        svc = service(gw)
        (result,) = await svc.accept([to_device("d1", b"hello", headers=(("kind", "chat"),))])
        assert result.queued == 1 and result.online == 1
        (push,) = await device.wait_pushes(1)
        assert push.body == b"hello" and push.message_id == result.message_id.encode()
        assert ("kind", "chat") in push.headers
        status = await wait_status(svc, result.message_id, "delivered")
        assert status["devices"] == {"d1": "delivered"}
        receipts, _ = await svc.receipts("0", 100, 0)
        assert [(r.message_id, r.status) for r in receipts] == [
            (result.message_id, PushStatus.DELIVERED)
        ]


async def test_offline_device_gets_its_pushes_in_order_when_it_connects(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw:
        svc = service(gw)
        results = await svc.accept([to_device("d1", f"m{i}".encode()) for i in range(5)])
        assert all(r.queued == 1 and r.online == 0 for r in results)
        assert (await svc.status(results[0].message_id))["status"] == "accepted"  # type: ignore[index]
        async with online(gw, "d1") as (device,):
            await device.wait_pushes(5)
            assert device.bodies == [f"m{i}".encode() for i in range(5)]
            for result in results:
                await wait_status(svc, result.message_id, "delivered")


async def test_ttl_zero_to_an_offline_device_is_expired_at_once(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw:
        svc = service(gw)
        (result,) = await svc.accept([to_device("d1", b"now or never", ttl_s=0)])
        assert result.expired == ("d1",) and result.queued == 0
        assert (await svc.status(result.message_id))["status"] == "expired"  # type: ignore[index]
        async with online(gw, "d1") as (device,):
            (later,) = await svc.accept([to_device("d1", b"online now", ttl_s=0)])
            await device.wait_pushes(1)
            assert device.bodies == [b"online now"]
            await wait_status(svc, later.message_id, "delivered")


async def test_collapse_key_replaces_an_undelivered_older_push(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw:
        svc = service(gw)
        old, _other, _new = await svc.accept(
            [
                to_device("d1", b"score 1-0", collapse_key="match-7"),
                to_device("d1", b"unrelated"),
                to_device("d1", b"score 2-0", collapse_key="match-7"),
            ]
        )
        status = await svc.status(old.message_id)
        assert status is not None and status["devices"] == {"d1": "revoked"}
        async with online(gw, "d1") as (device,):
            await device.wait_pushes(2)
            assert device.bodies == [b"unrelated", b"score 2-0"]
            assert ("collapse-key", "match-7") in device.pushes[1].headers


async def test_revoked_push_is_never_delivered(tmp_path: Path, backend: dict[str, Any]) -> None:
    async with gateway(tmp_path, push=backend) as gw:
        svc = service(gw)
        doomed, kept = await svc.accept([to_device("d1", b"oops"), to_device("d1", b"fine")])
        summary = await svc.revoke(doomed.message_id)
        assert summary == {"message_id": doomed.message_id, "revoked": ["d1"], "already_final": []}
        async with online(gw, "d1") as (device,):
            await device.wait_pushes(1)
            await wait_status(svc, kept.message_id, "delivered")
            assert device.bodies == [b"fine"]
        assert (await svc.status(doomed.message_id))["status"] == "revoked"  # type: ignore[index]
        assert await svc.revoke("no-such-message") is None


async def test_queue_cap_drops_the_oldest_and_reports_it_failed(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push={**backend, "queue_cap": 3}) as gw:
        svc = service(gw)
        results = await svc.accept([to_device("d1", f"m{i}".encode()) for i in range(5)])
        for dropped in results[:2]:
            assert (await svc.status(dropped.message_id))["status"] == "failed"  # type: ignore[index]
        async with online(gw, "d1") as (device,):
            await device.wait_pushes(3)
            assert device.bodies == [b"m2", b"m3", b"m4"]


async def test_expired_queued_push_is_reported_not_delivered(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw:
        svc = service(gw)
        (short,) = await svc.accept([to_device("d1", b"stale", ttl_s=60)])
        # Its ttl runs out while the device is away: the queued copy is rewritten with
        # an expiry in the past rather than waiting for the clock.
        assert gw.node.backend is not None
        queue = gw.node.backend.queue
        (queued,), _ = await queue.pending("d1", now_ms())
        await queue.enqueue([("d1", replace(queued, expires_at_ms=now_ms() - 1))], cap=100)
        (long,) = await svc.accept([to_device("d1", b"fresh")])
        async with online(gw, "d1") as (device,):
            await device.wait_pushes(1)
            await wait_status(svc, long.message_id, "delivered")
            assert device.bodies == [b"fresh"]
        status = await svc.status(short.message_id)
        assert status is not None and status["status"] == "expired"
        receipts, _ = await svc.receipts("0", 100, 0)
        assert (short.message_id, PushStatus.EXPIRED) in [
            (r.message_id, r.status) for r in receipts
        ]


async def test_user_target_reaches_every_online_device_of_the_user(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with (
        gateway(tmp_path, push=backend) as gw,
        online(gw, "phone", "tablet", user_id="alice") as devices,
        online(gw, "bob-phone", user_id="bob") as (bob,),
    ):
        svc = service(gw)
        (result,) = await svc.accept(
            [PushRequest(Target(TargetKind.USER, ("alice",)), b"hi alice")]
        )
        assert result.queued == 2
        for device in devices:
            await device.wait_pushes(1)
        status = await wait_status(svc, result.message_id, "delivered")
        assert status["devices"] == {"phone": "delivered", "tablet": "delivered"}
        assert bob.pushes == []


async def test_user_push_with_a_ttl_waits_for_the_users_offline_device(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw:
        async with online(gw, "tablet", user_id="alice"):
            pass  # the directory now lists the tablet as alice's
        svc = service(gw)
        async with online(gw, "phone", user_id="alice") as (phone,):
            (result,) = await svc.accept(
                [PushRequest(Target(TargetKind.USER, ("alice",)), b"hi alice", ttl_s=600)]
            )
            assert result.queued == 2
            await phone.wait_pushes(1)
        async with online(gw, "tablet", user_id="alice") as (tablet,):
            (push,) = await tablet.wait_pushes(1)
            assert push.body == b"hi alice"
            status = await wait_status(svc, result.message_id, "delivered")
            assert status["devices"] == {"phone": "delivered", "tablet": "delivered"}


async def test_user_push_never_reaches_a_device_now_signed_in_as_another_user(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw:
        async with online(gw, "shared", user_id="alice"):
            pass
        svc = service(gw)
        (for_alice,) = await svc.accept(
            [PushRequest(Target(TargetKind.USER, ("alice",)), b"for alice", ttl_s=600)]
        )
        assert for_alice.queued == 1  # offline, but alice's as far as anyone knows
        async with online(gw, "shared", user_id="bob") as (device,):
            status = await wait_status(svc, for_alice.message_id, "failed")
            assert status["devices"] == {"shared": "failed"}
            (for_bob,) = await svc.accept(
                [PushRequest(Target(TargetKind.USER, ("bob",)), b"for bob", ttl_s=600)]
            )
            assert for_bob.queued == 1
            await device.wait_pushes(1)
            assert device.bodies == [b"for bob"]


async def test_broadcast_reaches_every_connected_device_and_counts_deliveries(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with (
        gateway(tmp_path, push=backend) as gw,
        online(gw, *(f"d{i}" for i in range(30))) as devices,
    ):
        svc = service(gw)
        _first, second = await svc.accept(
            [
                PushRequest(Target(TargetKind.BROADCAST), b"maintenance at 2am"),
                PushRequest(Target(TargetKind.BROADCAST), b"done", priority=Priority.HIGH),
            ]
        )
        for device in devices:
            await device.wait_pushes(2)
            assert device.bodies == [b"maintenance at 2am", b"done"]
        registry = gw.node.metrics.registry
        assert registry.get_sample_value("channel_pushes_written_total") == 60
        assert registry.get_sample_value("channel_fanout_pending") == 0
        assert registry.get_sample_value("channel_inbox_resyncs_total") == 0
        # Counts are written with the acks; every device acked before its next flush.
        assert gw.node.delivery is not None
        async with asyncio.timeout(WAIT_S):
            while (await svc.status(second.message_id))["delivered_count"] != 30:  # type: ignore[index]
                await gw.node.delivery.wait_flushed()


async def test_topic_push_reaches_only_subscribers(tmp_path: Path, backend: dict[str, Any]) -> None:
    async with gateway(tmp_path, push=backend) as gw, online(gw, "fan", "other") as (fan, other):
        assert await fan.client.subscribe("public.scores") == 1
        with pytest.raises(BadRequest, match="topics"):
            await fan.client.subscribe("no spaces")
        svc = service(gw)
        await svc.accept([PushRequest(Target(TargetKind.TOPIC, ("public.scores",)), b"goal!")])
        await fan.wait_pushes(1)
        # A broadcast behind it proves the other device had its chance at the topic push.
        await svc.accept([PushRequest(Target(TargetKind.BROADCAST), b"all")])
        await other.wait_pushes(1)
        assert other.bodies == [b"all"]
        assert await fan.client.unsubscribe("public.scores") == 0
        await svc.accept([PushRequest(Target(TargetKind.TOPIC, ("public.scores",)), b"again")])
        await svc.accept([PushRequest(Target(TargetKind.BROADCAST), b"all 2")])
        await fan.wait_pushes(3)
        assert fan.bodies == [b"goal!", b"all", b"all 2"]


async def test_fanouts_going_round_in_slices_reach_each_device_once_in_order(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    # Two sessions per slice: the broadcasts and the topic push go round the ring in
    # several steps, and those accepted while it turns ride in the same writes.
    push = {**backend, "fanout_batch": 2}
    async with (
        gateway(tmp_path, push=push) as gw,
        online(gw, *(f"d{i}" for i in range(7))) as devices,
    ):
        fans = devices[:4]
        for device in fans:
            assert await device.client.subscribe("public.scores") == 1
        svc = service(gw)
        first = await svc.accept([PushRequest(Target(TargetKind.BROADCAST), b"b1")])
        await svc.accept([PushRequest(Target(TargetKind.TOPIC, ("public.scores",)), b"goal")])
        (last,) = await svc.accept([PushRequest(Target(TargetKind.BROADCAST), b"b2")])
        for device in devices:
            expected = [b"b1", b"goal", b"b2"] if device in fans else [b"b1", b"b2"]
            await device.wait_pushes(len(expected))
            assert device.bodies == expected
        assert gw.node.delivery is not None
        async with asyncio.timeout(WAIT_S):
            for result in (*first, last):
                while (await svc.status(result.message_id))["delivered_count"] != 7:  # type: ignore[index]
                    await gw.node.delivery.wait_flushed()


async def test_unacked_push_is_redelivered_on_the_next_connection(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw:
        svc = service(gw)
        async with online(gw, "d1") as (device,):
            # A device that cannot store the push does not acknowledge it.
            refused = asyncio.Event()

            def refuse(push: Push) -> None:
                refused.set()
                raise RuntimeError("storage full")

            device.client.on_push(refuse)
            (result,) = await svc.accept([to_device("d1", b"important")])
            session = gw.node.by_device["d1"]
            await asyncio.wait_for(refused.wait(), WAIT_S)
            assert gw.node.delivery is not None and gw.node.delivery.unacked(session) == 1
        async with online(gw, "d1") as (again,):
            await again.wait_pushes(1)
            assert again.bodies == [b"important"]
            await wait_status(svc, result.message_id, "delivered")


async def test_kick_and_backend_to_device_rpc_through_the_service(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw, online(gw, "d1") as (device,):

        @device.client.handle("app.ping")
        async def ping(request: Any) -> bytes:
            return b"pong:" + request.body

        svc = service(gw)
        answer = await svc.call_device("d1", "app.ping", b"1", (), 2.0)
        assert answer.status == 0 and answer.body == b"pong:1"
        missing = await svc.call_device("ghost", "app.ping", b"", (), 1.0)
        assert missing.status != 0
        assert await svc.kick("ghost", "") is False
        session = gw.node.by_device["d1"]
        assert await svc.kick("d1", "fraud check") is True
        await asyncio.wait_for(gw.node.wait_closed(session), WAIT_S)


async def test_high_priority_overtakes_normal_pushes_routed_in_the_same_batch(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=backend) as gw, online(gw, "d1") as (device,):
        await service(gw).accept(
            [
                to_device("d1", b"newsletter"),
                to_device("d1", b"fraud alert", priority=Priority.HIGH),
            ]
        )
        await device.wait_pushes(2)
        assert device.bodies == [b"fraud alert", b"newsletter"]
        assert ("priority", "high") in device.pushes[0].headers


@pytest.mark.engine_only("python")  # the Python engine's ring; the native one fans out itself
async def test_broadcasts_posted_one_by_one_within_the_linger_share_one_write(
    tmp_path: Path,
) -> None:
    """``fanout_linger_ms``: a broadcast that finds the ring idle waits; broadcasts that
    reach the node meanwhile, each in its own inbox batch, reach every device in one write."""
    async with (
        gateway(tmp_path, push={"fanout_linger_ms": 3000}) as gw,
        online(gw, *(f"d{i}" for i in range(5))) as devices,
    ):
        delivery = gw.node.delivery
        assert delivery is not None
        far = now_ms() + 600_000
        for k in range(3):
            # As the inbox hands each over: when the call returns it is on the ring,
            # which has not started (a separate batch per broadcast, as separate requests).
            message = PushMessage(new_message_id(), b"b%d" % k, expires_at_ms=far)
            await delivery._handle_batch([envelopes.pack(envelopes.BROADCAST, message.pack())])
            # One loop turn: a ring started at once has written everyone by now (its
            # task was scheduled first, and 5 devices are one step); a lingering one not.
            await asyncio.sleep(0)
            assert delivery.fanout_pending == k + 1 and delivery.fanout_writes == 0
        for device in devices:
            await device.wait_pushes(3)
            assert device.bodies == [b"b0", b"b1", b"b2"]
        assert delivery.pushes_written == 15
        assert delivery.fanout_writes == 5  # one write per device for all three
        registry = gw.node.metrics.registry
        assert registry.get_sample_value("channel_fanout_writes_total") == 5


@pytest.mark.engine_only("native")
async def test_native_engine_writes_broadcasts_within_the_linger_once_per_device(
    tmp_path: Path,
) -> None:
    async with (
        gateway(tmp_path, push={"fanout_linger_ms": 300}) as gw,
        online(gw, *(f"d{i}" for i in range(5))) as devices,
    ):
        svc = service(gw)
        writes_before = gw.node.engine.stats()["writes"]
        for k in range(3):
            await svc.accept([PushRequest(Target(TargetKind.BROADCAST), b"b%d" % k)])
        for device in devices:
            await device.wait_pushes(3)
            assert device.bodies == [b"b0", b"b1", b"b2"]
        stats = gw.node.engine.stats()
        assert stats["fanouts"] == 3 and stats["fanout_deliveries"] == 15
        # One TLS pass and one write per device for all three broadcasts.
        assert stats["writes"] - writes_before == 5


@pytest.mark.engine_only("python")
async def test_without_linger_each_broadcast_is_written_at_once(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, online(gw, "d0", "d1") as devices:
        svc = service(gw)
        for k in range(2):
            await svc.accept([PushRequest(Target(TargetKind.BROADCAST), b"b%d" % k)])
            for device in devices:
                await device.wait_pushes(k + 1)
        assert gw.node.delivery is not None and gw.node.delivery.fanout_writes == 4


async def test_subscribe_with_json_nested_too_deep_is_a_bad_request_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by the live fuzzer (stress/fuzz): the body reached json.loads, whose
    # RecursionError escaped as an "rpc handler failed" traceback and INTERNAL_ERROR.
    nested = b'{"topics": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    async with gateway(tmp_path) as gw, online(gw, "fan") as (fan,):
        with pytest.raises(BadRequest, match="topics"):
            await fan.client.call("channel.subscribe", nested)
        assert await fan.client.subscribe("public.still-works") == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_a_late_copy_of_an_acked_push_is_not_written_again_within_recent_acks(
    tmp_path: Path,
) -> None:
    """``[push] recent_acks``: a copy of a push arriving after its ACK (a replay racing
    its routed copy) is turned away; the memory keeps the newest ACKs, the oldest go."""
    async with gateway(tmp_path, push={"recent_acks": 2}) as gw, online(gw, "d1") as (device,):
        svc = service(gw)
        ids = []
        for body in (b"a", b"b", b"c"):  # acknowledged in this order
            (result,) = await svc.accept([to_device("d1", body)])
            await wait_status(svc, result.message_id, "delivered")
            ids.append(result.message_id)
        far = now_ms() + 600_000
        copies = [
            PushMessage(ids[i], body, expires_at_ms=far)
            for i, body in ((1, b"b"), (2, b"c"), (0, b"a"))
        ]
        delivery = gw.node.delivery
        assert delivery is not None
        await delivery._handle_batch([("d1", message) for message in copies])
        # A push accepted after the copies reaches the device after any of them.
        await svc.accept([to_device("d1", b"d")])
        await device.wait_pushes(4)
        assert device.bodies == [b"a", b"b", b"c", b"d"]  # the SDK shows a push once
        # Of the copies only a's was written (b and c are remembered, a was forgotten).
        stats = device.client.stats
        assert (stats.pushes_received, stats.pushes_duplicate) == (5, 1)
