"""Per-device bounds on one upstream cluster — pure, the clock is injected.

A cluster's breaker (``channel.rpc.breaker``) opens only on failures from several
devices, so one device cannot open it for everyone. That device still must not
hammer the upstream: ``DeviceGuard`` gives each device

* a breaker of its own: ``failures`` failed calls (connect errors, timeouts, 5xx,
  broken answers) within ``window_s`` turn it away from the cluster for ``open_s``
  (the cluster's breaker settings; no half-open probe: it simply ends);
* a cap on its calls in flight to the cluster (``max_in_flight``; 0 = none), so one
  device's slow calls cannot take all of the cluster's pooled connections and make
  other devices' calls time out, which would count against the shared breaker.

State is kept only for devices with calls in flight or recent failures: devices
that call and succeed cost nothing. The failure records are an ordered map with
the most recently failing device last, trimmed from the front once stale, and never
longer than ``max_tracked`` (the oldest go first).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_TRACKED_DEVICES = 100_000


@dataclass(slots=True)
class _Failures:
    times: deque[float] = field(default_factory=deque)
    open_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Refusal:
    #: "open": the device's own breaker; "busy": its calls in flight are at the cap.
    reason: str
    retry_after_s: float


class DeviceGuard:
    def __init__(
        self,
        *,
        failures: int,
        window_s: float,
        open_s: float,
        max_in_flight: int,
        clock: Callable[[], float],
        max_tracked: int = MAX_TRACKED_DEVICES,
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self.open_s = open_s
        self.max_in_flight = max_in_flight
        self._clock = clock
        self._max_tracked = max_tracked
        # A plain dict: Counter's missing-key and delete hooks are Python code, per call.
        self._in_flight: dict[str, int] = {}
        self._failed: OrderedDict[str, _Failures] = OrderedDict()
        #: Times a device's own breaker opened.
        self.opens = 0

    def refusal(self, device: str, beside: int = 0) -> Refusal | None:
        """Why ``device`` may not call the cluster now, or None. ``beside``: its calls
        in flight that this guard does not count (the native engine's)."""
        failed = self._failed.get(device)
        if failed is not None and failed.open_until > self._clock():
            return Refusal("open", failed.open_until - self._clock())
        if self.max_in_flight and self._in_flight.get(device, 0) + beside >= self.max_in_flight:
            return Refusal("busy", 0.1)
        return None

    def started(self, device: str) -> None:
        in_flight = self._in_flight
        in_flight[device] = in_flight.get(device, 0) + 1

    def finished(self, device: str) -> None:
        in_flight = self._in_flight
        left = in_flight.get(device, 0) - 1
        if left > 0:
            in_flight[device] = left
        else:
            in_flight.pop(device, None)

    def record_failure(self, device: str) -> bool:
        """Count a failed try of ``device``'s; True if it opened the device's breaker."""
        if not self.failures:
            return False
        now = self._clock()
        self._forget_stale(now)
        failed = self._failed.pop(device, None) or _Failures(deque(maxlen=self.failures))
        self._failed[device] = failed  # most recently failing last
        if failed.open_until > now:
            return False  # a call let through before it opened, failing late
        failed.times.append(now)
        if len(failed.times) >= self.failures and now - failed.times[0] <= self.window_s:
            failed.times.clear()
            failed.open_until = now + self.open_s
            self.opens += 1
            return True
        return False

    def _forget_stale(self, now: float) -> None:
        while self._failed:
            oldest = next(iter(self._failed.values()))
            newest = oldest.times[-1] if oldest.times else 0.0
            stale = now - newest > self.window_s and oldest.open_until <= now
            if not stale and len(self._failed) < self._max_tracked:
                return
            self._failed.popitem(last=False)

    def describe(self) -> dict[str, object]:
        now = self._clock()
        return {
            "failures": self.failures,
            "max_in_flight": self.max_in_flight,
            "devices_in_flight": len(self._in_flight),
            "devices_turned_away": sum(1 for f in self._failed.values() if f.open_until > now),
            "opens": self.opens,
        }
