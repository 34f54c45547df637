"""Node inboxes as Redis streams: one entry per batch, read with ``XREAD BLOCK``.

``{p}:in:{<node_no>}``: each entry's field ``b`` is a msgpack list of
envelopes. The owning node reads it on a dedicated connection and trims what it
has read, so a stream holds only what is in flight; ``INBOX_MAXLEN`` bounds a
stalled node's backlog (the device queues, not the inbox, hold pushes safe) and
an inbox nobody writes to expires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import msgpack
from redis.exceptions import RedisError

from channel.logs import fields
from channel.push.redis.connection import Batch, Connection, raise_if_cancelled
from channel.push.redis.keys import Keys
from channel.push.redis.presence import RedisPresence

log = logging.getLogger("channel.push")

INBOX_MAXLEN = 10_000
INBOX_BLOCK_MS = 1_000
#: Entries taken per read (each a batch); what they hold is yielded as one batch.
INBOX_READ_COUNT = 256
INBOX_IDLE_TTL_MS = 600_000
RECONNECT_BACKOFF_CAP_S = 2.0


async def last_stream_id(conn: Connection, key: str) -> str:
    """The id of a stream's newest entry ("0-0" when it is empty): "$" as a cursor."""
    newest = await conn.one("xrevrange", key, "+", "-", count=1)
    return newest[0][0].decode() if newest else "0-0"


class RedisRouter:
    def __init__(self, conn: Connection, keys: Keys, presence: RedisPresence) -> None:
        self._conn = conn
        self._keys = keys
        self._presence = presence

    async def send(self, node_no: int, envelopes: Sequence[bytes]) -> None:
        if envelopes:
            await self._conn.run(self._sends([node_no], envelopes))

    async def send_all(self, envelopes: Sequence[bytes]) -> None:
        nodes = await self._presence.live_nodes()
        if envelopes and nodes:
            await self._conn.run(self._sends(sorted(nodes), envelopes))

    def _sends(self, node_nos: Sequence[int], envelopes: Sequence[bytes]) -> Batch:
        payload = msgpack.packb(list(envelopes), use_bin_type=True)
        batch = Batch()
        for node_no in node_nos:
            key = self._keys.inbox(node_no)
            batch.add("xadd", key, {"b": payload}, maxlen=INBOX_MAXLEN, approximate=True)
            batch.add("pexpire", key, INBOX_IDLE_TTL_MS)
        return batch

    async def inbox(self, node_no: int) -> AsyncIterator[list[bytes]]:
        key = self._keys.inbox(node_no)
        cursor: str | None = None
        failures = 0
        while True:
            raise_if_cancelled()
            try:
                if cursor is None:
                    cursor = await last_stream_id(self._conn, key)
                reply = await self._conn.blocking_read(
                    key, cursor, INBOX_READ_COUNT, INBOX_BLOCK_MS
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
            batch: list[bytes] = []
            for entry_id, entry in reply[0][1]:
                batch.extend(msgpack.unpackb(entry[b"b"], raw=False))
                cursor = entry_id.decode()
            await self._trim(key, cursor)
            yield batch

    async def _trim(self, key: str, read_up_to: str) -> None:
        try:
            await self._conn.one("xtrim", key, minid=read_up_to, approximate=True)
        except RedisError as exc:
            log.debug("inbox trim failed: %r", exc)

    async def drop_inbox(self, node_no: int) -> None:
        await self._conn.one("delete", self._keys.inbox(node_no))
