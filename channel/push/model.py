"""What a push is, once accepted: the message, its targets, its receipts.

These are plain values shared by the API (which builds them from JSON), the
stores (which pack them for Redis) and the node (which turns them into PUSH
frames). A message is packed with msgpack into a short array, so a queued
push costs its body plus a few dozen bytes in Redis.

The ones made per push are treated as immutable but are not ``frozen``
dataclasses: a frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, 3-4x the cost of a plain slot store, and an acked push
made seven of them (``unsafe_hash`` keeps them hashable and comparable as before).
"""

from __future__ import annotations

import base64
import enum
import os
import time
from dataclasses import dataclass, field

import msgpack

#: How long a push with ``ttl_s = 0`` ("only if online now") may still wait for
#: the device it was routed to: enough to cross nodes and reach a device that
#: is online but whose connection is being replaced, never enough to look like
#: store-and-forward.
ONLINE_ONLY_GRACE_MS = 30_000


class Priority(enum.StrEnum):
    NORMAL = "normal"
    #: Written ahead of normal pushes routed to the node in the same inbox batch, and
    #: marked ``priority: high`` for the device; a queue replay keeps acceptance order.
    HIGH = "high"


class PushStatus(enum.StrEnum):
    """Where one message stands for one device (a receipt carries one of these)."""

    ACCEPTED = "accepted"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    REVOKED = "revoked"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self is not PushStatus.ACCEPTED


class TargetKind(enum.StrEnum):
    DEVICE = "device"
    USER = "user"
    TOPIC = "topic"
    BROADCAST = "broadcast"


@dataclass(slots=True, unsafe_hash=True)
class Target:
    kind: TargetKind
    #: Device ids, user ids or topic names; empty for a broadcast.
    ids: tuple[str, ...] = ()


#: ``PushMessage.flags``: no status, no receipts (a message between boxes, not an API push).
QUIET = 1
#: ``PushMessage.flags``: in no device queue (QoS 0 between boxes): nothing to remove on ACK.
UNQUEUED = 2


#: One packer for every message (``msgpack.packb`` makes a new one per call, ~1/3 of
#: a pack's cost). Shared safely: packing strings, bytes, integers and lists calls no
#: Python code, so one ``pack()`` runs under the GIL from start to end.
_PACKER = msgpack.Packer(use_bin_type=True)


@dataclass(slots=True, unsafe_hash=True)
class PushMessage:
    """One message as queued and delivered (the same for every target device)."""

    message_id: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    #: Wall-clock ms after which the message is not delivered (reported expired).
    expires_at_ms: int = 0
    collapse_key: str = ""
    priority: Priority = Priority.NORMAL
    accepted_at_ms: int = 0
    #: True when the sender asked for ttl 0: delivered only to a device online now.
    online_only: bool = False
    #: A push to users: only a session of one of them may get it (a device listed in
    #: a user's directory may have changed hands since).
    target_users: tuple[str, ...] = ()
    #: ``QUIET`` and ``UNQUEUED`` bits (messages routed between MQTT boxes).
    flags: int = 0
    #: ``pack()``'s bytes, kept once made (or read): a push is packed for its device
    #: queue and again for the inbox envelope, and a user push once per device.
    _packed: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at_ms

    def wire_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers as the device sees them (collapse key and priority are headers too)."""
        extra: list[tuple[str, str]] = []
        if self.collapse_key:
            extra.append(("collapse-key", self.collapse_key))
        if self.priority is Priority.HIGH:
            extra.append(("priority", "high"))
        return (*self.headers, *extra) if extra else self.headers

    def pack(self) -> bytes:
        if self._packed is not None:
            return self._packed
        # An empty tuple packs as the empty list does (an array of 0): most pushes have
        # no headers and no target users, and the list comprehension is a function call
        # in CPython 3.11 (two thirds of this list's cost when both are empty).
        headers, users = self.headers, self.target_users
        packed: bytes = _PACKER.pack(
            [
                self.message_id,
                self.body,
                [list(h) for h in headers] if headers else (),
                self.expires_at_ms,
                self.collapse_key,
                1 if self.priority is Priority.HIGH else 0,
                self.accepted_at_ms,
                self.online_only,
                list(users) if users else (),
                self.flags,
            ]
        )
        self._packed = packed
        return packed

    @classmethod
    def unpack(cls, data: bytes) -> PushMessage:
        item = msgpack.unpackb(data, raw=False)
        message = cls(
            message_id=item[0],
            body=item[1],
            headers=tuple((str(n), str(v)) for n, v in item[2]),
            expires_at_ms=item[3],
            collapse_key=item[4],
            priority=Priority.HIGH if item[5] else Priority.NORMAL,
            accepted_at_ms=item[6],
            online_only=bool(item[7]),
            # Absent in messages queued before target users existed.
            target_users=tuple(item[8]) if len(item) > 8 else (),
            flags=int(item[9]) if len(item) > 9 else 0,
        )
        message._packed = bytes(data)
        return message


# Module constants: called per push, and a class attribute lookup per enum member adds up.
_ACCEPTED = PushStatus.ACCEPTED
_DEVICE, _USER = TargetKind.DEVICE, TargetKind.USER


def drop_at_ms(status: MessageStatus, retention_s: int, final_retention_ms: int) -> int:
    """When a new status goes: ``retention_s`` after the message expires, or, for a device
    or user push with no device left to reach (none listed, or all final already),
    ``final_retention_ms`` after it was accepted if sooner."""
    drop_at = status.expires_at_ms + retention_s * 1000
    target = status.target
    if (
        final_retention_ms > 0
        and (target is _DEVICE or target is _USER)
        and _ACCEPTED not in status.devices.values()  # all final
    ):
        drop_at = min(drop_at, (status.accepted_at_ms or now_ms()) + final_retention_ms)
    return drop_at


def final_drop_at_ms(receipt: Receipt, final_retention_ms: int) -> int:
    """When a status goes if ``receipt`` made its last device final: ``final_retention_ms``
    after the receipt's time (0: no sooner than its retention)."""
    if final_retention_ms <= 0:
        return 0
    return (receipt.at_ms or now_ms()) + final_retention_ms


@dataclass(slots=True, unsafe_hash=True)
class Receipt:
    """A status change of one message for one device (or a fan-out summary)."""

    message_id: str
    status: PushStatus
    device_id: str = ""
    at_ms: int = 0
    #: Why, for expired / revoked / failed ("ttl", "collapsed", "queue_full", ...).
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "message_id": self.message_id,
            "status": self.status.value,
            "at_ms": self.at_ms,
        }
        if self.device_id:
            out["device_id"] = self.device_id
        if self.reason:
            out["reason"] = self.reason
        return out

    def pack(self) -> list[object]:
        return [self.message_id, self.status.value, self.device_id, self.at_ms, self.reason]

    @classmethod
    def unpack(cls, item: list[object]) -> Receipt:
        return cls(str(item[0]), PushStatus(item[1]), str(item[2]), int(item[3]), str(item[4]))  # type: ignore[call-overload]


@dataclass(slots=True)
class MessageStatus:
    """Everything known about one message: per-device statuses, fan-out counts."""

    message_id: str
    target: TargetKind
    accepted_at_ms: int
    expires_at_ms: int
    devices: dict[str, PushStatus] = field(default_factory=dict)
    #: Topic and broadcast messages: devices that acknowledged, per node summed.
    delivered_count: int = 0

    def to_json(self, now_ms: int) -> dict[str, object]:
        devices = {}
        for device, status in self.devices.items():
            if status is PushStatus.ACCEPTED and now_ms >= self.expires_at_ms:
                status = PushStatus.EXPIRED  # its expiry passed undelivered
            devices[device] = status.value
        out: dict[str, object] = {
            "message_id": self.message_id,
            "target": self.target.value,
            "accepted_at_ms": self.accepted_at_ms,
            "expires_at_ms": self.expires_at_ms,
        }
        if self.target in (TargetKind.DEVICE, TargetKind.USER):
            out["devices"] = devices
            out["status"] = _overall(list(devices.values()))
        else:
            out["delivered_count"] = self.delivered_count
        return out


def _overall(statuses: list[str]) -> str:
    if not statuses:
        return PushStatus.EXPIRED.value
    if any(s == PushStatus.ACCEPTED.value for s in statuses):
        return PushStatus.ACCEPTED.value
    if any(s == PushStatus.DELIVERED.value for s in statuses):
        return PushStatus.DELIVERED.value
    return statuses[0]


@dataclass(slots=True, unsafe_hash=True)
class Presence:
    """Where a device is connected: its node and since when."""

    device_id: str
    user_id: str
    node_no: int
    since_s: int = 0


def now_ms() -> int:
    return int(time.time() * 1000)


_counter = int.from_bytes(os.urandom(3), "big")
#: Per-process random part, drawn once: uniqueness across processes comes from it,
#: within the process from the counter (os.urandom per id was the API's top cost).
_process_salt = int.from_bytes(os.urandom(6), "big")
#: RFC 4648 base32 re-lettered to Crockford's lower-case alphabet, which sorts in
#: the same order as the numbers it encodes.
_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz"
)


def message_id_of(raw: bytes) -> str:
    """Fifteen bytes as 24 characters of ``_CROCKFORD`` base32 (the reference encoding)."""
    return base64.b32encode(raw).translate(_CROCKFORD).decode()


_DIGITS = "0123456789abcdefghjkmnpqrstvwxyz"
#: Every pair of digits, by the ten bits it encodes.
_PAIRS = [a + b for a in _DIGITS for b in _DIGITS]
#: The last 9 characters encode bits 44..0, all process salt: the same in every id.
_SALT_TAIL = message_id_of(bytes(9) + _process_salt.to_bytes(6, "big"))[15:]
_SALT_TOP = _process_salt >> 45


#: The id's first nine characters (bits 74..30: time only) for one millisecond.
_prefix_ms = -1
_prefix = ""


def new_message_id(at_ms: int | None = None) -> str:
    """A sortable, unique message id: 48-bit ms time, 24-bit counter, 48-bit process salt.

    Fifteen bytes as 24 base32 characters (``message_id_of``); ids from one process sort
    by time, then by acceptance order within a millisecond (the counter wraps after 16M
    ids per ms). Built from a table of digit pairs and the salt's constant tail: one
    push pays for one of these, and ``base64.b32encode`` is pure Python. The first nine
    characters encode time alone and are made once per millisecond; the other six come
    from a 30-bit number (small-int arithmetic: shifting the whole 75 bits cost ~3 us).
    ``at_ms``: the time to encode (a batch's acceptance time), else now.
    """
    global _counter, _prefix_ms, _prefix
    _counter = (_counter + 1) & 0xFFFFFF
    at = (now_ms() if at_ms is None else at_ms) & 0xFFFFFFFFFFFF
    pairs = _PAIRS
    if at != _prefix_ms:
        high = at >> 3  # bits 74..30 of the 75 the characters encode
        _prefix = (
            pairs[high >> 35]
            + pairs[(high >> 25) & 0x3FF]
            + pairs[(high >> 15) & 0x3FF]
            + pairs[(high >> 5) & 0x3FF]
            + _DIGITS[high & 0x1F]
        )
        _prefix_ms = at
    # Bits 29..0: the time's last 3 bits, the counter, the salt's top 3 bits.
    low = ((at & 7) << 27) | (_counter << 3) | _SALT_TOP
    return _prefix + pairs[low >> 20] + pairs[(low >> 10) & 0x3FF] + pairs[low & 0x3FF] + _SALT_TAIL


def new_message_ids(at_ms: int, count: int) -> list[str]:
    """``count`` ids for one time: what ``count`` calls of ``new_message_id(at_ms)`` give,
    for a third of the cost (an API batch takes its ids in one go)."""
    global _counter
    if count <= 0:
        return []
    ids = [new_message_id(at_ms)]  # the time's prefix made, the counter moved on
    start, prefix, pairs, tail = _counter, _prefix, _PAIRS, _SALT_TAIL
    base = ((at_ms & 7) << 27) | _SALT_TOP
    ids += [
        prefix + pairs[low >> 20] + pairs[(low >> 10) & 0x3FF] + pairs[low & 0x3FF] + tail
        for low in [base | (((start + n) & 0xFFFFFF) << 3) for n in range(1, count)]
    ]
    _counter = (start + count - 1) & 0xFFFFFF
    return ids


@dataclass(slots=True, unsafe_hash=True)
class PushRequest:
    """A validated push request, from the HTTP API or the Redis stream API."""

    target: Target
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    #: 0: deliver only to devices online now; else keep undelivered this long.
    ttl_s: int = 86_400
    collapse_key: str = ""
    priority: Priority = Priority.NORMAL


@dataclass(slots=True, unsafe_hash=True)
class AcceptResult:
    """What the API answers for one accepted push request."""

    message_id: str
    target: TargetKind
    #: Devices the message was queued for (device and user targets).
    queued: int = 0
    #: Of those, how many were online (routed to their node at once).
    online: int = 0
    #: Devices reported expired at once (ttl 0 and offline).
    expired: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        target = self.target
        out: dict[str, object] = {
            "message_id": self.message_id,
            "status": "accepted",
            "target": target._value_,  # not .value: a property, per push
        }
        if target is TargetKind.DEVICE or target is TargetKind.USER:
            out["queued"] = self.queued
            out["online"] = self.online
            out["expired"] = list(self.expired)
        return out
