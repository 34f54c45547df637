"""The hiredis fast path of the Redis stores gives what redis-py's pipeline gives.

Twin implementations tested together (as aiohttp does with its two parsers):
the same batch runs through ``Connection._raw_pipeline`` and through redis-py,
on a real Redis, and the replies must match (errors by type and text).
"""

from __future__ import annotations

import uuid
from typing import Any

from channel.config import PushConfig
from channel.push.redis.connection import Batch, Connection, Lua, _raw_command
from tests.redis_servers import RedisServer

ECHO = Lua("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
FAIL = Lua("return redis.error_reply('ERR no good')")


def _batch(prefix: str) -> Batch:
    batch = Batch()
    batch.add("hset", f"{prefix}:h", "f", "v")
    batch.add("hset", f"{prefix}:h", mapping={"a": b"\x00\xff", "b": 7})
    batch.add("hmget", f"{prefix}:h", ["f", "a", "missing"])
    batch.add("pexpire", f"{prefix}:h", 60_000)
    batch.add("pexpireat", f"{prefix}:nope", 1)
    batch.script(ECHO, [f"{prefix}:k"], ["x", 41])
    batch.script(FAIL, [f"{prefix}:k"], [])
    batch.add("hset", f"{prefix}:h", "f")  # wrong arity: not a raw command
    return batch


async def test_raw_and_redis_py_pipelines_reply_alike(redis_server: RedisServer) -> None:
    conn = Connection(PushConfig(redis_url=redis_server.url))
    await conn.start()
    try:
        prefix = f"raw{uuid.uuid4().hex[:6]}"
        ops = _batch(prefix).ops[:-1]
        assert _raw_command(_batch(prefix).ops[-1]) is None
        for op in ops:
            if op.lua is not None:
                await conn.client.script_load(op.lua.source)
        commands: list[Any] = [_raw_command(op) for op in ops]
        raw = await conn._raw_pipeline(commands)
        await conn.client.delete(f"{prefix}:h")
        pipe = conn.client.pipeline(transaction=False)
        for op in ops:
            getattr(pipe, op.method)(*op.args, **op.kwargs)
        slow = list(await pipe.execute(raise_on_error=False))
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
