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


def pack(*fields: object) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def unpack(data: bytes) -> list[object]:
    item = msgpack.unpackb(data, raw=False)
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise ValueError("not an envelope")
    return item


def device_push(device_id: str, message: PushMessage) -> bytes:
    return pack(DEVICE, device_id, message.pack())


@dataclass(frozen=True, slots=True)
class DeviceCall:
    device_id: str
    call_id: str
    reply_node: int
    op: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    timeout_ms: int
