"""The devices connected to this node, whatever their protocol and engine.

One ``SessionRegistry`` per node. Protocol layers ``add`` a session once the
device is authenticated and ``remove`` it when its connection is gone; the
registry keeps one session per device (a newer one replaces the older, which
is ended with the protocol's "replaced" reason) and tells its listener (push
delivery) about arrivals, departures and acknowledgements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from channel.rpc.model import RpcResponse
from channel.sessions.base import FanoutEngine, Headers, Session, SessionListener
from channel.wire.errors import ErrorCode


class SessionRegistry:
    """See the module docstring."""

    def __init__(self) -> None:
        self.by_device: dict[str, Session] = {}
        self.listener: SessionListener | None = None
        # Futures for code that waits for a device or a session's end (tests, kicks).
        self._ready_waiters: dict[str, list[asyncio.Future[Session]]] = {}
        self._close_waiters: dict[Session, asyncio.Future[None]] = {}
        #: Sessions ever replaced by a newer one of the same device (metrics).
        self.takeovers = 0
        #: Engines that fan out to whole audiences themselves (the native engine).
        self.fanout_engines: list[FanoutEngine] = []

    def __len__(self) -> int:
        return len(self.by_device)

    def get(self, device_id: str) -> Session | None:
        return self.by_device.get(device_id)

    # ------------------------------------------------------------- life cycle

    def add(self, session: Session) -> Session | None:
        """Register an authenticated session; the device's previous one, if any, is
        returned after being ended (``SESSION_REPLACED``), unless it was already
        draining (GOAWAY sent either way: it finishes its streams on its own)."""
        device_id = session.device_id
        previous = self.by_device.get(device_id)
        self.by_device[device_id] = session
        if self.listener is not None:
            self.listener.session_ready(session)
        for waiter in self._ready_waiters.pop(device_id, ()):
            if not waiter.done():
                waiter.set_result(session)
        if previous is None or previous is session:
            return None
        self.takeovers += 1
        if not previous.closed and not previous.draining:
            previous.end(ErrorCode.SESSION_REPLACED, "the device connected again elsewhere")
        return previous

    def remove(self, session: Session) -> None:
        """The session's connection is gone (called once per added session)."""
        if self.by_device.get(session.device_id) is session:
            del self.by_device[session.device_id]
        if self.listener is not None:
            self.listener.session_closed(session)
        waiter = self._close_waiters.pop(session, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def acks(self, session: Session, message_ids: Sequence[str]) -> None:
        if self.listener is not None and message_ids:
            self.listener.acks(session, message_ids)

    def acks_many(self, sessions: Sequence[Session | None], message_ids: Sequence[str]) -> None:
        """ACKs of many connections at once: ``message_ids[i]`` was acknowledged by
        ``sessions[i]`` (None: a connection gone meanwhile, skipped)."""
        if self.listener is not None and message_ids:
            self.listener.acks_many(sessions, message_ids)

    def fanout_acks(self, counts: dict[str, int]) -> None:
        if self.listener is not None and counts:
            self.listener.fanout_acks(counts)

    def push_failed(
        self, session: Session, message_id: str, reason: str, permanent: bool = True
    ) -> None:
        """An engine did not write a tracked push (``permanent``: it never will)."""
        if self.listener is not None:
            self.listener.push_failed(session, message_id, reason, permanent)

    # ---------------------------------------------------------------- waiting

    def wait_ready(self, device_id: str) -> asyncio.Future[Session]:
        """A future done when ``device_id`` has a session on this node."""
        future: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        session = self.by_device.get(device_id)
        if session is not None:
            future.set_result(session)
        else:
            self._ready_waiters.setdefault(device_id, []).append(future)
        return future

    def wait_closed(self, session: Session) -> asyncio.Future[None]:
        """A future done when ``session``'s connection is gone."""
        future = self._close_waiters.get(session)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            if not session.connected:
                future.set_result(None)
            else:
                self._close_waiters[session] = future
        return future

    # ------------------------------------------------------------------ calls

    async def call(
        self,
        device_id: str,
        op: str,
        body: bytes = b"",
        headers: Headers = (),
        timeout_s: float = 10.0,
    ) -> RpcResponse:
        """Backend → device RPC for a device connected to this node."""
        session = self.by_device.get(device_id)
        if session is None:
            return RpcResponse.error(ErrorCode.NOT_FOUND, f"device {device_id} is not connected")
        return await session.call(op, body, headers, timeout_s)
