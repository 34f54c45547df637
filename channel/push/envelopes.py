"""What nodes send each other through their inboxes: small msgpack arrays.

Every envelope starts with a one-letter kind. Kept tiny because a unicast push
costs one envelope and a fan-out a node's whole inbox batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from channel.push.model import PushMessage

DEVICE = "d"  # [d, device_id, packed message]: a queued push for one device
BROADCAST = "b"  # [b, packed message]: to every device online on the node
TOPIC = "t"  # [t, topic, packed message]: to the node's subscribers of a topic
KICK = "k"  # [k, device_id, reason]
CALL = "c"  # [c, device_id, call_id, reply_node, op, body, headers, timeout_ms]
REPLY = "r"  # [r, call_id, status, headers, body, message]
#: [s]: inbox entries were lost before the node read them (trimmed): replay every local
#: device's queue. Made by the Redis inbox reader, never sent between nodes.
RESYNC = "s"


#: A queued push for one device on its way to the device's node. A router that moves
#: envelopes within the process (the memory backend) hands it over as it is; one that
#: leaves the process packs it (``encode``): the node would otherwise pack and unpack
#: every push it routes to itself, ~10 % of an acked push's gateway CPU.
DevicePush = tuple[str, PushMessage]
#: What routers carry: packed envelopes, or device pushes not packed yet.
Envelope = bytes | DevicePush


def pack(*fields: object) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def unpack(data: bytes) -> list[object]:
    item = msgpack.unpackb(data, raw=False)
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise ValueError("not an envelope")
    return item


def device_push(device_id: str, message: PushMessage) -> bytes:
    return pack(DEVICE, device_id, message.pack())


def encode(envelope: Envelope) -> bytes:
    """The bytes of an envelope, for a router that leaves the process."""
    return envelope if isinstance(envelope, bytes) else device_push(*envelope)


@dataclass(frozen=True, slots=True)
class DeviceCall:
    device_id: str
    call_id: str
    reply_node: int
    op: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    timeout_ms: int
