"""Where everything lives in Redis: the key layout of the push stores, in one place.

Per device (all keys of one device share its bucket's hash tag ``{b}``, so a
script over them is single-slot on a cluster):

* ``{p}:p:{b}`` HASH ``h8(device id)`` → ``"node_no:since_b36:user_id"`` —
  presence. No key per device: ``b = crc32(device id) % presence_buckets``, and
  a bucket of ~64 devices stays listpack-encoded (tens of bytes per device).
  ``h8`` is an 8-byte BLAKE2b digest: shorter than most device ids, so fields
  cost 8 bytes whatever the id (two devices of one bucket collide with
  probability ~2^-53: never, in practice).
* ``{p}:q:{b}:<device id>`` HASH message id → ``PushMessage.pack()``, plus
  ``c:<collapse key>`` → message id — the device's undelivered pushes.

Per user: ``{p}:u:{b}`` HASH ``h8(user id) + device id`` → node number, with
``b = crc32(user id) % presence_buckets`` (one field per device, so a user with
many devices never makes a value too long for listpack encoding; the fixed
8-byte prefix is shorter than most user ids and needs no separator).

Per user, lasting: ``{p}:ud:{b}`` HASH ``h8(user id) + device id`` → last
connection, unix seconds in base 36 — the device directory (every device the
user connected from within ``[push] user_devices_ttl_s``, online or not), laid
out like the user index so it stays listpack-encoded.

Per node: ``{p}:{nodes}`` HASH node number → ``"node_id|lease_end_ms"`` (Redis
clock), ``{p}:{nodes}:seq`` (node numbers), ``{p}:in:{<node_no>}`` STREAM (inbox),
``{p}:in:{<node_no>}:seq`` (the inbox's entry numbers).

Per message: ``{p}:s:{<message id>}`` HASH — status; per API key:
``{p}:i:{<key>}`` STRING — idempotency. The receipt stream is
``[push] receipt_stream``, named as configured (backends read it by name).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable

from channel.config import PushConfig


def h8(ident: str) -> bytes:
    """The 8-byte digest naming a device (presence) or a user (user index) in a field."""
    return hashlib.blake2b(ident.encode(), digest_size=8).digest()


class Keys:
    def __init__(
        self,
        prefix: str,
        presence_buckets: int,
        memo_devices: int = PushConfig.redis_key_memo_devices,
    ) -> None:
        """``memo_devices`` (``[push] redis_key_memo_devices``): device ids whose queue
        key and presence key and field are kept made. A push names its device's queue
        when queued and again when acknowledged, and its presence when looked up, and
        the same devices come back push after push. Past this many (in either memo) that
        memo starts over: ~300 B per device, ~10 MB at the default."""
        self.prefix = prefix
        self.memo_devices = memo_devices
        self.buckets = presence_buckets
        self.nodes = f"{prefix}:{{nodes}}"
        self.node_seq = f"{prefix}:{{nodes}}:seq"
        self._queues: dict[str, str] = {}
        self._presences: dict[str, tuple[str, bytes]] = {}

    def bucket(self, ident: str) -> int:
        return zlib.crc32(ident.encode()) % self.buckets

    def presence(self, device_id: str) -> str:
        return self.presence_field(device_id)[0]

    def presence_field(self, device_id: str) -> tuple[str, bytes]:
        """A device's presence key and its field there (``h8``), memoized."""
        found = self._presences.get(device_id)
        if found is None:
            if len(self._presences) >= self.memo_devices:
                self._presences.clear()
            key = f"{self.prefix}:p:{{{self.bucket(device_id)}}}"
            found = self._presences[device_id] = (key, h8(device_id))
        return found

    def presence_memo(self) -> dict[str, tuple[str, bytes]]:
        """``presence_field``'s memo as it stands (read-only for callers): a caller
        looking many devices up reads it first and calls ``presence_field`` on a miss."""
        return self._presences

    def user(self, user_id: str) -> str:
        return f"{self.prefix}:u:{{{self.bucket(user_id)}}}"

    def user_directory(self, user_id: str) -> str:
        return self.user_directory_bucket(self.bucket(user_id))

    def user_directory_bucket(self, bucket: int) -> str:
        return f"{self.prefix}:ud:{{{bucket}}}"

    def queue(self, device_id: str) -> str:
        key = self._queues.get(device_id)
        if key is None:
            if len(self._queues) >= self.memo_devices:
                self._queues.clear()
            key = f"{self.prefix}:q:{{{self.bucket(device_id)}}}:{device_id}"
            self._queues[device_id] = key
        return key

    def queues(self, device_ids: Iterable[str]) -> list[str]:
        """``queue(d)`` for each of ``device_ids``: one call per batch, not per push."""
        known, make = self._queues.get, self.queue
        return [known(device_id) or make(device_id) for device_id in device_ids]

    def inbox(self, node_no: int) -> str:
        return f"{self.prefix}:in:{{{node_no}}}"

    def inbox_seq(self, node_no: int) -> str:
        return f"{self.prefix}:in:{{{node_no}}}:seq"

    def status(self, message_id: str) -> str:
        return f"{self.prefix}:s:{{{message_id}}}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:i:{{{key}}}"
