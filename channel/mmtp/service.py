"""MMTP policy shared by both engines: who may connect, what a request becomes.

One ``MmtpService`` per node. An engine hands it a HELLO (with what the TLS
layer knows: the client certificate's name) and gets back an ``AuthResult`` or
an ``AuthFailure``; requests become RPC calls through ``call_upstream`` (the
gateway's built-in operations, then the RPC router). Bytes, frames and timers
are the engines'; nothing here touches a socket.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

from channel.compression.service import CompressionService
from channel.config import GatewayConfig
from channel.logs import fields
from channel.metrics import GatewayMetrics
from channel.ratelimit import CpuBudget
from channel.rpc.model import Call, RpcRequest, RpcResponse, StartCall
from channel.security.auth import Authenticator, AuthFailure, AuthResult
from channel.sessions import SessionRegistry, jittered
from channel.wire import BodyCodec, ErrorCode, FrameCounters, Hello, Limits
from channel.wire.presets import Preset, known_presets, preset_by_id

log = logging.getLogger("channel.mmtp")


def _no_fast_path(request: RpcRequest, on_done: Callable[[RpcResponse], None]) -> Call | None:
    return None


Upstream = Callable[[RpcRequest], Awaitable[RpcResponse]]


@dataclass
class WireCounters:
    """MMTP bytes to and from devices (inside TLS), read by /metrics."""

    bytes_in: int = 0
    bytes_out: int = 0
    frames: FrameCounters = field(default_factory=FrameCounters)


class MmtpService:
    """See the module docstring."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        authenticator: Authenticator,
        registry: SessionRegistry,
        metrics: GatewayMetrics,
        body_codec: BodyCodec,
        upstream: Upstream,
        compression: CompressionService,
        is_idempotent: Callable[[str], bool] = lambda op: False,
        start_upstream: StartCall | None = None,
    ) -> None:
        self.config = config
        self.compression = compression
        self.authenticator = authenticator
        self.registry = registry
        self.metrics = metrics
        self.body_codec = body_codec
        self.call_upstream = upstream
        #: A call without a task when it can go out at once, else None (see StartCall).
        self.start_upstream: StartCall = start_upstream or _no_fast_path
        self.is_idempotent = is_idempotent
        lim = config.limits
        #: Per-app body counters, chosen at each device's HELLO (``Connection``).
        self.usage_for_app = compression.usage_for
        self.wire_limits = Limits(
            max_frame_size=lim.max_frame_size,
            header_table_size=lim.header_table_size,
            max_header_list_size=lim.max_header_list_size,
            max_body_size=lim.max_body_size,
            max_concurrent_streams=lim.max_concurrent_streams,
            max_hello_size=lim.max_hello_size,
        )
        #: Every device's input CPU budget (None: unbudgeted), see engine/pysession.py.
        self.input_budget = (
            CpuBudget(lim.device_input_cpu_ms_per_s / 1000, lim.device_input_burst_ms / 1000)
            if lim.device_input_cpu_ms_per_s > 0
            else None
        )
        self.wire = WireCounters()
        # The labelled children, looked up once: labels() costs more than inc() itself,
        # and a handshake storm calls this per device.
        self._handshakes_full = metrics.handshakes.labels("full")
        self._handshakes_resumed = metrics.handshakes.labels("resumed")
        #: (route match, cluster, status) → its ``rpc_latency`` child.
        self._rpc_latency: dict[tuple[str, str, int], Histogram] = {}

    # ------------------------------------------------------------- handshake

    def authenticate(
        self, hello: Hello, client_cert_cn: str | None, peer_ip: str = ""
    ) -> AuthResult:
        """Verify a HELLO's credential; raises ``AuthFailure`` (counted, logged with the
        device's address: behind a balancer, the one its PROXY header named)."""
        try:
            return self.authenticator.authenticate(hello, time.time(), client_cert_cn)
        except AuthFailure as failure:
            self.metrics.auth_failures.labels(failure.code.name).inc()
            log.info(
                "hello refused",
                extra=fields(device=hello.device_id, code=failure.code.name, peer=peer_ip),
            )
            raise

    def heartbeat_for(self, preferred_s: int) -> int:
        """The interval a device gets: the configured one, or shorter if it asks and may."""
        hb = self.config.heartbeat
        if preferred_s and hb.min_s <= preferred_s < hb.interval_s:
            return preferred_s
        return hb.interval_s

    def idle_limit_s(self, heartbeat_s: int) -> float:
        """No frame for this long after HELLO_ACK ends the connection (IDLE_TIMEOUT)."""
        return heartbeat_s * self.config.heartbeat.idle_factor

    def retry_hint_ms(self) -> int:
        return jittered(self.config.server.reconnect_after_ms)

    def authenticated(self, resumed: bool, fast_open: bool) -> None:
        """Count a completed handshake (either engine)."""
        (self._handshakes_resumed if resumed else self._handshakes_full).inc()
        if fast_open:
            self.metrics.fast_open_handshakes.inc()

    # ------------------------------------------------------- the native engine

    def presets_for_engine(self) -> list[tuple[Any, ...]]:
        """Every preset this process knows (the native engine builds in 0 and 1)."""
        return [
            preset_for_engine(preset_by_id(preset_id))
            for preset_id in known_presets()
            if preset_id not in (0, 1)
        ]

    def dictionaries_for_engine(self) -> list[bytes]:
        """The body codec's dictionaries as ``.mmtpdict`` files."""
        return [d.to_file_bytes() for d in self.body_codec.dictionaries]

    # --------------------------------------------------------------- requests

    def early_request_allowed(self, op: str) -> bool:
        """A request that came as TLS early data may be served only if its op is
        idempotent: early data can be replayed (spec section 8.5). Counted either way."""
        allowed = self.is_idempotent(op)
        self.metrics.early_data_requests.labels("served" if allowed else "refused").inc()
        return allowed

    def observe_rpc(self, request: RpcRequest, response: RpcResponse, seconds: float) -> None:
        self.observe_answered(response.route, response.cluster, response.status, seconds)

    def observe_answered(self, route: str, cluster: str, status: int, seconds: float) -> None:
        # Labels are the route's match and the cluster, never the op (unbounded cardinality),
        # so the children looked up once each stay few: labels() costs more than observe().
        key = (route, cluster, status)
        child = self._rpc_latency.get(key)
        if child is None:
            label = "OK" if status == 0 else code_name(status)
            child = self._rpc_latency[key] = self.metrics.rpc_latency.labels(route, cluster, label)
        child.observe(seconds)

    def stream_error_sent(self, code: int) -> None:
        self.metrics.stream_errors.labels(code_name(code)).inc()

    def protocol_error(self, code: ErrorCode, device_id: str) -> None:
        self.metrics.connection_errors.labels(code.name).inc()
        log.info("protocol error", extra=fields(device=device_id, code=code.name))


def preset_for_engine(preset: Preset) -> tuple[Any, ...]:
    """A preset as the native engine takes it (config ``presets``, ``ADD_PRESET``)."""
    return (
        preset.preset_id,
        preset.name,
        [tuple(e) for e in preset.entries],
        [tuple(t) for t in preset.typed],
        list(preset.connection),
        list(preset.never_indexed),
    )


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"CODE_{code}"
