"""One fuzzed connection: real TLS to the node, a case's writes, the node's answers watched.

``FuzzLink`` is a ``TlsLink`` (TLS done with memory BIOs over a plain TCP
transport, a few KiB per connection) that reads the node's frames as they
come: whether it accepted the HELLO, which PING payloads came back as PONGs,
and the code of an ERROR on stream 0. ``play_case`` writes a case round by
round and, after each, waits at most a bound for the PONG of the round's
probe or for the node to close the connection; neither is a hang.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from channel.wire import FrameType, ProtocolError
from channel.wire.frames import FrameParser
from stress.fuzz.cases import Case
from stress.fuzz.frames import varint_at
from stress.gateway_proc import TlsLink, connect_link


class FuzzLink(TlsLink):
    def __init__(self, context: ssl.SSLContext, session: ssl.SSLSession | None) -> None:
        super().__init__(context, session=session)
        # The node's own output: parse it without our limits (it respects HELLO's anyway).
        self._parser = FrameParser(1 << 30)
        self.tls_up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.accepted = False
        self.error_code: int | None = None
        self.pongs: set[bytes] = set()
        #: Set when the node sent bytes that are not MMTP frames (a defect of the node).
        self.bad_output = ""
        #: The node sent close_notify (its TCP close may follow later).
        self.tls_ended = False
        self._changed = asyncio.Event()

    def tls_ready(self) -> None:
        if not self.tls_up.done():
            self.tls_up.set_result(None)

    def app_data_received(self, data: bytes) -> None:
        try:
            frames = self._parser.feed(data)
        except ProtocolError as exc:
            self.bad_output = self.bad_output or f"{exc.code.name}: {exc.message}"
            frames = []
        for frame in frames:
            if frame.frame_type is FrameType.HELLO_ACK:
                self.accepted = True
            elif frame.frame_type is FrameType.PONG:
                self.pongs.add(frame.payload)
            elif frame.frame_type is FrameType.ERROR:
                stream = varint_at(frame.payload, 0)
                code = varint_at(frame.payload, stream[1]) if stream is not None else None
                if stream is not None and stream[0] == 0 and code is not None:
                    self.error_code = code[0]
        self._changed.set()

    def tls_closed(self) -> None:
        self.tls_ended = True
        self._changed.set()

    def link_failed(self, exc: BaseException) -> None:
        if not self.tls_up.done():
            self.tls_up.set_exception(exc)
            self.tls_up.exception()  # retrieved: a refused handshake is an outcome, not an error
        self._changed.set()

    def write(self, data: bytes) -> bool:
        """Send ``data`` in one TLS record; False once the connection cannot take it."""
        if self.gone:
            return False
        try:
            self.send_app(data)
        except (ssl.SSLError, OSError):  # the node's close crossed our write
            self.tls_ended = True
            return False
        return True

    @property
    def gone(self) -> bool:
        return self.closed.done() or self.tls_ended

    async def wait_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """True once ``done()`` or the connection closed; False after ``timeout_s`` of neither."""
        deadline = time.monotonic() + timeout_s
        while not done() and not self.gone:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return done() or self.gone
        return True


@dataclass(frozen=True)
class Bounds:
    """How long the node may take before silence counts as a hang."""

    #: TCP connect and the TLS handshake.
    connect_s: float
    #: The PONG of a round's probe, or the close, after the round's last write.
    answer_s: float
    #: The close of a stalled connection (handshake or idle timeout, plus slack).
    stall_s: float


@dataclass
class Outcome:
    case: Case
    #: "kept" (alive after its last round; we closed it), "closed" (the node closed it),
    #: "hang", "refused" (HELLO_ACK never came in auth-first), "connect-failed".
    result: str = "kept"
    detail: str = ""
    rounds_sent: int = 0
    rounds_answered: int = 0
    frames_sent: int = 0
    mutated_sent: int = 0
    #: Mutated frames the node certainly read: all of an answered round's; of the round
    #: it ended the connection in (or stalled in), the first one only.
    mutated_read: int = 0
    error_code: int | None = None
    bad_output: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    session: ssl.SSLSession | None = None


async def play_case(
    case: Case,
    port: int,
    context: ssl.SSLContext,
    bounds: Bounds,
    *,
    source_ip: str = "127.0.0.1",
    session: ssl.SSLSession | None = None,
    keep_session: bool = False,
) -> Outcome:
    """Play ``case`` on a new connection; ``keep_session``: return its TLS session to resume."""
    outcome = Outcome(case, started_at=time.time())
    link = FuzzLink(context, session)
    try:
        await _play(link, outcome, port, bounds, source_ip)
    finally:
        outcome.ended_at = time.time()
        outcome.error_code = link.error_code
        outcome.bad_output = link.bad_output
        if keep_session and link.tls_up.done() and link.tls_up.exception() is None:
            outcome.session = link.session  # costs ~0.3 ms (the session is serialised)
        if outcome.result == "hang":
            link.abort()
        else:
            link.close()
    return outcome


async def _play(link: FuzzLink, outcome: Outcome, port: int, bounds: Bounds, ip: str) -> None:
    case = outcome.case
    try:
        await asyncio.wait_for(connect_link(link, port, ip), bounds.connect_s)
        await asyncio.wait_for(asyncio.shield(link.tls_up), bounds.connect_s)
    except TimeoutError:
        outcome.result, outcome.detail = "hang", "TCP connect or TLS handshake"
        return
    except (OSError, ssl.SSLError, ConnectionError) as exc:
        outcome.result, outcome.detail = "connect-failed", f"{type(exc).__name__}: {exc}"
        return
    if case.opening:
        link.write(case.opening)
        if not await link.wait_until(lambda: link.accepted, bounds.answer_s):
            outcome.result, outcome.detail = "hang", "no HELLO_ACK nor close after the HELLO"
            return
        if not link.accepted:
            outcome.result, outcome.detail = "refused", f"error code {link.error_code}"
            return
    for number, round_ in enumerate(case.rounds, 1):
        for write, pause in zip(round_.writes, round_.yields, strict=True):
            if not link.write(write):
                break
            if pause:
                await asyncio.sleep(0)
        outcome.rounds_sent = number
        outcome.frames_sent += round_.frames
        outcome.mutated_sent += round_.mutated
        probe = round_.probe
        bound = bounds.answer_s if probe else bounds.stall_s
        if not await link.wait_until(_answered(link, probe), bound):
            what = "PONG of the probe" if probe else "close of the stalled connection"
            outcome.result, outcome.detail = "hang", f"round {number}: neither the {what} nor close"
            return
        if link.gone:
            outcome.result = "closed"
            outcome.mutated_read += min(1, round_.mutated)
            return
        outcome.rounds_answered = number
        outcome.mutated_read += round_.mutated


def _answered(link: FuzzLink, probe: bytes) -> Callable[[], bool]:
    """Whether the PONG of ``probe`` came back (never, for a stall's b"")."""
    return lambda: bool(probe) and probe in link.pongs
