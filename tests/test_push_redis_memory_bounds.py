"""The Redis backend's own bounds, as ``[push]`` settings: the per-device key memo, the
presence decode memo, the connections to Redis, the keys per script call, the commands
per round trip and the inbox entries per read. Each bound set low is held on a
real Redis and a real three-master Redis Cluster, and the answers stay right past it.
(The envelopes kept for a node's own inbox: tests/test_push_redis_inbox_local.py.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from channel.config import PushConfig
from channel.push.model import Presence, PushMessage, now_ms
from channel.push.redis import redis_backend
from channel.push.redis.connection import Batch, Connection
from channel.push.redis.router import RedisRouter
from channel.push.stores import PushBackend
from tests.test_push_stores import InboxReader

DEVICES = 12
BOUND = 4


def _config(url: str, cluster: bool, **bounds: int) -> PushConfig:
    prefix = f"b{uuid.uuid4().hex[:10]}"
    return PushConfig(
        backend="redis",
        redis_url=url,
        redis_cluster=cluster,
        key_prefix=prefix,
        receipt_stream=f"{prefix}:receipts",
        **bounds,  # type: ignore[arg-type]
    )


BackendFactory = Callable[..., Any]


@pytest.fixture(params=["redis", "cluster"])
async def backend_with(request: pytest.FixtureRequest) -> AsyncIterator[BackendFactory]:
    """``await backend_with(setting=value, …)``: a Redis backend with those bounds."""
    name = "redis_server" if request.param == "redis" else "redis_cluster"
    url = request.getfixturevalue(name).url
    made: list[PushBackend] = []

    async def make(**bounds: int) -> PushBackend:
        backend = await redis_backend(_config(url, request.param == "cluster", **bounds))
        made.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in made:
            await backend.close()


def _message(n: int) -> PushMessage:
    now = now_ms()
    return PushMessage(f"m{n}", b"body", (), now + 60_000, accepted_at_ms=now)


async def test_the_key_memo_holds_at_most_its_setting(backend_with: BackendFactory) -> None:
    backend = await backend_with(redis_key_memo_devices=BOUND)
    devices = [f"dev-{n}" for n in range(DEVICES)]
    await backend.queue.enqueue([(d, _message(n)) for n, d in enumerate(devices)], cap=10)
    await backend.presence.lookup(devices)
    keys = backend.presence._keys  # type: ignore[attr-defined]
    assert 0 < len(keys._queues) <= BOUND
    assert 0 < len(keys._presences) <= BOUND
    # Past the bound the keys are made again, the same: every queue reads back.
    pending = await backend.queue.pending_many(devices, now_ms())
    for n, device in enumerate(devices):
        live, _expired = pending[device]
        assert [m.message_id for m in live] == [f"m{n}"]


async def test_the_presence_memo_holds_at_most_its_setting(
    backend_with: BackendFactory,
) -> None:
    backend = await backend_with(redis_presence_memo_devices=BOUND)
    node_no = await backend.presence.join("node-a", 60_000)
    devices = [f"dev-{n}" for n in range(DEVICES)]
    await backend.presence.set_online([Presence(d, f"user-{d}", node_no, 1) for d in devices])
    for _ in range(2):  # the second look-up goes through the memo
        found = await backend.presence.lookup(devices)
        assert {d: (p.user_id, p.node_no) for d, p in found.items()} == {
            d: (f"user-{d}", node_no) for d in devices
        }
        assert 0 < len(backend.presence._decoded) <= BOUND  # type: ignore[attr-defined]


def _clients(server: Any) -> int:
    client: redis.Redis = server.client()
    try:
        return int(client.info("clients")["connected_clients"]) - 1  # not this one
    finally:
        client.close()


async def test_connections_to_redis_stay_within_the_setting(
    backend_with: BackendFactory, request: pytest.FixtureRequest
) -> None:
    """Many calls at once, every one on the same key (so one server of a cluster gets
    them all): the pool opens no more than ``redis_max_connections``, the raw path keeps
    no more than ``redis_raw_connections`` idle, and no call fails for want of one."""
    cluster = "redis_cluster" in request.fixturenames
    fixture = request.getfixturevalue("redis_cluster" if cluster else "redis_server")
    backend = await backend_with(redis_max_connections=5, redis_raw_connections=2)
    conn = backend.connection
    assert isinstance(conn, Connection)
    key = f"{backend.presence._keys.prefix}:{{c}}"  # type: ignore[attr-defined]
    owner = fixture
    if cluster:
        slot = conn.client.keyslot(key)
        node = conn.client.nodes_manager.get_node_from_slot(slot)
        owner = next(s for s in fixture.nodes if s.port == node.port)
    before = _clients(owner)

    async def call(n: int) -> list[Any]:
        batch = Batch()
        batch.command("HSET", key, f"f{n}", n)
        return await conn.run(batch)

    replies = await asyncio.gather(*(call(n) for n in range(40)))
    assert replies == [[1]] * 40
    assert 0 < _clients(owner) - before <= 5
    assert len(conn._idle._idle) <= 2  # type: ignore[attr-defined]


async def test_script_calls_take_at_most_their_setting_of_keys(
    backend_with: BackendFactory,
) -> None:
    backend = await backend_with(redis_keys_per_script=BOUND)
    conn = backend.connection
    assert isinstance(conn, Connection)
    keys = backend.presence._keys  # type: ignore[attr-defined]
    names = [keys.queue(f"dev-{n % 2}") for n in range(DEVICES)]  # 6 a slot
    runs = conn.groups(names)
    assert sorted(i for run in runs for i in run) == list(range(DEVICES))
    assert all(0 < len(run) <= BOUND for run in runs)
    # And a batch of pushes over them is queued whole.
    devices = [f"dev-{n}" for n in range(DEVICES)]
    await backend.queue.enqueue([(d, _message(n)) for n, d in enumerate(devices)], cap=10)
    pending = await backend.queue.pending_many(devices, now_ms())
    assert all(len(pending[d][0]) == 1 for d in devices)


async def test_a_batch_goes_in_round_trips_of_at_most_its_setting(
    backend_with: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await backend_with(redis_pipeline_commands=BOUND)
    conn = backend.connection
    assert isinstance(conn, Connection)
    sent: list[int] = []
    execute = conn._execute  # type: ignore[attr-defined]

    async def counted(ops: Any) -> Any:  # the real exchange, its size noted
        sent.append(len(ops))
        return await execute(ops)

    monkeypatch.setattr(conn, "_execute", counted)
    key = f"{backend.presence._keys.prefix}:{{p}}"  # type: ignore[attr-defined]
    batch = Batch()
    for n in range(DEVICES + 1):
        batch.command("RPUSH", key, n)
    replies = await conn.run(batch)
    assert replies == list(range(1, DEVICES + 2))
    assert sent == [BOUND, BOUND, BOUND, 1]


class _SizedReader(InboxReader):
    """An inbox reader that notes how many envelopes each read brought."""

    sizes: list[int]

    async def _read(self) -> None:
        self.sizes = []
        async for batch in self._inbox:
            self.sizes.append(len(batch))
            self.received.extend(batch)
            self._changed.set()


async def test_an_inbox_read_takes_at_most_its_setting_of_entries(
    backend_with: BackendFactory,
) -> None:
    backend = await backend_with(redis_inbox_read_entries=3)
    conn, router = backend.connection, backend.router
    assert isinstance(conn, Connection) and isinstance(router, RedisRouter)
    reader = _SizedReader(router, 9)
    try:
        await reader.ready()
        reader.sizes.clear()
        # Twelve entries in one round trip: all but the first wait for the next read.
        batch = Batch()
        for n in range(DEVICES):
            batch.ops += router._sends([9], [b"e:%d" % n]).ops  # type: ignore[attr-defined]
        await conn.run(batch)
        got = await reader.take(DEVICES)
        assert got == [b"e:%d" % n for n in range(DEVICES)]
        assert sum(reader.sizes) == DEVICES
        assert max(reader.sizes) <= 3
    finally:
        await reader.close()
