"""The Redis stores' batched scripts at their bounds: one script call takes many keys
(``Connection.groups``), its arguments as one msgpack array, and Lua's ``unpack`` is
bounded (~8,000 values), so long field lists go in parts.

Every test runs on one real Redis and on a real three-master Redis Cluster (where a
call takes keys of one hash slot only), against the in-memory stores as reference.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import pytest

from channel.config import PushConfig
from channel.push.memory import memory_backend
from channel.push.model import (
    MessageStatus,
    Presence,
    PushMessage,
    PushStatus,
    Receipt,
    TargetKind,
    now_ms,
)
from channel.push.redis import redis_backend
from channel.push.redis.connection import Connection
from channel.push.redis.keys import Keys
from channel.push.stores import PushBackend, QueuedRef
from tests.test_push_stores import changed

FAR_MS = 3_600_000
KEYS_PER_SCRIPT = PushConfig.redis_keys_per_script


def _config(url: str, cluster: bool, buckets: int) -> PushConfig:
    prefix = f"b{uuid.uuid4().hex[:10]}"
    return PushConfig(
        backend="redis",
        redis_url=url,
        redis_cluster=cluster,
        key_prefix=prefix,
        presence_buckets=buckets,
        receipt_stream=f"{prefix}:receipts",
    )


@pytest.fixture(params=["redis", "cluster"])
def where(request: pytest.FixtureRequest) -> tuple[str, bool]:
    name = "redis_server" if request.param == "redis" else "redis_cluster"
    return request.getfixturevalue(name).url, request.param == "cluster"


@pytest.fixture
async def two_buckets(where: tuple[str, bool]) -> AsyncIterator[PushBackend]:
    """Every device in two presence buckets: long field lists, and (on one Redis) both
    buckets read by one script call."""
    stores = await redis_backend(_config(*where, buckets=2))
    try:
        yield stores
    finally:
        await stores.close()


@pytest.fixture
async def stores(where: tuple[str, bool]) -> AsyncIterator[PushBackend]:
    stores = await redis_backend(_config(*where, buckets=16))
    try:
        yield stores
    finally:
        await stores.close()


def _message(message_id: str, accepted_at_ms: int, collapse_key: str = "") -> PushMessage:
    return PushMessage(
        message_id=message_id,
        body=b"\x00\xff body " + message_id.encode(),
        headers=(("x-id", message_id),),
        expires_at_ms=now_ms() + FAR_MS,
        collapse_key=collapse_key,
        accepted_at_ms=accepted_at_ms,
    )


async def test_lookup_of_more_devices_in_a_bucket_than_lua_unpacks(
    two_buckets: PushBackend,
) -> None:
    presence = two_buckets.presence
    node = await presence.join("node-a", 30_000)
    entries = [Presence(f"dev-{i}", "", node, i) for i in range(20_000)]
    await presence.set_online(entries[::2])
    found = await presence.lookup([e.device_id for e in entries])
    assert found == {e.device_id: e for e in entries[::2]}


async def test_status_of_more_devices_than_lua_unpacks(stores: PushBackend) -> None:
    receipts = stores.receipts
    now = now_ms()
    devices = [f"dev-{i}" for i in range(5_000)]
    status = MessageStatus(
        "m-wide", TargetKind.DEVICE, now, now + FAR_MS, dict.fromkeys(devices, PushStatus.ACCEPTED)
    )
    await receipts.create([status], retention_s=60)
    assert await receipts.status("m-wide") == status
    await receipts.record([Receipt("m-wide", PushStatus.DELIVERED, d, now) for d in devices])
    stored = await receipts.status("m-wide")
    assert stored is not None
    assert set(stored.devices.values()) == {PushStatus.DELIVERED}


async def test_many_statuses_in_one_batch_keep_their_own_fields(stores: PushBackend) -> None:
    receipts = stores.receipts
    now = now_ms()
    statuses = [
        MessageStatus(
            f"m{i}",
            [TargetKind.DEVICE, TargetKind.USER, TargetKind.TOPIC][i % 3],
            now + i,
            now + FAR_MS + i,
            {f"d{i}-{j}": PushStatus.ACCEPTED for j in range(i % 4)} if i % 3 != 2 else {},
            delivered_count=i if i % 3 == 2 else 0,
        )
        for i in range(3 * KEYS_PER_SCRIPT)
    ]
    await receipts.create(statuses, retention_s=60)
    for status in statuses:
        assert await receipts.status(status.message_id) == status


async def test_big_batches_queue_and_remove_as_the_memory_queue_does(
    where: tuple[str, bool],
) -> None:
    """Batches longer than a script call takes, a device more than once per batch,
    collapse keys that look like the removal script's markers ("?", "=")."""
    config = _config(*where, buckets=16)
    stores = await redis_backend(config)
    try:
        await _queue_like_memory(stores, Keys(config.key_prefix, 16))
    finally:
        await stores.close()


async def _queue_like_memory(stores: PushBackend, keys: Keys) -> None:
    rng = random.Random(7)
    reference = memory_backend().queue
    outcomes = 0
    start = now_ms()
    refs: list[tuple[str, str, str]] = []
    for round_no in range(4):
        batch = []
        for i in range(KEYS_PER_SCRIPT + 100):
            device = rng.choice(["a", "b", "c", "d:e", "?"])
            ck = rng.choice(["", "", "", "k", "?", "=", "=x"])
            item = _message(f"m{round_no}-{i:04d}", start + round_no * 1000 + i, ck)
            batch.append((device, item))
            refs.append((device, item.message_id, ck))
        cap = rng.choice([5, 50])
        got = await stores.queue.enqueue(batch, cap)
        assert changed(got) == changed(await reference.enqueue(batch, cap))
        outcomes += len(got)
        chosen: list[QueuedRef] = [
            ref if rng.random() < 0.5 else ref[:2] for ref in rng.sample(refs, 300)
        ]
        await stores.queue.remove(chosen)
        await reference.remove(chosen)
        for device in ["a", "b", "c", "d:e", "?"]:
            at = start + 10
            assert await stores.queue.pending(device, at) == await reference.pending(device, at)
    for device, message_id, _ in refs[-50:]:
        got = await stores.queue.revoke(device, message_id)
        assert got == await reference.revoke(device, message_id)
    assert outcomes > 100  # collapses and drops happened, in runs of every length
    # Everything removed, collapse pointers included: no queue is left.
    await stores.queue.remove(refs[: len(refs) // 2])
    await stores.queue.remove([ref[:2] for ref in refs[len(refs) // 2 :]])
    client = stores.connection.client
    for device in ["a", "b", "c", "d:e", "?"]:
        assert await client.exists(keys.queue(device)) == 0


async def test_groups_keep_order_and_one_slot_per_cluster_run(where: tuple[str, bool]) -> None:
    url, cluster = where
    conn = Connection(_config(url, cluster, buckets=16))
    try:
        keys = Keys("g", 16)
        names = [keys.queue(f"dev-{i % 40}") for i in range(2 * KEYS_PER_SCRIPT + 7)]
        runs = conn.groups(names)
        assert sorted(i for run in runs for i in run) == list(range(len(names)))
        assert all(run == sorted(run) and 0 < len(run) <= KEYS_PER_SCRIPT for run in runs)
        if cluster:
            slots = [{conn.client.keyslot(names[i]) for i in run} for run in runs]  # type: ignore[union-attr]
            assert all(len(s) == 1 for s in slots)
        else:
            assert [len(run) for run in runs] == [KEYS_PER_SCRIPT, KEYS_PER_SCRIPT, 7]
    finally:
        await conn.aclose()
