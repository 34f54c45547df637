"""One device connection: the asyncio adapter around ``channel.wire.Connection``.

This class only moves bytes, timers and tasks: framing, HPACK, bodies and
the state machine are the wire core's. It is a protocol (not a stream) so
the transport hands it bytes directly, with no per-connection reader task or
buffer beyond what the TLS transport keeps.

Life of a connection: TLS handshake (transport) → HELLO → authenticate
(synchronous) → HELLO_ACK, and the requests pipelined behind the HELLO are
served in the same turn → requests, pings, acks … → GOAWAY or an error →
close. Idle and credential expiry are checked by the node's sweep, not by a
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
import logging
import random
import time
from typing import TYPE_CHECKING, cast

from channel import fastopen
from channel.logs import fields
from channel.ratelimit import CpuBudget, TokenBucket
from channel.rpc.model import RpcRequest, RpcResponse
from channel.security.auth import AuthFailure, AuthResult
from channel.security.tls import negotiated_protocol_ok
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
    ProtocolError,
    RequestReceived,
    ResponseReceived,
    Role,
    State,
    StreamCancelled,
    StreamErrorReceived,
)

if TYPE_CHECKING:
    from channel.gateway.node import GatewayNode

log = logging.getLogger("channel.session")

#: Why reading is paused (bits of ``_holds``): the device does not read what we send,
#: or its input used up its CPU budget. Reading resumes when no reason is left.
HOLD_WRITING = 1
HOLD_BUDGET = 2


class DeviceSession(asyncio.Protocol):
    """The gateway side of one device connection."""

    __slots__ = (
        "_bucket",
        "_calls",
        "_closing",
        "_closing_when_idle",
        "_cpu_ready_at",
        "_holds",
        "_node",
        "_paused_since",
        "_tasks",
        "_transport",
        "auth",
        "conn",
        "connected_at",
        "last_seen",
    )

    def __init__(self, node: GatewayNode) -> None:
        self._node = node
        self._transport: asyncio.Transport | None = None
        # Calls being served, by stream id (None while there are none: an idle
        # session holds no empty containers, see tests/test_session_footprint.py).
        self._tasks: dict[int, asyncio.Task[None]] | None = None
        # Gateway-initiated calls to the device awaiting its answer (None: never used).
        self._calls: dict[int, asyncio.Future[RpcResponse]] | None = None
        # The request rate limit, made at the first request (it starts full either way).
        self._bucket: TokenBucket | None = None
        self._closing = False
        self._closing_when_idle = False
        self._paused_since = 0.0
        # CpuBudget's ready_at (0.0: a full burst) and the reasons reading is paused.
        self._cpu_ready_at = 0.0
        self._holds = 0
        self.conn = Connection(
            Role.SERVER,
            limits=node.wire_limits,
            body_codec=node.body_codec,
            frame_counters=node.frame_counters,
        )
        self.auth: AuthResult | None = None
        self.connected_at = time.monotonic()
        self.last_seen = self.connected_at

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, only alike.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        high_water = self._node.config.limits.send_buffer_high_water_bytes
        transport.set_write_buffer_limits(high=high_water, low=high_water // 4)
        refusal = self._node.admit(self)
        if refusal is None and not negotiated_protocol_ok(transport.get_extra_info("ssl_object")):
            # OpenSSL lets a client without ALPN mmtp/1 through; we do not.
            refusal = (ErrorCode.UNSUPPORTED_VERSION, "ALPN mmtp/1 was not negotiated")
        if refusal is not None:
            code, reason = refusal
            self.conn.close_with_error(code, reason, retry_after_ms=self._node.retry_hint_ms())
            self._flush()
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        tasks, self._tasks = self._tasks, None
        for task in (tasks or {}).values():
            task.cancel()
        for future in (self._calls or {}).values():
            if not future.done():
                future.set_result(RpcResponse.error(ErrorCode.UNAVAILABLE, "device went away"))
        self._calls = None
        self._node.forget(self)
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
        self._node.mmtp_bytes_in += len(data)
        self._read(data)

    def _read(self, data: bytes) -> None:
        """Process input one frame at a time while the device's CPU budget lasts."""
        budget = self._node.input_budget
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
            self._node.metrics.connection_errors.labels(exc.code.name).inc()
            log.info("protocol error", extra=fields(device=self.device_id, code=exc.code.name))
            self._flush()
            self._close()
            return
        self._flush()  # the answers' TLS records are the device's cost too
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
        self._node.metrics.input_budget_pauses.inc()
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
            self._on_request(event)
        elif isinstance(event, HelloReceived):
            self._on_hello(event)
        elif isinstance(event, AckReceived):
            self._node.on_acks(self, event.delivery_ids)
        elif isinstance(event, ResponseReceived | StreamErrorReceived):
            self._on_device_answer(event)
        elif isinstance(event, StreamCancelled):
            task = self._pop_task(event.stream_id)
            if task is not None:
                task.cancel()
        elif isinstance(event, GoAwayReceived):
            # The device is leaving (app to background): finish, then close.
            self._close_when_idle()
        elif isinstance(event, ConnectionErrorReceived):
            self._close()

    def _on_hello(self, event: HelloReceived) -> None:
        if self.conn.state is not State.AUTHENTICATING:
            # Frames behind the HELLO already ended the connection (an ERROR on stream 0).
            return
        node = self._node
        cert_cn = node.client_certificate_cn(self._transport)
        try:
            result = node.authenticator.authenticate(event.hello, time.time(), cert_cn)
        except AuthFailure as failure:
            node.metrics.auth_failures.labels(failure.code.name).inc()
            log.info(
                "hello refused",
                extra=fields(device=event.hello.device_id, code=failure.code.name),
            )
            self.conn.reject(failure.code, failure.message)
            self.conn.forget_credentials()
            return
        heartbeat_s = node.heartbeat_for(event.hello.heartbeat_s)
        self.conn.accept(
            session_id=result.session_id,
            resume_ticket=result.resume_ticket,
            heartbeat_s=heartbeat_s,
            server_time_ms=int(time.time() * 1000),
            resumed=result.resumed,
        )
        self.conn.forget_credentials()
        # The ticket went out in HELLO_ACK; no secret outlives its use.
        self.auth = dataclasses.replace(result, resume_ticket=b"")
        node.on_authenticated(self)

    async def call_device(
        self, op: str, body: bytes, headers: tuple[tuple[str, str], ...], timeout_s: float
    ) -> RpcResponse:
        """Call a method on the device (backend → device RPC) and wait for its answer."""
        if self.auth is None or self.conn.closed or self.conn.draining:
            return RpcResponse.error(ErrorCode.UNAVAILABLE, "device is not connected here")
        try:
            stream_id = self.conn.send_request(op, body, headers)
        except LocalProtocolError as exc:
            return RpcResponse.error(ErrorCode.UNAVAILABLE, str(exc))
        future: asyncio.Future[RpcResponse] = asyncio.get_running_loop().create_future()
        if self._calls is None:
            self._calls = {}
        self._calls[stream_id] = future
        self._flush()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            self.conn.send_cancel(stream_id)
            self._flush()
            return RpcResponse.error(ErrorCode.TIMEOUT, f"device did not answer in {timeout_s} s")
        finally:
            if self._calls is not None:
                self._calls.pop(stream_id, None)

    def _on_device_answer(self, event: ResponseReceived | StreamErrorReceived) -> None:
        future = (self._calls or {}).get(event.stream_id)
        if future is None or future.done():
            return
        if isinstance(event, ResponseReceived):
            future.set_result(RpcResponse(event.status, event.headers, event.body))
        else:
            future.set_result(RpcResponse(event.code, (), b"", event.retry_after_ms, event.message))

    def _on_request(self, event: RequestReceived) -> None:
        if self.auth is None:
            # Pipelined requests only arrive after HelloReceived; a refused HELLO closes.
            return
        now = time.monotonic()
        bucket = self._bucket
        if bucket is None:
            limits = self._node.config.limits
            bucket = self._bucket = TokenBucket(
                limits.requests_per_second, limits.request_burst, now
            )
        wait_s = bucket.take(now)
        if wait_s > 0:
            self._stream_error(
                event.stream_id,
                ErrorCode.RATE_LIMITED,
                "request rate limit",
                int(wait_s * 1000) + 1,
            )
            return
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = {}
        if len(tasks) >= self._node.config.limits.max_pending_requests:
            self._stream_error(event.stream_id, ErrorCode.REFUSED_STREAM, "too many calls")
            return
        request = RpcRequest(event.op, event.headers, event.body, self.auth.device)
        task = asyncio.get_running_loop().create_task(self._serve(event.stream_id, request))
        tasks[event.stream_id] = task

    async def _serve(self, stream_id: int, request: RpcRequest) -> None:
        started = time.monotonic()
        try:
            response = await self._node.call_upstream(request)
        except asyncio.CancelledError:
            self._pop_task(stream_id)
            raise
        except Exception:
            log.exception("rpc handler failed", extra=fields(op=request.op))
            response = RpcResponse.error(ErrorCode.INTERNAL_ERROR, "gateway error")
        self._pop_task(stream_id)
        self._node.observe_rpc(request, response, time.monotonic() - started)
        if self._closing or self.conn.closed:
            return
        try:
            if response.status == 0:
                self.conn.send_response(stream_id, response.body, response.headers)
            else:
                self._node.metrics.stream_errors.labels(_code_label(response.status)).inc()
                self.conn.send_response(
                    stream_id,
                    response.body or response.message.encode(),
                    response.headers,
                    status=response.status,
                )
        except MessageTooLarge as exc:
            # The stream is still open (the wire core checks before closing it): end it
            # with an error the device can read, which frees its slot on both sides.
            self._stream_error(stream_id, ErrorCode.UPSTREAM_ERROR, f"answer not sent: {exc}"[:200])
        self._flush()
        if self._closing_when_idle and not self._tasks:
            self._close()

    def _pop_task(self, stream_id: int) -> asyncio.Task[None] | None:
        tasks = self._tasks
        if tasks is None:
            return None
        task = tasks.pop(stream_id, None)
        if not tasks:
            self._tasks = None
        return task

    def _stream_error(
        self, stream_id: int, code: ErrorCode, message: str, retry_after_ms: int = 0
    ) -> None:
        self._node.metrics.stream_errors.labels(code.name).inc()
        self.conn.send_error(stream_id, code, message, retry_after_ms)

    # --------------------------------------------------------------- output

    def flush(self) -> None:
        """Hand what the wire core queued to the transport (one write)."""
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        transport = self._transport
        if not data or transport is None:
            return
        self._node.mmtp_bytes_out += len(data)
        transport.write(data)

    def send_goaway(self, code: ErrorCode, reconnect_after_ms: int, message: str) -> None:
        """Start draining this connection (node shutdown, kick, slow consumer)."""
        if self.conn.closed or self.conn.draining or self.auth is None:
            self._close()
            return
        self.conn.send_goaway(code, reconnect_after_ms=reconnect_after_ms, message=message)
        self._flush()
        # Requests the device sent before it saw the GOAWAY are still on the wire:
        # give them time to arrive (they get REFUSED_STREAM, which the device
        # replays elsewhere) instead of closing under them.
        grace_s = self._node.config.server.goaway_grace_s
        asyncio.get_running_loop().call_later(grace_s, self._close_when_idle)

    def end(self, code: ErrorCode, message: str) -> None:
        """End at once with ERROR on stream 0 (session replaced, idle, slow consumer)."""
        self.conn.close_with_error(code, message)
        self._flush()
        self._close()

    def _close_when_idle(self) -> None:
        if not self._tasks:
            self._close()
        else:
            self._closing_when_idle = True

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------ inspection

    @property
    def device_id(self) -> str:
        if self.auth is not None:
            return self.auth.device.device_id
        hello = self.conn.hello
        return hello.device_id if hello is not None else ""

    @property
    def in_flight(self) -> int:
        return len(self._tasks) if self._tasks is not None else 0

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

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()


def _code_label(status: int) -> str:
    try:
        return ErrorCode(status).name
    except ValueError:
        return f"CODE_{status}"


def jittered(base_ms: int, spread: float = 0.5) -> int:
    """A reconnect hint spread over [base, base * (1 + spread)] so devices do not stampede."""
    return int(base_ms * (1.0 + random.random() * spread))
