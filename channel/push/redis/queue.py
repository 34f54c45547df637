"""Each device's undelivered pushes: one Redis hash per device with a backlog.

Field message id → ``PushMessage.pack()``; field ``c:<collapse key>`` → the id
of the queued message holding that key. Enqueue is one script per run of
devices (``Connection.groups``; collapse, cap, expiry in one step per message);
the key expires with its longest-lived message. Queues stay small (``[push] queue_cap``), so
order is restored on read: by (``accepted_at_ms``, message id).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from channel.push.model import PushMessage, now_ms
from channel.push.redis import lua
from channel.push.redis.connection import Batch, Connection, pack_args
from channel.push.redis.keys import Keys
from channel.push.stores import EnqueueOutcome, QueuedRef

#: A queue key outlives even an already-expired message this long, so the next
#: read can still report it expired.
MIN_KEY_TTL_MS = 60_000

_POINTER = b"c:"


class RedisQueue:
    def __init__(self, conn: Connection, keys: Keys) -> None:
        self._conn = conn
        self._keys = keys

    async def enqueue(
        self, items: Sequence[tuple[str, PushMessage]], cap: int
    ) -> list[EnqueueOutcome]:
        if not items:
            return []
        batch, runs = self.enqueue_request(items, cap)
        return self.enqueue_outcomes(items, runs, await self._conn.run(batch))

    def enqueue_request(
        self, items: Sequence[tuple[str, PushMessage]], cap: int
    ) -> tuple[Batch, list[list[int]]]:
        """``enqueue``'s commands, and the runs of ``items`` they took (for
        ``enqueue_outcomes``)."""
        now = now_ms()
        keys = self._keys.queues([item[0] for item in items])
        runs = self._conn.groups(keys)
        batch = Batch()
        for run in runs:
            args: list[str | int | bytes] = [cap]
            for i in run:
                message = items[i][1]
                ttl_ms = max(message.expires_at_ms - now, MIN_KEY_TTL_MS)
                args += (message.message_id, message.pack(), message.collapse_key, ttl_ms)
            batch.script(lua.QUEUE_ENQUEUE, [keys[i] for i in run], [pack_args(args)])
        return batch, runs

    @staticmethod
    def enqueue_outcomes(
        items: Sequence[tuple[str, PushMessage]], runs: list[list[int]], replies: list[Any]
    ) -> list[EnqueueOutcome]:
        # Most pushes replace and drop nothing: the script lists only what did, and so
        # do the outcomes (the contract allows leaving the others out).
        older: dict[int, tuple[list[str], list[str]]] = {}
        for run, reply in zip(runs, replies, strict=True):
            for at in range(0, len(reply), 3):
                replaced, dropped = older.setdefault(run[reply[at] - 1], ([], []))
                (replaced if reply[at + 1] == b"r" else dropped).append(reply[at + 2].decode())
        return [
            EnqueueOutcome(items[i][0], items[i][1].message_id, tuple(found[0]), tuple(found[1]))
            for i, found in sorted(older.items())
        ]

    async def pending(
        self, device_id: str, now_ms: int
    ) -> tuple[list[PushMessage], list[PushMessage]]:
        return (await self.pending_many([device_id], now_ms))[device_id]

    async def pending_many(
        self, device_ids: Sequence[str], now_ms: int
    ) -> dict[str, tuple[list[PushMessage], list[PushMessage]]]:
        devices = list(dict.fromkeys(device_ids))
        if not devices:
            return {}
        batch = Batch()
        for device_id in devices:
            batch.add("hgetall", self._keys.queue(device_id))
        replies: list[dict[bytes, bytes]] = await self._conn.run(batch)
        out: dict[str, tuple[list[PushMessage], list[PushMessage]]] = {}
        gone: list[QueuedRef] = []
        for device_id, stored in zip(devices, replies, strict=True):
            messages = [
                PushMessage.unpack(value)
                for field, value in stored.items()
                if not field.startswith(_POINTER)
            ]
            messages.sort(key=lambda m: (m.accepted_at_ms, m.message_id))
            expired = [m for m in messages if m.expired(now_ms)]
            gone.extend((device_id, m.message_id, m.collapse_key) for m in expired)
            out[device_id] = ([m for m in messages if not m.expired(now_ms)], expired)
        if gone:
            await self.remove(gone)
        return out

    async def remove(self, items: Sequence[QueuedRef]) -> None:
        if items:
            await self._conn.run(self._removals(items))

    async def revoke(self, device_id: str, message_id: str) -> bool:
        ((removed,),) = await self._conn.run(self._removals([(device_id, message_id)]))
        return bool(removed)

    def removals_request(self, items: Sequence[QueuedRef]) -> Batch:
        """``remove``'s commands (``RedisUnicastWriter.acknowledged``)."""
        return self._removals(items)

    def _removals(self, items: Sequence[QueuedRef]) -> Batch:
        """One script per run of queues; its reply has a 1 or 0 per item, in order."""
        keys = self._keys.queues([item[0] for item in items])
        batch = Batch()
        for run in self._conn.groups(keys):
            args: list[str] = []
            for i in run:
                item = items[i]
                # "=" + the collapse key when known ("=" alone: none), "?": read it.
                args += (item[1], "=" + item[2] if len(item) == 3 else "?")
            batch.script(lua.QUEUE_REMOVE, [keys[i] for i in run], [pack_args(args)])
        return batch
