"""Dictionary delivery on the Python engine, paced like the native engine's.

``MmtpService`` decides what a device gets (its app's current dictionary);
this decides when: one ``dict_chunk_bytes`` chunk at a time, only when the
connection has nothing else waiting to be written (an answer or a push is
never queued behind a chunk), within a node-wide rate and a per-connection
budget checked before a delivery starts (a transfer is never left half done).
The native engine does the same in Rust (``native/engine/src/engine/dicts.rs``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from channel.config import CompressionConfig
from channel.wire import Connection, Dictionary

#: How often deliveries are looked at while any is under way (s).
PACE_INTERVAL_S = 0.01
#: Sessions looked at per tick (bounded work per tick).
PACE_PER_TICK = 1024


class DeliveringSession(Protocol):
    """What the pacer needs of a session (``PyMmtpSession``)."""

    conn: Connection
    #: [dictionary, offset, next dictionary or None] while a delivery is under way.
    dict_delivery: list[object] | None
    #: DICT bytes this connection was sent (its budget).
    dict_sent: int

    @property
    def closed(self) -> bool: ...

    @property
    def write_buffer_size(self) -> int: ...

    def write_out(self) -> None: ...


class DictionaryPacer:
    """See the module docstring."""

    def __init__(self, config: CompressionConfig) -> None:
        self.chunk_bytes = config.dict_chunk_bytes
        self.rate = float(config.dict_delivery_bytes_per_s)
        self.budget_bytes = config.dict_budget_bytes
        self._burst = max(self.rate / 10, float(self.chunk_bytes))
        self._tokens = 0.0
        self._refilled = 0.0
        self._waiting: dict[DeliveringSession, None] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.started = self.done = self.skipped = self.chunks = self.bytes_sent = 0

    def deliver(self, session: DeliveringSession, dictionary: Dictionary) -> bool:
        """Queue ``dictionary`` for ``session``; False if skipped (budget, duplicate)."""
        delivery = session.dict_delivery
        size = len(dictionary.content)
        committed = session.dict_sent + size
        if delivery is not None:
            current = delivery[0]
            assert isinstance(current, Dictionary) and isinstance(delivery[1], int)
            if dictionary.dict_id in (current.dict_id, getattr(delivery[2], "dict_id", 0)):
                self.skipped += 1
                return False
            committed += len(current.content) - delivery[1]
        if committed > self.budget_bytes or session.closed:
            self.skipped += 1
            return False
        self.started += 1
        if delivery is not None:
            delivery[2] = dictionary  # one transfer at a time (spec 10.5): this one next
            return True
        session.dict_delivery = [dictionary, 0, None]
        self._waiting[session] = None
        self._ensure_task()
        return True

    def _ensure_task(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        self._refilled = loop.time()
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                self._refilled = loop.time()
            await asyncio.sleep(PACE_INTERVAL_S)
            self.pace(loop.time())

    def pace(self, now: float) -> None:
        """One tick: a chunk for each waiting session with nothing else to write."""
        self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        for session in list(self._waiting)[:PACE_PER_TICK]:
            if self._tokens < self.chunk_bytes:
                return
            del self._waiting[session]
            delivery = session.dict_delivery
            if session.closed or delivery is None:
                session.dict_delivery = None
                continue
            if session.write_buffer_size or session.conn.has_output:
                self._waiting[session] = None  # answers and pushes first
                continue
            self._tokens -= self._send_chunk(session, delivery)
            if session.dict_delivery is not None:
                self._waiting[session] = None

    def _send_chunk(self, session: DeliveringSession, delivery: list[object]) -> int:
        dictionary, offset, following = delivery
        assert isinstance(dictionary, Dictionary) and isinstance(offset, int)
        try:
            end = session.conn.send_dictionary_chunk(dictionary, offset, self.chunk_bytes)
        except Exception:
            session.dict_delivery = None  # the connection is closing: nothing to send
            return 0
        sent = end - offset
        session.dict_sent += sent
        self.chunks += 1
        self.bytes_sent += sent
        session.write_out()
        if end < len(dictionary.content):
            delivery[1] = end
        else:
            self.done += 1
            session.dict_delivery = (
                [following, 0, None] if isinstance(following, Dictionary) else None
            )
        return sent

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._waiting.clear()
