"""Unicast pushes on the Redis stores in few round trips (``channel.push.redis.unicast``).

A batch of pushes accepted for devices is written (statuses, queue entries) and its
devices looked up in one round trip on one Redis, two on a Redis Cluster (the
look-up after every queue write); a push for a device on the accepting node is
written to it at once, with no inbox entry; a flush's ACKs (queue removals and
receipts) take one exchange. Nothing is answered accepted that was not queued.

A real gateway with real SDK devices, on one real Redis and on a real three-master
Redis Cluster.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from channel.config import PushConfig
from channel.push.model import PushMessage, PushStatus, Receipt, now_ms
from channel.push.redis import redis_backend
from channel.push.redis.keys import Keys
from channel.push.stores import PushBackend
from tests.gateway_harness import gateway
from tests.test_push_e2e import online, service, to_device, wait_status

pytestmark = pytest.mark.both_engines


@pytest.fixture(params=["redis", "cluster"])
def push(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The [push] section of a gateway on a real Redis, or on a real Redis Cluster."""
    cluster = request.param == "cluster"
    server = request.getfixturevalue("redis_cluster" if cluster else "redis_server")
    prefix = f"u{uuid.uuid4().hex[:8]}"
    return {
        "backend": "redis",
        "redis_url": server.url,
        "redis_cluster": cluster,
        "key_prefix": prefix,
        "receipt_stream": f"{prefix}:receipts",
        "request_stream_enabled": False,
    }


class RunCounter:
    """Counts the ``Connection.run`` calls (round trips; one per primary on a cluster)
    made by the task that makes this counter, not the node's own (lease, flushes): the
    calls themselves go to Redis as ever."""

    def __init__(self, backend: PushBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        conn = backend.connection
        real = conn.run
        mine = asyncio.current_task()

        async def counted(batch: Any) -> list[Any]:
            if asyncio.current_task() is mine:
                self.calls += 1
            return await real(batch)

        monkeypatch.setattr(conn, "run", counted)


def _client(push: dict[str, Any]) -> Any:
    if push["redis_cluster"]:
        return redis.RedisCluster.from_url(push["redis_url"])
    return redis.Redis.from_url(push["redis_url"])


async def test_pushes_to_devices_here_take_one_round_trip_and_no_inbox_entry(
    tmp_path: Path, push: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway(tmp_path, push=push) as gw, online(gw, "d1", "d2") as (one, two):
        svc = service(gw)
        backend = svc.backend
        await backend.presence.live_nodes()  # node leases cached: the look-up reads none
        counter = RunCounter(backend, monkeypatch)
        results = await svc.accept(
            [to_device("d1", b"a"), to_device("d2", b"b"), to_device("d1", b"c")]
        )
        # Statuses, queue entries and the look-up: one pipeline on one Redis; on a
        # cluster the look-up follows the writes. No inbox entry: both devices are here.
        assert counter.calls == (2 if push["redis_cluster"] else 1)
        assert [r.online for r in results] == [1, 1, 1]
        assert (await one.wait_pushes(2)) and one.bodies == [b"a", b"c"]
        assert (await two.wait_pushes(1)) and two.bodies == [b"b"]
        await wait_status(svc, results[2].message_id, "delivered")
        assert gw.node.delivery is not None
        keys = Keys(push["key_prefix"], 1)
        client = _client(push)
        try:
            node_no = gw.node.delivery.node_no
            assert client.exists(keys.inbox(node_no), keys.inbox_seq(node_no)) == 0
        finally:
            client.close()


async def test_a_push_that_cannot_be_queued_is_never_answered_accepted(
    tmp_path: Path, push: dict[str, Any]
) -> None:
    async with gateway(tmp_path, push=push) as gw, online(gw, "d1") as (device,):
        keys = Keys(push["key_prefix"], gw.node.config.push.presence_buckets)
        client = _client(push)
        try:
            # A queue key holding a string: every write to it fails (WRONGTYPE).
            client.set(keys.queue("broken"), "not a hash")
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await service(gw).accept([to_device("d1", b"x"), to_device("broken", b"y")])
        finally:
            client.close()
        # The node and its stores work on: the next push is queued and delivered.
        (result,) = await service(gw).accept([to_device("d1", b"next")])
        await wait_status(service(gw), result.message_id, "delivered")
        assert device.bodies[-1] == b"next"


@pytest.fixture
async def stores(push: dict[str, Any]) -> AsyncIterator[PushBackend]:
    backend = await redis_backend(
        PushConfig(**{k: v for k, v in push.items() if k != "request_stream_enabled"})
    )
    try:
        yield backend
    finally:
        await backend.close()


async def test_acks_remove_and_record_in_one_exchange(
    stores: PushBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = now_ms()
    devices = [f"dev-{n}" for n in range(40)]  # spread over slots on a cluster
    messages = [
        PushMessage(f"m{n}", b"body", (), now + 60_000, accepted_at_ms=now)
        for n in range(len(devices))
    ]
    pushes = [(m.message_id, d, m.expires_at_ms) for d, m in zip(devices, messages, strict=True)]
    await stores.receipts.create_for_devices(pushes, now, 3600)  # type: ignore[attr-defined]
    await stores.queue.enqueue(list(zip(devices, messages, strict=True)), 10)
    counter = RunCounter(stores, monkeypatch)
    pairs = list(zip(devices, messages, strict=True))
    await stores.unicast.acknowledged(
        [(d, m.message_id, "") for d, m in pairs],
        [Receipt(m.message_id, PushStatus.DELIVERED, d, now) for d, m in pairs],
    )
    assert counter.calls == 1
    pending = await stores.queue.pending_many(devices, now)
    assert all(pending[d] == ([], []) for d in devices)
    statuses = await asyncio.gather(*(stores.receipts.status(m.message_id) for m in messages))
    assert all(
        s is not None and s.devices == {d: PushStatus.DELIVERED}
        for s, d in zip(statuses, devices, strict=True)
    )


async def test_with_redis_gone_a_batch_is_never_answered_accepted_and_later_ones_arrive(
    tmp_path: Path, redis_factory: Any
) -> None:
    """Redis stops between two batches (the pipeline's connection breaks under it): the
    batch sent meanwhile fails as a whole, the node answers nothing accepted, and once
    Redis is back (empty) the next batch is queued and delivered."""
    server = redis_factory()
    # A short lease: the node finds the emptied Redis at its next renewal and rejoins.
    push = {
        "backend": "redis",
        "redis_url": server.url,
        "request_stream_enabled": False,
        "lease_ms": 1000,
    }
    async with gateway(tmp_path, push=push) as gw, online(gw, "d1") as (device,):
        svc = service(gw)
        (first,) = await svc.accept([to_device("d1", b"before")])
        await wait_status(svc, first.message_id, "delivered")
        server.stop()
        with pytest.raises(redis.exceptions.ConnectionError):
            await svc.accept([to_device("d1", b"lost"), to_device("d1", b"lost too")])
        server.start()
        # The empty Redis forgot the device's presence until the node's next lease
        # renewal: the push waits in the queue (replayed when the node rejoins) or goes
        # at once; either way it arrives.
        await svc.accept([to_device("d1", b"after")])
        async with asyncio.timeout(10):
            while b"after" not in device.bodies:
                await device.wait_pushes(len(device.pushes) + 1)
        assert b"lost" not in device.bodies and b"lost too" not in device.bodies
