"""API idempotency keys: ``{p}:i:{<key>}``, a placeholder (``RUNNING`` + the owner's
token) with a short lease while the first request runs, renewed by its node, then its
response with the full TTL."""

from __future__ import annotations

from channel.push.redis import lua
from channel.push.redis.connection import Batch, Connection, Lua
from channel.push.redis.keys import Keys
from channel.push.stores import RUNNING


class RedisIdempotency:
    def __init__(self, conn: Connection, keys: Keys) -> None:
        self._conn = conn
        self._keys = keys

    async def claim(self, key: str, owner: bytes, lease_ms: int) -> bytes | None:
        # SET NX GET (Redis >= 7.0): claims a free key, or returns what it holds.
        held: bytes | None = await self._conn.one(
            "set", self._keys.idempotency(key), RUNNING + owner, nx=True, get=True, px=lease_ms
        )
        return held

    async def renew(self, key: str, owner: bytes, lease_ms: int) -> bool:
        return await self._if_owner(lua.PEXPIRE_IF_EQUAL, key, owner, lease_ms)

    async def complete(self, key: str, response: bytes, ttl_s: int) -> None:
        # Stored even if the claim lapsed meanwhile: a retry then finds the answer.
        await self._conn.one("set", self._keys.idempotency(key), response, ex=ttl_s)

    async def release(self, key: str, owner: bytes) -> None:
        await self._if_owner(lua.DEL_IF_EQUAL, key, owner)

    async def _if_owner(self, script: Lua, key: str, owner: bytes, *args: int) -> bool:
        batch = Batch()
        batch.script(script, [self._keys.idempotency(key)], [RUNNING + owner, *args])
        (done,) = await self._conn.run(batch)
        return bool(done)
