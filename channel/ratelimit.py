"""Per-device limits with the clock passed in: a request rate and a CPU time budget."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    @property
    def tokens(self) -> float:
        """Tokens saved up at the last ``take`` (the native engine goes on from them)."""
        return self._tokens

    def take(self, now: float) -> float:
        """Spend one token; return 0.0 if allowed, else seconds until one is available."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        if self._rate <= 0:
            return 60.0
        return (1.0 - self._tokens) / self._rate


class CpuBudget:
    """How much CPU time one device's input may use: ``share`` of a core, ``burst_s`` at once.

    A generic cell rate algorithm over one float per device, ``ready_at``: the
    moment from which the device's spending is paid off. Spending ``spent_s``
    moves it ``spent_s / share`` later, starting no earlier than ``burst_s /
    share`` before now; the device is over its budget while ``ready_at`` lies in
    the future, and may go on when it is reached. 0.0 is a fresh device (a
    full burst), so an idle session holds no object of its own for it.
    """

    __slots__ = ("_burst_s", "_per_cpu_s")

    def __init__(self, share: float, burst_s: float) -> None:
        if not 0 < share < 1:
            raise ValueError("share must be between 0 and 1 (a fraction of one core)")
        self._per_cpu_s = 1.0 / share
        self._burst_s = burst_s

    def start(self, ready_at: float, now: float) -> float:
        """Where a device's spending starts from at ``now``: ``ready_at``, or a full burst."""
        return max(ready_at, now - self._burst_s * self._per_cpu_s)

    def spent(self, start: float, spent_s: float) -> float:
        """``ready_at`` after spending ``spent_s`` from ``start``; over budget if it is > now."""
        return start + spent_s * self._per_cpu_s

    def resume_at(self, ready_at: float) -> float:
        """When a device over its budget may go on: once it has half a burst again.

        Not as soon as the debt is paid: a device then gets one frame through per
        pause, and a pause and a resume per frame (two system calls each) would
        cost the node more than the frames.
        """
        return ready_at + self._burst_s * self._per_cpu_s / 2
