"""Counters and latency histograms of the RPC proxy, as plain ints and lists.

The gateway's Prometheus exporter reads these (``snapshot()`` or the
attributes directly); this module does not import ``prometheus_client`` so
the router stays usable and testable without it. Labels are bounded: route
``match`` strings and cluster names come from config, statuses from
``ErrorCode`` — never op names or device ids.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from channel.wire.errors import code_name

#: Upper bounds (ms, inclusive) of the latency buckets; a last bucket holds the rest.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
)


@dataclass
class Histogram:
    """Counts per bucket (non-cumulative; ``counts[-1]`` is +Inf), sum and count."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    sum_ms: float = 0.0
    count: int = 0

    def observe(self, value_ms: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_MS, value_ms)] += 1
        self.sum_ms += value_ms
        self.count += 1


def status_label(status: int) -> str:
    return "OK" if status == 0 else code_name(status)


@dataclass
class RpcMetrics:
    #: (route match, cluster, status name) → calls answered to devices.
    calls: defaultdict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: route match → end-to-end latency of answered calls.
    latency_ms: defaultdict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    #: (route match, what picked the cluster: ``route`` or ``<index>:<kind>``) → calls;
    #: shows e.g. how much traffic a gray rule really sends to the canary.
    selections: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: (cluster, outcome) → upstream HTTP tries; outcome is ``http_2xx``, ``http_5xx``,
    #: ``timeout``, ``connect_error``, ``broken``, ``too_large`` ...
    attempts: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: cluster → tries beyond the first for one call.
    retries: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: (from cluster, to cluster) → calls moved to a fail-over cluster.
    failovers: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: cluster → calls turned away by an open breaker.
    breaker_rejections: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: cluster → times its breaker opened.
    breaker_opens: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: cluster → calls turned away by their device's own breaker or in-flight cap.
    device_rejections: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: cluster → times a device's own breaker on it opened.
    device_breaker_opens: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: cluster → times an endpoint was marked down after a connection error.
    endpoints_marked_down: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: shadow cluster → mirror calls sent / failed (error or non-2xx) / dropped (over the cap).
    mirror_sent: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    mirror_failed: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    mirror_dropped: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    def observe_call(self, route: str, cluster: str, status: int, latency_ms: float) -> None:
        self.calls[(route, cluster, status_label(status))] += 1
        self.latency_ms[route].observe(latency_ms)

    def snapshot(self) -> dict[str, object]:
        """A JSON-friendly copy (tuple keys joined with '|')."""

        def flat(
            d: Mapping[tuple[str, str], int] | Mapping[tuple[str, str, str], int],
        ) -> dict[str, int]:
            return {"|".join(k): v for k, v in d.items()}

        return {
            "calls": flat(self.calls),
            "latency_ms": {
                route: {
                    "buckets": list(LATENCY_BUCKETS_MS),
                    "counts": list(h.counts),
                    "sum_ms": h.sum_ms,
                    "count": h.count,
                }
                for route, h in self.latency_ms.items()
            },
            "selections": flat(self.selections),
            "attempts": flat(self.attempts),
            "retries": dict(self.retries),
            "failovers": flat(self.failovers),
            "breaker_rejections": dict(self.breaker_rejections),
            "breaker_opens": dict(self.breaker_opens),
            "device_rejections": dict(self.device_rejections),
            "device_breaker_opens": dict(self.device_breaker_opens),
            "endpoints_marked_down": dict(self.endpoints_marked_down),
            "mirror_sent": dict(self.mirror_sent),
            "mirror_failed": dict(self.mirror_failed),
            "mirror_dropped": dict(self.mirror_dropped),
        }
