"""Broadcast and topic fan-out: one cursor going round the node's sessions.

Writing each broadcast to every session on its own costs one TLS record, one
``send`` and, later, one ACK to read per device per broadcast: most of a
fan-out's CPU. Under a stream of fan-outs the ring makes that cost one per
device per *round* instead:

* The ring is the list of sessions, in a fixed order while a round is under
  way; the cursor visits ``batch`` positions per step (the caller yields to
  the event loop between steps).
* A push **joins** at the cursor's current position and is **done** when the
  cursor comes back to it: it reaches every session that was in the ring when
  it joined (sessions that connect later are appended; they get pushes that
  join after them).
* At each position the session gets, in one write, every joined push meant
  for it: a broadcast, or a topic push if the session was a subscriber when
  the push joined.

A push that joins mid-round shares the writes of the rest of that round with
the pushes already going, and finishes in the next round, together with
whatever joined meanwhile: the more fan-outs arrive, the more frames each
write carries. An idle node starts a round at once, so a lone broadcast is
not delayed.

Sans-I/O: ``join`` and ``step`` are plain calls; what a write is, and which
sessions may still be written to, the caller says (``NodeDelivery``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

S = TypeVar("S", bound=Hashable)
P = TypeVar("P")


@dataclass(slots=True)
class _Joined(Generic[S, P]):
    push: P
    #: None: everyone in the ring at join time; else the subscribers then.
    members: Collection[S] | None
    #: The push is meant for ring positions below this (the ring at join time).
    ring_len: int
    #: Where the cursor was when it joined: done when the cursor is back here.
    start: int
    wrapped: bool = False


class FanoutRing(Generic[S, P]):
    """See the module docstring. ``write(session, pushes)`` writes a session's share of
    one step (one flush); ``alive(session)`` says whether it can still be written to."""

    def __init__(
        self,
        write: Callable[[S, Sequence[P]], None],
        alive: Callable[[S], bool],
    ) -> None:
        self._write = write
        self._alive = alive
        self._ring: list[S] = []
        self._in_ring: set[S] = set()
        self._cursor = 0
        self._joined: list[_Joined[S, P]] = []

    @property
    def pending(self) -> int:
        """Pushes joined and not yet done."""
        return len(self._joined)

    def join(self, push: P, sessions: Iterable[S], members: Collection[S] | None) -> None:
        """Start ``push`` at the cursor. ``sessions``: every session of the node now (new
        ones are appended to the ring); ``members``: a topic's subscribers, None for all."""
        if not self._joined:
            # Idle: a fresh ring (sessions gone since the last round drop out).
            self._ring = [s for s in sessions if self._alive(s)]
            self._in_ring = set(self._ring)
            self._cursor = 0
        else:
            for session in sessions:
                if session not in self._in_ring:
                    self._ring.append(session)
                    self._in_ring.add(session)
        if not self._ring:
            return
        self._joined.append(_Joined(push, members, len(self._ring), self._cursor))

    def step(self, positions: int) -> bool:
        """Visit up to ``positions`` sessions; True while pushes remain."""
        ring = self._ring
        joined = self._joined
        # What every position below ``uniform_below`` gets, when no topic push is going:
        # the common case (broadcasts) costs one comparison per position.
        uniform = [j.push for j in joined] if all(j.members is None for j in joined) else None
        uniform_below = min((j.ring_len for j in joined), default=0)
        done_at = self._done_at()
        for _ in range(positions):
            if not joined:
                break
            position = self._cursor
            session = ring[position]
            if uniform is not None and position < uniform_below:
                due = uniform
            else:
                due = [
                    j.push
                    for j in joined
                    if position < j.ring_len and (j.members is None or session in j.members)
                ]
            if due and self._alive(session):
                self._write(session, due)
            position += 1
            if position >= len(ring):
                position = 0
                for j in joined:
                    j.wrapped = True
                done_at = self._done_at()
            self._cursor = position
            if done_at is not None and position >= done_at:
                joined[:] = [j for j in joined if not (j.wrapped and position >= j.start)]
                uniform = (
                    [j.push for j in joined] if all(j.members is None for j in joined) else None
                )
                uniform_below = min((j.ring_len for j in joined), default=0)
                done_at = self._done_at()
        if not joined:
            self._ring = []
            self._in_ring = set()
            self._cursor = 0
        return bool(joined)

    def _done_at(self) -> int | None:
        """The position at which the next push is done (pushes that wrapped finish when
        the cursor reaches where they joined)."""
        return min((j.start for j in self._joined if j.wrapped), default=None)
