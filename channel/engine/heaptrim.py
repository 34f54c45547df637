"""Hand freed heap pages back to the OS after a burst of handshakes (glibc ``malloc_trim``).

A TLS handshake allocates tens of KiB that live for a few milliseconds (key
shares, the certificate chain, the handshake buffer) in between the few KiB
each connection keeps. After a wave of connects glibc holds the freed pages
in its free lists and the process's RSS stays at the wave's high-water mark;
``malloc_trim(0)`` returns every whole free page to the kernel
(``MADV_DONTNEED``) without moving anything that is still in use.

``HeapTrimmer`` counts handshakes and trims when a burst has subsided: at
least ``after_handshakes`` since the last trim and none in the last tick of
the node's sweep, or ten times as many under continuous churn, and never
more often than ``min_interval_s``. On other C libraries (musl, macOS) it
does nothing. Its cost is one walk over the heap's free lists: it is timed
and logged (``debug``), and summed in ``trimmed_s``.

Off by default (``server.malloc_trim_after_handshakes = 0``): measured with
``python -m stress.connections --devices 20000`` the idle RSS per device was
18.1 KiB with and without it (18.1 / 18.2 after reconnect churn), each trim
~0.1 ms. The lean TLS engine leaves glibc little to give back; the knob is
for deployments whose handshakes churn more (larger certificate chains,
client certificates) and where a check of ``/proc/<pid>/smaps_rollup``
shows RSS well above what the connections hold.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import time
from collections.abc import Callable

log = logging.getLogger("channel.heaptrim")


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class HeapTrimmer:
    """Call ``malloc_trim(0)`` once a burst of handshakes is over (see the module doc)."""

    __slots__ = (
        "_after",
        "_last_trim",
        "_min_interval_s",
        "_pending",
        "_seen_at_last_tick",
        "_trim",
        "trimmed_s",
        "trims",
    )

    def __init__(
        self,
        after_handshakes: int,
        min_interval_s: float = 1.0,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self._after = after_handshakes
        self._min_interval_s = min_interval_s
        self._trim = trim if trim is not None else glibc_malloc_trim()
        self._pending = 0
        self._seen_at_last_tick = 0
        self._last_trim = float("-inf")
        self.trims = 0
        self.trimmed_s = 0.0

    @property
    def enabled(self) -> bool:
        return self._after > 0 and self._trim is not None

    def handshake(self) -> None:
        self._pending += 1

    def tick(self, now: float) -> bool:
        """Called by the node's sweep (monotonic ``now``); True if it trimmed."""
        pending = self._pending
        quiet = pending == self._seen_at_last_tick
        self._seen_at_last_tick = pending
        if not self.enabled or pending < self._after:
            return False
        if not quiet and pending < 10 * self._after:
            return False  # the burst goes on: what was freed would be reused at once
        if now - self._last_trim < self._min_interval_s:
            return False
        assert self._trim is not None
        started = time.perf_counter()
        released = self._trim(0)
        spent = time.perf_counter() - started
        self._last_trim = now
        self._pending = self._seen_at_last_tick = 0
        self.trims += 1
        self.trimmed_s += spent
        log.debug(
            "malloc_trim after %d handshakes: %.1f ms, %s",
            pending,
            spent * 1000,
            "memory released" if released else "nothing to release",
        )
        return True
