"""Outbound QoS 1/2 flow control of one connection: packet ids, in-flight, waiting.

Pure bookkeeping (no I/O): the connection asks ``offer`` to send a PUBLISH and
writes what it is given back; acknowledgements free packet ids and release
waiting messages.

**Packet ids of queued messages are stable.** A message from the device queue
(a push, or a message routed from another box) goes out under
``stable_packet_id(message_id)`` on every connection, on any node, after any
restart: a box that got a QoS 2 PUBLISH, answered PUBREC and lost the
connection before its PUBREC arrived, sees the same message again under the
same packet id and does not deliver it twice; and a 3.1.1 box can drop
duplicates by packet id. Two messages in flight never share an id: one whose
id is taken waits until it is free. Messages that are not queued (RPC, retained
copies) take free ids from a counter.

At most ``limit`` PUBLISHes are unacknowledged (the box's Receive Maximum, or
``[mqtt] max_inflight_out``); more wait, in order, up to ``max_waiting``.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Build = Callable[[int], bytes]


def stable_packet_id(message_id: str) -> int:
    """The packet id a queued message is always sent under (1..65535)."""
    return 1 + zlib.crc32(message_id.encode()) % 65535


#: Crockford base32 digits (``channel.push.model.new_message_id``), by character.
_DIGIT_VALUES = {c: n for n, c in enumerate("0123456789abcdefghjkmnpqrstvwxyz")}


def accepted_at_ms(message_id: str) -> int | None:
    """When the gateway accepted a message, from its id (``new_message_id``: the top
    48 of 120 bits are the unix ms); None for an id not made that way."""
    if len(message_id) != 24:
        return None
    value = 0
    for char in message_id[:10]:  # 50 bits: the time and 2 bits more
        digit = _DIGIT_VALUES.get(char)
        if digit is None:
            return None
        value = value << 5 | digit
    return value >> 2


@dataclass(slots=True)
class Sent:
    """A PUBLISH the box has not finished acknowledging."""

    message_id: str
    #: The registry hears of its acknowledgement one by one (a queued push) or
    #: counted (a fan-out push); "" message ids are the connection's own.
    tracked: bool
    qos: int
    #: QoS 2: PUBREC came, PUBREL sent, PUBCOMP awaited.
    released: bool = False


@dataclass(slots=True)
class _Waiting:
    message_id: str
    tracked: bool
    qos: int
    build: Build
    stable: bool


class Outbound:
    __slots__ = ("_next_id", "inflight", "limit", "max_waiting", "waiting")

    def __init__(self, limit: int, max_waiting: int) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.inflight: dict[int, Sent] = {}
        self.waiting: deque[_Waiting] = deque()
        self._next_id = 0

    def __len__(self) -> int:
        return len(self.inflight) + len(self.waiting)

    def has_room(self) -> bool:
        return len(self.waiting) < self.max_waiting

    def offer(
        self, message_id: str, tracked: bool, qos: int, build: Build, stable: bool
    ) -> bytes | None:
        """The PUBLISH to write now, or None: it waits (in flight full, or its id taken).

        ``build(packet_id)`` makes its bytes; a message already in flight under its
        stable id (written again by a replay) is not sent twice."""
        packet_id = 0
        if stable:
            packet_id = stable_packet_id(message_id)
            sent = self.inflight.get(packet_id)
            if sent is not None and sent.message_id == message_id:
                return None
        if not self.waiting and len(self.inflight) < self.limit:
            data = self._start(message_id, tracked, qos, build, stable, packet_id)
            if data is not None:
                return data
        self.waiting.append(_Waiting(message_id, tracked, qos, build, stable))
        return None

    def start_stable(self, message_id: str, tracked: bool, qos: int, packet_id: int) -> bool:
        """A queued message under its stable ``packet_id`` goes in flight now (True:
        write it) if ``offer`` would send it at once; False: ask ``offer``, which makes
        it wait or sees it is in flight already. One dict look-up, no builder call."""
        inflight = self.inflight
        if self.waiting or len(inflight) >= self.limit or packet_id in inflight:
            return False
        inflight[packet_id] = Sent(message_id, tracked, qos)
        return True

    def _start(
        self,
        message_id: str,
        tracked: bool,
        qos: int,
        build: Build,
        stable: bool,
        stable_id: int = 0,
    ) -> bytes | None:
        """``stable_id``: the stable packet id when the caller has it already."""
        packet_id = (stable_id or stable_packet_id(message_id)) if stable else self._free_id()
        if packet_id in self.inflight:
            return None
        self.inflight[packet_id] = Sent(message_id, tracked, qos)
        return build(packet_id)

    def _free_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self.inflight:
                return self._next_id
        return 0  # unreachable: the in-flight limit is below 65535

    def done(self, packet_id: int) -> Sent | None:
        """PUBACK / PUBCOMP: the packet id is free again."""
        return self.inflight.pop(packet_id, None)

    def release(self, packet_id: int) -> Sent | None:
        """PUBREC of a QoS 2 PUBLISH (None: no such PUBLISH in flight)."""
        sent = self.inflight.get(packet_id)
        if sent is None or sent.qos != 2:
            return None
        sent.released = True
        return sent

    def restore_released(self, packet_id: int, message_id: str) -> None:
        """A QoS 2 message released before a reconnect: PUBREL is sent again."""
        self.inflight[packet_id] = Sent(message_id, False, 2, released=True)

    def ready(self) -> list[bytes]:
        """PUBLISHes that may go now (in-flight room, their ids free), in order; a
        message whose stable id is still taken keeps its place."""
        out: list[bytes] = []
        kept: deque[_Waiting] = deque()
        while self.waiting and len(self.inflight) < self.limit:
            item = self.waiting.popleft()
            data = self._start(item.message_id, item.tracked, item.qos, item.build, item.stable)
            if data is None:
                kept.append(item)
            else:
                out.append(data)
        kept.extend(self.waiting)
        self.waiting = kept
        return out

    def clear(self) -> list[Sent]:
        """Everything unacknowledged (the connection is gone)."""
        left = list(self.inflight.values())
        left.extend(Sent(w.message_id, w.tracked, w.qos) for w in self.waiting)
        self.inflight.clear()
        self.waiting.clear()
        return left
