"""What ``NodeDelivery`` does once per batch rather than once per push: the sessions a
batch touched are flushed once per ``flush_group`` (the native engine's batch of
commands is every one of its sessions'), and delivery times are counted by runs of
pushes accepted in the same ms. Stand-in sessions record what they were handed (as
stress.push_path's do); the memory backend holds the queues."""

from __future__ import annotations

import bisect
from typing import Any

from channel.config import GatewayConfig
from channel.push.delivery import NodeDelivery, _flush_sessions, _Outstanding
from channel.push.memory import memory_backend
from channel.push.model import PushMessage, now_ms
from channel.sessions.registry import SessionRegistry
from stress.push_path import StandInSession


class _Counted(StandInSession):
    def __init__(self, device_id: str, group: object | None) -> None:
        super().__init__(device_id, 0, [])
        self.flush_group = group  # type: ignore[assignment]
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_sessions_of_one_group_are_flushed_once_and_the_rest_each() -> None:
    engine_a, engine_b = object(), object()
    grouped_a = [_Counted(f"a{n}", engine_a) for n in range(5)]
    grouped_b = [_Counted(f"b{n}", engine_b) for n in range(3)]
    alone = [_Counted(f"c{n}", None) for n in range(4)]
    _flush_sessions([*grouped_a, *alone, *grouped_b])  # type: ignore[list-item]
    assert sum(s.flushes for s in grouped_a) == 1
    assert sum(s.flushes for s in grouped_b) == 1
    assert [s.flushes for s in alone] == [1, 1, 1, 1]


async def test_delivery_times_count_every_written_push_once() -> None:
    registry = SessionRegistry()
    delivery = NodeDelivery(registry, memory_backend(), GatewayConfig(), "node")
    commands: list[tuple[Any, ...]] = []
    for n in range(6):
        session = StandInSession(f"d{n}", n, commands)
        registry.by_device[session.device_id] = session  # type: ignore[assignment]
        delivery._state[session] = _Outstanding(device_id=session.device_id)  # type: ignore[index]
    now = now_ms()
    # Runs of equal times, a time coming back after another, and a push with none.
    accepted = [now - 400, now - 400, now - 3_500, now - 400, 0, now - 3_500]
    items = [
        (f"d{n}", PushMessage(f"m{n}", b"x", (), now + 60_000, accepted_at_ms=at))
        for n, at in enumerate(accepted)
    ]
    before = list(delivery.delivery_latency.counts)
    delivery.deliver_accepted(items)
    assert len(commands) == 6
    added = [b - a for a, b in zip(before, delivery.delivery_latency.counts, strict=True)]
    assert sum(added) == 5  # the push with no acceptance time is not counted
    bounds = delivery.delivery_latency.bounds
    # Each as measured (a few ms later at most: well inside its bucket).
    expected = [0] * len(added)
    for seconds, count in ((0.4, 3), (3.5, 2)):
        expected[bisect.bisect_left(bounds, seconds)] += count
    assert added == expected
