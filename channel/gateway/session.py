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
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import sys
import time
from typing import TYPE_CHECKING, cast

from channel import fastopen
from channel.gateway.auth import AuthFailure, AuthResult
from channel.gateway.ratelimit import TokenBucket
from channel.logs import fields
from channel.rpc.model import RpcRequest, RpcResponse
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
    ProtocolError,
    RequestReceived,
    ResponseReceived,
    Role,
    StreamCancelled,
    StreamErrorReceived,
)

if TYPE_CHECKING:
    from channel.gateway.node import GatewayNode

log = logging.getLogger("channel.session")


class DeviceSession(asyncio.Protocol):
    """The gateway side of one device connection."""

    __slots__ = (
        "_bucket",
        "_calls",
        "_closing",
        "_closing_when_idle",
        "_node",
        "_paused_since",
        "_peer_ip",
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
        self._peer_ip = ""
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
        peer = transport.get_extra_info("peername")
        # Interned: devices behind one NAT address share the string (and the per-IP key).
        self._peer_ip = sys.intern(peer[0]) if isinstance(peer, tuple) else ""
        high_water = self._node.config.limits.send_buffer_high_water_bytes
        transport.set_write_buffer_limits(high=high_water, low=high_water // 4)
        refusal = self._node.admit(self, self._peer_ip)
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
        self._node.forget(self, self._peer_ip)
        self._transport = None

    def pause_writing(self) -> None:
        # The device is not reading what we send: stop reading its requests too.
        self._paused_since = time.monotonic()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused_since = 0.0
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        self._node.mmtp_bytes_in += len(data)
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self._node.metrics.connection_errors.labels(exc.code.name).inc()
            log.info("protocol error", extra=fields(device=self.device_id, code=exc.code.name))
            self._flush()
            self._close()
            return
        for event in events:
            self._dispatch(event)
        self._flush()
        if self.conn.closed:
            self._close()

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
        except LocalProtocolError as exc:
            # The answer does not fit the device's limits: tell it so instead.
            self.conn.send_error(stream_id, ErrorCode.UPSTREAM_ERROR, str(exc)[:200])
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
