"""Circuit breaker per upstream cluster — pure, the clock is injected.

States::

    CLOSED --(``failures`` failures within ``window_s``)--> OPEN
    OPEN --(``open_s`` elapsed)--> HALF_OPEN (exactly one probe call may go)
    HALF_OPEN --probe succeeds--> CLOSED
    HALF_OPEN --probe fails--> OPEN (for another ``open_s``)

Only the timestamps of the last ``failures`` failures are kept (a bounded
deque), so a breaker costs the same at 10 or 100k calls per second. A
success does not erase earlier failures in the window: a cluster failing
every other call still trips.

A failure is recorded with its source: the device whose call failed, or None
for a failure that says nothing about the caller (the upstream refused the
connection). The breaker opens only when the failures in the window come from
at least ``min_devices`` sources (each None its own), so one device whose calls
time out (a slow query of its own, or an attack) cannot open the breaker for
every other device; it has a breaker of its own (``channel.rpc.devices``). The
last ``min_devices`` distinct sources are kept, newest last: there are that
many within the window exactly when the oldest of them is.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Callable
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: What a caller turned away in HALF_OPEN (a probe is already out) is told to wait.
HALF_OPEN_RETRY_AFTER_S = 1.0


class CircuitBreaker:
    """Decides whether a call to one cluster may go out right now.

    Every ``allow()`` that returns True must be followed by exactly one of
    ``record_success()``, ``record_failure()`` or ``release()`` (the call was
    abandoned without a verdict, e.g. cancelled), so a half-open probe slot
    is never leaked.
    """

    def __init__(
        self,
        *,
        failures: int,
        window_s: float,
        open_s: float,
        clock: Callable[[], float],
        min_devices: int = 1,
    ) -> None:
        if failures < 0:
            raise ValueError("failures must be >= 0 (0 disables the breaker)")
        if window_s <= 0 or open_s <= 0:
            raise ValueError("window_s and open_s must be > 0")
        if min_devices < 1:
            raise ValueError("min_devices must be >= 1")
        self.failures = failures
        self.window_s = window_s
        self.open_s = open_s
        self.min_devices = min_devices
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failure_times: deque[float] = deque(maxlen=max(failures, 1))
        #: The last ``min_devices`` distinct sources of failures → their last failure time.
        self._sources: OrderedDict[object, float] = OrderedDict()
        self._anonymous = itertools.count()
        self._opened_at = 0.0
        self._probe_out = False
        #: Times the breaker went from CLOSED or HALF_OPEN to OPEN.
        self.opens = 0

    @property
    def enabled(self) -> bool:
        return self.failures > 0

    @property
    def state(self) -> BreakerState:
        """Current state; OPEN turns into HALF_OPEN once ``open_s`` has passed."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.open_s:
            self._state = BreakerState.HALF_OPEN
            self._probe_out = False
        return self._state

    def would_allow(self) -> bool:
        """Whether ``allow()`` would say yes, without taking the probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self._probe_out

    def allow(self) -> bool:
        """Ask to send one call; in HALF_OPEN only the first asker gets through."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return True
        return False

    def retry_after_s(self) -> float:
        """How long a turned-away caller should wait (0 when CLOSED)."""
        state = self.state
        if state is BreakerState.OPEN:
            return max(0.0, self._opened_at + self.open_s - self._clock())
        if state is BreakerState.HALF_OPEN:
            return HALF_OPEN_RETRY_AFTER_S if self._probe_out else 0.0
        return 0.0

    def record_success(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._state = BreakerState.CLOSED
            self._probe_out = False
            self._failure_times.clear()
            self._sources.clear()

    def record_failure(self, source: str | None = None) -> bool:
        """Count a failure of ``source`` (a device; None: not the caller's doing, each
        such failure a source of its own); returns True if it opened the breaker."""
        if not self.enabled:
            return False
        now = self._clock()
        if self._state is BreakerState.HALF_OPEN:
            self._open(now)
            return True
        if self._state is BreakerState.OPEN:
            # A call let through before the breaker opened, failing late.
            return False
        self._failure_times.append(now)
        key: object = source if source is not None else next(self._anonymous)
        self._sources[key] = now
        self._sources.move_to_end(key)
        if len(self._sources) > self.min_devices:
            self._sources.popitem(last=False)
        if (
            len(self._failure_times) >= self.failures
            and now - self._failure_times[0] <= self.window_s
            and len(self._sources) >= self.min_devices
            and now - next(iter(self._sources.values())) <= self.window_s
        ):
            self._open(now)
            return True
        return False

    def release(self) -> None:
        """Give back an ``allow()`` that ended without success or failure."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_out = False

    def describe(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "failures": self.failures,
            "window_s": self.window_s,
            "open_s": self.open_s,
            "min_devices": self.min_devices,
            "retry_after_s": round(self.retry_after_s(), 3),
            "opens": self.opens,
        }

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._probe_out = False
        self._failure_times.clear()
        self._sources.clear()
        self.opens += 1
