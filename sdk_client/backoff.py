"""Reconnect delays: exponential backoff with full jitter, and server hints.

After the n-th failed attempt in a row (n = 0, 1, 2 …) the client waits a
random time in ``[0, min(max_s, initial_s * multiplier ** n)]`` ("full
jitter", so a fleet of devices that lost the same gateway does not come back
in lock-step). When the server said when to come back — GOAWAY
``reconnect_after_ms`` or ``retry_after_ms`` of a connection ERROR — the
delay is at least that hint plus up to 50 % random jitter (spec section
13.1), even above ``max_s``: a draining server knows better than the cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Servers' hints get up to this much extra, as a fraction of the hint.
HINT_JITTER = 0.5


@dataclass(frozen=True)
class Backoff:
    """Reconnect delay policy (immutable; the client counts the attempts)."""

    #: Upper bound of the first delay, seconds.
    initial_s: float = 0.2
    #: Upper bound of any delay the policy itself picks, seconds.
    max_s: float = 30.0
    #: Growth of the upper bound per failed attempt.
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("Backoff needs 0 < initial_s <= max_s")
        if self.multiplier < 1:
            raise ValueError("Backoff multiplier must be at least 1")

    def ceiling(self, attempt: int) -> float:
        """Largest delay for ``attempt`` (0 = the first retry), before any server hint."""
        # Bounded exponent: multiplier ** attempt must not overflow on long outages.
        exponent = min(max(attempt, 0), 64)
        return min(self.max_s, self.initial_s * self.multiplier**exponent)

    def delay(
        self, attempt: int, *, hint_s: float = 0.0, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before attempt ``attempt``; at least ``hint_s`` when one is given."""
        source = rng or random
        chosen = source.uniform(0.0, self.ceiling(attempt))
        if hint_s > 0:
            chosen = max(chosen, hint_s * (1.0 + source.uniform(0.0, HINT_JITTER)))
        return chosen
