"""A gateway node: the device listener, its sessions, the admin endpoints, drain.

One ``GatewayNode`` per process. It owns what all sessions share — wire
limits, the body codec with its dictionaries, the authenticator, the RPC
router, metrics — and the bookkeeping of connections (per-IP counts, one
session per device, the sweep that enforces handshake, heartbeat, credential
and slow-consumer deadlines).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from channel import fastopen
from channel.config import GatewayConfig
from channel.default_dictionary import load_default_dictionary
from channel.default_presets import register_default_presets
from channel.gateway.auth import Authenticator
from channel.gateway.builtin import builtin_response
from channel.gateway.heaptrim import HeapTrimmer
from channel.gateway.metrics import GatewayMetrics
from channel.gateway.ratelimit import CpuBudget
from channel.gateway.session import DeviceSession, jittered
from channel.gateway.tlsproto import tls_server_factory
from channel.gateway.uvtls import gated_tls_factory
from channel.logs import fields
from channel.push.delivery import NodeDelivery
from channel.push.service import PushService
from channel.push.stores import PushBackend
from channel.rpc.config import RoutingConfig
from channel.rpc.model import RpcRequest, RpcResponse
from channel.rpc.router import RpcRouter
from channel.security.devcert import ensure_dev_certificates, ensure_dev_token_keys
from channel.security.tickets import TicketKeyRing, TicketSealer
from channel.security.tls import peer_certificate_identity, server_ssl_context
from channel.security.tokens import TokenVerifier, key_id_from_path, load_public_key
from channel.wire import BodyCodec, DictionaryStore, ErrorCode, FrameCounters, FrameType, Limits

log = logging.getLogger("channel.node")

#: How often the sweep checks deadlines; handshake and idle timeouts are this precise.
SWEEP_INTERVAL_S = 0.5


@dataclass
class NodeAddresses:
    device_port: int
    admin_port: int
    api_port: int = 0


class GatewayNode:
    def __init__(self, config: GatewayConfig, *, router: RpcRouter | None = None) -> None:
        self.config = config
        self.node_id = config.server.node_id or f"{socket.gethostname()}-{os.getpid()}"
        register_default_presets()
        lim = config.limits
        self.wire_limits = Limits(
            max_frame_size=lim.max_frame_size,
            header_table_size=lim.header_table_size,
            max_header_list_size=lim.max_header_list_size,
            max_body_size=lim.max_body_size,
            max_concurrent_streams=lim.max_concurrent_streams,
            max_hello_size=lim.max_hello_size,
        )
        #: Every device's input CPU budget (None: unbudgeted), see gateway/session.py.
        self.input_budget = (
            CpuBudget(lim.device_input_cpu_ms_per_s / 1000, lim.device_input_burst_ms / 1000)
            if lim.device_input_cpu_ms_per_s > 0
            else None
        )
        self.body_codec = BodyCodec(DictionaryStore([load_default_dictionary()]))
        self.dev_token_key: Path | None = None
        self.ca_cert: Path | None = None
        self.frame_counters = FrameCounters()
        #: MMTP bytes to and from devices (inside TLS), for /metrics.
        self.mmtp_bytes_in = 0
        self.mmtp_bytes_out = 0
        self.metrics = GatewayMetrics()
        self._register_wire_collector()
        self.authenticator = self._make_authenticator()
        self.router = router or RpcRouter(RoutingConfig.from_dict(config.rpc))
        self.sessions: set[DeviceSession] = set()
        self.by_device: dict[str, DeviceSession] = {}
        self._unauthenticated: set[DeviceSession] = set()
        #: Connections from TCP accept to TCP close, in all and per address (admit_connection).
        self._tcp_connections = 0
        self._per_ip: Counter[str] = Counter()
        self.heap_trimmer = HeapTrimmer(config.server.malloc_trim_after_handshakes)
        self._server: asyncio.AbstractServer | None = None
        #: The kernel takes fast-open SYNs on our listeners (else no socket is asked).
        self._fast_open_listening = False
        self._admin: object | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False
        self.ready = False
        self._all_gone: asyncio.Event | None = None
        # Futures for code that waits for one session to end (tests, kick); none by default.
        self._close_waiters: dict[DeviceSession, asyncio.Future[None]] = {}
        self._auth_waiters: dict[str, list[asyncio.Future[DeviceSession]]] = {}
        self.addresses = NodeAddresses(0, 0)
        self.backend: PushBackend | None = None
        self.delivery: NodeDelivery | None = None
        self.push: PushService | None = None
        self._api: object | None = None
        self._stream_api: object | None = None

    # ---------------------------------------------------------------- set-up

    def _make_authenticator(self) -> Authenticator:
        auth = self.config.auth
        state = self.config.state_dir
        keys = {}
        paths = [Path(p) for p in auth.token_public_keys]
        if not paths:
            private, public = ensure_dev_token_keys(state / "keys")
            self.dev_token_key = private
            paths = [public]
        for path in paths:
            key_id = key_id_from_path(path)
            if key_id is None:
                key_id = 1  # a bare file name: the single key of a small deployment
            keys[key_id] = load_public_key(path)
        verifier = TokenVerifier(keys, leeway_s=auth.token_leeway_s)
        secret = auth.ticket_secret.encode() if auth.ticket_secret else _dev_ticket_secret(state)
        ring = TicketKeyRing.from_master_secret(
            secret, auth.ticket_key_id, auth.ticket_accepted_key_ids
        )
        return Authenticator(
            verifier,
            TicketSealer(ring),
            ticket_ttl_s=auth.ticket_ttl_s,
            zone=self.config.server.zone,
            allow_client_certificates=bool(self.config.tls.client_ca),
        )

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        if tls.cert:
            cert, key = Path(tls.cert), Path(tls.key)
        else:
            dev = ensure_dev_certificates(self.config.state_dir / "tls")
            cert, key, self.ca_cert = dev.cert, dev.key, dev.ca_cert
            log.info(
                "using the dev certificate",
                extra=fields(ca=str(dev.ca_cert), cert=str(cert), sha256=dev.fingerprint_sha256),
            )
        return server_ssl_context(
            cert,
            key,
            client_ca=Path(tls.client_ca) if tls.client_ca else None,
            require_client_cert=tls.require_client_cert,
        )

    def _register_wire_collector(self) -> None:
        counters = self.frame_counters
        codec = self.body_codec
        node = self

        class _WireCollector:
            def collect(self) -> Iterable[object]:
                from prometheus_client.core import CounterMetricFamily

                frames = CounterMetricFamily(
                    "channel_frames",
                    "MMTP frames by direction and type",
                    labels=["direction", "type"],
                )
                frame_bytes = CounterMetricFamily(
                    "channel_frame_bytes",
                    "MMTP frame bytes by direction and type",
                    labels=["direction", "type"],
                )
                for frame_type in FrameType:
                    name = frame_type.name
                    frames.add_metric(["in", name], counters.received[frame_type])
                    frames.add_metric(["out", name], counters.sent[frame_type])
                    frame_bytes.add_metric(["in", name], counters.received_bytes[frame_type])
                    frame_bytes.add_metric(["out", name], counters.sent_bytes[frame_type])
                body = CounterMetricFamily(
                    "channel_body_bytes",
                    "Bodies sent: raw and as encoded (compression ratio)",
                    labels=["stage"],
                )
                body.add_metric(["raw"], codec.encoded_raw_bytes)
                body.add_metric(["wire"], codec.encoded_wire_bytes)
                mmtp = CounterMetricFamily(
                    "channel_bytes",
                    "MMTP bytes to and from devices (inside TLS) by direction",
                    labels=["direction"],
                )
                mmtp.add_metric(["in"], node.mmtp_bytes_in)
                mmtp.add_metric(["out"], node.mmtp_bytes_out)
                return [frames, frame_bytes, body, mmtp]

        self.metrics.registry.register(_WireCollector())  # type: ignore[arg-type]

        class _PushCollector:
            def collect(self) -> Iterable[object]:
                from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

                delivery = node.delivery
                if delivery is None:
                    return []
                return [
                    CounterMetricFamily(
                        "channel_pushes_written",
                        "PUSH frames written to devices (unicast, fan-out, replays)",
                        value=delivery.pushes_written,
                    ),
                    GaugeMetricFamily(
                        "channel_fanout_pending",
                        "Broadcast and topic pushes going round this node's sessions",
                        value=delivery.fanout_pending,
                    ),
                    CounterMetricFamily(
                        "channel_user_directory_forgotten",
                        "Device directory entries this node's sweeps forgot (not seen in ttl)",
                        value=delivery.directory_forgotten,
                    ),
                    CounterMetricFamily(
                        "channel_fanout_writes",
                        "Session writes of broadcast and topic pushes (each carries every "
                        "fan-out push due to that session: fewer per push under load)",
                        value=delivery.fanout_writes,
                    ),
                    CounterMetricFamily(
                        "channel_inbox_resyncs",
                        "Times this node found Redis had trimmed inbox entries it had not read "
                        "(inbox_max_entries) and replayed its devices' queues",
                        value=delivery.inbox_resyncs,
                    ),
                ]

        self.metrics.registry.register(_PushCollector())  # type: ignore[arg-type]

    async def start(self) -> NodeAddresses:
        loop = asyncio.get_running_loop()
        server = self.config.server
        ssl_context = self._ssl_context()
        await self.router.start()
        await self._start_push()
        reuse_port = server.reuse_port or server.workers > 1 or None
        # Both engines count connections at TCP accept, before any TLS work (self is the gate).
        if server.tls_engine == "memorybio":
            # TLS over plain TCP with ssl.MemoryBIO (channel/gateway/tlsproto.py): less memory.
            factory = tls_server_factory(
                ssl_context, lambda: DeviceSession(self), server.handshake_timeout_s, self
            )
        else:
            # uvloop's TLS transport, started once the connection is counted (uvtls.py).
            factory = gated_tls_factory(
                ssl_context, lambda: DeviceSession(self), server.handshake_timeout_s, self
            )
        self._server = await loop.create_server(
            factory, host=server.host, port=server.port, reuse_port=reuse_port, backlog=4096
        )
        sock = self._server.sockets[0]
        device_port = sock.getsockname()[1]
        self._enable_fastopen()
        from channel.api.app import api_keyring, start_api
        from channel.gateway.admin import start_admin

        # One keyring ([api] keys) for the push API and the admin port's "admin" scope.
        keyring = api_keyring(self.config.state_dir, self.config.api)
        self._admin, admin_port = await start_admin(self, keyring)
        api_port = 0
        if self.config.api.enabled:
            assert self.push is not None
            self._api, api_port = await start_api(self.push, self.config.api, keyring)
        self.addresses = NodeAddresses(device_port, admin_port, api_port)
        self._sweeper = loop.create_task(self._sweep_forever())
        self.ready = True
        log.info(
            "gateway listening",
            extra=fields(
                node=self.node_id,
                host=server.host,
                port=device_port,
                admin_port=admin_port,
                api_port=api_port,
                push_backend=self.config.push.backend,
                pid=os.getpid(),
            ),
        )
        return self.addresses

    async def _start_push(self) -> None:
        config = self.config.push
        if config.backend == "redis":
            from channel.push.redis import redis_backend

            self.backend = await redis_backend(config)
        else:
            from channel.push.memory import memory_backend

            if self.config.server.workers > 1:
                log.warning(
                    'push.backend "memory" with several workers: a push reaches only the '
                    'devices of the worker that accepted it; use push.backend = "redis"'
                )

            self.backend = memory_backend(
                config.receipt_stream_maxlen,
                user_devices_ttl_s=config.user_devices_ttl_s,
                user_devices_cap=config.user_devices_cap,
                final_status_retention_ms=round(config.final_status_retention_s * 1000),
            )
        self.delivery = NodeDelivery(self, self.backend, config)
        await self.delivery.start()
        self.push = PushService(self, self.backend, self.delivery)
        if self.backend.redis is not None and config.request_stream_enabled:
            from channel.push.stream_api import StreamApi

            stream_api = StreamApi(self.push, self.backend.redis, self.config)
            await stream_api.start()
            self._stream_api = stream_api

    # ------------------------------------------------------------ sessions

    def _enable_fastopen(self) -> None:
        """TCP Fast Open on the device listeners: a returning device's ClientHello rides
        in its SYN, one round trip fewer to its first answer (channel/fastopen.py)."""
        queue = self.config.server.tcp_fastopen_queue
        if queue <= 0 or self._server is None:
            return
        enabled = all(fastopen.enable_on_listener(s, queue) for s in self._server.sockets)
        if not enabled:
            log.info("tcp fast open not available on this platform")
        elif fastopen.server_enabled_by_kernel():
            self._fast_open_listening = True
        else:
            # Not a fault: devices connect as before, one round trip slower on reconnect.
            log.info(
                "tcp fast open is off: the kernel refuses it to servers; "
                "sysctl net.ipv4.tcp_fastopen=3 turns it on",
                extra=fields(sysctl=fastopen.sysctl_value()),
            )

    def admit_connection(self, peer_ip: str) -> bool:
        """Count a connection TCP just accepted, before any TLS work; False: cut it now.

        Over ``max_connections`` or ``max_connections_per_ip`` the connection is
        closed without a word (no TLS, so no MMTP ERROR can be sent): a client sees
        the connection reset and backs off as after any network failure.
        """
        server = self.config.server
        if self._tcp_connections >= server.max_connections:
            self.metrics.refused_connections.labels(ErrorCode.UNAVAILABLE.name).inc()
            return False
        if self._per_ip[peer_ip] >= server.max_connections_per_ip:
            self.metrics.refused_connections.labels(ErrorCode.RATE_LIMITED.name).inc()
            return False
        self._tcp_connections += 1
        self._per_ip[peer_ip] += 1
        self.metrics.connections.set(self._tcp_connections)
        return True

    def release_connection(self, peer_ip: str) -> None:
        self._tcp_connections -= 1
        left = self._per_ip[peer_ip] - 1
        if left > 0:
            self._per_ip[peer_ip] = left
        else:
            del self._per_ip[peer_ip]
        self.metrics.connections.set(self._tcp_connections)

    def admit(self, session: DeviceSession) -> tuple[ErrorCode, str] | None:
        """Register a connection whose TLS handshake completed, or say why it is refused.

        (It was counted against the connection limits when TCP accepted it.)
        """
        if self.draining:
            self.metrics.refused_connections.labels(ErrorCode.SHUTTING_DOWN.name).inc()
            return (ErrorCode.SHUTTING_DOWN, "node is draining; reconnect elsewhere")
        self.sessions.add(session)
        self._unauthenticated.add(session)
        return None

    def forget(self, session: DeviceSession) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self._unauthenticated.discard(session)
        if session.auth is not None and self.by_device.get(session.device_id) is session:
            del self.by_device[session.device_id]
        self.metrics.sessions.set(len(self.by_device))
        if session.auth is not None and self.delivery is not None:
            self.delivery.session_closed(session)
        if not self.sessions and self._all_gone is not None:
            self._all_gone.set()
        waiter = self._close_waiters.pop(session, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wait_authenticated(self, device_id: str) -> asyncio.Future[DeviceSession]:
        """A future done when ``device_id`` has a session on this node."""
        future: asyncio.Future[DeviceSession] = asyncio.get_running_loop().create_future()
        session = self.by_device.get(device_id)
        if session is not None:
            future.set_result(session)
        else:
            self._auth_waiters.setdefault(device_id, []).append(future)
        return future

    def wait_closed(self, session: DeviceSession) -> asyncio.Future[None]:
        """A future done when ``session``'s connection is gone."""
        future = self._close_waiters.get(session)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            if session in self.sessions:
                self._close_waiters[session] = future
            else:
                future.set_result(None)
        return future

    def on_authenticated(self, session: DeviceSession) -> None:
        assert session.auth is not None
        self._unauthenticated.discard(session)
        self.heap_trimmer.handshake()
        self.metrics.handshakes.labels("resumed" if session.auth.resumed else "full").inc()
        if self._fast_open_listening and session.tcp_fast_open:
            self.metrics.fast_open_handshakes.inc()
        previous = self.by_device.get(session.device_id)
        self.by_device[session.device_id] = session
        if self.delivery is not None:
            self.delivery.session_ready(session)
        for waiter in self._auth_waiters.pop(session.device_id, ()):
            if not waiter.done():
                waiter.set_result(session)
        if previous is not None and previous is not session and not previous.conn.draining:
            # A draining connection (GOAWAY sent either way) finishes its streams
            # on its own; only a live duplicate is replaced.
            previous.end(ErrorCode.SESSION_REPLACED, "the device connected again elsewhere")
        self.metrics.sessions.set(len(self.by_device))

    def on_acks(self, session: DeviceSession, delivery_ids: tuple[int, ...]) -> None:
        if self.delivery is not None:
            self.delivery.on_acks(session, delivery_ids)

    def heartbeat_for(self, preferred_s: int) -> int:
        """The interval a device gets: the configured one, or shorter if it asks and may."""
        hb = self.config.heartbeat
        if preferred_s and hb.min_s <= preferred_s < hb.interval_s:
            return preferred_s
        return hb.interval_s

    def retry_hint_ms(self) -> int:
        return jittered(self.config.server.reconnect_after_ms)

    def client_certificate_cn(self, transport: asyncio.BaseTransport | None) -> str | None:
        if transport is None or not self.config.tls.client_ca:
            return None
        return peer_certificate_identity(transport.get_extra_info("ssl_object"))

    async def call_device(
        self,
        device_id: str,
        op: str,
        body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (),
        timeout_s: float = 10.0,
    ) -> RpcResponse:
        """Backend → device RPC for a device connected to this node."""
        session = self.by_device.get(device_id)
        if session is None:
            return RpcResponse.error(ErrorCode.NOT_FOUND, f"device {device_id} is not connected")
        return await session.call_device(op, body, headers, timeout_s)

    async def call_upstream(self, request: RpcRequest) -> RpcResponse:
        builtin = builtin_response(request, self.delivery)
        if builtin is not None:
            return builtin
        return await self.router.handle(request)

    def observe_rpc(self, request: RpcRequest, response: RpcResponse, seconds: float) -> None:
        # Labels are the route's match and the cluster, never the op (unbounded cardinality).
        status = "OK" if response.status == 0 else _code_name(response.status)
        self.metrics.rpc_latency.labels(response.route, response.cluster, status).observe(seconds)

    # ---------------------------------------------------------------- sweep

    async def _sweep_forever(self) -> None:
        # Handshake deadlines are checked every SWEEP_INTERVAL_S over the (few)
        # connections still without a session; the full pass over every session
        # (idle, expiry, slow consumers) runs only as often as its deadlines need:
        # at 100,000 devices a twice-a-second full pass cost a quarter of a core.
        hb = self.config.heartbeat
        full_every_s = min(5.0, max(SWEEP_INTERVAL_S, hb.min_s / 4))
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = time.monotonic()
            try:
                if now - last_full >= full_every_s:
                    last_full = now
                    self.sweep(now, time.time())
                else:
                    self.sweep_handshakes(now)
                self.heap_trimmer.tick(now)
            except Exception:
                log.exception("sweep failed")

    def sweep_handshakes(self, now: float) -> None:
        handshake_s = self.config.server.handshake_timeout_s
        for session in list(self._unauthenticated):
            if now - session.connected_at > handshake_s:
                session.end(ErrorCode.HANDSHAKE_TIMEOUT, f"no HELLO within {handshake_s} s")

    def sweep(self, now: float, wall: float) -> None:
        """Enforce per-connection deadlines (one pass over the sessions)."""
        self.sweep_handshakes(now)
        hb = self.config.heartbeat
        high_water = self.config.limits.send_buffer_high_water_bytes
        grace_s = self.config.limits.slow_consumer_grace_s
        for session in list(self.by_device.values()):
            auth = session.auth
            if auth is None:
                continue
            idle_limit = (
                session.conn.hello_ack.heartbeat_s if session.conn.hello_ack else hb.interval_s
            ) * hb.idle_factor
            if now - session.last_seen > idle_limit:
                self.metrics.idle_closed.inc()
                session.end(ErrorCode.IDLE_TIMEOUT, f"no frame for {idle_limit:.0f} s")
            elif auth.auth_expires_at and wall > auth.auth_expires_at:
                session.send_goaway(ErrorCode.AUTH_EXPIRED, 0, "credential expired; reconnect")
            elif session.paused_since and (
                now - session.paused_since > grace_s or session.write_buffer_size > 4 * high_water
            ):
                self.metrics.slow_consumers.inc()
                log.info("slow consumer", extra=fields(device=session.device_id))
                # Its buffer is full: an ERROR frame would never reach it. Just cut.
                session.abort()

    # ---------------------------------------------------------------- drain

    def reload_routes(self, config: GatewayConfig) -> None:
        self.router.reload(RoutingConfig.from_dict(config.rpc))
        self.config.rpc = config.rpc
        log.info("routes reloaded", extra=fields(source=config.source))

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop accepting, tell every device to reconnect later, finish calls, close."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        timeout_s = self.config.server.drain_timeout_s if timeout_s is None else timeout_s
        if self._server is not None:
            self._server.close()
        base = self.config.server.reconnect_after_ms
        for session in list(self.sessions):
            session.send_goaway(ErrorCode.SHUTTING_DOWN, jittered(base), "node restarting")
        self._all_gone = asyncio.Event()
        if self.sessions:
            try:
                await asyncio.wait_for(self._all_gone.wait(), timeout_s)
            except TimeoutError:
                log.warning("drain timed out", extra=fields(left=len(self.sessions)))
        for session in list(self.sessions):
            session.abort()
        log.info("drained", extra=fields(node=self.node_id))

    async def close(self) -> None:
        await self.drain(0 if not self.sessions else None)
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._admin is not None:
            from channel.gateway.admin import stop_admin

            await stop_admin(self._admin)
        if self._api is not None:
            from channel.api.app import stop_api

            await stop_api(self._api)
        if self._stream_api is not None:
            from channel.push.stream_api import StreamApi

            assert isinstance(self._stream_api, StreamApi)
            await self._stream_api.stop()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.backend is not None:
            await self.backend.close()
        await self.router.close()


def _dev_ticket_secret(state_dir: Path) -> bytes:
    """A ticket secret kept in the state dir, so dev restarts still resume sessions."""
    path = state_dir / "ticket.secret"
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    return secret


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"CODE_{code}"
