"""The storage and transport a push needs, as small interfaces.

Each has an in-memory implementation (``channel.push.memory``: one node, the
embedded default) and a Redis one (``channel.push.redis``: a fleet, on a single
Redis or a Redis Cluster), chosen by ``[push] backend`` and run through the
same contract tests (``tests/test_push_stores.py``).

* ``PresenceStore`` — which node holds a device; node leases.
* ``DeviceDirectory`` — every device each user connected from lately, online or
  not: what a push to a user with a ttl is queued for.
* ``DeviceQueue`` — the per-device store of undelivered pushes: the source of
  truth for at-least-once. A push is queued before it is routed and removed
  only when the device acknowledges it, so a node that dies, a Redis stream
  entry that is lost, or a device that moves never loses a push: whichever node
  the device reconnects to replays its queue.
* ``PushRouter`` — moves batches between nodes (each node's inbox).
* ``ReceiptLog`` — message statuses (queryable) and the receipt stream.
* ``IdempotencyStore`` — API idempotency keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from channel.push.envelopes import Envelope
from channel.push.model import MessageStatus, Presence, PushMessage, Receipt

#: A queued message: ``(device id, message id)``, or ``(device id, message id, collapse
#: key)`` when the caller knows the key ("" for none), so the store need not read the
#: message to clear its collapse pointer (on Redis: a plain ``HDEL`` instead of a script).
QueuedRef = tuple[str, str] | tuple[str, str, str]


class PresenceStore(Protocol):
    async def join(self, node_id: str, lease_ms: int) -> int:
        """Register a node and take its lease; returns its small node number."""

    async def renew(self, node_no: int, node_id: str, lease_ms: int) -> bool:
        """Extend the lease. False when the store had lost the node (Redis restarted
        empty, or the lease lapsed): the caller must ``set_online`` its devices again."""

    async def leave(self, node_no: int) -> None:
        """Drop the lease at once: every device of the node is offline from now."""

    async def set_online(self, entries: Sequence[Presence]) -> None:
        """Record devices as connected to ``entry.node_no`` (batched, one round trip)."""

    async def set_offline(self, entries: Sequence[Presence]) -> None:
        """Forget devices, but only where they still point at ``entry.node_no``
        (a device that moved to another node meanwhile stays there)."""

    async def lookup(self, device_ids: Sequence[str]) -> dict[str, Presence]:
        """Devices that are online on a node with a live lease (others are absent)."""

    async def user_devices(self, user_id: str) -> list[Presence]:
        """Online devices of one user (on live nodes)."""

    async def live_nodes(self, fresh: bool = False) -> dict[int, str]:
        """Node number → node id for every node whose lease has not lapsed.

        ``fresh``: read now, not from a cache (a node that joined a moment ago is in)."""


class DeviceDirectory(Protocol):
    """Which devices each user has connected from within ``ttl_s`` (newest ``cap``).

    Presence answers "online now"; the directory answers "whose devices are
    these", so a push to a user reaches the user's offline devices through their
    queues. An entry is refreshed at every connection and forgotten ``ttl_s``
    after the last; a device that changed hands stays listed for its old user
    until then, which is why delivery checks a user push against the session's
    user (``PushMessage.target_users``).
    """

    #: Devices not seen this long are forgotten; at most ``cap`` are listed per user.
    ttl_s: int
    cap: int
    #: How the directory is split for ``sweep`` (1 when it is not).
    buckets: int

    async def remember(self, entries: Sequence[Presence]) -> None:
        """Record ``entry.device_id`` as the device of ``entry.user_id``, seen at
        ``entry.since_s`` (batched, one round trip)."""

    async def known_devices(self, user_ids: Sequence[str], now_s: int) -> dict[str, list[str]]:
        """Each user's devices seen within ``ttl_s`` of ``now_s``, newest first, at most
        ``cap``; older entries are forgotten on the way."""

    async def sweep(self, first_bucket: int, count: int, now_s: int) -> int:
        """Forget entries not seen within ``ttl_s`` in buckets ``first_bucket`` ..
        ``first_bucket + count - 1`` (modulo ``buckets``): users nobody pushes to are
        never read, so nodes sweep the directory slowly. Returns entries forgotten."""


@dataclass(slots=True, unsafe_hash=True)
class EnqueueOutcome:
    """Immutable by convention, not frozen (``channel/push/model.py``)."""

    device_id: str
    message_id: str
    #: Older undelivered messages this one replaced through its collapse key.
    replaced: tuple[str, ...] = ()
    #: Oldest messages dropped because the device's queue was at its cap.
    dropped: tuple[str, ...] = ()


class DeviceQueue(Protocol):
    async def enqueue(
        self, items: Sequence[tuple[str, PushMessage]], cap: int
    ) -> list[EnqueueOutcome]:
        """Queue each message for its device. Returns an outcome for (at least) every
        item that replaced or dropped older messages, in order; items that did neither
        may be left out.

        A message with a collapse key replaces the device's queued message with
        the same key. At most ``cap`` messages stay queued per device; the
        oldest go first. Keys expire with their newest message.
        """

    async def pending(
        self, device_id: str, now_ms: int
    ) -> tuple[list[PushMessage], list[PushMessage]]:
        """(queued messages in acceptance order, expired ones now removed)."""

    async def pending_many(
        self, device_ids: Sequence[str], now_ms: int
    ) -> dict[str, tuple[list[PushMessage], list[PushMessage]]]:
        """``pending`` for many devices in one round trip (a wave of reconnects)."""

    async def remove(self, items: Sequence[QueuedRef]) -> None:
        """Drop delivered messages (a collapse key given must be the message's own)."""

    async def revoke(self, device_id: str, message_id: str) -> bool:
        """Drop one undelivered message; False if it was not queued (any more)."""


class PushRouter(Protocol):
    async def send(self, node_no: int, envelopes: Sequence[Envelope]) -> None:
        """Append envelopes to one node's inbox (one entry per call). Device pushes may
        come unpacked (``envelopes.DevicePush``): a router that leaves the process packs
        them (``envelopes.encode``), the in-memory one passes them on as they are."""

    async def send_all(self, envelopes: Sequence[bytes], fresh: bool = False) -> None:
        """Append envelopes to every live node's inbox (broadcast, topics, kick);
        ``fresh``: to the nodes live now (``Presence.live_nodes``)."""

    def inbox(
        self, node_no: int, ready: asyncio.Event | None = None
    ) -> AsyncIterator[list[Envelope]]:
        """This node's inbox, batch by batch, from the moment of the first read on
        (``ready`` is set then: what is sent from that moment on will be read).

        It survives store reconnects (reads resume where they stopped)."""

    async def drop_inbox(self, node_no: int) -> None:
        """Delete a node's inbox (the node is leaving for good)."""


class ReceiptLog(Protocol):
    #: A device or user push's status is dropped this long after its last listed device
    #: reached a final status, if that is sooner than ``retention_s`` past its expiry
    #: (0: never sooner). Fan-out statuses keep the full retention.
    final_retention_ms: int

    async def create(self, statuses: Sequence[MessageStatus], retention_s: int) -> None:
        """Record accepted messages (kept ``retention_s`` past their expiry, or see
        ``final_retention_ms``)."""

    async def create_for_devices(
        self,
        pushes: Sequence[tuple[str, str, int]],
        accepted_at_ms: int,
        retention_s: int,
    ) -> None:
        """``create`` for device pushes that each list one device, accepted at one time:
        ``(message id, device id, expires at ms)`` each, the device ``accepted`` (a
        batch from the API: no status object per push)."""

    async def record(self, receipts: Sequence[Receipt]) -> None:
        """Apply status changes and append them to the receipt stream.

        A receipt for a device the message does not list (a topic or broadcast
        delivery) only counts towards ``delivered_count``. A status never goes
        back from a final one to ``accepted``."""

    async def add_delivered(self, counts: Mapping[str, int]) -> None:
        """Count acknowledged topic / broadcast deliveries (message id → devices),
        without a receipt per device: a broadcast to millions stays one counter."""

    async def status(self, message_id: str) -> MessageStatus | None: ...

    async def read(self, after: str, count: int, block_ms: int) -> tuple[list[Receipt], str]:
        """Receipts after cursor ``after`` ("" = from now on, "0" = from the oldest
        kept), waiting up to ``block_ms`` for the first; returns the new cursor."""


#: A placeholder (a request with this key is running) is this byte and its owner's token;
#: a stored answer never starts with it (it starts with its HTTP status).
RUNNING = b"~"


def is_running(stored: bytes) -> bool:
    """Whether what a key holds is a placeholder (``b""``: one from before leases)."""
    return not stored or stored.startswith(RUNNING)


class IdempotencyStore(Protocol):
    """API idempotency keys: a short, renewed lease while the first request runs, then
    its answer for the full TTL. A node that dies mid-request stops renewing, so its
    placeholder lapses within a lease and a retry runs, instead of waiting out the TTL."""

    async def claim(self, key: str, owner: bytes, lease_ms: int) -> bytes | None:
        """None: the key was free and ``owner`` now holds it for ``lease_ms``.
        Otherwise what it holds: the stored response, or a placeholder
        (``is_running``) while the first request with this key still runs."""

    async def renew(self, key: str, owner: bytes, lease_ms: int) -> bool:
        """Extend ``owner``'s placeholder to ``lease_ms`` from now; False (and nothing
        changed) when the key no longer holds ``owner``'s placeholder."""

    async def complete(self, key: str, response: bytes, ttl_s: int) -> None:
        """Store the answer (whoever holds the key: a retry then finds it)."""

    async def release(self, key: str, owner: bytes) -> None:
        """Drop ``owner``'s placeholder (its request failed), so a retry can run; a key
        that holds anything else is left alone."""


@dataclass
class PushBackend:
    """The six stores a node uses, from one implementation."""

    name: str
    presence: PresenceStore
    queue: DeviceQueue
    router: PushRouter
    receipts: ReceiptLog
    idempotency: IdempotencyStore
    directory: DeviceDirectory
    #: The Redis client for the stream API (None for the memory backend).
    redis: Any = None
    #: The Redis connection the stores share (``channel.push.redis.connection``; None
    #: for the memory backend): the MQTT store runs on it too.
    connection: Any = None
    #: Writes a batch of unicast pushes' statuses and queue entries and looks their
    #: devices up in fewer round trips than the three stores' calls one after the
    #: other (``channel.push.redis.unicast``; None: those calls).
    unicast: Any = None
    #: Single-use TLS tickets shared by the fleet (TLS early data; None for the memory
    #: backend, whose node keeps its own: channel/security/tlstickets.py).
    tls_tickets: Any = None

    async def close(self) -> None:
        closer = getattr(self.presence, "aclose", None)
        if closer is not None:
            await closer()
