"""What an MMTP session does above its engine: serve the device's calls, call the device.

``MmtpSession`` is the part both engines share: the request rate limit, the
calls being served (a task each, or the RPC router's fast path without one; cancelled
with their stream), backend → device calls waiting for the device's answer, and
closing once idle after a GOAWAY. Each engine subclasses it with the few primitives that move frames
(``_send_answer``, ``_send_stream_error``, ``_start_call``, ``_cancel_call``,
``flush``, ``_close``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from abc import abstractmethod
from typing import TYPE_CHECKING

from channel.logs import fields
from channel.ratelimit import TokenBucket
from channel.rpc.model import Call, DeviceContext, RpcRequest, RpcResponse
from channel.sessions import Headers, Session
from channel.wire import ErrorCode

if TYPE_CHECKING:
    from channel.mmtp.service import MmtpService
    from channel.security.auth import AuthResult

log = logging.getLogger("channel.session")


class MmtpSession(Session):
    """An authenticated MMTP device; see the module docstring."""

    __slots__ = (
        "_bucket",
        "_calls",
        "_closing_when_idle",
        "_service",
        "_tasks",
        "auth",
    )

    protocol = "mmtp"

    def __init__(self, service: MmtpService) -> None:
        self._service = service
        self.auth: AuthResult | None = None
        # Calls being served, by stream id (None while there are none: an idle
        # session holds no empty containers, see tests/test_session_footprint.py).
        self._tasks: dict[int, Call] | None = None
        # Backend → device calls awaiting the device's answer, by the engine's key.
        self._calls: dict[int, asyncio.Future[RpcResponse]] | None = None
        # The request rate limit, made at the first request (it starts full either way).
        self._bucket: TokenBucket | None = None
        self._closing_when_idle = False

    # ------------------------------------------------------- engine primitives

    @abstractmethod
    def _send_answer(self, stream_id: int, response: RpcResponse) -> None:
        """Answer a request; one too large for the device becomes a stream error."""

    @abstractmethod
    def _send_stream_error(
        self, stream_id: int, code: ErrorCode, message: str, retry_after_ms: int = 0
    ) -> None: ...

    @abstractmethod
    def _start_call(self, op: str, body: bytes, headers: Headers) -> int | RpcResponse:
        """Send a REQUEST to the device: the key its answer will come back under, or
        the reason it cannot be sent."""

    @abstractmethod
    def _cancel_call(self, key: int) -> None: ...

    @abstractmethod
    def _close(self) -> None:
        """Close the connection (after what is queued is written)."""

    def _bucket_used(self, bucket: TokenBucket) -> None:
        """A request passed the rate limit here (the native engine may take it over)."""

    def _close_idle(self) -> None:
        """Close once no call is being served (the native engine also waits for the
        calls it serves itself)."""
        self._close()

    @property
    @abstractmethod
    def _gone(self) -> bool:
        """The connection is closing or closed: answers would go nowhere."""

    # ------------------------------------------------------------ identity

    @property
    def device(self) -> DeviceContext:
        assert self.auth is not None
        return self.auth.device

    @property
    def device_id(self) -> str:
        return self.auth.device.device_id if self.auth is not None else ""

    @property
    def resumed(self) -> bool:
        return self.auth is not None and self.auth.resumed

    @property
    def expires_at(self) -> int:
        return self.auth.auth_expires_at if self.auth is not None else 0

    @property
    def in_flight(self) -> int:
        return len(self._tasks) if self._tasks is not None else 0

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "in_flight": self.in_flight}

    # --------------------------------------------------------------- requests

    def on_request(
        self,
        stream_id: int,
        op: str,
        headers: Headers,
        body: bytes,
        early: bool = False,
        gate: int | None = None,
        busy: int = 0,
    ) -> None:
        """A REQUEST from the device: rate limit, then serve it (the router's fast path
        when it takes the call, else a task of its own).
        ``early``: it came as TLS early data, which the network may replay: only an
        idempotent op is served; any other is refused unprocessed (spec section 8.5).
        ``gate``: the native engine applied the rate limit already (0: passed, else the
        retry-after in ms of the refusal); ``busy``: calls it serves on this connection."""
        if self.auth is None:
            # Pipelined requests only arrive after the HELLO; a refused HELLO closes.
            return
        if early and not self._service.early_request_allowed(op):
            self.stream_error(
                stream_id,
                ErrorCode.REFUSED_STREAM,
                "not idempotent: sent as TLS early data; send it again",
            )
            return
        now = time.monotonic()
        limits = self._service.config.limits
        if gate is None:
            bucket = self._bucket
            if bucket is None:
                bucket = self._bucket = TokenBucket(
                    limits.requests_per_second, limits.request_burst, now
                )
            wait_s = bucket.take(now)
            gate = int(wait_s * 1000) + 1 if wait_s > 0 else 0
            if not gate:
                self._bucket_used(bucket)
        if gate:
            self.stream_error(stream_id, ErrorCode.RATE_LIMITED, "request rate limit", gate)
            return
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = {}
        if len(tasks) + busy >= limits.max_pending_requests:
            self.stream_error(stream_id, ErrorCode.REFUSED_STREAM, "too many calls")
            return
        device = self.auth.device
        service = self._service
        request = RpcRequest(op, headers, body, device, busy)
        # The fast path first: no task when the call can go out at once.
        call = service.start_upstream(
            request, functools.partial(self._answered, stream_id, request, now)
        )
        if call is None:
            call = asyncio.get_running_loop().create_task(self._serve(stream_id, request))
        tasks[stream_id] = call
        # Sampled once the request is on its way (the fast path wrote it already).
        service.compression.sample(device.app_id, device.device_id, body)

    async def _serve(self, stream_id: int, request: RpcRequest) -> None:
        started = time.monotonic()
        try:
            response = await self._service.call_upstream(request)
        except asyncio.CancelledError:
            self._pop_task(stream_id)
            raise
        except Exception:
            log.exception("rpc handler failed", extra=fields(op=request.op))
            response = RpcResponse.error(ErrorCode.INTERNAL_ERROR, "gateway error")
        self._answered(stream_id, request, started, response)

    def _answered(
        self, stream_id: int, request: RpcRequest, started: float, response: RpcResponse
    ) -> None:
        service = self._service
        self._pop_task(stream_id)
        took_s = time.monotonic() - started
        if self._gone:
            service.observe_rpc(request, response, took_s)
            return
        # The answer goes first; metrics and sampling follow while it is on its way.
        self._send_answer(stream_id, response)
        self.flush()
        service.observe_rpc(request, response, took_s)
        if response.status != 0:
            service.stream_error_sent(response.status)
        else:
            device = request.device
            service.compression.sample(device.app_id, device.device_id, response.body)
        if self._closing_when_idle and not self._tasks:
            self._close_idle()

    def on_cancel(self, stream_id: int) -> None:
        task = self._pop_task(stream_id)
        if task is not None:
            task.cancel()

    def _pop_task(self, stream_id: int) -> Call | None:
        tasks = self._tasks
        if tasks is None:
            return None
        task = tasks.pop(stream_id, None)
        if not tasks:
            self._tasks = None
        return task

    def stream_error(
        self, stream_id: int, code: ErrorCode, message: str, retry_after_ms: int = 0
    ) -> None:
        self._service.stream_error_sent(code)
        self._send_stream_error(stream_id, code, message, retry_after_ms)

    # ------------------------------------------------------------------ calls

    async def call(self, op: str, body: bytes, headers: Headers, timeout_s: float) -> RpcResponse:
        if self.auth is None or self.closed or self.draining:
            return RpcResponse.error(ErrorCode.UNAVAILABLE, "device is not connected here")
        key = self._start_call(op, body, headers)
        if isinstance(key, RpcResponse):
            return key
        future: asyncio.Future[RpcResponse] = asyncio.get_running_loop().create_future()
        if self._calls is None:
            self._calls = {}
        self._calls[key] = future
        self.flush()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            self._cancel_call(key)
            self.flush()
            return RpcResponse.error(ErrorCode.TIMEOUT, f"device did not answer in {timeout_s} s")
        finally:
            if self._calls is not None:
                self._calls.pop(key, None)
                if not self._calls:
                    self._calls = None

    def on_answer(self, key: int, response: RpcResponse) -> None:
        """The device answered a call (or its connection went away)."""
        future = (self._calls or {}).get(key)
        if future is not None and not future.done():
            future.set_result(response)

    # ---------------------------------------------------------------- closing

    def close_when_idle(self) -> None:
        """Close once the calls being served are answered (GOAWAY either way)."""
        if not self._tasks:
            self._close_idle()
        else:
            self._closing_when_idle = True

    def connection_gone(self) -> None:
        """Cancel what was being served and fail what waited for the device."""
        tasks, self._tasks = self._tasks, None
        for task in (tasks or {}).values():
            task.cancel()
        calls, self._calls = self._calls, None
        for future in (calls or {}).values():
            if not future.done():
                future.set_result(RpcResponse.error(ErrorCode.UNAVAILABLE, "device went away"))
