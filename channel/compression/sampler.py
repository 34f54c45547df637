"""Body samples per app, for retraining dictionaries: opt-in, bounded, never logged.

Only apps listed in ``[compression] sample_apps`` are sampled. Each keeps a
reservoir of at most ``sample_max_bodies`` bodies of at most
``sample_max_body_bytes`` (so memory is bounded by their product per app),
and at most ``sample_per_device`` bodies per device per training window: a
dictionary is public (spec 10.6), and a string that only one device sends
then occurs in too few samples for the trainer to pick it. Samples live in
memory only; ``take`` hands them to the trainer and starts a new window.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

#: Bodies shorter than this never compress (spec 10.4): not worth a sample.
MIN_SAMPLE_BYTES = 16


@dataclass
class _Reservoir:
    bodies: list[tuple[int, bytes]] = field(default_factory=list)
    #: Bodies offered (and accepted by the per-device rule) this window.
    seen: int = 0
    #: Samples per device (a hash of its id) this window.
    per_device: dict[int, int] = field(default_factory=dict)


class BodySampler:
    """See the module docstring."""

    def __init__(
        self,
        apps: frozenset[str],
        *,
        fraction: float,
        max_bodies: int,
        max_body_bytes: int,
        per_device: int,
        rng: random.Random | None = None,
    ) -> None:
        self.apps = apps
        self.fraction = fraction
        self.max_bodies = max_bodies
        self.max_body_bytes = max_body_bytes
        self.per_device = per_device
        self._rng = rng or random.Random()
        self._by_app: dict[str, _Reservoir] = {}

    def offer(self, app_id: str, device_id: str, body: bytes, *, drawn: bool = False) -> None:
        """Maybe keep ``body`` (of ``device_id``, an ``app_id`` device). ``drawn``: the
        size and the random draw were decided already (the native engine draws for the
        calls it answers, so only the bodies picked cross to Python)."""
        if app_id not in self.apps:
            return
        if not drawn:
            if not MIN_SAMPLE_BYTES <= len(body) <= self.max_body_bytes:
                return
            if self._rng.random() >= self.fraction:
                return
        reservoir = self._by_app.setdefault(app_id, _Reservoir())
        device = device_key(device_id)
        taken = reservoir.per_device.get(device, 0)
        if taken >= self.per_device:
            return
        if len(reservoir.per_device) >= self.max_bodies and device not in reservoir.per_device:
            return  # the per-device table is bounded like the reservoir
        reservoir.per_device[device] = taken + 1
        reservoir.seen += 1
        if len(reservoir.bodies) < self.max_bodies:
            reservoir.bodies.append((device, bytes(body)))
            return
        slot = self._rng.randrange(reservoir.seen)
        if slot < self.max_bodies:
            reservoir.bodies[slot] = (device, bytes(body))

    def count(self, app_id: str) -> int:
        reservoir = self._by_app.get(app_id)
        return len(reservoir.bodies) if reservoir else 0

    def take(self, app_id: str) -> list[tuple[int, bytes]]:
        """The app's samples as (device key, body); a new window starts."""
        reservoir = self._by_app.pop(app_id, None)
        return reservoir.bodies if reservoir else []

    def bytes_held(self) -> int:
        return sum(len(b) for r in self._by_app.values() for _, b in r.bodies)


def device_key(device_id: str) -> int:
    """A stable 64-bit key of a device id (the id itself is not kept)."""
    return int.from_bytes(hashlib.blake2b(device_id.encode(), digest_size=8).digest(), "big")
