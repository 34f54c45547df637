"""A latency histogram kept as plain ints (read by the metrics collector at scrape time).

Pushes are observed on the hot path; a ``prometheus_client.Histogram`` there would
take a lock per observation. ``observe`` is a ``bisect`` and an increment.
"""

from __future__ import annotations

import bisect

#: Bucket upper bounds in seconds (Prometheus' ``le``), +Inf implied.
PUSH_DELIVERY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LatencyHistogram:
    __slots__ = ("bounds", "counts", "total_s")

    def __init__(self, bounds: tuple[float, ...] = PUSH_DELIVERY_BUCKETS_S) -> None:
        self.bounds = bounds
        #: Per bucket (not cumulative); the last one is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.total_s = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)  # clocks of two hosts may disagree a little
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_s += seconds

    def observe_many(self, seconds: float, count: int) -> None:
        """``count`` observations of the same value (a batch written at one clock read)."""
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(self.bounds, seconds)] += count
        self.total_s += seconds * count

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, +Inf last."""
        out, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out
