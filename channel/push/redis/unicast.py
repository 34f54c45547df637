"""The writes of a batch of accepted unicast pushes, and of a batch of ACKs, in as few
round trips as they allow.

``PushService`` writes each push's status, then queues it, then looks its device up
(queued first: a device connecting meanwhile either shows in the look-up or finds
the push when its node reads its queue). Each of those was a round trip of its own;
here they go together:

* on one Redis, all three in one pipeline: Redis runs a connection's commands in
  the order sent, so the look-up still follows the queue writes;
* on a Redis Cluster, statuses and queue writes in one exchange per primary (run
  concurrently), then the look-up: commands on different primaries have no order
  between them, so the look-up waits until every queue write is done.

What a failure leaves changes with it: on one Redis every command of the pipeline
runs even when an earlier one failed, so a push whose status could not be written
may still be queued (and delivered); the batch is reported failed either way (an
error reply from any of them fails the whole request: nothing is answered accepted
that was not queued). See docs/operations.md, "Redis failures and pushes".

A node's ACKs of a flush (their queue entries removed, their receipts written) go
in one exchange too (one per primary on a cluster): they were two round trips, one
after the other, with no order needed between them.
"""

from __future__ import annotations

from collections.abc import Sequence

from channel.push.model import Presence, PushMessage, Receipt
from channel.push.redis.connection import Batch, Connection
from channel.push.redis.presence import RedisPresence
from channel.push.redis.queue import RedisQueue
from channel.push.redis.receipts import RedisReceipts
from channel.push.stores import EnqueueOutcome, QueuedRef


class RedisUnicastWriter:
    def __init__(
        self,
        conn: Connection,
        queue: RedisQueue,
        receipts: RedisReceipts,
        presence: RedisPresence,
    ) -> None:
        self._conn = conn
        self._queue = queue
        self._receipts = receipts
        self._presence = presence

    async def write(
        self,
        statuses: Sequence[tuple[str, str, int]],
        accepted_at_ms: int,
        retention_s: int,
        items: Sequence[tuple[str, PushMessage]],
        cap: int,
    ) -> tuple[list[EnqueueOutcome], dict[str, Presence]]:
        """``receipts.create_for_devices(statuses, …)``, ``queue.enqueue(items, cap)``
        and ``presence.lookup`` of the items' devices, in that order: the enqueue
        outcomes and where the devices are."""
        writes = self._receipts.create_for_devices_request(statuses, accepted_at_ms, retention_s)
        status_ops = len(writes)
        enqueue, runs = self._queue.enqueue_request(items, cap)
        writes.ops += enqueue.ops
        lookup = self._presence.lookup_request(sorted({device_id for device_id, _ in items}))
        if self._conn.cluster:
            replies = await self._conn.run(writes)
            looked_up = await self._conn.run(lookup.batch)
        else:
            together = Batch()
            together.ops = writes.ops + lookup.batch.ops
            replies = await self._conn.run(together)
            looked_up = replies[len(writes) :]
        outcomes = self._queue.enqueue_outcomes(items, runs, replies[status_ops : len(writes)])
        return outcomes, await self._presence.lookup_reply(lookup, looked_up)

    async def acknowledged(self, acked: Sequence[QueuedRef], receipts: Sequence[Receipt]) -> None:
        """``queue.remove(acked)`` and ``receipts.record(receipts)`` in one exchange."""
        batch = self._queue.removals_request(acked) if acked else Batch()
        if receipts:
            batch.ops += self._receipts.record_request(receipts).ops
        if batch:
            await self._conn.run(batch)
