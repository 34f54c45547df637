"""Inbox entries a process added to an inbox it reads itself: read back from Redis (the
entry still goes through the stream) but taken as the envelopes they were packed from,
not unpacked again. Entries from elsewhere, and entries past the bound, are unpacked.

On one real Redis and on a real three-master Redis Cluster.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from channel.config import PushConfig
from channel.push import envelopes as env
from channel.push.model import PushMessage, PushStatus, Receipt, now_ms
from channel.push.redis import redis_backend
from channel.push.stores import PushBackend
from tests.test_push_stores import InboxReader

NODE_NO = 7


def _config(url: str, cluster: bool, prefix: str, local_envelopes: int = 65_536) -> PushConfig:
    return PushConfig(
        backend="redis",
        redis_url=url,
        redis_cluster=cluster,
        key_prefix=prefix,
        receipt_stream=f"{prefix}:receipts",
        redis_local_envelopes=local_envelopes,
    )


@pytest.fixture(params=["redis", "cluster"])
async def two_processes(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[PushBackend, PushBackend]]:
    """Two backends on one Redis (or Cluster) and one key prefix: two nodes' views. A
    test marked ``local_envelopes(n)`` gets ``[push] redis_local_envelopes = n`` here."""
    name = "redis_server" if request.param == "redis" else "redis_cluster"
    url = request.getfixturevalue(name).url
    prefix = f"l{uuid.uuid4().hex[:10]}"
    marker = request.node.get_closest_marker("local_envelopes")
    kept = marker.args[0] if marker is not None else 65_536
    here = await redis_backend(_config(url, request.param == "cluster", prefix, kept))
    there = await redis_backend(_config(url, request.param == "cluster", prefix))
    try:
        yield here, there
    finally:
        await here.close()
        await there.close()


def _push(n: int) -> env.DevicePush:
    now = now_ms()
    message = PushMessage(
        f"m{n}", b"\x00body %d" % n, (("h", "v"),), now + 60_000, accepted_at_ms=now
    )
    return (f"device-{n}", message)


async def test_entries_sent_here_come_back_as_sent(
    two_processes: tuple[PushBackend, PushBackend],
) -> None:
    here, there = two_processes
    reader = InboxReader(here.router, NODE_NO)
    try:
        await reader.ready()
        mine = [_push(1), _push(2)]
        await here.router.send(NODE_NO, mine)
        got = await reader.take(2)
        assert all(a is b for a, b in zip(got, mine, strict=True))  # type: ignore[comparison-overlap]
        # Another node's entry (another process): unpacked, as ever.
        theirs = [_push(3)]
        await there.router.send(NODE_NO, theirs)
        assert await reader.take(1) == [env.encode(theirs[0])]
        assert here.router._sent == {}  # type: ignore[attr-defined]
    finally:
        await reader.close()


@pytest.mark.local_envelopes(3)
async def test_entries_kept_are_bounded_and_the_rest_unpacked(
    two_processes: tuple[PushBackend, PushBackend],
) -> None:
    here, _ = two_processes
    reader = InboxReader(here.router, NODE_NO)
    try:
        await reader.ready()
        pushes = [_push(n) for n in range(5)]
        # Sent together: all five are packed (and kept, the first two let go) before
        # any is read back; their entries may land in any order.
        await asyncio.gather(*(here.router.send(NODE_NO, [push]) for push in pushes))
        got = await reader.take(5)
        unpacked = [e for e in got if isinstance(e, bytes)]
        assert sorted(unpacked) == sorted(env.encode(p) for p in pushes[:2])
        kept = [e for e in got if not isinstance(e, bytes)]
        assert {id(e) for e in kept} == {id(p) for p in pushes[2:]}
        assert here.router._sent_envelopes == 0  # type: ignore[attr-defined]
    finally:
        await reader.close()


async def test_nothing_is_kept_for_an_inbox_nobody_here_reads(
    two_processes: tuple[PushBackend, PushBackend],
) -> None:
    here, there = two_processes
    reader = InboxReader(there.router, NODE_NO)
    try:
        await reader.ready()
        push = _push(1)
        await here.router.send(NODE_NO, [push])
        assert here.router._sent == {}  # type: ignore[attr-defined]
        assert await reader.take(1) == [env.encode(push)]
    finally:
        await reader.close()
    assert there.router._reading == {}  # type: ignore[attr-defined]
    assert there.router._sent == {}  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", [2, 3])
async def test_inbox_and_receipts_read_alike_on_resp2_and_resp3(
    redis_server: Any, protocol: int
) -> None:
    """The raw ``XREAD`` reply is a map of streams on RESP3 and an array on RESP2: both
    come back in redis-py's shape."""
    prefix = f"r{uuid.uuid4().hex[:10]}"
    url = f"{redis_server.url}?protocol={protocol}"
    here = await redis_backend(_config(url, False, prefix))
    there = await redis_backend(_config(url, False, prefix))
    reader = InboxReader(here.router, NODE_NO)
    try:
        await reader.ready()
        push = _push(1)
        await there.router.send(NODE_NO, [push])
        assert await reader.take(1) == [env.encode(push)]
        receipt = Receipt("m1", PushStatus.DELIVERED, "device-1", now_ms())
        await there.receipts.record([receipt])
        got, _ = await here.receipts.read("0", 10, 1_000)
        assert got == [receipt]
    finally:
        await reader.close()
        await here.close()
        await there.close()
