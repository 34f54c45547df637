"""The hiredis fast path of the Redis stores gives what redis-py's pipeline gives.

Twin implementations tested together (as aiohttp does with its two parsers):
the same batch runs through ``Connection._raw_pipeline`` and through redis-py,
on a real Redis, and the replies must match (errors by type and text).
"""

from __future__ import annotations

import uuid

import pytest

from channel.config import PushConfig
from channel.push.redis.connection import Batch, Connection, Lua, _raw_command

ECHO = Lua("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
FAIL = Lua("return redis.error_reply('ERR no good')")


def _batch(prefix: str) -> Batch:
    batch = Batch()
    batch.add("hset", f"{prefix}:h", "f", "v")
    batch.add("hset", f"{prefix}:h", mapping={"a": b"\x00\xff", "b": 7})
    batch.add("hmget", f"{prefix}:h", ["f", "a", "missing"])
    batch.add("pexpire", f"{prefix}:h", 60_000)
    batch.add("pexpireat", f"{prefix}:nope", 1)
    batch.add("hdel", f"{prefix}:h", "b")
    batch.add("hdel", f"{prefix}:h", "missing")
    batch.script(ECHO, [f"{prefix}:k"], ["x", 41])
    batch.script(FAIL, [f"{prefix}:k"], [])
    batch.add("hset", f"{prefix}:h", "f")  # wrong arity: not a raw command
    return batch


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> tuple[str, bool]:
    name = "redis_server" if request.param == "redis" else "redis_cluster"
    return request.getfixturevalue(name).url, request.param == "cluster"


async def test_raw_and_redis_py_pipelines_reply_alike(redis_url: tuple[str, bool]) -> None:
    url, cluster = redis_url
    conn = Connection(PushConfig(redis_url=url, redis_cluster=cluster))
    await conn.start()
    try:
        prefix = f"raw{uuid.uuid4().hex[:6]}"
        ops = _batch(prefix).ops[:-1]
        assert _raw_command(_batch(prefix).ops[-1]) is None
        for op in ops:
            if op.lua is not None:
                await conn.client.script_load(op.lua.source)
        raw = await conn._pipeline(ops)  # the hiredis path (per primary on a cluster)
        await conn.client.delete(f"{prefix}:h")
        slow = await conn._redis_py_pipeline(ops)
        assert len(raw) == len(slow)
        for mine, theirs in zip(raw, slow, strict=True):
            if isinstance(theirs, Exception):
                assert type(mine) is type(theirs) and str(mine) == str(theirs)
            else:
                assert mine == theirs or (isinstance(theirs, bool) and mine == int(theirs))
        # The whole Batch path (NOSCRIPT reload included) on a script Redis never saw.
        fresh = Lua(f"return '{prefix}'")
        batch = Batch()
        batch.script(fresh, [f"{prefix}:k"], [])
        assert await conn.run(batch) == [prefix.encode()]
    finally:
        await conn.aclose()
