"""Node inboxes as Redis streams: one entry per batch, read with ``XREAD BLOCK``.

``{p}:in:{<node_no>}``: each entry's field ``b`` is a msgpack list of
envelopes, ``s`` its number (``{p}:in:{<node_no>}:seq``, taken in the same script
that adds it). The owning node reads it on a dedicated connection and trims what
it has read, so a stream holds only what is in flight; ``[push]
inbox_max_entries`` bounds a stalled node's backlog, and an inbox nobody writes to
expires.

Entries trimmed before the node read them are not lost pushes (the device
queues, not the inbox, hold pushes safe), but nothing would write them to their
devices until those reconnect. The numbers tell: a read that skips numbers
starts with a ``RESYNC`` envelope, and the node replays its devices' queues.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import msgpack
from redis.exceptions import RedisError

from channel.config import PushConfig
from channel.logs import fields
from channel.push import envelopes as env
from channel.push.redis import lua
from channel.push.redis.connection import Batch, Connection, raise_if_cancelled
from channel.push.redis.keys import Keys
from channel.push.redis.presence import RedisPresence

log = logging.getLogger("channel.push")

INBOX_BLOCK_MS = 1_000
INBOX_IDLE_TTL_MS = 600_000
RECONNECT_BACKOFF_CAP_S = 2.0
#: One packer for every inbox entry (``msgpack.packb`` makes a new one each time);
#: shared safely, as ``connection.pack_args``'s is.
_PACKER = msgpack.Packer(use_bin_type=True)


async def last_stream_id(conn: Connection, key: str) -> str:
    """The id of a stream's newest entry ("0-0" when it is empty): "$" as a cursor."""
    newest = await conn.one("xrevrange", key, "+", "-", count=1)
    return newest[0][0].decode() if newest else "0-0"


class RedisRouter:
    def __init__(
        self,
        conn: Connection,
        keys: Keys,
        presence: RedisPresence,
        max_entries: int = PushConfig.inbox_max_entries,
        local_envelopes: int = PushConfig.redis_local_envelopes,
        read_entries: int = PushConfig.redis_inbox_read_entries,
    ) -> None:
        self._conn = conn
        #: ``[push] redis_inbox_read_entries``: entries taken per read (each a batch);
        #: what they hold is yielded as one batch.
        self.read_entries = read_entries
        #: ``[push] redis_local_envelopes``: envelopes kept for entries this process
        #: added to an inbox it reads itself (at most; the oldest entries go first).
        self.local_envelopes = local_envelopes
        self._keys = keys
        self._presence = presence
        self.max_entries = max_entries
        #: Inboxes read in this process (node number → readers).
        self._reading: Counter[int] = Counter()
        #: Entries this process added to an inbox it reads, by their bytes → the
        #: envelopes they were packed from. An entry read back with the same bytes is
        #: taken as those envelopes instead of unpacked again (a push for a device on
        #: this node: ~10 % of its gateway CPU went to unpacking what it had just
        #: packed). The entry still goes through Redis and is read from there: what is
        #: delivered, and when, is as before; equal bytes unpack to equal envelopes.
        self._sent: dict[bytes, tuple[env.Envelope, ...]] = {}
        self._sent_envelopes = 0

    async def send(self, node_no: int, envelopes: Sequence[env.Envelope]) -> None:
        if envelopes:
            await self._conn.run(self._sends([node_no], envelopes))

    async def send_all(self, envelopes: Sequence[bytes], fresh: bool = False) -> None:
        nodes = await self._presence.live_nodes(fresh)
        if envelopes and nodes:
            await self._conn.run(self._sends(sorted(nodes), envelopes))

    def _sends(self, node_nos: Sequence[int], envelopes: Sequence[env.Envelope]) -> Batch:
        pack = _PACKER.pack
        device = env.DEVICE
        # env.encode, inlined: one packer call per push, not a packer made per call.
        payload = pack(
            [e if isinstance(e, bytes) else pack([device, e[0], e[1].pack()]) for e in envelopes]
        )
        if self._reading and any(n in self._reading for n in node_nos):
            self._remember(payload, envelopes)
        batch = Batch()
        for node_no in node_nos:
            keys = [self._keys.inbox(node_no), self._keys.inbox_seq(node_no)]
            batch.script(lua.INBOX_ADD, keys, [self.max_entries, payload, INBOX_IDLE_TTL_MS])
        return batch

    def _remember(self, payload: bytes, envelopes: Sequence[env.Envelope]) -> None:
        sent = self._sent
        if payload in sent:
            return  # the same bytes: the same envelopes
        sent[payload] = tuple(envelopes)
        self._sent_envelopes += len(envelopes)
        while self._sent_envelopes > self.local_envelopes:
            self._sent_envelopes -= len(sent.pop(next(iter(sent))))

    def _envelopes(self, payload: bytes) -> Sequence[env.Envelope]:
        """An inbox entry's envelopes: as sent from this process, or unpacked."""
        if self._sent:
            known = self._sent.pop(payload, None)
            if known is not None:
                self._sent_envelopes -= len(known)
                return known
        unpacked: list[env.Envelope] = msgpack.unpackb(payload, raw=False)
        return unpacked

    async def inbox(
        self, node_no: int, ready: asyncio.Event | None = None
    ) -> AsyncIterator[list[env.Envelope]]:
        self._reading[node_no] += 1
        try:
            async for batch in self._read_inbox(node_no, ready):
                yield batch
        finally:
            self._reading[node_no] -= 1
            if self._reading[node_no] <= 0:
                del self._reading[node_no]
            if not self._reading:
                self._sent.clear()
                self._sent_envelopes = 0

    async def _read_inbox(
        self, node_no: int, ready: asyncio.Event | None
    ) -> AsyncIterator[list[env.Envelope]]:
        key = self._keys.inbox(node_no)
        cursor: str | None = None
        #: The number of the last entry read (None: none read yet).
        last: int | None = None
        failures = 0
        while True:
            raise_if_cancelled()
            try:
                if cursor is None:
                    cursor = await last_stream_id(self._conn, key)
                    if ready is not None:
                        ready.set()
                reply = await self._conn.blocking_read(
                    key, cursor, self.read_entries, INBOX_BLOCK_MS
                )
            except (RedisError, OSError) as exc:
                # Redis restarting or unreachable: keep the cursor, try again.
                failures += 1
                delay = min(0.05 * 2**failures, RECONNECT_BACKOFF_CAP_S)
                log.warning(
                    "inbox read failed; retrying",
                    extra=fields(node_no=node_no, error=repr(exc), retry_in_s=delay),
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            if not reply:
                continue
            batch: list[env.Envelope] = []
            gap = False
            for entry_id, entry in reply[0][1]:
                number = int(entry.get(b"s", 0))
                # 1 starts a new count (the counter expired with an idle inbox, or Redis
                # restarted empty, which the node's lease renewal finds out); older nodes
                # write no number (0).
                if last is not None and number > last + 1 and last > 0:
                    gap = True
                last = number
                batch.extend(self._envelopes(entry[b"b"]))
                cursor = entry_id.decode()
            await self._trim(key, cursor)
            if gap:
                log.warning(
                    "inbox entries were trimmed before this node read them; "
                    "replaying its devices' queues",
                    extra=fields(node_no=node_no, max_entries=self.max_entries),
                )
                batch.insert(0, env.pack(env.RESYNC))
            yield batch

    async def _trim(self, key: str, read_up_to: str) -> None:
        # A raw command (``Batch.command``): redis-py's xtrim costs several times its Python.
        batch = Batch()
        batch.command("XTRIM", key, "MINID", "~", read_up_to)
        try:
            await self._conn.run(batch)
        except RedisError as exc:
            log.debug("inbox trim failed: %r", exc)

    async def drop_inbox(self, node_no: int) -> None:
        await self._conn.one("delete", self._keys.inbox(node_no))
