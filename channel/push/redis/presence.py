"""Presence in Redis: devices in hash buckets, liveness by node lease.

A device costs one field in its presence bucket and one in its user's bucket
(see ``keys``), and nothing is refreshed per device: a node renews one lease
field, and readers treat devices of a node whose lease lapsed as offline —
a dead node's devices are offline within ``lease_ms`` — deleting such entries
lazily, compare-and-delete, when they come across them.

Every reader of presence needs the live nodes, so they are read once (one
small hash) and cached for ``LEASE_CACHE_S``; an entry naming a node the
cache does not know, or thinks dead, makes a fresher read first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from channel.config import PushConfig
from channel.push.model import Presence
from channel.push.redis import lua
from channel.push.redis.connection import Batch, Connection, pack_args
from channel.push.redis.keys import Keys, h8

log = logging.getLogger("channel.push")

LEASE_CACHE_S = 0.5
#: A cached lease read this recent is trusted to call a node dead.
FRESH_S = 0.05
#: Leases lapsed this long are dropped from the lease hash by the next join.
FORGET_NODE_AFTER_MS = 3_600_000
#: ``HSCAN`` page size for a user's bucket (one page while it is listpack-encoded).
SCAN_COUNT = 1_000

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def b36(value: int) -> str:
    out = ""
    while True:
        value, digit = divmod(value, 36)
        out = _B36[digit] + out
        if not value:
            return out


def encode_presence(entry: Presence) -> str:
    return f"{entry.node_no}:{b36(max(entry.since_s, 0))}:{entry.user_id}"


def decode_presence(device_id: str, value: str) -> Presence:
    node_no, since, user_id = value.split(":", 2)
    return Presence(device_id, user_id, int(node_no), int(since, 36))


@dataclass(frozen=True, slots=True)
class LookupRequest:
    """A presence look-up's commands and what reading their replies needs."""

    batch: Batch
    runs: list[list[int]]
    keys: list[str]
    by_key: dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class _Leases:
    """Node leases as read at one instant of the Redis clock."""

    nodes: dict[int, tuple[str, int]]  # node number → (node id, lease end ms)
    redis_ms: int
    read_at: float  # time.monotonic() of the read

    def age_s(self) -> float:
        return time.monotonic() - self.read_at

    def live(self) -> dict[int, str]:
        now = self.redis_ms + int(self.age_s() * 1000)
        return {no: node_id for no, (node_id, end) in self.nodes.items() if end > now}

    def dead(self, node_no: int, live: Mapping[int, str]) -> bool:
        """Known to be gone: its lease lapsed, or it left (numbers only grow, so an
        unknown number above every known one may be a node that just joined)."""
        if node_no in live:
            return False
        return node_no in self.nodes or node_no < max(self.nodes, default=0)


class RedisPresence:
    def __init__(
        self,
        conn: Connection,
        keys: Keys,
        memo_devices: int = PushConfig.redis_presence_memo_devices,
    ) -> None:
        self._conn = conn
        #: ``[push] redis_presence_memo_devices``: presences kept decoded (~250 B each);
        #: past this many the memo starts over.
        self.memo_devices = memo_devices
        self._keys = keys
        self._leases: _Leases | None = None
        self._leases_lock = asyncio.Lock()
        #: Device id → (its presence value as last read, that value decoded): the same
        #: devices are looked up push after push, and their values rarely change.
        self._decoded: dict[str, tuple[bytes, Presence]] = {}

    async def aclose(self) -> None:
        """Close the backend's Redis clients (``PushBackend.close`` calls this)."""
        await self._conn.aclose()

    # ------------------------------------------------------------- leases

    async def join(self, node_id: str, lease_ms: int) -> int:
        batch = Batch()
        keys = [self._keys.nodes, self._keys.node_seq]
        batch.script(lua.NODE_JOIN, keys, [node_id, lease_ms, FORGET_NODE_AFTER_MS])
        (node_no,) = await self._conn.run(batch)
        self._leases = None
        return int(node_no)

    async def renew(self, node_no: int, node_id: str, lease_ms: int) -> bool:
        batch = Batch()
        keys = [self._keys.nodes, self._keys.node_seq]
        batch.script(lua.NODE_RENEW, keys, [node_no, node_id, lease_ms])
        (held,) = await self._conn.run(batch)
        self._leases = None
        return bool(held)

    async def leave(self, node_no: int) -> None:
        await self._conn.one("hdel", self._keys.nodes, str(node_no))
        self._leases = None

    async def live_nodes(self, fresh: bool = False) -> dict[int, str]:
        return (await self._read_leases(0.0 if fresh else LEASE_CACHE_S)).live()

    async def _read_leases(self, max_age_s: float) -> _Leases:
        leases = self._leases
        if leases is not None and leases.age_s() <= max_age_s:
            return leases
        async with self._leases_lock:
            leases = self._leases
            if leases is not None and leases.age_s() <= max_age_s:
                return leases  # read by whoever held the lock
            batch = Batch()
            batch.script(lua.NODES_READ, [self._keys.nodes], [])
            ((seconds, micros, flat),) = await self._conn.run(batch)
            nodes: dict[int, tuple[str, int]] = {}
            for field, value in zip(flat[::2], flat[1::2], strict=True):
                node_id, _, lease_end = value.decode().rpartition("|")
                nodes[int(field)] = (node_id, int(lease_end))
            redis_ms = int(seconds) * 1000 + int(micros) // 1000
            self._leases = leases = _Leases(nodes, redis_ms, time.monotonic())
            return leases

    # ------------------------------------------------------------ devices

    async def set_online(self, entries: Sequence[Presence]) -> None:
        batch = Batch()
        for entry in entries:
            key = self._keys.presence(entry.device_id)
            batch.add("hset", key, h8(entry.device_id), encode_presence(entry))
            if entry.user_id:
                field = h8(entry.user_id) + entry.device_id.encode()
                batch.add("hset", self._keys.user(entry.user_id), field, entry.node_no)
        if batch:
            await self._conn.run(batch)

    async def set_offline(self, entries: Sequence[Presence]) -> None:
        # Both deletions compare the node number, so a device that came back on
        # another node (or on this one in between) is never taken offline here.
        batch = Batch()
        for entry in entries:
            node_no = str(entry.node_no)
            key = self._keys.presence(entry.device_id)
            batch.script(lua.HDEL_IF_NODE, [key], [h8(entry.device_id), node_no])
            if entry.user_id:
                field = h8(entry.user_id) + entry.device_id.encode()
                batch.script(lua.HDEL_IF_NODE, [self._keys.user(entry.user_id)], [field, node_no])
        if batch:
            await self._conn.run(batch)

    async def lookup(self, device_ids: Sequence[str]) -> dict[str, Presence]:
        return (await self._lookup(device_ids))[0] if device_ids else {}

    async def _lookup(
        self, device_ids: Sequence[str]
    ) -> tuple[dict[str, Presence], _Leases, dict[int, str]]:
        """Devices on live nodes, and the leases that said so."""
        request = self.lookup_request(device_ids)
        leases = self._leases
        if leases is not None and leases.age_s() <= LEASE_CACHE_S:
            replies = await self._conn.run(request.batch)  # no second call to wait for
        else:
            leases, replies = await asyncio.gather(
                self._read_leases(LEASE_CACHE_S), self._conn.run(request.batch)
            )
        return await self._lookup_found(request, replies, leases)

    def lookup_request(self, device_ids: Sequence[str]) -> LookupRequest:
        """The commands of a look-up (``lookup_reply`` reads their replies): for a caller
        that sends them in one round trip with others (``RedisUnicastWriter``)."""
        by_key: dict[str, list[str]] = {}
        fields: dict[str, list[bytes]] = {}
        # Keys.presence_field's memo read here, the call only for a device not in it.
        known, presence_field = self._keys.presence_memo().get, self._keys.presence_field
        for device_id in dict.fromkeys(device_ids):
            key, field = known(device_id) or presence_field(device_id)
            devices = by_key.get(key)
            if devices is None:
                by_key[key] = [device_id]
                fields[key] = [field]
            else:
                devices.append(device_id)
                fields[key].append(field)
        keys = list(by_key)
        runs = self._conn.groups(keys)
        batch = Batch()
        for run in runs:
            if len(run) == 1:  # a plain HMGET (on a cluster, the usual run)
                batch.command("HMGET", keys[run[0]], *fields[keys[run[0]]])
                continue
            args: list[int | bytes] = []
            for i in run:
                key_fields = fields[keys[i]]
                args.append(len(key_fields))
                args += key_fields
            batch.script(lua.HMGET_MANY, [keys[i] for i in run], [pack_args(args)])
        return LookupRequest(batch, runs, keys, by_key)

    async def lookup_reply(self, request: LookupRequest, replies: list[Any]) -> dict[str, Presence]:
        """``lookup``'s answer from the replies to ``request.batch``."""
        leases = await self._read_leases(LEASE_CACHE_S)
        return (await self._lookup_found(request, replies, leases))[0]

    async def _lookup_found(
        self, request: LookupRequest, replies: list[Any], leases: _Leases
    ) -> tuple[dict[str, Presence], _Leases, dict[int, str]]:
        runs, keys, by_key = request.runs, request.keys, request.by_key
        values: dict[str, str] = {}
        found: dict[str, Presence] = {}
        decoded = self._decoded
        for run, reply in zip(runs, replies, strict=True):
            # Both replies are the values in the order the fields were given.
            devices = (
                by_key[keys[run[0]]] if len(run) == 1 else [d for i in run for d in by_key[keys[i]]]
            )
            for device_id, value in zip(devices, reply, strict=True):
                if value is None:
                    continue
                known = decoded.get(device_id)
                if known is not None and known[0] == value:
                    found[device_id] = known[1]
                    continue
                values[device_id] = text = value.decode()
                found[device_id] = presence = decode_presence(device_id, text)
                if len(decoded) >= self.memo_devices:
                    decoded.clear()
                decoded[device_id] = (value, presence)
        live = leases.live()
        elsewhere = [d for d, p in found.items() if p.node_no not in live]
        if not elsewhere:  # the usual case: every device on a live node
            return found, leases, live
        if leases.age_s() > FRESH_S:
            leases = await self._read_leases(FRESH_S)
            live = leases.live()
        stale = [d for d in elsewhere if leases.dead(found[d].node_no, live)]
        if stale:
            await self._forget(
                (*self._keys.presence_field(d), values.get(d) or encode_presence(found[d]))
                for d in stale
            )
        return {d: p for d, p in found.items() if p.node_no in live}, leases, live

    async def user_devices(self, user_id: str) -> list[Presence]:
        key = self._keys.user(user_id)
        prefix = h8(user_id)
        listed = await scan_user_fields(self._conn, key, prefix)
        if not listed:
            return []
        found, leases, live = await self._lookup(sorted(listed))
        # Index entries of dead nodes, or of devices now someone else's, go lazily.
        stale = [
            (key, prefix + device_id.encode(), node_no)
            for device_id, node_no in listed.items()
            if leases.dead(int(node_no), live)
            or (device_id in found and found[device_id].user_id != user_id)
        ]
        if stale:
            await self._forget(stale)
        return [p for p in found.values() if p.user_id == user_id]

    async def _forget(self, entries: Iterable[tuple[str, bytes, str]]) -> None:
        await forget_if_equal(self._conn, entries, "stale presence")


async def scan_user_fields(conn: Connection, key: str, prefix: bytes) -> dict[str, str]:
    """``rest of field → value`` of the fields of ``key`` that start with ``prefix`` (one
    user's entries in a bucket shared by users)."""
    pattern = glob_escape(prefix) + b"*"
    listed: dict[str, str] = {}
    cursor = 0
    while True:
        cursor, page = await conn.one("hscan", key, cursor, match=pattern, count=SCAN_COUNT)
        for field, value in page.items():
            listed[field[len(prefix) :].decode()] = value.decode()
        if not cursor:
            return listed


async def forget_if_equal(
    conn: Connection, entries: Iterable[tuple[str, bytes, str]], what: str
) -> None:
    """Compare-and-delete ``(key, field, value-as-read)``: best effort (the next reader
    tries again), and never a field someone rewrote meanwhile."""
    batch = Batch()
    for key, field, value in entries:
        batch.script(lua.HDEL_IF_EQUAL, [key], [field, value])
    try:
        await conn.run(batch)
    except RedisError as exc:
        log.debug("%s not deleted: %r", what, exc)


def glob_escape(raw: bytes) -> bytes:
    return b"".join(b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in raw)
