"""The device directory in Redis: each user's devices, online or not (see ``keys``).

A connection writes one field (``HSET``, batched with the node's other presence
writes); a push to users reads each user's fields with ``HSCAN`` on the user's
bucket, keeps the newest ``cap`` seen within ``ttl_s`` and deletes the rest,
compare-and-delete, so a device that connects meanwhile is never forgotten.
The entries of users nobody pushes to are forgotten by ``sweep``, which each
node runs over its share of the buckets (``NodeDelivery``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from channel.push.memory import newest_seen
from channel.push.model import Presence
from channel.push.redis import lua
from channel.push.redis.connection import Batch, Connection
from channel.push.redis.keys import Keys, h8
from channel.push.redis.presence import b36, forget_if_equal, scan_user_fields


class RedisDirectory:
    def __init__(self, conn: Connection, keys: Keys, ttl_s: int, cap: int) -> None:
        self._conn = conn
        self._keys = keys
        self.ttl_s = ttl_s
        self.cap = cap
        self.buckets = keys.buckets

    async def remember(self, entries: Sequence[Presence]) -> None:
        batch = Batch()
        for entry in entries:
            if entry.user_id:
                field = h8(entry.user_id) + entry.device_id.encode()
                key = self._keys.user_directory(entry.user_id)
                batch.add("hset", key, field, b36(max(entry.since_s, 0)))
        if batch:
            await self._conn.run(batch)

    async def known_devices(self, user_ids: Sequence[str], now_s: int) -> dict[str, list[str]]:
        users = list(dict.fromkeys(user_ids))
        found = await asyncio.gather(*(self._read(u) for u in users))
        out: dict[str, list[str]] = {}
        stale: list[tuple[str, bytes, str]] = []
        for user_id, raw in zip(users, found, strict=True):
            if not raw:
                continue
            seen = {device: int(value, 36) for device, value in raw.items()}
            kept = newest_seen(seen, now_s - self.ttl_s, self.cap)
            out[user_id] = kept
            if len(kept) < len(seen):
                key = self._keys.user_directory(user_id)
                prefix = h8(user_id)
                keep = set(kept)
                stale.extend((key, prefix + d.encode(), raw[d]) for d in seen if d not in keep)
        if stale:
            await forget_if_equal(self._conn, stale, "old directory entries")
        return out

    async def sweep(self, first_bucket: int, count: int, now_s: int) -> int:
        batch = Batch()
        cutoff = now_s - self.ttl_s
        for i in range(min(count, self.buckets)):
            key = self._keys.user_directory_bucket((first_bucket + i) % self.buckets)
            batch.script(lua.DIRECTORY_SWEEP, [key], [cutoff])
        if not batch:
            return 0
        return sum(int(n) for n in await self._conn.run(batch))

    async def _read(self, user_id: str) -> dict[str, str]:
        """``device id → last seen (base 36)`` of one user, from the user's bucket."""
        return await scan_user_fields(self._conn, self._keys.user_directory(user_id), h8(user_id))
