"""One device connection on the Python engine: an asyncio adapter for ``channel.wire``.

This class only moves bytes, timers and tasks: framing, HPACK, bodies and
the state machine are the wire core's, what a request or a HELLO means is
``MmtpService``'s and ``MmtpSession``'s. It is a protocol (not a stream) so
the transport hands it bytes directly, with no per-connection reader task or
buffer beyond what the TLS transport keeps.

Life of a connection: TLS handshake (transport) → HELLO → authenticate
(synchronous) → HELLO_ACK, and the requests pipelined behind the HELLO are
served in the same turn → requests, pings, acks … → GOAWAY or an error →
close. Idle and credential expiry are checked by the engine's sweep, not by a
timer per connection.

**A CPU budget per device.** Input is processed one frame at a time, and the
time it takes (decoding, dispatch, the answers it causes) is charged to the
device (``CpuBudget``: ``[limits] device_input_cpu_ms_per_s`` of a core, at
most ``device_input_burst_ms`` at once). A device over its budget has its
reading paused until the budget is paid off: the rest of its input waits in
the wire core's frame buffer, the TLS layer and then the kernel, while every
other device and task on the loop runs. Time is the measure, not bytes or
frames, because their cost differs by a factor of a thousand (a PING ~4 µs, a
legal request with a 16 KiB Huffman-coded header list ~10 ms); the wire core's
structural limits keep any single frame's cost bounded, the budget keeps the
number of such frames one device gets through per second bounded. The clock is
wall time (``perf_counter``): a step preempted by the OS is charged in full,
which can only slow that device, never the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Protocol, cast

from channel import fastopen
from channel.engine.tlsproto import peer_ip_of
from channel.mmtp.service import MmtpService
from channel.mmtp.session import MmtpSession
from channel.ratelimit import CpuBudget
from channel.rpc.model import RpcResponse
from channel.security.auth import AuthFailure
from channel.security.tls import negotiated_protocol_ok
from channel.sessions import FanoutPush, Headers
from channel.wire import (
    AckReceived,
    Connection,
    ConnectionErrorReceived,
    ErrorCode,
    Event,
    GoAwayReceived,
    HelloReceived,
    LocalProtocolError,
    MessageTooLarge,
    PreparedPush,
    ProtocolError,
    RequestReceived,
    ResponseReceived,
    Role,
    State,
    StreamCancelled,
    StreamErrorReceived,
)


class ConnectionOwner(Protocol):
    """What a connection needs from the engine that accepted it (``PythonEngine``)."""

    service: MmtpService

    def admit(self, session: PyMmtpSession) -> tuple[ErrorCode, str] | None: ...

    def authenticated(self, session: PyMmtpSession) -> None: ...

    def forget(self, session: PyMmtpSession) -> None: ...

    def client_certificate_cn(self, transport: asyncio.BaseTransport | None) -> str | None: ...


#: Why reading is paused (bits of ``_holds``): the device does not read what we send,
#: or its input used up its CPU budget. Reading resumes when no reason is left.
HOLD_WRITING = 1
HOLD_BUDGET = 2


def prepared_mmtp(push: FanoutPush, codec: object) -> PreparedPush:
    """A fan-out push encoded once for every MMTP connection of this engine."""
    return PreparedPush.build(push.message_id.encode(), push.body, push.headers, codec)  # type: ignore[arg-type]


class PyMmtpSession(MmtpSession, asyncio.Protocol):
    """The gateway side of one device connection on the Python engine."""

    __slots__ = (
        "_closing",
        "_cpu_ready_at",
        "_deliveries",
        "_engine",
        "_holds",
        "_paused_since",
        "_transport",
        "conn",
        "connected_at",
        "last_seen",
    )

    def __init__(self, engine: ConnectionOwner) -> None:
        service = engine.service
        super().__init__(service)
        self._engine = engine
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self._paused_since = 0.0
        # CpuBudget's ready_at (0.0: a full burst) and the reasons reading is paused.
        self._cpu_ready_at = 0.0
        self._holds = 0
        # Pushes written and not acknowledged: delivery id -> (message id, tracked).
        self._deliveries: dict[int, tuple[str, bool]] | None = None
        self.conn = Connection(
            Role.SERVER,
            limits=service.wire_limits,
            body_codec=service.body_codec,
            frame_counters=service.wire.frames,
        )
        self.connected_at = time.monotonic()
        self.last_seen = self.connected_at

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, only alike.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        high_water = self._service.config.limits.send_buffer_high_water_bytes
        transport.set_write_buffer_limits(high=high_water, low=high_water // 4)
        refusal = self._engine.admit(self)
        if refusal is None and not negotiated_protocol_ok(transport.get_extra_info("ssl_object")):
            # The uvloop TLS engine cannot refuse a client without ALPN mmtp/1 in the
            # handshake (the memorybio one does); refuse it now (spec 3.2).
            refusal = (ErrorCode.UNSUPPORTED_VERSION, "ALPN mmtp/1 was not negotiated")
        if refusal is not None:
            code, reason = refusal
            self.conn.close_with_error(code, reason, retry_after_ms=self._service.retry_hint_ms())
            self._write_out()
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.connection_gone()
        self._deliveries = None
        self._engine.forget(self)
        self._transport = None

    def pause_writing(self) -> None:
        # The device is not reading what we send: stop reading its requests too.
        self._paused_since = time.monotonic()
        self._hold(HOLD_WRITING)

    def resume_writing(self) -> None:
        self._paused_since = 0.0
        self._release(HOLD_WRITING)

    def _hold(self, reason: int) -> None:
        if not self._holds and self._transport is not None:
            self._transport.pause_reading()
        self._holds |= reason

    def _release(self, reason: int) -> None:
        self._holds &= ~reason
        if not self._holds and self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        self._service.wire.bytes_in += len(data)
        self._read(data)

    def _read(self, data: bytes) -> None:
        """Process input one frame at a time while the device's CPU budget lasts."""
        budget = self._service.input_budget
        conn = self.conn
        started = time.perf_counter()
        start = budget.start(self._cpu_ready_at, started) if budget is not None else 0.0
        # Over budget already (input the transport had in hand): keep it, process none.
        steps = 0 if start > started else 1
        now = started
        try:
            while True:
                events, more = conn.receive_frames(data, steps)
                data = b""
                for event in events:
                    self._dispatch(event)
                now = time.perf_counter()
                if not more or self._closing or conn.closed:
                    break
                if budget is not None and budget.spent(start, now - started) > now:
                    break
        except ProtocolError as exc:
            self._service.protocol_error(exc.code, self.device_id)
            self._write_out()
            self._close()
            return
        self._write_out()  # the answers' TLS records are the device's cost too
        if conn.closed:
            self._close()
        elif budget is not None:
            now = time.perf_counter()
            self._charge(budget, budget.spent(start, now - started), now)

    def _charge(self, budget: CpuBudget, ready_at: float, now: float) -> None:
        self._cpu_ready_at = ready_at
        if ready_at <= now or self._closing:
            return
        # Over budget: no more input until it is paid off (the sweep still sees the
        # device; its buffered input waits in the parser, the TLS layer, the kernel).
        self._service.metrics.input_budget_pauses.inc()
        self._hold(HOLD_BUDGET)
        asyncio.get_running_loop().call_later(budget.resume_at(ready_at) - now, self._budget_paid)

    def _budget_paid(self) -> None:
        if self._transport is None or self._closing:
            return
        self._holds &= ~HOLD_BUDGET
        self._read(b"")  # what the parser still holds, first: it may use up the budget again
        self._release(0)  # reading resumes if nothing holds it any more

    # --------------------------------------------------------------- events

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self.on_request(event.stream_id, event.op, event.headers, event.body)
        elif isinstance(event, HelloReceived):
            self._on_hello(event)
        elif isinstance(event, AckReceived):
            self._on_acks(event.delivery_ids)
        elif isinstance(event, ResponseReceived):
            self.on_answer(event.stream_id, RpcResponse(event.status, event.headers, event.body))
        elif isinstance(event, StreamErrorReceived):
            self.on_answer(
                event.stream_id,
                RpcResponse(event.code, (), b"", event.retry_after_ms, event.message),
            )
        elif isinstance(event, StreamCancelled):
            self.on_cancel(event.stream_id)
        elif isinstance(event, GoAwayReceived):
            # The device is leaving (app to background): finish, then close.
            self.close_when_idle()
        elif isinstance(event, ConnectionErrorReceived):
            self._close()

    def _on_hello(self, event: HelloReceived) -> None:
        if self.conn.state is not State.AUTHENTICATING:
            # Frames behind the HELLO already ended the connection (an ERROR on stream 0).
            return
        service = self._service
        try:
            result = service.authenticate(
                event.hello,
                self._engine.client_certificate_cn(self._transport),
                peer_ip_of(self._transport) if self._transport is not None else "",
            )
        except AuthFailure as failure:
            self.conn.reject(failure.code, failure.message)
            self.conn.forget_credentials()
            return
        self.conn.accept(
            session_id=result.session_id,
            resume_ticket=result.resume_ticket,
            heartbeat_s=service.heartbeat_for(event.hello.heartbeat_s),
            server_time_ms=int(time.time() * 1000),
            resumed=result.resumed,
        )
        self.conn.forget_credentials()
        # The ticket went out in HELLO_ACK; no secret outlives its use.
        self.auth = dataclasses.replace(result, resume_ticket=b"")
        self._engine.authenticated(self)

    def _on_acks(self, delivery_ids: Sequence[int]) -> None:
        deliveries = self._deliveries
        if deliveries is None:
            return
        tracked: list[str] = []
        counts: dict[str, int] = {}
        for delivery_id in delivery_ids:
            entry = deliveries.pop(delivery_id, None)
            if entry is None:
                continue
            message_id, is_tracked = entry
            if is_tracked:
                tracked.append(message_id)
            else:
                counts[message_id] = counts.get(message_id, 0) + 1
        if not deliveries:
            self._deliveries = None
        registry = self._service.registry
        if tracked:
            registry.acks(self, tracked)
        if counts:
            registry.fanout_acks(counts)

    # -------------------------------------------------------------- pushes

    def push(self, message_id: str, body: bytes, headers: Headers, tracked: bool) -> str | None:
        try:
            delivery_id = self.conn.send_push(message_id.encode(), body, headers)
        except LocalProtocolError as exc:
            # Too large for this device's limits: it will never fit.
            return f"device limits: {exc}"[:200]
        self._track(delivery_id, message_id, tracked)
        return None

    def push_fanout(self, pushes: Sequence[FanoutPush]) -> int:
        codec = self._service.body_codec
        written = 0
        for push in pushes:
            prepared = push.encoded("mmtp", lambda p: prepared_mmtp(p, codec))
            try:
                delivery_id = self.conn.send_prepared_push(prepared)
            except LocalProtocolError:
                continue
            self._track(delivery_id, push.message_id, False)
            written += 1
        return written

    def _track(self, delivery_id: int, message_id: str, tracked: bool) -> None:
        deliveries = self._deliveries
        if deliveries is None:
            deliveries = self._deliveries = {}
        deliveries[delivery_id] = (message_id, tracked)

    @property
    def unacked(self) -> int:
        return len(self._deliveries) if self._deliveries is not None else 0

    # -------------------------------------------------- MmtpSession primitives

    def _send_answer(self, stream_id: int, response: RpcResponse) -> None:
        try:
            if response.status == 0:
                self.conn.send_response(stream_id, response.body, response.headers)
            else:
                self.conn.send_response(
                    stream_id,
                    response.body or response.message.encode(),
                    response.headers,
                    status=response.status,
                )
        except MessageTooLarge as exc:
            # The stream is still open (the wire core checks before closing it): end it
            # with an error the device can read, which frees its slot on both sides.
            self.stream_error(stream_id, ErrorCode.UPSTREAM_ERROR, f"answer not sent: {exc}"[:200])

    def _send_stream_error(
        self, stream_id: int, code: ErrorCode, message: str, retry_after_ms: int = 0
    ) -> None:
        self.conn.send_error(stream_id, code, message, retry_after_ms)

    def _start_call(self, op: str, body: bytes, headers: Headers) -> int | RpcResponse:
        try:
            return self.conn.send_request(op, body, headers)
        except LocalProtocolError as exc:
            return RpcResponse.error(ErrorCode.UNAVAILABLE, str(exc))

    def _cancel_call(self, key: int) -> None:
        if not self.conn.closed:
            self.conn.send_cancel(key)

    @property
    def _gone(self) -> bool:
        return self._closing or self.conn.closed

    # --------------------------------------------------------------- output

    def flush(self) -> None:
        """Hand what the wire core queued to the transport (one write)."""
        self._write_out()

    def _write_out(self) -> None:
        data = self.conn.data_to_send()
        transport = self._transport
        if not data or transport is None:
            return
        self._service.wire.bytes_out += len(data)
        transport.write(data)

    def goaway(self, code: ErrorCode, reconnect_after_ms: int, message: str) -> None:
        """Start draining this connection (node shutdown, credential expiry)."""
        if self.conn.closed or self.conn.draining or self.auth is None:
            self._close()
            return
        self.conn.send_goaway(code, reconnect_after_ms=reconnect_after_ms, message=message)
        self._write_out()
        # Requests the device sent before it saw the GOAWAY are still on the wire:
        # give them time to arrive (they get REFUSED_STREAM, which the device
        # replays elsewhere) instead of closing under them.
        grace_s = self._service.config.server.goaway_grace_s
        asyncio.get_running_loop().call_later(grace_s, self.close_when_idle)

    def end(self, code: ErrorCode, message: str) -> None:
        """End at once with ERROR on stream 0 (session replaced, idle, kicked)."""
        self.conn.close_with_error(code, message)
        self._write_out()
        self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------ inspection

    @property
    def closed(self) -> bool:
        return self._closing or self.conn.closed

    @property
    def connected(self) -> bool:
        return self._transport is not None

    @property
    def draining(self) -> bool:
        return self.conn.draining

    @property
    def device_id(self) -> str:
        if self.auth is not None:
            return self.auth.device.device_id
        hello = self.conn.hello
        return hello.device_id if hello is not None else ""

    @property
    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport else 0

    @property
    def paused_since(self) -> float:
        return self._paused_since

    @property
    def tcp_fast_open(self) -> bool:
        """The connection's SYN carried the TLS ClientHello (one round trip saved)."""
        transport = self._transport
        return transport is not None and fastopen.syn_carried_data(
            transport.get_extra_info("socket")
        )

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "unacked_pushes": self.unacked}
