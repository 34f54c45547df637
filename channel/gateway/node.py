"""A gateway node: the composition root that builds every part of a process and wires them.

One ``GatewayNode`` per process. It reads the configuration and builds the
session registry, the MMTP policy (``MmtpService``: authentication, limits,
the RPC router behind it), the engine that moves the bytes, push delivery,
the push API, the Redis stream API and the admin port, then wires callbacks
between them. Nothing imports it back (``docs/architecture.md``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from channel.compression.service import CompressionService
from channel.config import GatewayConfig, TlsConfig
from channel.default_dictionary import DEFAULT_DICTIONARY_ID, load_default_dictionary
from channel.default_presets import register_default_presets
from channel.engine.native import NativeEngine
from channel.engine.pymqtt import PyMqttListener
from channel.engine.python import PythonEngine
from channel.gateway.builtin import BUILTIN_OPS, IDEMPOTENT_OPS, builtin_response
from channel.gateway.collectors import (
    register_certificate_collector,
    register_compression_collector,
    register_native_collector,
    register_push_collector,
    register_wire_collector,
)
from channel.logs import fields
from channel.metrics import GatewayMetrics
from channel.mmtp.service import MmtpService
from channel.mqtt.auth import MqttAuthenticator
from channel.mqtt.service import MqttService
from channel.mqtt.store import MemoryMqttStore, MqttStore
from channel.push.delivery import NodeDelivery
from channel.push.service import PushService
from channel.push.stores import PushBackend
from channel.rpc.config import RoutingConfig
from channel.rpc.model import Call, RpcRequest, RpcResponse
from channel.rpc.router import RpcRouter
from channel.security.auth import Authenticator
from channel.security.devcert import ensure_dev_certificates, ensure_dev_token_keys
from channel.security.tickets import TicketKeyRing, TicketSealer, tls_ticket_keys
from channel.security.tls import TlsFiles
from channel.security.tlstickets import MemoryTlsTickets
from channel.security.tokens import TokenVerifier, key_id_from_path, load_public_key
from channel.sessions import Session, SessionRegistry
from channel.wire import BodyCodec, DictionaryStore, ErrorCode, FrameType

log = logging.getLogger("channel.node")

#: How often credential expiry is checked over every session.
EXPIRY_SWEEP_S = 5.0


@dataclass
class NodeAddresses:
    device_port: int
    admin_port: int
    api_port: int = 0
    #: MQTT over TLS and plain TCP (0: not listening).
    mqtt_port: int = 0
    mqtt_tcp_port: int = 0


class GatewayNode:
    def __init__(self, config: GatewayConfig, *, router: RpcRouter | None = None) -> None:
        self.config = config
        self.node_id = config.server.node_id or f"{socket.gethostname()}-{os.getpid()}"
        register_default_presets()
        self.body_codec = BodyCodec(
            DictionaryStore([load_default_dictionary()]),
            min_saving=config.compression.compress_min_saving,
        )
        self.dev_token_key: Path | None = None
        self.ca_cert: Path | None = None
        self.metrics = GatewayMetrics(native_engine=config.server.engine == "native")
        self.registry = SessionRegistry()
        self.router = router or RpcRouter(RoutingConfig.from_dict(config.rpc))
        authenticator = self._make_authenticator()
        self.compression = CompressionService(
            config.compression,
            state_dir=config.state_dir,
            push=config.push,
            body_codec=self.body_codec,
            default_dictionary_id=DEFAULT_DICTIONARY_ID,
        )
        self.mmtp = MmtpService(
            config,
            authenticator=authenticator,
            registry=self.registry,
            metrics=self.metrics,
            body_codec=self.body_codec,
            upstream=self.call_upstream,
            compression=self.compression,
            is_idempotent=self.is_idempotent,
            start_upstream=self.start_upstream,
        )
        register_push_collector(self.metrics.registry, lambda: self.delivery)
        self.engine = self._make_engine()
        if isinstance(self.engine, NativeEngine):
            register_native_collector(self.metrics, self.engine)
            self.engine.attach_router(self.router)
        else:
            register_wire_collector(self.metrics.registry, self.mmtp.wire, self.body_codec)
        self.mqtt = MqttService(
            config,
            authenticator=MqttAuthenticator(
                authenticator.verifier,
                allow_anonymous=config.mqtt.allow_anonymous,
                allow_client_certificates=bool(config.tls.client_ca),
                zone=config.server.zone,
            ),
            registry=self.registry,
            upstream=self.call_upstream,
        )
        self.mqtt.metrics.register(self.metrics.registry, lambda: self.mqtt.connections)
        self.mqtt_listener: PyMqttListener | None = None
        register_compression_collector(
            self.metrics.registry,
            self.compression,
            self.engine.usage if isinstance(self.engine, NativeEngine) else None,
            self.dictionary_delivery_counts,
        )
        self.draining = False
        self.ready = False
        self.addresses = NodeAddresses(0, 0)
        self.backend: PushBackend | None = None
        self.delivery: NodeDelivery | None = None
        self.push: PushService | None = None
        self._admin: object | None = None
        self._api: object | None = None
        self._stream_api: object | None = None
        self._expiry: asyncio.Task[None] | None = None

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
        verifier = TokenVerifier(
            keys, leeway_s=auth.token_leeway_s, cache_entries=auth.token_cache_entries
        )
        secret = auth.ticket_secret.encode() if auth.ticket_secret else _dev_ticket_secret(state)
        self._ticket_secret = secret
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

    def _tls_files(self, tls: TlsConfig | None = None) -> TlsFiles:
        tls = tls if tls is not None else self.config.tls
        if tls.cert:
            cert, key = Path(tls.cert), Path(tls.key)
        else:
            dev = ensure_dev_certificates(self.config.state_dir / "tls")
            cert, key, self.ca_cert = dev.cert, dev.key, dev.ca_cert
            log.info(
                "using the dev certificate",
                extra=fields(ca=str(dev.ca_cert), cert=str(cert), sha256=dev.fingerprint_sha256),
            )
        if tls.require_client_cert and not tls.client_ca:
            raise ValueError("require_client_cert needs client_ca: the CA that signs device certs")
        return TlsFiles(
            cert,
            key,
            client_ca=Path(tls.client_ca) if tls.client_ca else None,
            require_client_cert=tls.require_client_cert,
        )

    def _make_engine(self) -> PythonEngine | NativeEngine:
        if self.config.server.engine == "python":
            return PythonEngine(self.mmtp)
        try:
            from channel._engine import Engine
        except ImportError as exc:
            raise RuntimeError(
                "the native engine (channel._engine) is not built: reinstall with "
                '`pip install -e .` (needs Rust), or set [server] engine = "python"'
            ) from exc
        return NativeEngine(self.mmtp, Engine)

    async def start(self) -> NodeAddresses:
        tls = self._tls_files()
        # Before the engine is built: it starts with every app's dictionaries and presets.
        await self.compression.load()
        self.compression.listeners.append(self.engine)
        register_certificate_collector(self.metrics.registry, tls.cert)
        await self.router.start()
        await self._start_push()
        if isinstance(self.engine, NativeEngine):
            auth = self.config.auth
            if self.config.tls.early_data_max_bytes > 0:
                assert self.backend is not None
                self.engine.tls_tickets = self.backend.tls_tickets or MemoryTlsTickets(
                    self.config.tls.ticket_store_max_entries
                )
            device_port = await self.engine.start(
                tls,
                tls_ticket_keys(
                    self._ticket_secret, auth.ticket_key_id, auth.ticket_accepted_key_ids
                ),
            )
            self.registry.fanout_engines.append(self.engine)
        else:
            if self.config.tls.early_data_max_bytes > 0:
                log.warning("tls.early_data_max_bytes: TLS early data needs the native engine")
            device_port = await self.engine.start(tls)
        mqtt_port, mqtt_tcp_port = await self._start_mqtt(tls)
        from channel.api.app import api_keyring, start_api
        from channel.gateway.admin import start_admin

        # One keyring ([api] keys) for the push API and the admin port's "admin" scope.
        keyring = api_keyring(self.config.state_dir, self.config.api)
        self._admin, admin_port = await start_admin(self, keyring)
        api_port = 0
        if self.config.api.enabled:
            assert self.push is not None
            self._api, api_port = await start_api(self.push, self.config.api, keyring)
        self.addresses = NodeAddresses(device_port, admin_port, api_port, mqtt_port, mqtt_tcp_port)
        self._expiry = asyncio.get_running_loop().create_task(self._expire_forever())
        self.compression.start()
        self.ready = True
        log.info(
            "gateway listening",
            extra=fields(
                node=self.node_id,
                host=self.config.server.host,
                port=device_port,
                admin_port=admin_port,
                api_port=api_port,
                mqtt_port=mqtt_port,
                mqtt_tcp_port=mqtt_tcp_port,
                engine=self.engine.name,
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
                max_statuses=config.memory_max_statuses,
            )
        self.delivery = NodeDelivery(self.registry, self.backend, self.config, self.node_id)
        self.registry.listener = self.delivery
        await self.delivery.start()
        self.push = PushService(self.registry, self.backend, self.delivery, self.config)
        if self.backend.redis is not None and config.request_stream_enabled:
            from channel.push.stream_api import StreamApi

            stream_api = StreamApi(self.push, self.backend.redis, self.config, self.node_id)
            await stream_api.start()
            self._stream_api = stream_api

    def _mqtt_store(self) -> MqttStore:
        if self.backend is not None and self.backend.name == "redis":
            from channel.mqtt.redis_store import redis_mqtt_store

            return redis_mqtt_store(self.backend, self.config.push)
        return MemoryMqttStore()

    async def _start_mqtt(self, tls: TlsFiles) -> tuple[int, int]:
        """The MQTT front and its listeners on the node's engine: (TLS port, plain TCP
        port), 0 when off."""
        assert self.backend is not None and self.delivery is not None
        await self.mqtt.start(self._mqtt_store(), self.backend, self.delivery)
        mqtt = self.config.mqtt
        host = mqtt.host or self.config.server.host
        engine = self.engine
        if isinstance(engine, NativeEngine):
            engine.mqtt_front = self.mqtt
            self.mqtt.metrics.engine_pushes = engine.held_mqtt_pushes
            self.mqtt.metrics.engine_packets = engine.held_mqtt_packets
            # Boxes come through the same balancers as phones ([server] proxy_protocol).
            proxy = self.config.server.proxy_protocol
            tls_port = (
                engine.listen("mqtt", host, mqtt.port, tls=True, proxy=proxy) if mqtt.enabled else 0
            )
            tcp_port = (
                engine.listen("mqtt", host, mqtt.tcp_port, tls=False, proxy=proxy)
                if mqtt.tcp_port >= 0
                else 0
            )
            return tls_port, tcp_port
        if not mqtt.enabled and mqtt.tcp_port < 0:
            return 0, 0
        listener = self.mqtt_listener = PyMqttListener(self.config, self.engine, self.mqtt)
        context = tls.server_context(alpn=("mqtt",))
        tls_port = await listener.listen(host, mqtt.port, context) if mqtt.enabled else 0
        tcp_port = await listener.listen(host, mqtt.tcp_port, None) if mqtt.tcp_port >= 0 else 0
        return tls_port, tcp_port

    # ---------------------------------------------------- sessions and calls

    @property
    def by_device(self) -> dict[str, Session]:
        """The devices connected here (authenticated sessions, any protocol)."""
        return self.registry.by_device

    @property
    def connection_count(self) -> int:
        """Device connections past their TLS handshake, with or without a session yet
        (MMTP and MQTT)."""
        return self.engine.connection_count + len(self.mqtt.connections)

    def wait_authenticated(self, device_id: str) -> asyncio.Future[Session]:
        """A future done when ``device_id`` has a session on this node."""
        return self.registry.wait_ready(device_id)

    def wait_closed(self, session: Session) -> asyncio.Future[None]:
        """A future done when ``session``'s connection is gone."""
        return self.registry.wait_closed(session)

    async def call_device(
        self,
        device_id: str,
        op: str,
        body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (),
        timeout_s: float = 10.0,
    ) -> RpcResponse:
        """Backend → device RPC for a device connected to this node."""
        return await self.registry.call(device_id, op, body, headers, timeout_s)

    def is_idempotent(self, op: str) -> bool:
        """May ``op`` run twice with the same effect (TLS early data, spec 8.5)?"""
        return op in IDEMPOTENT_OPS or self.router.is_idempotent(op)

    def start_upstream(
        self, request: RpcRequest, on_done: Callable[[RpcResponse], None]
    ) -> Call | None:
        """``call_upstream`` without a task when the router can (its fast path), else None."""
        if request.op in BUILTIN_OPS:
            return None
        return self.router.start_call(request, on_done)

    async def call_upstream(self, request: RpcRequest) -> RpcResponse:
        builtin = builtin_response(request, self.delivery)
        if builtin is not None:
            return builtin
        return await self.router.handle(request)

    async def _expire_forever(self) -> None:
        """Sessions whose credential expired get GOAWAY AUTH_EXPIRED (any protocol)."""
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_S)
            try:
                self.expire_credentials(time.time())
            except Exception:
                log.exception("credential expiry sweep failed")

    def expire_credentials(self, wall: float) -> None:
        for session in list(self.registry.by_device.values()):
            expires_at = session.expires_at
            if expires_at and wall > expires_at and not session.draining:
                session.goaway(ErrorCode.AUTH_EXPIRED, 0, "credential expired; reconnect")

    # ---------------------------------------------------------------- drain

    def reload(self, config: GatewayConfig) -> dict[str, object]:
        """Re-read the ``[rpc]`` routes and the ``[tls]`` files (``POST /admin/reload``,
        SIGHUP) without dropping a device: new connections get the new certificate, open
        ones keep theirs, calls in flight finish on the routes they started on.
        Everything is checked before anything changes: a bad route or a certificate,
        key or CA that does not load raises (``ValueError``, its message naming the
        field or file) and the node keeps what it had. Returns what is in force.
        """
        routing = RoutingConfig.from_dict(config.rpc)
        tls = self._tls_files(config.tls)
        self.engine.reload_tls(tls)
        self.router.reload(routing)
        self.config.rpc = config.rpc
        self.config.tls = config.tls
        summary = tls.summary()
        log.info("reloaded", extra=fields(source=config.source, **summary))
        return {"tls": summary, "routes": self.router.describe()}

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop accepting, tell every device to reconnect later, finish calls, close."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        timeout_s = self.config.server.drain_timeout_s if timeout_s is None else timeout_s
        if self.mqtt_listener is not None:
            self.mqtt_listener.stop_accepting()
        await self.mqtt.drain()
        await self.engine.drain(timeout_s)
        log.info("drained", extra=fields(node=self.node_id))

    async def close(self) -> None:
        await self.drain(0 if not self.engine.connection_count else None)
        if self._expiry is not None:
            self._expiry.cancel()
        await self.compression.close()
        await self.engine.close()
        if self.mqtt_listener is not None:
            await self.mqtt_listener.close()
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

    def dictionary_delivery_counts(self) -> dict[str, int]:
        """DICT deliveries started, done and skipped, chunks and bytes (either engine)."""
        if isinstance(self.engine, NativeEngine):
            stats = self.engine.stats()
            return {
                "started": stats.get("dict_deliveries", 0),
                "done": stats.get("dict_deliveries_done", 0),
                "skipped": stats.get("dict_deliveries_skipped", 0),
                "chunks": stats.get("dict_chunks", 0),
                "bytes": stats.get("dict_bytes", 0),
            }
        pacer = self.engine.dictionaries
        return {
            "started": pacer.started,
            "done": pacer.done,
            "skipped": pacer.skipped,
            "chunks": pacer.chunks,
            "bytes": pacer.bytes_sent,
        }

    def compression_view(self) -> dict[str, object]:
        """``/admin/compression``: per app, its dictionaries and what they do."""
        usage = self.engine.usage if isinstance(self.engine, NativeEngine) else None
        view = self.compression.describe(usage)
        view["deliveries"] = self.dictionary_delivery_counts()
        return view

    def frames_received(self, frame_type: FrameType) -> int:
        """MMTP frames of this type devices sent this node (either engine)."""
        if isinstance(self.engine, NativeEngine):
            frames: dict[str, int] = self.engine.stats().get("frames_in", {})
            return frames.get(frame_type.name, 0)
        return self.mmtp.wire.frames.received[frame_type]

    # ------------------------------------------------------------ announcing

    def listening_info(self) -> dict[str, object]:
        """What the ``listening`` JSON line says: every listener's real port."""
        return {
            "event": "listening",
            "node": self.node_id,
            "host": self.config.server.host,
            "port": self.addresses.device_port,
            "admin_port": self.addresses.admin_port,
            "api_port": self.addresses.api_port,
            "mqtt_port": self.addresses.mqtt_port,
            "mqtt_tcp_port": self.addresses.mqtt_tcp_port,
            "engine": self.engine.name,
            "ca_cert": str(self.ca_cert) if self.ca_cert else None,
            "dev_token_key": str(self.dev_token_key) if self.dev_token_key else None,
            "pid": os.getpid(),
        }


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
