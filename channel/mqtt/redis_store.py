"""``MqttStore`` on Redis (or a Redis Cluster), beside the push stores.

Keys (``p`` is ``[push] key_prefix``, ``b`` the device's bucket, as for its queue):

* ``{p}:ms:{b}:<client id>`` HASH — the session: ``g`` generation, ``e`` expiry (s),
  ``d`` when its connection closed (unix ms; 0 while connected), ``s:<filter>``
  subscription options, ``r:<packet id>`` released QoS 2 message ids, ``i:<packet
  id>`` received QoS 2 packet ids. Same hash tag as the device's queue. No TTL while
  connected; ``e`` seconds (and a minute) after the connection closed; a session that
  ended keeps only ``g`` (a day), so late writes of replaced connections stay fenced.
* ``{p}:mg`` HASH ``<client id>\\0<filter>`` → global subscription (options, end).
* ``{p}:mr:{<namespace>}`` HASH topic → retained message; ``{p}:mrn`` SET of namespaces.

Every write of a connection is a script that first checks the generation it was
made under, so a replaced connection on a dead or slow node cannot overwrite its
successor's state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack  # type: ignore[import-untyped]

from channel.config import PushConfig
from channel.mqtt.matching import topic_matches
from channel.mqtt.sessions import GlobalEntry, SessionRecord, SubOptions
from channel.mqtt.store import filter_namespace, namespace_of
from channel.push.redis.connection import Batch, Connection, Lua
from channel.push.redis.keys import Keys
from channel.push.stores import PushBackend

#: How long an ended session's generation is kept (fences late writers).
ENDED_TTL_MS = 86_400_000
#: A disconnected session's key outlives its expiry this much (clock skew).
EXPIRY_MARGIN_MS = 60_000

#: KEYS: session. ARGV: clean (0/1), expiry s, now ms → the record's fields after the
#: open, with ``present`` and when the previous connection closed (``d`` before the
#: open) first.
OPEN = Lua(
    """
local key = KEYS[1]
local g = redis.call('HINCRBY', key, 'g', 1)
local e = tonumber(redis.call('HGET', key, 'e') or '0')
local d = tonumber(redis.call('HGET', key, 'd') or '0')
local now = tonumber(ARGV[3])
local alive = e > 0 and (d == 0 or now < d + e * 1000)
local present = 0
if ARGV[1] == '0' and alive then present = 1 end
if present == 0 then
  redis.call('DEL', key)
  redis.call('HSET', key, 'g', g)
end
redis.call('HSET', key, 'e', ARGV[2], 'd', 0)
redis.call('PERSIST', key)
local out = redis.call('HGETALL', key)
table.insert(out, 1, d)
table.insert(out, 1, present)
return out
"""
)

#: KEYS: session. ARGV: generation, expiry s, now ms, ended ttl ms, margin ms → 1 if closed.
CLOSE = Lua(
    """
local key = KEYS[1]
if redis.call('HGET', key, 'g') ~= ARGV[1] then return 0 end
local e = tonumber(ARGV[2])
if e == 0 then
  redis.call('DEL', key)
  redis.call('HSET', key, 'g', ARGV[1], 'e', 0, 'd', ARGV[3])
  redis.call('PEXPIRE', key, ARGV[4])
else
  redis.call('HSET', key, 'e', e, 'd', ARGV[3])
  redis.call('PEXPIRE', key, e * 1000 + tonumber(ARGV[5]))
end
return 1
"""
)

#: KEYS: session. ARGV: generation, then (field, value) pairs; value "" deletes.
FENCED = Lua(
    """
local key = KEYS[1]
if redis.call('HGET', key, 'g') ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', key, ARGV[i])
  else redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
return 1
"""
)

#: KEYS: namespace hash. ARGV: topic, message ("" drops), cap → 1 kept, 0 refused.
RETAIN = Lua(
    """
local key = KEYS[1]
if ARGV[2] == '' then redis.call('HDEL', key, ARGV[1]) return 1 end
if redis.call('HEXISTS', key, ARGV[1]) == 0 and redis.call('HLEN', key) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', key, ARGV[1], ARGV[2])
return 1
"""
)


class RedisMqttStore:
    def __init__(self, conn: Connection, keys: Keys) -> None:
        self._conn = conn
        self._keys = keys
        prefix = keys.prefix
        self._global = f"{prefix}:mg"
        self._namespaces = f"{prefix}:mrn"

    def _session(self, client_id: str) -> str:
        return f"{self._keys.prefix}:ms:{{{self._keys.bucket(client_id)}}}:{client_id}"

    def _retained_key(self, namespace: str) -> str:
        return f"{self._keys.prefix}:mr:{{{namespace}}}"

    async def _script(self, lua: Lua, keys: Sequence[str], args: Sequence[Any]) -> Any:
        batch = Batch()
        batch.script(lua, keys, args)
        (reply,) = await self._conn.run(batch)
        return reply

    async def open(
        self, client_id: str, clean_start: bool, expiry_s: int, now_ms: int
    ) -> tuple[bool, SessionRecord]:
        reply = await self._script(
            OPEN, [self._session(client_id)], [1 if clean_start else 0, expiry_s, now_ms]
        )
        present = bool(reply[0])
        fields = reply[2:]
        record = _record(client_id, dict(zip(fields[::2], fields[1::2], strict=True)))
        record.disconnected_at_ms = int(reply[1])
        return present, record

    async def close(self, client_id: str, generation: int, expiry_s: int, now_ms: int) -> bool:
        args = [generation, expiry_s, now_ms, ENDED_TTL_MS, EXPIRY_MARGIN_MS]
        return bool(await self._script(CLOSE, [self._session(client_id)], args))

    async def generation(self, client_id: str) -> int:
        value = await self._conn.one("hget", self._session(client_id), "g")
        return int(value) if value else 0

    async def _fenced(self, client_id: str, generation: int, pairs: list[Any]) -> None:
        if pairs:
            await self._script(FENCED, [self._session(client_id)], [generation, *pairs])

    async def subscribe(
        self, client_id: str, generation: int, changes: Mapping[str, SubOptions | None]
    ) -> None:
        pairs: list[Any] = []
        for topic_filter, options in changes.items():
            pairs += [f"s:{topic_filter}", b"" if options is None else options.pack()]
        await self._fenced(client_id, generation, pairs)

    async def release(
        self, client_id: str, generation: int, packet_id: int, message_id: str | None
    ) -> None:
        await self._fenced(client_id, generation, [f"r:{packet_id}", message_id or ""])

    async def receive(self, client_id: str, generation: int, packet_id: int, present: bool) -> None:
        await self._fenced(client_id, generation, [f"i:{packet_id}", "1" if present else ""])

    async def records(self, client_ids: Sequence[str]) -> dict[str, SessionRecord]:
        ids = list(dict.fromkeys(client_ids))
        if not ids:
            return {}
        batch = Batch()
        for client_id in ids:
            batch.add("hgetall", self._session(client_id))
        replies: list[dict[bytes, bytes]] = await self._conn.run(batch)
        out = {}
        for client_id, stored in zip(ids, replies, strict=True):
            if stored:
                record = _record(client_id, stored)
                if record.subscriptions:
                    out[client_id] = record
        return out

    async def global_entries(self) -> list[GlobalEntry]:
        stored: dict[bytes, bytes] = await self._conn.one("hgetall", self._global)
        entries = []
        for name, value in stored.items():
            client_id, _, topic_filter = name.decode().partition("\0")
            options, expires = msgpack.unpackb(value)
            entries.append(
                GlobalEntry(client_id, topic_filter, SubOptions.unpack(options), expires)
            )
        return entries

    async def set_global(
        self, client_id: str, changes: Mapping[str, SubOptions | None], expires_at_ms: int
    ) -> None:
        batch = Batch()
        for topic_filter, options in changes.items():
            name = f"{client_id}\0{topic_filter}"
            if options is None:
                batch.add("hdel", self._global, name)
            else:
                value = msgpack.packb([options.pack(), expires_at_ms], use_bin_type=True)
                batch.add("hset", self._global, name, value)
        if len(batch):
            await self._conn.run(batch)

    async def retain(self, topic: str, message: bytes | None, cap: int) -> bool:
        namespace = namespace_of(topic)
        kept = bool(
            await self._script(
                RETAIN, [self._retained_key(namespace)], [topic, message or b"", cap]
            )
        )
        if kept and message:
            await self._conn.one("sadd", self._namespaces, namespace)
        return kept

    async def retained(self, topic_filter: str) -> list[tuple[str, bytes]]:
        namespace = filter_namespace(topic_filter)
        if namespace is not None:
            namespaces = [namespace]
        else:
            members = await self._conn.one("smembers", self._namespaces)
            namespaces = sorted(m.decode() for m in members)
        if not namespaces:
            return []
        batch = Batch()
        for name in namespaces:
            batch.add("hgetall", self._retained_key(name))
        found: list[tuple[str, bytes]] = []
        for stored in await self._conn.run(batch):
            for topic, message in stored.items():
                text = topic.decode()
                if topic_matches(topic_filter, text):
                    found.append((text, bytes(message)))
        return found


def _record(client_id: str, stored: Mapping[bytes, bytes]) -> SessionRecord:
    record = SessionRecord(client_id)
    for name, value in stored.items():
        key = name.decode()
        if key == "g":
            record.generation = int(value)
        elif key == "e":
            record.expiry_s = int(value)
        elif key == "d":
            record.disconnected_at_ms = int(value)
        elif key.startswith("s:"):
            record.subscriptions[key[2:]] = SubOptions.unpack(value)
        elif key.startswith("r:"):
            record.released[int(key[2:])] = value.decode()
        elif key.startswith("i:"):
            record.received.add(int(key[2:]))
    return record


def redis_mqtt_store(backend: PushBackend, config: PushConfig) -> RedisMqttStore:
    """The store on the Redis of a push backend built by ``channel.push.redis``."""
    conn = backend.connection
    assert isinstance(conn, Connection), "a Redis push backend"
    keys = Keys(config.key_prefix, config.presence_buckets, config.redis_key_memo_devices)
    return RedisMqttStore(conn, keys)
