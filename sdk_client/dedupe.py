"""A bounded window of recently seen push message ids.

MMTP delivers pushes at least once: a push whose ACK was lost is delivered
again on a later connection, with a new delivery id and the same message id
(spec section 11). The client remembers the last ``capacity`` message ids it
handed to the app and drops repeats. The window is an LRU: seeing an id
again makes it the most recent, so a message that keeps being redelivered
stays remembered. Memory is bounded: at most ``capacity`` ids of at most 64
bytes each (about 100 bytes per entry with the dict overhead).
"""

from __future__ import annotations

from collections import OrderedDict


class DedupeWindow:
    """The last ``capacity`` message ids, least recently seen evicted first."""

    __slots__ = ("_ids", "capacity")

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("a dedupe window needs a capacity of at least 1")
        #: Most ids kept; older ones are forgotten (and would be delivered again).
        self.capacity = capacity
        self._ids: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        """True if ``message_id`` is in the window (does not refresh it)."""
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, message_id: bytes) -> bool:
        """True if ``message_id`` is a repeat; either way it becomes the most recent."""
        if message_id in self._ids:
            self._ids.move_to_end(message_id)
            return True
        return False

    def add(self, message_id: bytes) -> None:
        """Remember ``message_id`` as the most recent, evicting the oldest beyond capacity."""
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def check_and_add(self, message_id: bytes) -> bool:
        """True if ``message_id`` is new (and now remembered), False for a repeat."""
        if self.seen(message_id):
            return False
        self.add(message_id)
        return True
