"""In-memory push stores: the embedded single-node default (``[push] backend = "memory"``).

Everything lives in this process, so a restart loses queued pushes: fine for
a laptop and for tests, not for production (use ``backend = "redis"``). The
semantics are the Redis implementation's, checked by the same contract tests.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from channel.push.cursors import cursor_sequence
from channel.push.envelopes import Envelope
from channel.push.model import (
    MessageStatus,
    Presence,
    PushMessage,
    PushStatus,
    Receipt,
    TargetKind,
    drop_at_ms,
    final_drop_at_ms,
)
from channel.push.stores import RUNNING, EnqueueOutcome, PushBackend, QueuedRef


def _mono_ms() -> int:
    return int(time.monotonic() * 1000)


class MemoryPresence:
    def __init__(self) -> None:
        self._devices: dict[str, Presence] = {}
        self._users: dict[str, set[str]] = {}
        # node_no -> (node_id, lease end in monotonic ms)
        self._nodes: dict[int, tuple[str, int]] = {}
        self._next_node = 0

    async def join(self, node_id: str, lease_ms: int) -> int:
        self._next_node += 1
        self._nodes[self._next_node] = (node_id, _mono_ms() + lease_ms)
        return self._next_node

    async def renew(self, node_no: int, node_id: str, lease_ms: int) -> bool:
        known = self._live(node_no)
        self._nodes[node_no] = (node_id, _mono_ms() + lease_ms)
        return known

    async def leave(self, node_no: int) -> None:
        self._nodes.pop(node_no, None)

    def _live(self, node_no: int) -> bool:
        lease = self._nodes.get(node_no)
        return lease is not None and lease[1] > _mono_ms()

    async def set_online(self, entries: Sequence[Presence]) -> None:
        for entry in entries:
            old = self._devices.get(entry.device_id)
            if old is not None and old.user_id != entry.user_id:
                self._drop_user_device(old.user_id, old.device_id)
            self._devices[entry.device_id] = entry
            self._users.setdefault(entry.user_id, set()).add(entry.device_id)

    async def set_offline(self, entries: Sequence[Presence]) -> None:
        for entry in entries:
            current = self._devices.get(entry.device_id)
            if current is not None and current.node_no == entry.node_no:
                del self._devices[entry.device_id]
                self._drop_user_device(current.user_id, entry.device_id)

    def _drop_user_device(self, user_id: str, device_id: str) -> None:
        devices = self._users.get(user_id)
        if devices is not None:
            devices.discard(device_id)
            if not devices:
                del self._users[user_id]

    async def lookup(self, device_ids: Sequence[str]) -> dict[str, Presence]:
        found = {}
        devices = self._devices
        # Each node's lease checked once per call, not once per device.
        live: dict[int, bool] = {}
        for device_id in device_ids:
            entry = devices.get(device_id)
            if entry is not None:
                node_no = entry.node_no
                up = live.get(node_no)
                if up is None:
                    up = live[node_no] = self._live(node_no)
                if up:
                    found[device_id] = entry
        return found

    async def user_devices(self, user_id: str) -> list[Presence]:
        return list((await self.lookup(sorted(self._users.get(user_id, ())))).values())

    async def live_nodes(self, fresh: bool = False) -> dict[int, str]:
        now = _mono_ms()
        return {no: node_id for no, (node_id, end) in self._nodes.items() if end > now}


class MemoryQueue:
    def __init__(self) -> None:
        # device -> message id -> message; dicts keep insertion (= acceptance) order.
        self._queues: dict[str, dict[str, PushMessage]] = {}

    async def enqueue(
        self, items: Sequence[tuple[str, PushMessage]], cap: int
    ) -> list[EnqueueOutcome]:
        outcomes = []
        queues = self._queues
        for device_id, message in items:
            queue = queues.get(device_id)
            if queue is None:
                queue = queues[device_id] = {}
            replaced: tuple[str, ...] = ()
            if message.collapse_key:
                gone = [i for i, old in queue.items() if old.collapse_key == message.collapse_key]
                for old_id in gone:
                    del queue[old_id]
                replaced = tuple(gone)
            queue[message.message_id] = message
            dropped: tuple[str, ...] = ()
            if len(queue) > cap:
                oldest = list(itertools.islice(queue, len(queue) - cap))
                for old_id in oldest:
                    del queue[old_id]
                dropped = tuple(oldest)
            if replaced or dropped:
                outcomes.append(EnqueueOutcome(device_id, message.message_id, replaced, dropped))
        return outcomes

    async def pending(
        self, device_id: str, now_ms: int
    ) -> tuple[list[PushMessage], list[PushMessage]]:
        queue = self._queues.get(device_id)
        if not queue:
            return [], []
        live = [m for m in queue.values() if not m.expired(now_ms)]
        expired = [m for m in queue.values() if m.expired(now_ms)]
        for message in expired:
            del queue[message.message_id]
        if not queue:
            del self._queues[device_id]
        live.sort(key=lambda m: (m.accepted_at_ms, m.message_id))
        return live, expired

    async def pending_many(
        self, device_ids: Sequence[str], now_ms: int
    ) -> dict[str, tuple[list[PushMessage], list[PushMessage]]]:
        return {d: await self.pending(d, now_ms) for d in dict.fromkeys(device_ids)}

    async def remove(self, items: Sequence[QueuedRef]) -> None:
        queues = self._queues
        for item in items:  # indexed, not ``a, b, *_ =``: that builds a list per item
            device_id = item[0]
            queue = queues.get(device_id)
            if queue is not None:
                queue.pop(item[1], None)
                if not queue:
                    del queues[device_id]

    async def revoke(self, device_id: str, message_id: str) -> bool:
        queue = self._queues.get(device_id)
        if queue is None or message_id not in queue:
            return False
        await self.remove([(device_id, message_id)])
        return True


class MemoryRouter:
    def __init__(self, presence: MemoryPresence) -> None:
        self._presence = presence
        self._inboxes: dict[int, asyncio.Queue[list[Envelope]]] = {}

    async def send(self, node_no: int, envelopes: Sequence[Envelope]) -> None:
        # Device pushes stay unpacked: they never leave the process.
        inbox = self._inboxes.get(node_no)
        if inbox is not None and envelopes:
            inbox.put_nowait(list(envelopes))

    async def send_all(self, envelopes: Sequence[bytes], fresh: bool = False) -> None:
        for node_no in await self._presence.live_nodes(fresh):
            await self.send(node_no, envelopes)

    async def inbox(
        self, node_no: int, ready: asyncio.Event | None = None
    ) -> AsyncIterator[list[Envelope]]:
        queue = self._inboxes.setdefault(node_no, asyncio.Queue())
        if ready is not None:
            ready.set()
        while True:
            batch = await queue.get()
            # Coalesce what is already waiting: one turn of fan-out for all of it.
            while not queue.empty():
                batch.extend(queue.get_nowait())
            yield batch

    async def drop_inbox(self, node_no: int) -> None:
        self._inboxes.pop(node_no, None)


@dataclass(slots=True)
class _StatusEntry:
    status: MessageStatus
    drop_at_ms: int
    #: Listed devices not yet final.
    pending: int = 0


#: The status of a push listing one device, as plain values: (target, device id, status,
#: accepted at ms, expires at ms, drop at ms). Most statuses are these, and a node keeps
#: every one for ``final_status_retention_s`` (an hour: millions under load). A tuple of
#: strings and ints is left alone by the cyclic collector once it has seen it, where a
#: MessageStatus, its dict and an entry were walked by every full collection (long
#: pauses as the store grew), and it takes ~200 bytes less.
_OneDevice = tuple[str, str, str, int, int, int]
#: A receipt in the stream, as plain values: (sequence, message id, status, device id,
#: at ms, reason); made a ``Receipt`` again when read.
_StreamEntry = tuple[int, str, str, str, int, str]


def _full_entry(message_id: str, entry: _OneDevice) -> _StatusEntry:
    target, device_id, status, accepted_at_ms, expires_at_ms, drop_at = entry
    devices = {device_id: PushStatus(status)}
    return _StatusEntry(
        MessageStatus(message_id, TargetKind(target), accepted_at_ms, expires_at_ms, devices),
        drop_at,
        1 if status == _ACCEPTED_VALUE else 0,
    )


_ACCEPTED_VALUE = PushStatus.ACCEPTED.value
_DEVICE_VALUE = TargetKind.DEVICE.value
#: Most expired statuses one write drops (more when the write creates more).
SWEEP_PER_WRITE = 1024


@dataclass
class MemoryReceipts:
    maxlen: int = 100_000
    #: A status whose listed devices are all final is dropped this long after (0: never sooner).
    final_retention_ms: int = 3_600_000
    #: Most statuses held (0: no cap). Past it, writes drop the statuses due soonest
    #: before their time: status look-ups for those answer "unknown"; delivery and the
    #: receipt stream are not affected.
    max_statuses: int = 0
    #: Statuses dropped before their time to hold ``max_statuses``.
    evicted: int = 0
    _statuses: dict[str, _StatusEntry | _OneDevice] = field(default_factory=dict)
    _stream: deque[_StreamEntry] = field(default_factory=deque)
    _next_seq: int = 1
    _changed: asyncio.Event | None = None
    #: Message ids by the second their status is due to go (filed at creation, and again
    #: when a status turns final and is due sooner), and those seconds in a heap. A
    #: status's due time only ever moves earlier, so it is gone by its last filing.
    #: Each write sweeps at most ``SWEEP_PER_WRITE`` due ids: no pause grows with the
    #: store (sweeping a million statuses in one go stalled the node ~75 ms).
    _due: dict[int, list[str]] = field(default_factory=dict)
    _due_seconds: list[int] = field(default_factory=list)

    def _due_list(self, drop_at_ms: int) -> list[str]:
        """The ids due at the first whole second at or after ``drop_at_ms``. Callers
        keep it while the second stays the same: a batch's statuses mostly share one."""
        second = drop_at_ms // 1000 + 1
        ids = self._due.get(second)
        if ids is None:
            ids = self._due[second] = []
            heapq.heappush(self._due_seconds, second)
        return ids

    async def create(self, statuses: Sequence[MessageStatus], retention_s: int) -> None:
        self._expire(len(statuses))
        entries = self._statuses
        due_second, due = -1, []
        final_retention_ms = self.final_retention_ms
        accepted = PushStatus.ACCEPTED
        for status in statuses:
            drop_at = drop_at_ms(status, retention_s, final_retention_ms)
            devices = status.devices
            if len(devices) == 1 and not status.delivered_count:
                ((device_id, state),) = devices.items()
                entries[status.message_id] = (
                    status.target._value_,
                    device_id,
                    state._value_,
                    status.accepted_at_ms,
                    status.expires_at_ms,
                    drop_at,
                )
            else:
                pending = [*devices.values()].count(accepted)  # those not final
                entries[status.message_id] = _StatusEntry(status, drop_at, pending)
            if drop_at // 1000 != due_second:
                due_second, due = drop_at // 1000, self._due_list(drop_at)
            due.append(status.message_id)

    async def create_for_devices(
        self, pushes: Sequence[tuple[str, str, int]], accepted_at_ms: int, retention_s: int
    ) -> None:
        self._expire(len(pushes))
        entries = self._statuses
        due_second, due = -1, []
        retention_ms = retention_s * 1000
        device, accepted = _DEVICE_VALUE, _ACCEPTED_VALUE
        for message_id, device_id, expires_at_ms in pushes:
            # drop_at_ms's rule: the device is not final yet, so retention past expiry.
            drop_at = expires_at_ms + retention_ms
            entries[message_id] = (
                device,
                device_id,
                accepted,
                accepted_at_ms,
                expires_at_ms,
                drop_at,
            )
            if drop_at // 1000 != due_second:
                due_second, due = drop_at // 1000, self._due_list(drop_at)
            due.append(message_id)

    def __post_init__(self) -> None:
        # The stream drops its oldest receipts itself (in C) once it holds ``maxlen``.
        self._stream = deque(self._stream, maxlen=self.maxlen)

    def _entry(self, message_id: str) -> _StatusEntry | None:
        """A status as a full entry (a one-device tuple is made one, in place)."""
        entry = self._statuses.get(message_id)
        if type(entry) is tuple:
            entry = self._statuses[message_id] = _full_entry(message_id, entry)
        return entry  # type: ignore[return-value]

    async def record(self, receipts: Sequence[Receipt]) -> None:
        entries = self._statuses
        final_retention_ms = self.final_retention_ms
        accepted, delivered = PushStatus.ACCEPTED, PushStatus.DELIVERED
        due_second, due = -1, []
        for receipt in receipts:
            message_id = receipt.message_id
            entry = entries.get(message_id)
            if entry is None:
                continue
            if type(entry) is tuple:
                if receipt.device_id == entry[1]:
                    # Not final yet, and a change (an "accepted" receipt changes nothing).
                    if entry[2] == _ACCEPTED_VALUE and receipt.status is not accepted:
                        drop_at = entry[5]
                        final_at = final_drop_at_ms(receipt, final_retention_ms)
                        if 0 < final_at < drop_at:
                            drop_at = final_at
                            if drop_at // 1000 != due_second:
                                due_second, due = drop_at // 1000, self._due_list(drop_at)
                            due.append(message_id)
                        entries[message_id] = (
                            entry[0],
                            entry[1],
                            receipt.status._value_,
                            entry[3],
                            entry[4],
                            drop_at,
                        )
                    continue
                entry = self._entry(message_id)  # another device: counted below
                assert entry is not None
            status = entry.status
            current = status.devices.get(receipt.device_id)
            if current is None:
                if receipt.status is delivered:
                    status.delivered_count += 1
            elif current is accepted and receipt.status is not accepted:  # turns final
                status.devices[receipt.device_id] = receipt.status
                entry.pending -= 1
                if entry.pending <= 0:
                    drop_at = final_drop_at_ms(receipt, final_retention_ms)
                    if 0 < drop_at < entry.drop_at_ms:
                        entry.drop_at_ms = drop_at
                        self._due_list(drop_at).append(message_id)
        seq = self._next_seq
        self._next_seq = seq + len(receipts)
        self._stream.extend(
            [
                (n, r.message_id, r.status._value_, r.device_id, r.at_ms, r.reason)
                for n, r in zip(range(seq, self._next_seq), receipts, strict=True)
            ]
        )
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def add_delivered(self, counts: Mapping[str, int]) -> None:
        for message_id, count in counts.items():
            entry = self._entry(message_id)
            if entry is not None:
                entry.status.delivered_count += count

    async def status(self, message_id: str) -> MessageStatus | None:
        entry = self._statuses.get(message_id)
        if entry is None:
            return None
        if type(entry) is tuple:
            if entry[5] <= int(time.time() * 1000):
                return None
            return _full_entry(message_id, entry).status  # a copy: the caller may keep it
        if entry.drop_at_ms <= int(time.time() * 1000):
            return None
        return entry.status

    async def read(self, after: str, count: int, block_ms: int) -> tuple[list[Receipt], str]:
        # A Redis cursor here (a node switched backends) reads from its leading number.
        start = self._next_seq - 1 if after in ("", "$") else cursor_sequence(after)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            found = self._after(start, count)
            if found:
                receipts = [Receipt(e[1], PushStatus(e[2]), e[3], e[4], e[5]) for e in found]
                return receipts, str(found[-1][0])
            left = deadline - time.monotonic()
            if left <= 0:
                return [], str(start)
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return [], str(start)

    def _after(self, start: int, count: int) -> list[_StreamEntry]:
        if not self._stream:
            return []
        # Sequence numbers are contiguous, so the position is arithmetic.
        first = self._stream[0][0]
        index = max(0, start + 1 - first)
        return list(itertools.islice(self._stream, index, index + count))

    def _expire(self, created: int) -> None:
        """Drop statuses past their time, oldest due first: at most ``SWEEP_PER_WRITE``
        ids and twice as many as this write creates, so the store shrinks faster than
        it grows and no write pays for a whole sweep. Past ``max_statuses`` it also drops
        those due soonest before their time, as many as this write brings it over."""
        heap = self._due_seconds
        if not heap:
            return
        entries, due = self._statuses, self._due
        over = len(entries) + created - self.max_statuses if self.max_statuses else 0
        now_s = int(time.time())
        if heap[0] > now_s and over <= 0:
            return
        budget = max(SWEEP_PER_WRITE, 2 * created, over)
        now = now_s * 1000
        while heap and budget > 0 and (heap[0] <= now_s or over > 0):
            second = heap[0]
            ids = due[second]
            n = budget if second <= now_s else min(budget, over)  # not due: only what's over
            take = ids[-n:]
            del ids[-n:]
            budget -= len(take)
            if not ids:
                heapq.heappop(heap)
                del due[second]
            for message_id in take:
                entry = entries.get(message_id)
                if entry is None:
                    continue
                drop_at = entry[5] if type(entry) is tuple else entry.drop_at_ms  # type: ignore[union-attr]
                if drop_at <= now:
                    del entries[message_id]
                elif over > 0:
                    del entries[message_id]
                    over -= 1
                    self.evicted += 1
                else:  # filed here but due later (taken in a batch past the cap): refile
                    self._due_list(drop_at).append(message_id)


class MemoryIdempotency:
    def __init__(self) -> None:
        # key -> (stored bytes, end in monotonic seconds)
        self._entries: dict[str, tuple[bytes, float]] = {}

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        return entry[0] if entry is not None and entry[1] > now else None

    async def claim(self, key: str, owner: bytes, lease_ms: int) -> bytes | None:
        now = time.monotonic()
        held = self._live(key, now)
        if held is not None:
            return held
        if len(self._entries) > 100_000:
            for stale in [k for k, (_, end) in self._entries.items() if end <= now]:
                del self._entries[stale]
        self._entries[key] = (RUNNING + owner, now + lease_ms / 1000)
        return None

    async def renew(self, key: str, owner: bytes, lease_ms: int) -> bool:
        now = time.monotonic()
        if self._live(key, now) != RUNNING + owner:
            return False
        self._entries[key] = (RUNNING + owner, now + lease_ms / 1000)
        return True

    async def complete(self, key: str, response: bytes, ttl_s: int) -> None:
        self._entries[key] = (response, time.monotonic() + ttl_s)

    async def release(self, key: str, owner: bytes) -> None:
        if self._live(key, time.monotonic()) == RUNNING + owner:
            del self._entries[key]


class MemoryDirectory:
    #: Users are kept in this many shards, so a sweep step walks a shard, not everyone.
    SHARDS = 256

    def __init__(self, ttl_s: int, cap: int) -> None:
        self.ttl_s = ttl_s
        self.cap = cap
        self.buckets = self.SHARDS
        # shard -> user id -> device id -> last seen (unix s)
        self._shards: list[dict[str, dict[str, int]]] = [{} for _ in range(self.SHARDS)]

    def _shard(self, user_id: str) -> dict[str, dict[str, int]]:
        return self._shards[zlib.crc32(user_id.encode()) % self.SHARDS]

    async def remember(self, entries: Sequence[Presence]) -> None:
        for entry in entries:
            if entry.user_id:
                seen = self._shard(entry.user_id).setdefault(entry.user_id, {})
                seen[entry.device_id] = max(seen.get(entry.device_id, 0), entry.since_s)

    async def known_devices(self, user_ids: Sequence[str], now_s: int) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for user_id in user_ids:
            shard = self._shard(user_id)
            seen = shard.get(user_id)
            if not seen:
                continue
            kept = newest_seen(seen, now_s - self.ttl_s, self.cap)
            for device_id in [d for d in seen if d not in kept]:
                del seen[device_id]
            if not seen:
                del shard[user_id]
            out[user_id] = kept
        return out

    async def sweep(self, first_bucket: int, count: int, now_s: int) -> int:
        cutoff = now_s - self.ttl_s
        forgotten = 0
        for i in range(min(count, self.SHARDS)):
            shard = self._shards[(first_bucket + i) % self.SHARDS]
            for user_id in list(shard):
                seen = shard[user_id]
                for device_id in [d for d, s in seen.items() if s <= cutoff]:
                    del seen[device_id]
                    forgotten += 1
                if not seen:
                    del shard[user_id]
        return forgotten


def newest_seen(seen: Mapping[str, int], after_s: int, cap: int) -> list[str]:
    """Devices seen after ``after_s``, newest first (ties by id), at most ``cap``."""
    recent = [(s, d) for d, s in seen.items() if s > after_s]
    recent.sort(key=lambda item: (-item[0], item[1]))
    return [d for _, d in recent[:cap]]


def memory_backend(
    receipt_stream_maxlen: int = 100_000,
    *,
    user_devices_ttl_s: int = 30 * 86_400,
    user_devices_cap: int = 32,
    final_status_retention_ms: int = 3_600_000,
    max_statuses: int = 0,
) -> PushBackend:
    presence = MemoryPresence()
    return PushBackend(
        name="memory",
        presence=presence,
        queue=MemoryQueue(),
        router=MemoryRouter(presence),
        receipts=MemoryReceipts(
            maxlen=receipt_stream_maxlen,
            final_retention_ms=final_status_retention_ms,
            max_statuses=max_statuses,
        ),
        idempotency=MemoryIdempotency(),
        directory=MemoryDirectory(user_devices_ttl_s, user_devices_cap),
    )
