"""The push stores' contract (``channel/push/stores.py``), over every implementation.

Each test runs on the in-memory stores, on one real Redis and on a real
three-master Redis Cluster, with a key prefix of its own. Redis-only tests at
the end restart a dedicated server to check what survives it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import suppress

import pytest

from channel.config import PushConfig
from channel.push import envelopes
from channel.push.memory import SWEEP_PER_WRITE, MemoryReceipts, memory_backend
from channel.push.model import (
    MessageStatus,
    Presence,
    Priority,
    PushMessage,
    PushStatus,
    Receipt,
    TargetKind,
    now_ms,
)
from channel.push.redis import redis_backend
from channel.push.stores import EnqueueOutcome, PushBackend, PushRouter, QueuedRef, is_running
from tests.redis_servers import RedisFactory, RedisServer

FAR_MS = 3_600_000


def changed(outcomes: list[EnqueueOutcome]) -> list[EnqueueOutcome]:
    """The outcomes that replaced or dropped something: a store may leave out the rest."""
    return [o for o in outcomes if o.replaced or o.dropped]


def redis_config(url: str, *, cluster: bool = False) -> PushConfig:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return PushConfig(
        backend="redis",
        redis_url=url,
        redis_cluster=cluster,
        key_prefix=prefix,
        presence_buckets=16,
        receipt_stream=f"{prefix}:receipts",
    )


@pytest.fixture(params=["memory", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[PushBackend]:
    if request.param == "memory":
        stores = memory_backend()
    elif request.param == "redis":
        server = request.getfixturevalue("redis_server")
        stores = await redis_backend(redis_config(server.url))
    else:
        cluster = request.getfixturevalue("redis_cluster")
        stores = await redis_backend(redis_config(cluster.url, cluster=True))
    try:
        yield stores
    finally:
        await stores.close()


def message(
    message_id: str,
    accepted_at_ms: int,
    *,
    expires_at_ms: int | None = None,
    collapse_key: str = "",
) -> PushMessage:
    return PushMessage(
        message_id=message_id,
        body=b"\x00body of " + message_id.encode() + bytes(range(256)),
        headers=(("x-kind", "test"), ("x-id", message_id)),
        expires_at_ms=expires_at_ms if expires_at_ms is not None else now_ms() + FAR_MS,
        collapse_key=collapse_key,
        accepted_at_ms=accepted_at_ms,
    )


# ----------------------------------------------------------------- presence


async def test_presence_lookup_user_devices_offline(backend: PushBackend) -> None:
    presence = backend.presence
    node = await presence.join("node-a", 30_000)
    a1 = Presence("d1", "u1", node, 1_700_000_000)
    a2 = Presence("d2", "u1", node, 1_700_000_001)
    b1 = Presence("d3", "u2", node, 0)
    await presence.set_online([a1, a2, b1])
    assert await presence.lookup(["d1", "d2", "d3", "nope"]) == {"d1": a1, "d2": a2, "d3": b1}
    assert await presence.lookup([]) == {}
    assert sorted(await presence.user_devices("u1"), key=lambda p: p.device_id) == [a1, a2]
    assert await presence.user_devices("nobody") == []
    assert (await presence.live_nodes())[node] == "node-a"

    await presence.set_offline([a1])
    assert await presence.lookup(["d1", "d2"]) == {"d2": a2}
    assert await presence.user_devices("u1") == [a2]
    await presence.set_offline([a1, a2, b1])
    assert await presence.lookup(["d1", "d2", "d3"]) == {}
    assert await presence.user_devices("u1") == []


async def test_set_offline_spares_a_device_that_moved(backend: PushBackend) -> None:
    presence = backend.presence
    a = await presence.join("node-a", 30_000)
    b = await presence.join("node-b", 30_000)
    assert a != b
    assert await presence.live_nodes() == {a: "node-a", b: "node-b"}
    await presence.set_online([Presence("d1", "u1", a, 10)])
    moved = Presence("d1", "u1", b, 20)
    await presence.set_online([moved])
    # Node a learns late that the device left it.
    await presence.set_offline([Presence("d1", "u1", a, 10)])
    assert await presence.lookup(["d1"]) == {"d1": moved}
    assert await presence.user_devices("u1") == [moved]
    await presence.set_offline([moved])
    assert await presence.lookup(["d1"]) == {}


async def test_device_that_changes_user_leaves_the_old_one(backend: PushBackend) -> None:
    presence = backend.presence
    node = await presence.join("node-a", 30_000)
    await presence.set_online([Presence("d1", "u1", node, 1)])
    now_u2 = Presence("d1", "u2", node, 2)
    await presence.set_online([now_u2])
    assert await presence.user_devices("u1") == []
    assert await presence.user_devices("u2") == [now_u2]
    assert await presence.lookup(["d1"]) == {"d1": now_u2}


async def test_ids_with_separators_and_glob_characters(backend: PushBackend) -> None:
    presence = backend.presence
    node = await presence.join("node:a|1", 30_000)
    star = Presence("dev:1*?[x]", "u:1*", node, 5)
    plain = Presence("dev:2", "u:1", node, 6)
    no_user = Presence("dev:3", "", node, 7)
    await presence.set_online([star, plain, no_user])
    assert await presence.user_devices("u:1*") == [star]
    assert await presence.user_devices("u:1") == [plain]
    assert await presence.lookup(["dev:1*?[x]", "dev:3"]) == {"dev:1*?[x]": star, "dev:3": no_user}
    assert (await presence.live_nodes())[node] == "node:a|1"


async def test_leave_takes_every_device_offline(backend: PushBackend) -> None:
    presence = backend.presence
    node = await presence.join("node-a", 30_000)
    await presence.set_online([Presence("d1", "u1", node, 1), Presence("d2", "u1", node, 1)])
    await presence.leave(node)
    assert node not in await presence.live_nodes()
    assert await presence.lookup(["d1", "d2"]) == {}
    assert await presence.user_devices("u1") == []


async def test_lapsed_lease_takes_devices_offline_and_renew_says_so(
    backend: PushBackend,
) -> None:
    presence = backend.presence
    short = await presence.join("short", 60_000)
    long = await presence.join("long", 60_000)
    assert await presence.renew(short, "short", 60_000)
    stays = Presence("d2", "u1", long, 1)
    await presence.set_online([Presence("d1", "u1", short, 1), stays])
    assert await presence.lookup(["d1", "d2"]) == {
        "d1": Presence("d1", "u1", short, 1),
        "d2": stays,
    }
    # A lease that ended a second ago: what a node silent past its lease leaves behind
    # (no waiting for time to pass).
    await presence.renew(short, "short", -1000)
    assert await presence.lookup(["d1", "d2"]) == {"d2": stays}
    assert await presence.user_devices("u1") == [stays]
    assert await presence.live_nodes() == {long: "long"}
    # The node comes back: it is told, and writes its devices again.
    assert not await presence.renew(short, "short", 60_000)
    back = Presence("d1", "u1", short, 2)
    await presence.set_online([back])
    assert await presence.lookup(["d1"]) == {"d1": back}
    assert await presence.renew(short, "short", 60_000)


async def test_presence_in_large_batches(backend: PushBackend) -> None:
    presence = backend.presence
    node = await presence.join("node-a", 30_000)
    entries = [Presence(f"dev-{i}", f"user-{i % 1000}", node, i) for i in range(2500)]
    await presence.set_online(entries)
    found = await presence.lookup([e.device_id for e in entries])
    assert found == {e.device_id: e for e in entries}
    assert len(await presence.user_devices("user-7")) == 3
    await presence.set_offline(entries)
    assert await presence.lookup([e.device_id for e in entries]) == {}


# -------------------------------------------------------------------- queue


# ---------------------------------------------------------------- directory


async def test_directory_lists_a_users_devices_newest_first(backend: PushBackend) -> None:
    directory = backend.directory
    now = int(time.time())
    await directory.remember(
        [
            Presence("phone", "u1", 1, now - 100),
            Presence("tablet", "u1", 2, now - 50),
            Presence("tv", "u2", 1, now - 10),
            Presence("anonymous", "", 1, now),  # no user: not listed anywhere
        ]
    )
    # Offline or online does not matter: the directory is not presence.
    found = await directory.known_devices(["u1", "u2", "nobody", "u1"], now)
    assert found == {"u1": ["tablet", "phone"], "u2": ["tv"]}
    # A new connection moves a device to the front.
    await directory.remember([Presence("phone", "u1", 3, now)])
    assert (await directory.known_devices(["u1"], now))["u1"] == ["phone", "tablet"]


async def test_directory_forgets_devices_not_seen_within_ttl(backend: PushBackend) -> None:
    directory = backend.directory
    ttl = directory.ttl_s
    now = int(time.time())
    await directory.remember(
        [Presence("old", "u1", 1, now - ttl - 5), Presence("recent", "u1", 1, now - 5)]
    )
    assert await directory.known_devices(["u1"], now) == {"u1": ["recent"]}
    # Forgotten, not just hidden: a later read with an older "now" does not see it.
    assert await directory.known_devices(["u1"], now - 10) == {"u1": ["recent"]}
    assert await directory.known_devices(["u1"], now + ttl + 10) == {"u1": []}


async def test_directory_sweep_forgets_what_no_push_read(backend: PushBackend) -> None:
    directory = backend.directory
    ttl = directory.ttl_s
    now = int(time.time())
    users = [f"user-{i}" for i in range(40)]
    await directory.remember(
        [Presence(f"old-{u}", u, 1, now - ttl - 1) for u in users]
        + [Presence(f"new-{u}", u, 1, now) for u in users[::2]]
    )
    # Swept in two halves, the way nodes share the buckets.
    half = -(-directory.buckets // 2)
    forgotten = await directory.sweep(0, half, now)
    forgotten += await directory.sweep(half, directory.buckets - half, now)
    assert forgotten == len(users)
    # Nothing old is left to forget, and what is recent stays.
    assert await directory.sweep(0, directory.buckets, now) == 0
    found = await directory.known_devices(users, now)
    assert found == {u: [f"new-{u}"] for u in users[::2]}


async def test_directory_keeps_the_newest_cap_devices(backend: PushBackend) -> None:
    directory = backend.directory
    cap = directory.cap
    now = int(time.time())
    entries = [Presence(f"d{i:03}", "many*[u]", 1, now - 1000 + i) for i in range(cap + 5)]
    await directory.remember(entries)
    newest = [e.device_id for e in reversed(entries)][:cap]
    assert (await directory.known_devices(["many*[u]"], now))["many*[u]"] == newest
    # The other users of the bucket are not touched by the glob characters.
    await directory.remember([Presence("x", "many", 1, now)])
    assert (await directory.known_devices(["many"], now))["many"] == ["x"]


async def test_queue_keeps_acceptance_order_and_every_field(backend: PushBackend) -> None:
    queue = backend.queue
    high = PushMessage(
        "m2",
        b"\xff" * 70_000,
        (("a", "1"),),
        now_ms() + FAR_MS,
        priority=Priority.HIGH,
        accepted_at_ms=2000,
        online_only=True,
    )
    first = message("m1", 1000)
    other = message("m3", 3000)
    outcomes = await queue.enqueue([("d1", high), ("d1", first), ("d2", other)], cap=10)
    # Nothing replaced or dropped: a store may leave such outcomes out.
    assert changed(outcomes) == []
    assert all(isinstance(o, EnqueueOutcome) for o in outcomes)
    assert await queue.pending("d1", now_ms()) == ([first, high], [])
    assert await queue.pending("d2", now_ms()) == ([other], [])
    assert await queue.pending("nobody", now_ms()) == ([], [])
    assert await queue.enqueue([], cap=10) == []


async def test_collapse_key_replaces_the_queued_message(backend: PushBackend) -> None:
    queue = backend.queue
    m1 = message("m1", 1, collapse_key="score")
    m2 = message("m2", 2, collapse_key="other")
    m3 = message("m3", 3, collapse_key="score")
    outcomes = await queue.enqueue([("d", m1), ("d", m2), ("d", m3)], cap=10)
    assert changed(outcomes) == [EnqueueOutcome("d", "m3", replaced=("m1",))]
    assert (await queue.pending("d", now_ms()))[0] == [m2, m3]
    # Once delivered, a collapse key has nothing left to replace.
    await queue.remove([("d", "m3")])
    assert changed(await queue.enqueue([("d", message("m4", 4, collapse_key="score"))], 10)) == []
    assert await queue.revoke("d", "m4")
    assert changed(await queue.enqueue([("d", message("m5", 5, collapse_key="score"))], 10)) == []
    # Removed with its collapse key given (the node knows it): the pointer goes too.
    await queue.remove([("d", "m5", "score")])
    assert changed(await queue.enqueue([("d", message("m7", 7, collapse_key="score"))], 10)) == []
    # Another device's queue is its own.
    assert changed(await queue.enqueue([("e", message("m6", 6, collapse_key="score"))], 10)) == []


async def test_cap_drops_the_oldest(backend: PushBackend) -> None:
    queue = backend.queue
    items = [("d", message(f"m{i}", i, collapse_key="x" if i == 1 else "")) for i in range(1, 6)]
    outcomes = await queue.enqueue(items, cap=3)
    assert changed(outcomes) == [
        EnqueueOutcome("d", "m4", dropped=("m1",)),
        EnqueueOutcome("d", "m5", dropped=("m2",)),
    ]
    queued, _ = await queue.pending("d", now_ms())
    assert [m.message_id for m in queued] == ["m3", "m4", "m5"]
    # The dropped message took its collapse key with it.
    outcomes = await queue.enqueue([("d", message("m6", 6, collapse_key="x"))], cap=3)
    assert changed(outcomes) == [EnqueueOutcome("d", "m6", dropped=("m3",))]


async def test_expired_messages_are_reported_once(backend: PushBackend) -> None:
    queue = backend.queue
    now = now_ms()
    gone = message("m1", now - 5000, expires_at_ms=now - 1)
    live = message("m2", now - 4000, expires_at_ms=now + 60_000)
    await queue.enqueue([("d", gone), ("d", live)], cap=10)
    assert await queue.pending("d", now) == ([live], [gone])
    assert await queue.pending("d", now) == ([live], [])
    assert await queue.pending("d", now + 120_000) == ([], [live])
    assert await queue.pending("d", now + 120_000) == ([], [])


async def test_remove_and_revoke(backend: PushBackend) -> None:
    queue = backend.queue
    await queue.enqueue(
        [("d1", message("m1", 1)), ("d1", message("m2", 2)), ("d2", message("m3", 3))], cap=10
    )
    await queue.remove([("d1", "m1"), ("d2", "m3", ""), ("d1", "missing", ""), ("nobody", "m1")])
    await queue.remove([])
    assert [m.message_id for m in (await queue.pending("d1", now_ms()))[0]] == ["m2"]
    assert await queue.pending("d2", now_ms()) == ([], [])
    assert await queue.revoke("d1", "m2")
    assert not await queue.revoke("d1", "m2")
    assert not await queue.revoke("nobody", "m2")


async def test_pending_many_reads_many_queues_at_once(backend: PushBackend) -> None:
    queue = backend.queue
    stale = message("old", 500, expires_at_ms=now_ms() - 1)
    fresh = [message(f"m{i}", 1000 + i) for i in range(3)]
    await queue.enqueue([("a", fresh[1]), ("a", fresh[0]), ("b", stale), ("b", fresh[2])], 10)
    found = await queue.pending_many(["a", "b", "nobody", "a"], now_ms())
    assert found == {
        "a": ([fresh[0], fresh[1]], []),
        "b": ([fresh[2]], [stale]),
        "nobody": ([], []),
    }
    # The expired one is gone for good; the others stay until acknowledged.
    assert await queue.pending("b", now_ms()) == ([fresh[2]], [])
    assert await queue.pending_many([], now_ms()) == {}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_queue_agrees_with_the_memory_queue(backend: PushBackend, seed: int) -> None:
    """Random enqueues, removals, revokes and reads give what the in-memory queue gives."""
    rng = random.Random(seed)
    reference = memory_backend().queue
    start = now_ms()
    clock = start
    next_id = 0
    ids: list[tuple[str, str, str]] = []
    for _ in range(60):
        action = rng.random()
        if action < 0.55:
            batch = []
            for _ in range(rng.randint(1, 4)):
                next_id += 1
                clock += 1
                device = rng.choice("abc")
                lifetime = rng.choice([5, 50, FAR_MS])
                ck = rng.choice(["", "", "k1", "k2"])
                item = message(
                    f"m{next_id:03d}", clock, expires_at_ms=start + lifetime, collapse_key=ck
                )
                batch.append((device, item))
                ids.append((device, item.message_id, ck))
            cap = rng.choice([2, 4, 100])
            assert changed(await backend.queue.enqueue(batch, cap)) == changed(
                await reference.enqueue(batch, cap)
            )
        elif action < 0.7 and ids:
            # With the collapse key (as nodes remove what was delivered) or without.
            chosen: list[QueuedRef] = [
                ref if rng.random() < 0.5 else ref[:2] for ref in rng.sample(ids, min(len(ids), 3))
            ]
            await backend.queue.remove(chosen)
            await reference.remove(chosen)
        elif action < 0.8 and ids:
            device, message_id, _ = rng.choice(ids)
            got = await backend.queue.revoke(device, message_id)
            assert got == await reference.revoke(device, message_id)
        else:
            device = rng.choice("abc")
            at = start + rng.choice([0, 10, 100])
            assert await backend.queue.pending(device, at) == await reference.pending(device, at)
    for device in "abc":
        at = start + FAR_MS - 1
        assert await backend.queue.pending(device, at) == await reference.pending(device, at)


# ------------------------------------------------------------------- router


class InboxReader:
    """Reads a node's inbox in the background; ``ready`` proves reads have begun."""

    def __init__(self, router: PushRouter, node_no: int) -> None:
        self.router = router
        self.node_no = node_no
        self.received: list[bytes] = []
        self._changed = asyncio.Event()
        self._inbox = router.inbox(node_no)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for batch in self._inbox:
            self.received.extend(batch)
            self._changed.set()

    async def ready(self) -> None:
        """An inbox reads from its first read on: probe until a probe arrives.

        Probes sent before that are lost; every one after the first that arrives is
        not, so once the last one sent is in, nothing else can be in flight."""
        sent = 0
        deadline = time.monotonic() + 5
        while not self.received:
            assert time.monotonic() < deadline, "inbox never started"
            sent += 1
            await self.router.send(self.node_no, [b"probe:%d" % sent])
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), 0.05)
        async with asyncio.timeout(5):
            while self.received[-1] != b"probe:%d" % sent:
                self._changed.clear()
                await self._changed.wait()
        assert all(e.startswith(b"probe:") for e in self.received)
        self.received.clear()

    async def take(self, count: int, timeout_s: float = 10.0) -> list[bytes]:
        """The next ``count`` envelopes, waiting for them (bounded)."""
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self._changed.clear()
                await self._changed.wait()
        got = self.received[:count]
        del self.received[:count]
        return got

    async def close(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 5)
        aclose = getattr(self._inbox, "aclose", None)
        if aclose is not None:
            await aclose()


async def test_router_send_and_inbox(backend: PushBackend) -> None:
    node = await backend.presence.join("node-a", 30_000)
    reader = InboxReader(backend.router, node)
    try:
        await reader.ready()
        await backend.router.send(node, [b"a"])
        await backend.router.send(node, [])
        await backend.router.send(node, [b"b", b"\x00c"])
        assert await reader.take(3) == [b"a", b"b", b"\x00c"]
    finally:
        await reader.close()


@pytest.fixture(params=["redis", "cluster"])
async def redis_stores(request: pytest.FixtureRequest) -> AsyncIterator[PushBackend]:
    """The Redis backends only (the in-process inbox is never trimmed)."""
    if request.param == "redis":
        config = redis_config(request.getfixturevalue("redis_server").url)
    else:
        config = redis_config(request.getfixturevalue("redis_cluster").url, cluster=True)
    stores = await redis_backend(config)
    try:
        yield stores
    finally:
        await stores.close()


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_a_node_that_just_joined_gets_what_is_sent_to_all_once_its_inbox_is_ready(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """``send_all(fresh=True)`` reaches a node that joined after the sender's last
    (cached) lease read: the MQTT front's global subscription changes depend on it. Two
    nodes' own stores on one Redis; the joiner's inbox reads all that is sent once it
    said it is ready."""
    if kind == "redis":
        config = redis_config(request.getfixturevalue("redis_server").url)
    else:
        config = redis_config(request.getfixturevalue("redis_cluster").url, cluster=True)
    sender, joiner = await redis_backend(config), await redis_backend(config)
    try:
        await sender.presence.join("node-early", 30_000)
        await sender.presence.live_nodes()  # the sender's cached view: no late node yet
        late = await joiner.presence.join("node-late", 30_000)
        ready = asyncio.Event()
        inbox = joiner.router.inbox(late, ready)
        first = asyncio.ensure_future(anext(inbox))
        async with asyncio.timeout(10):
            await ready.wait()
            await sender.router.send_all([b"hello"], fresh=True)
            assert await first == [b"hello"]
        await inbox.aclose()  # type: ignore[attr-defined]
    finally:
        await sender.close()
        await joiner.close()


async def test_inbox_read_after_entries_were_trimmed_starts_with_resync(
    redis_stores: PushBackend,
) -> None:
    """A node that falls so far behind that its inbox is trimmed past what it read is told
    so (a RESYNC envelope first), so it can replay its devices' queues."""
    backend = redis_stores
    router = backend.router
    router.max_entries = 5  # type: ignore[attr-defined]
    node = await backend.presence.join("node-a", 30_000)
    inbox = router.inbox(node)
    first = asyncio.ensure_future(anext(inbox))
    sent = 0
    while not first.done():  # probe until reads have begun
        sent += 1
        await router.send(node, [b"probe:%d" % sent])
        await asyncio.wait([first], timeout=0.05)
    read = list(first.result())
    while read[-1] != b"probe:%d" % sent:
        read += await anext(inbox)
    # Within the limit: read in order, no RESYNC.
    await router.send(node, [b"kept:1"])
    await router.send(node, [b"kept:2"])
    got = await anext(inbox)
    while len(got) < 2:
        got += await anext(inbox)
    assert got == [b"kept:1", b"kept:2"]
    # The node stops reading; 350 entries later Redis has trimmed whole stream nodes
    # (~100 entries each) beyond the newest 5.
    for index in range(350):
        await router.send(node, [b"late:%d" % index])
    got = await anext(inbox)
    assert envelopes.unpack(got[0]) == [envelopes.RESYNC]
    assert b"late:0" not in got and got[-1].startswith(b"late:")
    rest = got[1:]
    numbers = [int(e.split(b":")[1]) for e in rest]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    # Caught up: the next entries come without a RESYNC.
    await router.send(node, [b"after"])
    got = await anext(inbox)
    while got[-1] != b"after":
        got += await anext(inbox)
    assert all(e != envelopes.pack(envelopes.RESYNC) for e in got)
    await inbox.aclose()


async def test_send_all_reaches_every_live_node(backend: PushBackend) -> None:
    presence, router = backend.presence, backend.router
    a = await presence.join("node-a", 30_000)
    b = await presence.join("node-b", 30_000)
    readers = [InboxReader(router, a), InboxReader(router, b)]
    try:
        for reader in readers:
            await reader.ready()
        await router.send_all([b"x", b"y"])
        assert await readers[0].take(2) == [b"x", b"y"]
        assert await readers[1].take(2) == [b"x", b"y"]
        await presence.leave(b)
        await router.send_all([b"only-a"])
        await router.send(b, [b"direct"])
        assert await readers[0].take(1) == [b"only-a"]
        assert await readers[1].take(1) == [b"direct"]
    finally:
        for reader in readers:
            await reader.close()
    await router.drop_inbox(a)
    await router.drop_inbox(b)
    await router.drop_inbox(12345)


# ----------------------------------------------------------------- receipts


def fanout_status(message_id: str) -> MessageStatus:
    return MessageStatus(
        message_id=message_id,
        target=TargetKind.BROADCAST,
        accepted_at_ms=now_ms(),
        expires_at_ms=now_ms() + FAR_MS,
        devices={},
    )


def device_status(message_id: str, *devices: str, expires_at_ms: int = 0) -> MessageStatus:
    return MessageStatus(
        message_id=message_id,
        target=TargetKind.USER if len(devices) > 1 else TargetKind.DEVICE,
        accepted_at_ms=now_ms(),
        expires_at_ms=expires_at_ms or now_ms() + FAR_MS,
        devices=dict.fromkeys(devices, PushStatus.ACCEPTED),
    )


async def test_status_moves_from_accepted_once(backend: PushBackend) -> None:
    receipts = backend.receipts
    created = device_status("m1", "d1", "d2", "d3")
    await receipts.create([created], retention_s=60)
    assert await receipts.status("m1") == created
    assert await receipts.status("unknown") is None
    at = now_ms()
    await receipts.record(
        [
            Receipt("m1", PushStatus.DELIVERED, "d1", at),
            Receipt("m1", PushStatus.ACCEPTED, "d1", at),
            Receipt("m1", PushStatus.EXPIRED, "d1", at, "ttl"),
            Receipt("m1", PushStatus.FAILED, "d2", at, "queue_full"),
            Receipt("m1", PushStatus.DELIVERED, "d2", at),
        ]
    )
    status = await receipts.status("m1")
    assert status is not None
    assert status.devices == {
        "d1": PushStatus.DELIVERED,
        "d2": PushStatus.FAILED,
        "d3": PushStatus.ACCEPTED,
    }
    assert status.delivered_count == 0
    await receipts.record([Receipt("m1", PushStatus.REVOKED, "d3", at, "revoked")])
    status = await receipts.status("m1")
    assert status is not None and status.devices["d3"] is PushStatus.REVOKED


async def test_a_one_device_status_moves_like_any_other(backend: PushBackend) -> None:
    # The memory store keeps statuses listing one device in a compact form.
    receipts = backend.receipts
    receipts.final_retention_ms = 60_000
    created = device_status("m1", "d1")
    user_push = MessageStatus(
        "u1", TargetKind.USER, now_ms(), now_ms() + FAR_MS, {"d1": PushStatus.ACCEPTED}
    )
    await receipts.create([created, user_push, device_status("old", "d1")], retention_s=60)
    assert await receipts.status("m1") == created
    assert await receipts.status("u1") == user_push
    at = now_ms()
    await receipts.record(
        [
            Receipt("m1", PushStatus.DELIVERED, "d9", at),  # not listed: only counted
            Receipt("m1", PushStatus.DELIVERED, "d1", at),
            Receipt("m1", PushStatus.ACCEPTED, "d1", at),
            Receipt("m1", PushStatus.EXPIRED, "d1", at, "ttl"),
            Receipt("u1", PushStatus.FAILED, "d1", at, "device signed in as another user"),
            Receipt("old", PushStatus.DELIVERED, "d1", at - 120_000),
        ]
    )
    await receipts.add_delivered({"m1": 2})
    status = await receipts.status("m1")
    assert status is not None
    assert status.devices == {"d1": PushStatus.DELIVERED} and status.delivered_count == 3
    assert status.target is TargetKind.DEVICE
    status = await receipts.status("u1")
    assert status is not None and status.target is TargetKind.USER
    assert status.devices == {"d1": PushStatus.FAILED}
    # Final two minutes ago, past the final retention: gone.
    assert await receipts.status("old") is None
    read, _ = await receipts.read("0", 10, 0)
    assert [(r.message_id, r.status, r.device_id) for r in read][:2] == [
        ("m1", PushStatus.DELIVERED, "d9"),
        ("m1", PushStatus.DELIVERED, "d1"),
    ]
    assert read[3].reason == "ttl"


async def test_statuses_for_one_device_each_in_one_call(backend: PushBackend) -> None:
    receipts = backend.receipts
    now = now_ms()
    await receipts.create_for_devices(
        [("m1", "d1", now + FAR_MS), ("m2", "d2", now + 5_000), ("old", "d1", now - 10_000)],
        now,
        retention_s=1,
    )
    for message_id, device_id, expires_at_ms in (
        ("m1", "d1", now + FAR_MS),
        ("m2", "d2", now + 5_000),
    ):
        assert await receipts.status(message_id) == MessageStatus(
            message_id, TargetKind.DEVICE, now, expires_at_ms, {device_id: PushStatus.ACCEPTED}
        )
    assert await receipts.status("old") is None  # a second past its expiry
    await receipts.record([Receipt("m2", PushStatus.DELIVERED, "d2", now)])
    status = await receipts.status("m2")
    assert status is not None and status.devices == {"d2": PushStatus.DELIVERED}


async def test_an_accepted_receipt_changes_nothing(backend: PushBackend) -> None:
    # "accepted" is where a status starts: recorded again, it neither makes the device
    # final nor lets the status go after the (shorter) final retention.
    receipts = backend.receipts
    receipts.final_retention_ms = 1_000
    then = now_ms() - 10_000
    await receipts.create([device_status("one", "d1"), device_status("two", "d1", "d2")], 3600)
    await receipts.record(
        [
            Receipt("one", PushStatus.ACCEPTED, "d1", then),
            Receipt("two", PushStatus.ACCEPTED, "d1", then),
            Receipt("two", PushStatus.DELIVERED, "d2", then),
        ]
    )
    one, two = await receipts.status("one"), await receipts.status("two")
    assert one is not None and one.devices == {"d1": PushStatus.ACCEPTED}
    assert two is not None
    assert two.devices == {"d1": PushStatus.ACCEPTED, "d2": PushStatus.DELIVERED}


async def test_memory_statuses_and_receipts_are_left_out_of_collections() -> None:
    # Plain tuples of strings and ints, untracked once the collector has seen them: a
    # node keeps an hour of statuses, and full collections walked millions of objects.
    receipts = memory_backend().receipts
    assert isinstance(receipts, MemoryReceipts)
    await receipts.create([device_status("m1", "d1")], retention_s=60)
    await receipts.record([Receipt("m1", PushStatus.DELIVERED, "d1", now_ms())])
    gc.collect()
    assert not gc.is_tracked(receipts._statuses["m1"])
    assert not gc.is_tracked(receipts._stream[-1])


async def test_fan_out_deliveries_count(backend: PushBackend) -> None:
    receipts = backend.receipts
    topic = MessageStatus("t1", TargetKind.TOPIC, now_ms(), now_ms() + FAR_MS)
    await receipts.create([topic], retention_s=60)
    await receipts.record(
        [
            Receipt("t1", PushStatus.DELIVERED, "x"),
            Receipt("t1", PushStatus.DELIVERED, "y"),
            Receipt("t1", PushStatus.EXPIRED, "z"),
            Receipt("t1", PushStatus.DELIVERED),
            Receipt("never-created", PushStatus.DELIVERED, "x"),
        ]
    )
    await receipts.add_delivered({"t1": 5, "never-created": 3})
    await receipts.add_delivered({})
    status = await receipts.status("t1")
    assert status is not None
    assert status.delivered_count == 8 and status.devices == {}
    assert await receipts.status("never-created") is None


async def test_status_kept_for_retention_past_expiry(backend: PushBackend) -> None:
    receipts = backend.receipts
    past = now_ms() - 10_000
    await receipts.create(
        [device_status("old", "d1", expires_at_ms=past), device_status("kept", "d1")],
        retention_s=1,
    )
    assert await receipts.status("old") is None
    assert await receipts.status("kept") is not None


async def test_memory_statuses_past_retention_go_whatever_the_batch_size() -> None:
    # Found looking into the live fuzzer's RSS drift: the in-memory store swept expired
    # statuses only when it held an exact multiple of 1024 as a batch came in, so API
    # batches of 999 kept every expired status until ~1,000 batches had passed.
    receipts = memory_backend().receipts
    assert isinstance(receipts, MemoryReceipts)
    past = now_ms() - 10_000
    for batch in range(40):
        expired = [device_status(f"m{batch}-{i}", "d1", expires_at_ms=past) for i in range(999)]
        await receipts.create(expired, retention_s=1)
    assert len(receipts._statuses) < 3 * 999


async def test_memory_statuses_go_a_bounded_slice_per_write() -> None:
    # A sweep over every status stalled a node ~75 ms at a million statuses (the
    # half-rate unicast p99): each write now drops at most SWEEP_PER_WRITE due ones.
    receipts = memory_backend(final_status_retention_ms=1_000).receipts
    assert isinstance(receipts, MemoryReceipts)
    then = now_ms() - 10_000
    statuses = [device_status(f"m{i}", "d1") for i in range(3_000)]
    await receipts.create(statuses, retention_s=3600)
    # All delivered ten seconds ago: past the final retention, due to go.
    await receipts.record(
        [Receipt(f"m{i}", PushStatus.DELIVERED, "d1", then) for i in range(3_000)]
    )
    assert await receipts.status("m0") is None  # hidden at once, whether swept or not
    sizes = []
    for n in range(4):
        await receipts.create([device_status(f"new{n}", "d1")], retention_s=3600)
        sizes.append(len(receipts._statuses))
    assert sizes == [
        3_001 - SWEEP_PER_WRITE,
        3_002 - 2 * SWEEP_PER_WRITE,
        3,  # the last 954 due, and the three new ones
        4,
    ]
    assert await receipts.status("new0") is not None


async def test_memory_statuses_past_the_cap_go_soonest_due_first() -> None:
    # Uncapped, the memory backend held an hour of delivered statuses (~1.4 GB at a
    # steady 1,000 pushes/s): past memory_max_statuses the soonest due now go early.
    receipts = memory_backend(final_status_retention_ms=60_000, max_statuses=1_000).receipts
    assert isinstance(receipts, MemoryReceipts)
    await receipts.create([device_status(f"old{i}", "d1") for i in range(900)], 3600)
    # Delivered just now: due in a minute, sooner than the pending ones below.
    await receipts.record(
        [Receipt(f"old{i}", PushStatus.DELIVERED, "d1", now_ms()) for i in range(600)]
    )
    for n in range(5):
        await receipts.create([device_status(f"new{n}-{i}", "d2") for i in range(100)], 3600)
        assert len(receipts._statuses) <= 1_000
    assert len(receipts._statuses) == 1_000 and receipts.evicted == 400
    # 400 of the delivered ones went, due soonest; no pending status was touched.
    held = [await receipts.status(f"old{i}") is not None for i in range(900)]
    assert held[:600].count(False) == 400 and all(held[600:])
    for n in range(5):
        assert await receipts.status(f"new{n}-99") is not None


async def test_memory_statuses_cap_zero_means_none() -> None:
    receipts = memory_backend(max_statuses=0).receipts
    assert isinstance(receipts, MemoryReceipts)
    for n in range(3):
        await receipts.create([device_status(f"m{n}-{i}", "d1") for i in range(2_000)], 3600)
    assert len(receipts._statuses) == 6_000 and receipts.evicted == 0


async def test_status_final_for_every_device_goes_after_the_final_retention(
    backend: PushBackend,
) -> None:
    receipts = backend.receipts
    receipts.final_retention_ms = 60_000
    # Everything happened two minutes ago: whatever became final then is past its
    # final retention now, and a status that still waits for a device is not.
    then = now_ms() - 120_000
    nobody = device_status("nobody")  # a user push that found no device: final at once
    await receipts.create(
        [
            device_status("done", "d1", "d2"),
            device_status("half", "d1", "d2"),
            MessageStatus("nobody", nobody.target, then, nobody.expires_at_ms, {}),
            fanout_status("everyone"),
        ],
        retention_s=3600,
    )
    assert await receipts.status("nobody") is None
    await receipts.record(
        [
            Receipt("done", PushStatus.DELIVERED, "d1", then),
            Receipt("half", PushStatus.DELIVERED, "d1", then),
            Receipt("everyone", PushStatus.DELIVERED, "d9", then),
        ]
    )
    assert await receipts.status("done") is not None  # d2 is still on its way
    await receipts.record([Receipt("done", PushStatus.EXPIRED, "d2", then, "ttl")])
    assert await receipts.status("done") is None
    assert await receipts.status("half") is not None
    assert await receipts.status("everyone") is not None
    # Final just now: kept for the final retention from now.
    await receipts.record([Receipt("half", PushStatus.DELIVERED, "d2", now_ms())])
    assert await receipts.status("half") is not None


async def test_receipt_stream_cursor(backend: PushBackend) -> None:
    receipts = backend.receipts
    empty, cursor = await receipts.read("", 10, 0)
    assert empty == []
    batch = [Receipt(f"m{i}", PushStatus.DELIVERED, f"d{i}", 1000 + i) for i in range(6)]
    batch[2] = Receipt("m2", PushStatus.EXPIRED, "d2", 1002, "ttl")
    await receipts.record(batch[:2])
    await receipts.record(batch[2:3])
    got, cursor = await receipts.read(cursor, 10, 0)
    assert got == batch[:3]
    assert (await receipts.read(cursor, 10, 0))[0] == []
    await receipts.record(batch[3:])
    # A count smaller than an entry: the rest comes next time.
    got, cursor = await receipts.read(cursor, 2, 0)
    assert got == batch[3:5]
    got, cursor = await receipts.read(cursor, 2, 0)
    assert got == batch[5:]
    assert await receipts.read(cursor, 2, 0) == ([], cursor)
    everything, _ = await receipts.read("0", 100, 0)
    assert everything == batch
    first_two, _ = await receipts.read("0", 2, 0)
    assert first_two == batch[:2]


async def test_receipt_read_waits_for_the_first(backend: PushBackend) -> None:
    receipts = backend.receipts
    _, cursor = await receipts.read("", 10, 0)
    started = time.monotonic()
    assert await receipts.read(cursor, 10, 200) == ([], cursor)
    assert time.monotonic() - started >= 0.15
    waiting = asyncio.create_task(receipts.read(cursor, 10, 8_000))
    await asyncio.sleep(0)
    receipt = Receipt("m1", PushStatus.DELIVERED, "d1", 1)
    await receipts.record([receipt])
    started = time.monotonic()
    got, _ = await asyncio.wait_for(waiting, 5)
    assert got == [receipt]
    assert time.monotonic() - started < 2


# -------------------------------------------------------------- idempotency


async def test_idempotency_claim_complete_release(backend: PushBackend) -> None:
    store = backend.idempotency
    answer = b'202 {"message_id":"m1"}'
    assert await store.claim("k1", b"a", 60_000) is None
    held = await store.claim("k1", b"b", 60_000)
    assert held is not None and is_running(held)
    assert await store.claim("k2", b"a", 60_000) is None
    await store.complete("k1", answer, 60)
    assert await store.claim("k1", b"c", 60_000) == answer
    # An answer is nobody's placeholder: neither renewed nor released.
    assert not await store.renew("k1", b"a", 60_000)
    await store.release("k1", b"a")
    assert await store.claim("k1", b"c", 60_000) == answer
    # Only the owner releases its placeholder.
    await store.release("k2", b"someone else")
    held = await store.claim("k2", b"c", 60_000)
    assert held is not None and is_running(held)
    await store.release("k2", b"a")
    assert await store.claim("k2", b"c", 60_000) is None


async def test_idempotency_placeholder_lapses_unless_its_owner_renews_it(
    backend: PushBackend,
) -> None:
    store = backend.idempotency
    assert await store.claim("renewed", b"a", 300) is None
    assert await store.claim("left", b"a", 300) is None
    # Time passing is what is tested: three renewals span 1.5 leases.
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await store.renew("renewed", b"a", 300)
        assert not await store.renew("renewed", b"b", 300)
    held = await store.claim("renewed", b"b", 300)
    assert held is not None and is_running(held)
    # Never renewed: lapsed, so the next claim is b's, and a cannot take it back.
    assert await store.claim("left", b"b", 300) is None
    assert not await store.renew("left", b"a", 300)
    assert await store.renew("left", b"b", 300)


# -------------------------------------------------------- the Redis layout


async def test_redis_keys_expire_and_buckets_stay_compact(redis_server: RedisServer) -> None:
    """What the bytes-per-device and no-leak promises rest on, checked in Redis itself."""
    config = redis_config(redis_server.url)
    config.presence_buckets = 2
    stores = await redis_backend(config)
    inspect = redis_server.client()
    try:
        node = await stores.presence.join("node-a", 30_000)
        await stores.presence.set_online(
            [Presence(f"device-{i:04d}", f"user-{i // 2}", node, 1_700_000_000) for i in range(100)]
        )
        prefix = config.key_prefix
        presence_keys = sorted(inspect.scan_iter(f"{prefix}:p:*"))
        user_keys = sorted(inspect.scan_iter(f"{prefix}:u:*"))
        assert len(presence_keys) == len(user_keys) == 2
        for key in presence_keys + user_keys:
            assert inspect.object("encoding", key) == b"listpack"

        expires = now_ms() + 600_000
        await stores.queue.enqueue(
            [("device-0001", message("m1", 1, expires_at_ms=expires))], cap=10
        )
        queue_ttl_ms = inspect.pttl(f"{prefix}:q:{{{zlib.crc32(b'device-0001') % 2}}}:device-0001")
        assert 590_000 < queue_ttl_ms <= 600_000
        await stores.receipts.create(
            [device_status("m1", "device-0001", expires_at_ms=expires)], 60
        )
        assert 650_000 < inspect.pttl(f"{prefix}:s:{{m1}}") <= 660_000
        await stores.router.send(node, [b"x"])
        assert inspect.pttl(f"{prefix}:in:{{{node}}}") > 0
        await stores.idempotency.claim("k", b"owner", 10_000)
        assert 0 < inspect.pttl(f"{prefix}:i:{{k}}") <= 10_000
    finally:
        inspect.close()
        await stores.close()


# ---------------------------------------------------- a Redis that restarts


async def test_presence_and_inbox_survive_a_redis_restart(redis_factory: RedisFactory) -> None:
    server = redis_factory()
    stores = await redis_backend(redis_config(server.url))
    try:
        presence = stores.presence
        node = await presence.join("node-a", 30_000)
        device = Presence("d1", "u1", node, 1)
        await presence.set_online([device])
        reader = InboxReader(stores.router, node)
        try:
            await reader.ready()
            await stores.router.send(node, [b"before"])
            assert await reader.take(1) == [b"before"]

            await asyncio.to_thread(server.restart)

            # Redis came back empty: the renewal says so and the node writes again.
            assert not await presence.renew(node, "node-a", 30_000)
            assert await presence.lookup(["d1"]) == {}
            await presence.set_online([device])
            assert await presence.lookup(["d1"]) == {"d1": device}
            assert await presence.join("node-b", 30_000) != node
            # The inbox read resumed on its own.
            await stores.router.send(node, [b"after"])
            assert await reader.take(1) == [b"after"]
        finally:
            await reader.close()
    finally:
        await stores.close()


async def test_status_written_before_the_pending_count_keeps_its_retention(
    redis_server: RedisServer,
) -> None:
    """A status from before ``p`` (devices still accepted) existed: a final receipt for
    one of its devices neither invents the count nor moves its expiry."""
    config = redis_config(redis_server.url)
    stores = await redis_backend(config)
    try:
        receipts = stores.receipts
        receipts.final_retention_ms = 60_000  # type: ignore[attr-defined]
        await receipts.create([device_status("old", "d1", "d2")], retention_s=3600)
        key = f"{config.key_prefix}:s:{{old}}"
        client = redis_server.client()
        try:
            client.hdel(key, "p")  # as such a status was written
            ttl_before = client.pttl(key)
            await receipts.record([Receipt("old", PushStatus.DELIVERED, "d1", now_ms() - 120_000)])
            assert client.hget(key, "p") is None
            assert client.pttl(key) > ttl_before - 60_000  # not brought forward
            await receipts.record([Receipt("old", PushStatus.DELIVERED, "d2", now_ms() - 120_000)])
            assert client.hget(key, "p") is None and client.exists(key)
        finally:
            client.close()
        status = await receipts.status("old")
        assert status is not None
        assert status.devices == {"d1": PushStatus.DELIVERED, "d2": PushStatus.DELIVERED}
    finally:
        await stores.close()


async def test_receipt_stream_keeps_about_maxlen_receipts_not_entries(
    redis_server: RedisServer,
) -> None:
    """``receipt_stream_maxlen`` counts receipts, as the memory backend does: entries
    hold a flush's worth each (more the busier the node), so a bound in entries let the
    stream grow with the push rate."""
    config = redis_config(redis_server.url)
    config.receipt_stream_maxlen = 1_000
    stores = await redis_backend(config)
    try:
        for batch in range(300):  # 12,000 receipts in entries of 40
            await stores.receipts.record(
                [Receipt(f"m{batch}.{i}", PushStatus.DELIVERED, "d", 1) for i in range(40)]
            )
        client = redis_server.client()
        try:
            entries = client.xrange(config.receipt_stream)
        finally:
            client.close()
        kept = sum(len(json.loads(fields[b"r"])) for _, fields in entries)
        # Redis trims whole stream nodes (100 entries): about the bound, never all 12,000
        # (a bound of 1,000 entries kept every one).
        assert 1_000 <= kept <= 6_000, kept
    finally:
        await stores.close()


async def test_memory_receipt_stream_keeps_the_newest_maxlen_receipts_in_order() -> None:
    """The memory stream holds the newest ``maxlen`` receipts, numbered without gaps
    across batches, so a cursor from before the trim resumes at the oldest one kept."""
    receipts = MemoryReceipts(maxlen=1_000)
    for batch in range(25):  # 2,500 receipts in batches of 100
        await receipts.record(
            [Receipt(f"m{batch}.{i}", PushStatus.DELIVERED, "d", 1) for i in range(100)]
        )
    kept, cursor = await receipts.read("0", 5_000, 0)
    assert [r.message_id for r in kept] == [f"m{b}.{i}" for b in range(15, 25) for i in range(100)]
    assert cursor == "2500"
    await receipts.record([Receipt("last", PushStatus.DELIVERED, "d", 1)])
    after, cursor = await receipts.read("2499", 10, 0)
    assert [r.message_id for r in after] == ["m24.99", "last"] and cursor == "2501"
