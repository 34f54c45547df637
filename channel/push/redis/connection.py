"""Redis clients for the push stores: timeouts, retries, bounded concurrency, batches.

Two clients per process, each with its own pool: one for commands and one
for blocking stream reads (inbox, receipts), so a read parked in ``XREAD
BLOCK`` never holds a connection commands need. Both:

* time out a socket read after ``SOCKET_TIMEOUT_S``, well above the longest
  ``BLOCK`` issued (``MAX_BLOCK_MS``; redis-py's default 5 s would cut longer
  blocks and retry them silently);
* retry on connection errors and timeouts with jittered exponential backoff,
  so a Redis restart costs a few failed calls at most, not the process;
* run at most ``[push] redis_max_connections - redis_raw_connections`` calls at
  once: redis-py's pools raise rather than wait when full, so callers queue here
  instead.

Everything goes through ``Batch``: commands and Lua scripts in one pipeline per
``[push] redis_pipeline_commands`` (a cluster pipeline splits it per node), scripts by SHA and
loaded on ``NOSCRIPT`` (a restarted Redis has forgotten them).

The hot paths (a push accepted, a push acknowledged) run one script over many keys
instead of one command per push: ``Connection.groups`` splits a batch's keys into
runs a script may take together (any keys on one Redis, one hash slot on a cluster),
at most ``[push] redis_keys_per_script`` each. A command costs the gateway ~2 µs of Python to
build, pack and parse whatever it carries, and Redis a dispatch.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
import msgpack
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from channel.config import PushConfig

#: Longest ``XREAD BLOCK`` sent; longer waits are made of several reads.
MAX_BLOCK_MS = 5_000
SOCKET_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 5.0
HEALTH_CHECK_INTERVAL_S = 15
RETRIES = 6

#: Redis calls that failed (after redis-py's own retries), by exception class: the
#: ``channel_redis_errors_total`` metric. One process, one count: every Connection
#: of the process adds to it.
ERRORS: Counter[str] = Counter()

RedisClient = Redis | RedisCluster


@dataclass(frozen=True)
class Lua:
    """A Lua script, run by SHA through ``Batch.script``."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 µs more per command
class _Op:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    lua: Lua | None = None


class Batch:
    """Commands for one round trip (chunked when long); ``Connection.run`` returns
    their replies in order."""

    def __init__(self) -> None:
        self.ops: list[_Op] = []

    def __len__(self) -> int:
        return len(self.ops)

    def add(self, method: str, *args: Any, **kwargs: Any) -> None:
        """A redis-py command method by name (``"hset"``, ``"xadd"`` …)."""
        self.ops.append(_Op(method, args, kwargs))

    def command(self, *args: Any) -> None:
        """A command as Redis spells it (``"HSET", key, field, value, …``; its first key
        second), sent as is: no redis-py method (and no mapping to flatten) in between."""
        self.ops.append(_Op("execute_command", args, {}))

    def script(self, lua: Lua, keys: Sequence[str], args: Sequence[Any]) -> None:
        # By name: redis-py's cluster pipeline refuses its evalsha() method,
        # though it routes a raw EVALSHA by its first key.
        self.ops.append(
            _Op("execute_command", ("EVALSHA", lua.sha, len(keys), *keys, *args), {}, lua)
        )


#: One packer for every call (``msgpack.packb`` makes a new one each time). Shared
#: safely: packing strings, bytes, integers and lists calls no Python code, so one
#: ``pack()`` runs under the GIL from start to end.
_ARGS_PACKER = msgpack.Packer(use_bin_type=False)


def pack_args(values: Sequence[Any]) -> bytes:
    """A batched script's arguments as its one ``ARGV`` (``lua._ARGS`` unpacks them):
    strings, bytes (as msgpack raw strings: Redis's cmsgpack reads no bin type) and
    integers up to 2^53 (Lua numbers are doubles)."""
    packed: bytes = _ARGS_PACKER.pack(values)
    return packed


def raise_if_cancelled() -> None:
    """Raise the cancellation of the current task if it got lost on the way.

    On Python 3.11, ``asyncio.wait_for`` (which redis-py uses while connecting)
    returns normally when the cancellation arrives just as what it waited for
    completes: the task's ``cancel()`` is swallowed, and a loop around Redis
    calls would never stop. ``cancelling()`` still tells, so every call here
    checks it on the way out."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _client(config: PushConfig) -> RedisClient:
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "retry": Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.02), RETRIES),
        "max_connections": config.redis_max_connections,
    }
    if config.redis_cluster:
        return RedisCluster.from_url(config.redis_url, **options)
    return Redis.from_url(config.redis_url, **options)


class Connection:
    def __init__(self, config: PushConfig) -> None:
        self.cluster = config.redis_cluster
        #: Keys one script call takes at most (``groups``).
        self.keys_per_script = config.redis_keys_per_script
        #: Commands per pipelined round trip (``run``).
        self.pipeline_commands = config.redis_pipeline_commands
        self.client = _client(config)
        #: For blocking reads only.
        self.blocking = _client(config)
        # Connections the raw path keeps between its exchanges (per client, single
        # Redis) instead of handing them back to redis-py's pool, whose get and release
        # (a lock, observability records, an event dispatch) cost more Python than the
        # exchange itself. Calls in flight are bounded to what the pool holds beyond
        # them, so redis-py's own calls never find it short.
        raw = config.redis_raw_connections
        in_flight = config.redis_max_connections - raw
        self._slots = asyncio.Semaphore(in_flight)
        self._blocking_slots = asyncio.Semaphore(in_flight)
        self._idle = _IdleConnections(self.client, raw)
        self._blocking_idle = _IdleConnections(self.blocking, raw)

    async def start(self) -> None:
        """Reach Redis once, so a wrong URL fails at start-up, not at the first push."""
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()
        else:
            await self.client.ping()

    async def aclose(self) -> None:
        await self._idle.release_all()
        await self._blocking_idle.release_all()
        await self.client.aclose()
        await self.blocking.aclose()

    def groups(self, keys: Sequence[str]) -> list[list[int]]:
        """Indexes of ``keys`` in runs one script call may take together, each in the
        order given: consecutive runs of ``keys_per_script`` on one Redis; on a cluster,
        keys of one hash slot (scripts refuse keys of several slots)."""
        per_script = self.keys_per_script
        if not self.cluster:
            count = len(keys)
            return [
                list(range(start, min(start + per_script, count)))
                for start in range(0, count, per_script)
            ]
        by_slot: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_slot.setdefault(key_slot(key.encode()), []).append(index)
        return [
            indexes[start : start + per_script]
            for indexes in by_slot.values()
            for start in range(0, len(indexes), per_script)
        ]

    async def run(self, batch: Batch) -> list[Any]:
        """Replies in order; raises the first command error after the batch ran."""
        replies: list[Any] = []
        chunk = self.pipeline_commands
        for start in range(0, len(batch.ops), chunk):
            async with self._slots:
                try:
                    replies.extend(await self._execute(batch.ops[start : start + chunk]))
                except Exception as exc:
                    ERRORS[type(exc).__name__] += 1
                    raise
            raise_if_cancelled()
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def one(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async with self._slots:
            try:
                reply = await getattr(self.client, method)(*args, **kwargs)
            except Exception as exc:
                ERRORS[type(exc).__name__] += 1
                raise
        raise_if_cancelled()
        return reply

    async def blocking_read(self, stream: str, after: str, count: int, block_ms: int) -> Any:
        """``XREAD`` of one stream on the blocking client (``block_ms`` ≤ ``MAX_BLOCK_MS``),
        in redis-py's shape: ``[[stream, [(id, {field: value, …}), …]]]``, or ``[]``."""
        async with self._blocking_slots:
            try:
                reply: Any = None
                if not self.cluster:
                    # The raw path: redis-py's xread costs ~3x its Python; what fails
                    # there goes to redis-py below, which reconnects and retries.
                    command = ("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", stream, after)
                    try:
                        (raw,) = await self._blocking_idle.exchange([command])
                        reply = _xread_reply(raw)
                    except (OSError, RedisConnectionError, RedisTimeoutError):
                        pass
                if reply is None:
                    reply = await self.blocking.xread({stream: after}, count=count, block=block_ms)
            except Exception as exc:
                ERRORS[type(exc).__name__] += 1
                raise
        raise_if_cancelled()
        return reply

    async def _execute(self, ops: Sequence[_Op]) -> list[Any]:
        replies = await self._pipeline(ops)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            scripts = {lua.source for i in missing if (lua := ops[i].lua) is not None}
            for source in scripts:
                # On a cluster SCRIPT LOAD goes to every primary.
                await self.client.script_load(source)
            again = await self._pipeline([ops[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _raw_pipeline(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The batch packed by hiredis and its replies parsed by hiredis, on a pooled
        connection: redis-py's pipeline spends ~10 µs of Python per command packing,
        parsing and entering a timeout per reply; this spends ~1 µs (stress/push.py)."""
        return await self._idle.exchange(commands)

    async def _raw_cluster(
        self, ops: Sequence[_Op], commands: Sequence[tuple[Any, ...]]
    ) -> list[Any]:
        """The same fast path on a cluster: commands grouped by the primary that owns
        their first key's slot, one exchange per primary, concurrently. Commands that
        meet a topology change (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) or a broken
        connection are run again through redis-py's cluster pipeline, which follows
        redirections and refreshes the slot map."""
        assert isinstance(self.client, RedisCluster)
        client = self.client
        groups: dict[Any, list[int]] = {}
        for index, command in enumerate(commands):
            node = client.nodes_manager.get_node_from_slot(client.keyslot(_first_key(command)))
            groups.setdefault(node, []).append(index)
        replies: list[Any] = [None] * len(commands)
        retry: list[int] = []

        async def on_node(node: Any, indexes: list[int]) -> None:
            try:
                conn = node.acquire_connection()
            except Exception:
                retry.extend(indexes)
                return
            try:
                got = await _exchange(conn, [commands[i] for i in indexes])
            except (OSError, RedisConnectionError, RedisTimeoutError):
                retry.extend(indexes)
                return
            finally:
                node.release(conn)
            for i, reply in zip(indexes, got, strict=True):
                if isinstance(reply, _TOPOLOGY_ERRORS):
                    retry.append(i)
                else:
                    replies[i] = reply

        await asyncio.gather(*(on_node(node, indexes) for node, indexes in groups.items()))
        if retry:
            retry.sort()
            again = await self._redis_py_pipeline([ops[i] for i in retry])
            for i, reply in zip(retry, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, ops: Sequence[_Op]) -> list[Any]:
        commands = [_raw_command(op) for op in ops]
        if all(c is not None for c in commands):
            if self.cluster:
                if all(_first_key(c) is not None for c in commands):  # type: ignore[arg-type]
                    return await self._raw_cluster(ops, commands)  # type: ignore[arg-type]
            else:
                try:
                    return await self._raw_pipeline(commands)  # type: ignore[arg-type]
                except (OSError, RedisConnectionError, RedisTimeoutError):
                    pass  # redis-py's pipeline below reconnects and retries with backoff
        return await self._redis_py_pipeline(ops)

    async def _redis_py_pipeline(self, ops: Sequence[_Op]) -> list[Any]:
        pipe = (
            self.client.pipeline()
            if isinstance(self.client, RedisCluster)
            else self.client.pipeline(transaction=False)
        )
        for op in ops:
            getattr(pipe, op.method)(*op.args, **op.kwargs)
        return list(await pipe.execute(raise_on_error=False))


#: Commands the hot paths batch whose raw replies are what redis-py would return
#: (or what the stores treat alike: PEXPIRE's 1 for True).
def _raw_command(op: _Op) -> tuple[Any, ...] | None:
    method, args, kwargs = op.method, op.args, op.kwargs
    if method == "execute_command" and not kwargs:
        return args
    if method == "hset":
        mapping = kwargs.get("mapping")
        if mapping is not None and len(args) == 1 and len(kwargs) == 1:
            return ("HSET", args[0], *(x for pair in mapping.items() for x in pair))
        if not kwargs and len(args) == 3:
            return ("HSET", *args)
    elif method == "hdel" and not kwargs and len(args) == 2:
        return ("HDEL", *args)
    elif method == "hmget" and not kwargs and len(args) == 2:
        return ("HMGET", args[0], *args[1])
    elif method in ("pexpire", "pexpireat") and not kwargs and len(args) == 2:
        return (method.upper(), *args)
    elif method == "xadd" and len(args) == 2 and set(kwargs) <= {"maxlen", "approximate"}:
        command: list[Any] = ["XADD", args[0]]
        if kwargs.get("maxlen") is not None:
            command += (
                ["MAXLEN", "~", kwargs["maxlen"]]
                if kwargs.get("approximate")
                else [
                    "MAXLEN",
                    kwargs["maxlen"],
                ]
            )
        command.append("*")
        for name, value in args[1].items():
            command += [name, value]
        return tuple(command)
    return None


class _IdleConnections:
    """Connections of a single-Redis client's pool, kept between raw exchanges
    (``max_idle`` at most: ``[push] redis_raw_connections``); one that failed goes back
    to the pool, disconnected."""

    def __init__(self, client: RedisClient, max_idle: int) -> None:
        self._pool = client.connection_pool if isinstance(client, Redis) else None
        self._idle: list[Any] = []
        self._max_idle = max_idle

    async def exchange(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        pool = self._pool
        assert pool is not None
        idle = self._idle
        conn = idle.pop() if idle else await pool.get_connection()
        try:
            replies = await _exchange(conn, commands)
        except BaseException:
            await pool.release(conn)
            raise
        if len(idle) < self._max_idle:
            idle.append(conn)
        else:
            await pool.release(conn)
        return replies

    async def release_all(self) -> None:
        idle, self._idle = self._idle, []
        if self._pool is not None:
            for conn in idle:
                await self._pool.release(conn)


def _xread_reply(raw: Any) -> list[Any]:
    """A raw ``XREAD`` reply (nil when the block ran out; a map of streams on RESP3, an
    array of ``[stream, entries]`` on RESP2) as redis-py returns it."""
    if raw is None:
        return []
    streams = raw.items() if isinstance(raw, dict) else raw
    return [
        [name, [(entry_id, _fields(flat)) for entry_id, flat in entries]]
        for name, entries in streams
    ]


def _fields(flat: Any) -> dict[Any, Any]:
    if isinstance(flat, dict):
        return flat
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _reply(reply: Any) -> Any:
    if isinstance(reply, hiredis.ReplyError):
        # redis-py's own mapping: error class by prefix ("NOSCRIPT" → NoScriptError).
        return BaseParser.parse_error(str(reply))
    return reply


def _first_key(command: tuple[Any, ...]) -> Any:
    """The key that picks a command's slot (EVALSHA: its first key), or None."""
    if command[0] == "EVALSHA":
        return command[3] if int(command[2]) > 0 else None
    return command[1]


_TOPOLOGY_ERRORS = (MovedError, AskError, TryAgainError, ClusterDownError)


async def _exchange(conn: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one write and read their replies with a hiredis.Reader."""
    try:
        packed = b"".join(hiredis.pack_command(command) for command in commands)
        stream, writer = conn._reader, conn._writer
        if stream is None or writer is None or writer.transport.is_closing():
            raise RedisConnectionError("not connected")
        reader = hiredis.Reader()
        replies: list[Any] = []
        async with asyncio.timeout(SOCKET_TIMEOUT_S):
            # Straight to the stream: redis-py's send_packed_command wraps the write in
            # asyncio.wait_for, a task and a loop turn per write. drain() waits only
            # when the transport's buffer is past its high-water mark.
            writer.write(packed)
            await writer.drain()
            while len(replies) < len(commands):
                reply = reader.gets()
                if reply is False:
                    data = await stream.read(65536)
                    if not data:
                        raise RedisConnectionError("Redis closed the connection")
                    reader.feed(data)
                    continue
                replies.append(_reply(reply))
    except BaseException:
        # Mid-reply the connection's state is unknown: never hand it out again as is.
        await conn.disconnect(nowait=True)
        raise
    return replies
