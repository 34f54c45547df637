"""API idempotency keys: ``{p}:i:{<key>}``, an empty placeholder while the first
request runs, then its response, each with a TTL."""

from __future__ import annotations

from channel.push.redis.connection import Connection
from channel.push.redis.keys import Keys


class RedisIdempotency:
    def __init__(self, conn: Connection, keys: Keys) -> None:
        self._conn = conn
        self._keys = keys

    async def claim(self, key: str, ttl_s: int) -> bytes | None:
        # SET NX GET (Redis >= 7.0): claims a new key, or returns what it holds.
        held: bytes | None = await self._conn.one(
            "set", self._keys.idempotency(key), b"", nx=True, get=True, ex=ttl_s
        )
        return held

    async def complete(self, key: str, response: bytes, ttl_s: int) -> None:
        # Stored even if the claim lapsed meanwhile: a retry then finds the answer.
        await self._conn.one("set", self._keys.idempotency(key), response, ex=ttl_s)

    async def release(self, key: str) -> None:
        await self._conn.one("delete", self._keys.idempotency(key))
