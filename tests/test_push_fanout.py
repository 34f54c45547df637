"""The fan-out ring (sans-I/O): every push reaches its audience once, writes coalesce."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from channel.push.delivery import sweep_window
from channel.push.fanout import FanoutRing


class Recorder:
    def __init__(self) -> None:
        self.writes: list[tuple[str, tuple[str, ...]]] = []
        self.dead: set[str] = set()

    def write(self, session: str, pushes: Sequence[str]) -> None:
        self.writes.append((session, tuple(pushes)))

    def alive(self, session: str) -> bool:
        return session not in self.dead

    def got(self, session: str) -> list[str]:
        return [p for s, pushes in self.writes if s == session for p in pushes]


def ring_for(recorder: Recorder) -> FanoutRing[str, str]:
    return FanoutRing(recorder.write, recorder.alive)


def run_out(ring: FanoutRing[str, str], positions: int = 3) -> int:
    steps = 0
    while ring.step(positions):
        steps += 1
    return steps


def test_a_lone_broadcast_reaches_everyone_once_in_one_round() -> None:
    rec = Recorder()
    ring = ring_for(rec)
    sessions = [f"s{i}" for i in range(10)]
    ring.join("b1", sessions, None)
    run_out(ring)
    assert rec.writes == [(s, ("b1",)) for s in sessions]
    assert ring.pending == 0


def test_a_push_joining_mid_round_shares_the_rest_of_it_and_finishes_next_round() -> None:
    rec = Recorder()
    ring = ring_for(rec)
    sessions = [f"s{i}" for i in range(6)]
    ring.join("b1", sessions, None)
    assert ring.step(2)  # s0, s1 got b1
    ring.join("b2", sessions, None)
    run_out(ring, 1)
    assert rec.writes == [
        ("s0", ("b1",)),
        ("s1", ("b1",)),
        ("s2", ("b1", "b2")),  # one write carries both
        ("s3", ("b1", "b2")),
        ("s4", ("b1", "b2")),
        ("s5", ("b1", "b2")),
        ("s0", ("b2",)),
        ("s1", ("b2",)),
    ]


def test_topic_pushes_reach_only_members_at_join_time() -> None:
    rec = Recorder()
    ring = ring_for(rec)
    sessions = ["a", "b", "c", "d"]
    members = {"b", "d"}
    ring.join("t1", sessions, frozenset(members))
    members.add("a")  # subscribing later does not change a push already going
    run_out(ring)
    assert rec.writes == [("b", ("t1",)), ("d", ("t1",))]


def test_sessions_that_connect_later_get_only_later_pushes() -> None:
    rec = Recorder()
    ring = ring_for(rec)
    ring.join("b1", ["a", "b"], None)
    ring.step(1)
    ring.join("b2", ["a", "b", "late"], None)
    run_out(ring)
    assert rec.got("late") == ["b2"]
    assert rec.got("a") == ["b1", "b2"] and rec.got("b") == ["b1", "b2"]


def test_closed_sessions_are_skipped_and_dropped_when_idle() -> None:
    rec = Recorder()
    ring = ring_for(rec)
    ring.join("b1", ["a", "b", "c"], None)
    rec.dead.add("b")
    run_out(ring)
    assert [s for s, _ in rec.writes] == ["a", "c"]
    ring.join("b2", ["a", "b", "c"], None)  # idle: a fresh ring without "b"
    run_out(ring)
    assert rec.got("b") == []


def test_empty_node_takes_nothing() -> None:
    rec = Recorder()
    ring = ring_for(rec)
    ring.join("b1", [], None)
    assert ring.pending == 0 and not ring.step(10)


@settings(max_examples=200, deadline=None)
@given(
    sessions=st.integers(min_value=1, max_value=12),
    plan=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=5),  # steps before this push joins
            st.integers(min_value=0, max_value=14),  # sessions connected by then (extra)
            st.one_of(st.none(), st.sets(st.integers(min_value=0, max_value=25))),
        ),
        min_size=1,
        max_size=8,
    ),
    positions=st.integers(min_value=1, max_value=7),
)
def test_every_push_reaches_exactly_its_audience_once(
    sessions: int,
    plan: list[tuple[int, int, set[int] | None]],
    positions: int,
) -> None:
    rec = Recorder()
    ring = ring_for(rec)
    connected = [f"s{i}" for i in range(sessions)]
    expected: dict[str, set[str]] = {}
    for k, (steps_before, extra, topic) in enumerate(plan):
        for _ in range(steps_before):
            ring.step(positions)
        connected += [f"x{k}-{i}" for i in range(extra % 3)]
        push = f"p{k}"
        members = None if topic is None else frozenset(f"s{i}" for i in topic)
        audience = set(connected) if members is None else set(connected) & members
        expected[push] = audience
        ring.join(push, list(connected), members)
    run_out(ring, positions)
    for push, audience in expected.items():
        reached = [s for s, pushes in rec.writes if push in pushes]
        assert sorted(reached) == sorted(audience), push  # each once, nobody else
    # One write per visit: a session never gets two writes for one position.
    assert all(len(set(pushes)) == len(pushes) for _, pushes in rec.writes)


# ------------------------------------------------------------- directory sweep shares


@settings(max_examples=300, deadline=None)
@given(
    buckets=st.integers(min_value=1, max_value=300),
    node_count=st.integers(min_value=1, max_value=9),
    fraction=st.floats(min_value=0.001, max_value=1.5),
)
def test_live_nodes_sweep_every_bucket_once_per_round(
    buckets: int, node_count: int, fraction: float
) -> None:
    nodes = [3 * i + 1 for i in range(node_count)]  # node numbers need not be dense
    swept: list[int] = []
    for node in nodes:
        offset = 0
        mine: list[int] = []
        while True:
            first, count = sweep_window(buckets, nodes, node, offset, fraction)
            if count == 0 or first in mine:
                break  # no share, or back at the start of it: one round done
            mine += range(first, first + count)
            offset += count
        swept += mine
    assert sorted(swept) == list(range(buckets))  # every bucket, exactly once
