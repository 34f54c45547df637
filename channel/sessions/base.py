"""What every connected device offers, whatever its protocol and engine.

Push delivery, the APIs and backend → device RPC see devices only through
``Session``: an MMTP connection on the Python engine, one held by the native
engine, or an MQTT box are alike to them. Each protocol maps its own delivery
or packet ids to message ids, so acknowledgements reach the registry's
listener as message ids.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from channel.rpc.model import DeviceContext, RpcResponse
from channel.wire.errors import ErrorCode

if TYPE_CHECKING:
    from collections.abc import Callable

Headers = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class FanoutPush:
    """A broadcast or topic push, built once for every session it reaches.

    Each protocol encodes it once for all its sessions (``encoded``): MMTP a
    context-free PUSH, MQTT a PUBLISH without its packet id.
    """

    message_id: str
    body: bytes
    headers: Headers
    topic: str = ""
    _encoded: dict[str, Any] = field(default_factory=dict)

    def encoded(self, key: str, build: Callable[[FanoutPush], Any]) -> Any:
        """This push as protocol ``key`` encodes it, built at the first call."""
        value = self._encoded.get(key)
        if value is None:
            value = self._encoded[key] = build(self)
        return value


class FanoutEngine(Protocol):
    """An engine that writes a fan-out push to many of its sessions in one call."""

    def fanout(self, pushes: Sequence[FanoutPush], sessions: Sequence[Session] | None, /) -> int:
        """Write ``pushes`` to ``sessions`` (None: every ready session of this engine);
        returns how many writes were made."""
        ...


class Session(ABC):
    """One connected, authenticated device on this node."""

    __slots__ = ()

    #: "mmtp" or "mqtt".
    protocol: str = ""
    #: An engine that fans out to whole audiences at once (the native engine), or
    #: None: the node's fan-out ring writes to this session one step at a time.
    fanout_engine: FanoutEngine | None = None

    @property
    @abstractmethod
    def device(self) -> DeviceContext:
        """Who the device is (verified at connect)."""

    @property
    def device_id(self) -> str:
        return self.device.device_id

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once nothing more can be written to it."""

    @property
    def draining(self) -> bool:
        """GOAWAY was sent or received: the connection finishes its work, then closes."""
        return False

    @property
    @abstractmethod
    def connected(self) -> bool:
        """True until the connection is gone (the registry has been told to remove it)."""

    @property
    def expires_at(self) -> int:
        """When the credential behind this session expires (unix s; 0: never)."""
        return 0

    @property
    def resumed(self) -> bool:
        """The device resumed an earlier session (ticket) instead of a full sign-in."""
        return False

    @abstractmethod
    def push(self, message_id: str, body: bytes, headers: Headers, tracked: bool) -> str | None:
        """Queue one push (written at ``flush``). Returns None, or why this device can
        never take it (too large for its limits). ``tracked`` pushes are acknowledged
        one by one (``SessionListener.acks``); the others are only counted
        (``fanout_acks``). A reason found later goes to ``push_failed``."""

    def push_fanout(self, pushes: Sequence[FanoutPush]) -> int:
        """Queue fan-out pushes (the ring's share for this session); returns how many."""
        written = 0
        for push in pushes:
            if self.push(push.message_id, push.body, push.headers, tracked=False) is None:
                written += 1
        return written

    #: Not None: every session of this group flushes the same thing (its engine's batch
    #: of commands), so flushing any one of them flushes them all.
    flush_group: object | None = None

    @abstractmethod
    def flush(self) -> None:
        """Hand what was queued to the engine (one write)."""

    @abstractmethod
    async def call(self, op: str, body: bytes, headers: Headers, timeout_s: float) -> RpcResponse:
        """Call a method on the device (backend → device RPC) and wait for its answer."""

    @abstractmethod
    def end(self, code: ErrorCode, message: str) -> None:
        """End the connection at once, telling the device why (replaced, kicked)."""

    @abstractmethod
    def goaway(self, code: ErrorCode, reconnect_after_ms: int, message: str) -> None:
        """Ask the device to finish and reconnect (drain, credential expiry)."""

    @abstractmethod
    def abort(self) -> None:
        """Cut the connection without a word (its output is not readable any more)."""

    def describe(self) -> dict[str, object]:
        """What the admin device look-up shows about this connection."""
        return {"protocol": self.protocol, "resumed": self.resumed}


class SessionListener(Protocol):
    """Told what happens to sessions (push delivery implements it)."""

    def session_ready(self, session: Session) -> None: ...

    def session_closed(self, session: Session) -> None: ...

    def acks(self, session: Session, message_ids: Sequence[str]) -> None: ...

    def acks_many(self, sessions: Sequence[Session | None], message_ids: Sequence[str]) -> None: ...

    def fanout_acks(self, counts: dict[str, int]) -> None: ...

    def push_failed(
        self, session: Session, message_id: str, reason: str, permanent: bool = True
    ) -> None: ...


def jittered(base_ms: int, spread: float = 0.5) -> int:
    """A reconnect hint spread over [base, base * (1 + spread)] so devices do not stampede."""
    return int(base_ms * (1.0 + random.random() * spread))
