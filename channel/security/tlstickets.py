"""Single-use TLS session tickets: what lets the native engine accept TLS early data.

rustls accepts TLS 1.3 early data only on a session it finds in a store, under a
ticket that is a random 32-byte id (``native/engine/src/singleuse.rs`` says why).
For a fleet that store must be shared, so a device resumes on any node, and a
ticket must be redeemed once, so a replayed ClientHello finds it gone and its early
data is never read (RFC 8446 section 8.1). The engine hands each new ticket up
(``TLS_TICKET``: id and state, sealed under the fleet's ticket keys) and asks for
one before its handshake goes on (``TLS_RESUME``); this module keeps them:

* ``RedisTlsTickets`` (``[push] backend = "redis"``): ``SET key state PX ttl`` per
  ticket, one pipeline per batch; ``GETDEL`` to redeem (atomic: one winner fleet-wide);
* ``MemoryTlsTickets`` (the memory backend: one process): a bounded dict, the oldest
  tickets dropped beyond ``max_entries``.

A ticket the store cannot produce (expired, dropped, already redeemed, Redis down or
slower than ``[tls] ticket_store_timeout_ms``) costs the device a full handshake and
its early data, never a wrong answer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from channel.push.redis.connection import Connection

#: The ids rustls makes for stored tickets; anything else is not one of ours.
TICKET_ID_BYTES = 32


class TlsTicketStore(Protocol):
    """Where single-use TLS tickets wait for their device."""

    async def put_many(self, tickets: Sequence[tuple[bytes, bytes]], ttl_s: int) -> None:
        """Keep each (id, sealed state) for ``ttl_s`` seconds."""

    async def take(self, ticket_id: bytes) -> bytes | None:
        """The state of ``ticket_id``, removed: a second take of the same id gets None."""


class MemoryTlsTickets:
    """This process's tickets (one node, no Redis): bounded, oldest dropped first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        # id -> (expires at, monotonic s; sealed state), in insertion order.
        self._tickets: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tickets)

    async def put_many(self, tickets: Sequence[tuple[bytes, bytes]], ttl_s: int) -> None:
        expires_at = time.monotonic() + ttl_s
        for ticket_id, state in tickets:
            self._tickets[ticket_id] = (expires_at, state)
        while len(self._tickets) > self.max_entries:
            self._tickets.popitem(last=False)

    async def take(self, ticket_id: bytes) -> bytes | None:
        entry = self._tickets.pop(ticket_id, None)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]


class RedisTlsTickets:
    """The fleet's tickets in Redis (or a Redis Cluster: one key per ticket)."""

    def __init__(self, conn: Connection, key_prefix: str) -> None:
        self._conn = conn
        self._prefix = f"{key_prefix}:tlst:"

    def key(self, ticket_id: bytes) -> str:
        return self._prefix + ticket_id.hex()

    async def put_many(self, tickets: Sequence[tuple[bytes, bytes]], ttl_s: int) -> None:
        from channel.push.redis.connection import Batch

        batch = Batch()
        for ticket_id, state in tickets:
            batch.command("SET", self.key(ticket_id), state, "PX", ttl_s * 1000)
        await self._conn.run(batch)

    async def take(self, ticket_id: bytes) -> bytes | None:
        state = await self._conn.one("getdel", self.key(ticket_id))
        return bytes(state) if state is not None else None
