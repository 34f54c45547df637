"""The Python engine: uvloop, TLS in Python's ``ssl``, ``channel.wire`` per connection.

The reference engine, and the fallback where the native one is not built. It
owns the device listener, counts connections from TCP accept (both TLS
engines close an over-limit connection before any TLS work), enforces the
per-connection deadlines with one sweep (handshake, heartbeat, slow consumer)
and drains. Fan-out goes through the node's ring, one session at a time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from typing import TYPE_CHECKING

from channel import fastopen
from channel.engine.dictpacer import DictionaryPacer
from channel.engine.heaptrim import HeapTrimmer
from channel.engine.proxyproto import ProxyPolicy
from channel.engine.pysession import PyMmtpSession
from channel.engine.tlsproto import tls_server_factory
from channel.engine.uvtls import gated_tls_factory
from channel.logs import fields
from channel.security.tls import (
    ServerContextRef,
    TlsFiles,
    TlsReloadError,
    peer_certificate_identity,
)
from channel.sessions import jittered
from channel.wire import Dictionary, ErrorCode
from channel.wire.presets import Preset

if TYPE_CHECKING:
    from channel.mmtp.service import MmtpService

log = logging.getLogger("channel.engine")

#: How often the sweep checks deadlines; handshake and idle timeouts are this precise.
SWEEP_INTERVAL_S = 0.5


class PythonEngine:
    """See the module docstring."""

    name = "python"

    def __init__(self, service: MmtpService) -> None:
        self.service = service
        self.config = service.config
        self.metrics = service.metrics
        metrics = service.metrics
        assert metrics.refused_connections is not None
        assert metrics.idle_closed is not None and metrics.slow_consumers is not None
        self._refused = metrics.refused_connections
        self._idle_closed = metrics.idle_closed
        self._slow_consumers = metrics.slow_consumers
        #: Connections whose TLS handshake completed (with or without a session yet).
        self.sessions: set[PyMmtpSession] = set()
        self._unauthenticated: set[PyMmtpSession] = set()
        self._per_ip: Counter[str] = Counter()
        self._tcp_connections = 0
        #: Devices arrive through load balancers sending a PROXY header (AcceptGate.proxy).
        server = self.config.server
        self.proxy = (
            ProxyPolicy(server.proxy_trusted, server.proxy_max_header_bytes)
            if server.proxy_protocol
            else None
        )
        self.heap_trimmer = HeapTrimmer(self.config.server.malloc_trim_after_handshakes)
        self._server: asyncio.AbstractServer | None = None
        #: The kernel takes fast-open SYNs on our listener (else no socket is asked).
        self._fast_open_listening = False
        self._sweeper: asyncio.Task[None] | None = None
        self._client_certificates = bool(self.config.tls.client_ca)
        #: The context new connections get (``reload_tls`` swaps it).
        self._contexts = ServerContextRef(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        self.draining = False
        self._all_gone: asyncio.Event | None = None
        self.dictionaries = DictionaryPacer(self.config.compression)

    # ---------------------------------------------------------------- start

    async def start(self, tls: TlsFiles) -> int:
        """Listen for devices; returns the port."""
        ssl_context = self._contexts
        ssl_context.context = tls.server_context()
        loop = asyncio.get_running_loop()
        server = self.config.server
        reuse_port = server.reuse_port or server.workers > 1 or None

        def session() -> PyMmtpSession:
            return PyMmtpSession(self)

        if server.tls_engine == "memorybio":
            # TLS over plain TCP with ssl.MemoryBIO (engine/tlsproto.py): less memory.
            factory = tls_server_factory(ssl_context, session, server.handshake_timeout_s, self)
        else:
            # uvloop's TLS transport, started once the connection is counted (uvtls.py).
            factory = gated_tls_factory(ssl_context, session, server.handshake_timeout_s, self)
        self._server = await loop.create_server(
            factory, host=server.host, port=server.port, reuse_port=reuse_port, backlog=4096
        )
        self._enable_fastopen()
        self._sweeper = loop.create_task(self._sweep_forever())
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _enable_fastopen(self) -> None:
        """TCP Fast Open on the device listener: a returning device's ClientHello rides
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

    def reload_tls(self, tls: TlsFiles) -> None:
        """New certificate (and client CA) for new connections; open ones keep theirs.
        Files that do not load raise ``TlsReloadError`` and change nothing.

        OpenSSL makes new session ticket keys with the new context: a device holding a
        ticket from before does one full handshake.
        """
        try:
            context = tls.server_context()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise TlsReloadError(f"tls: cannot load {tls.cert} / {tls.key}: {exc}") from exc
        self._contexts.context = context
        self._client_certificates = tls.client_ca is not None

    # ------------------------------------------------------------ admission

    def admit_connection(self, peer_ip: str) -> bool:
        """Count a connection TCP just accepted, before any TLS work; False: cut it now.

        Over ``max_connections`` or ``max_connections_per_ip`` the connection is
        closed without a word (no TLS, so no MMTP ERROR can be sent): a client sees
        the connection reset and backs off as after any network failure. Behind a
        balancer (``proxy_protocol``) ``peer_ip`` is "" here and the device's address
        is counted once its PROXY header is read (``admit_address``).
        """
        if self._tcp_connections >= self.config.server.max_connections:
            self._refused.labels(ErrorCode.UNAVAILABLE.name).inc()
            return False
        if peer_ip and not self._admit_ip(peer_ip):
            return False
        self._tcp_connections += 1
        self.metrics.connections.set(self._tcp_connections)
        return True

    def admit_address(self, peer_ip: str) -> bool:
        return self._admit_ip(peer_ip)

    def _admit_ip(self, peer_ip: str) -> bool:
        if self._per_ip[peer_ip] >= self.config.server.max_connections_per_ip:
            self._refused.labels(ErrorCode.RATE_LIMITED.name).inc()
            return False
        self._per_ip[peer_ip] += 1
        return True

    def refuse(self, reason: str) -> None:
        self._refused.labels(reason).inc()

    def release_connection(self, peer_ip: str) -> None:
        self._tcp_connections -= 1
        if peer_ip:
            left = self._per_ip[peer_ip] - 1
            if left > 0:
                self._per_ip[peer_ip] = left
            else:
                del self._per_ip[peer_ip]
        self.metrics.connections.set(self._tcp_connections)

    def connections_from(self, peer_ip: str) -> int:
        """Connections counted under ``peer_ip`` now (a device's, behind a balancer)."""
        return self._per_ip.get(peer_ip, 0)

    def admit(self, session: PyMmtpSession) -> tuple[ErrorCode, str] | None:
        """Register a connection whose TLS handshake completed, or say why it is refused.

        (It was counted against the connection limits when TCP accepted it.)
        """
        if self.draining:
            self._refused.labels(ErrorCode.SHUTTING_DOWN.name).inc()
            return (ErrorCode.SHUTTING_DOWN, "node is draining; reconnect elsewhere")
        self.sessions.add(session)
        self._unauthenticated.add(session)
        return None

    def authenticated(self, session: PyMmtpSession) -> None:
        """The device's HELLO was accepted: it is a session of the node now."""
        self._unauthenticated.discard(session)
        self.heap_trimmer.handshake()
        self.service.authenticated(
            session.resumed, self._fast_open_listening and session.tcp_fast_open
        )
        self.service.registry.add(session)

    # ------------------------------------------------------- dictionaries

    def deliver_dictionary(self, session: PyMmtpSession, dictionary: Dictionary) -> None:
        """Deliver ``dictionary`` to a device, paced (``dictpacer.py``)."""
        if self.dictionaries.deliver(session, dictionary) and session.auth is not None:
            self.service.compression.delivering(session.auth.device.app_id, dictionary.dict_id, 1)

    def dictionary_published(self, app_id: str, dictionary: Dictionary) -> None:
        """A new current dictionary of ``app_id``: to its connected devices, no reconnect."""
        # The node's codec already holds it (one codec per process).
        for session in list(self.sessions):
            auth = session.auth
            if auth is not None and auth.device.app_id == app_id and not session.closed:
                self.deliver_dictionary(session, dictionary)

    def preset_published(self, preset: Preset) -> None:
        """Nothing to do: presets are registered once per process (``register_preset``)."""

    def forget(self, session: PyMmtpSession) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self._unauthenticated.discard(session)
        if session.auth is not None:
            self.service.registry.remove(session)
        if not self.sessions and self._all_gone is not None:
            self._all_gone.set()

    def client_certificate_cn(self, transport: asyncio.BaseTransport | None) -> str | None:
        if transport is None or not self._client_certificates:
            return None
        return peer_certificate_identity(transport.get_extra_info("ssl_object"))

    # ---------------------------------------------------------------- sweep

    async def _sweep_forever(self) -> None:
        # Handshake deadlines are checked every SWEEP_INTERVAL_S over the (few)
        # connections still without a session; the full pass over every session
        # (idle, slow consumers) runs only as often as its deadlines need: at
        # 100,000 devices a twice-a-second full pass cost a quarter of a core.
        hb = self.config.heartbeat
        full_every_s = min(5.0, max(SWEEP_INTERVAL_S, hb.min_s / 4))
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = time.monotonic()
            try:
                if now - last_full >= full_every_s:
                    last_full = now
                    self.sweep(now)
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

    def sweep(self, now: float) -> None:
        """Enforce per-connection deadlines (one pass over the connections)."""
        self.sweep_handshakes(now)
        service = self.service
        high_water = self.config.limits.send_buffer_high_water_bytes
        grace_s = self.config.limits.slow_consumer_grace_s
        interval_s = self.config.heartbeat.interval_s
        for session in list(self.sessions):
            if session.auth is None:
                continue
            hello_ack = session.conn.hello_ack
            idle_limit = service.idle_limit_s(hello_ack.heartbeat_s if hello_ack else interval_s)
            if now - session.last_seen > idle_limit:
                self._idle_closed.inc()
                session.end(ErrorCode.IDLE_TIMEOUT, f"no frame for {idle_limit:.0f} s")
            elif session.paused_since and (
                now - session.paused_since > grace_s or session.write_buffer_size > 4 * high_water
            ):
                self._slow_consumers.inc()
                log.info("slow consumer", extra=fields(device=session.device_id))
                # Its buffer is full: an ERROR frame would never reach it. Just cut.
                session.abort()

    # ---------------------------------------------------------------- drain

    @property
    def connection_count(self) -> int:
        return len(self.sessions)

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, tell every device to reconnect later, finish calls, close."""
        self.draining = True
        self.stop_accepting()
        base = self.config.server.reconnect_after_ms
        for session in list(self.sessions):
            session.goaway(ErrorCode.SHUTTING_DOWN, jittered(base), "node restarting")
        self._all_gone = asyncio.Event()
        if self.sessions:
            try:
                await asyncio.wait_for(self._all_gone.wait(), timeout_s)
            except TimeoutError:
                log.warning("drain timed out", extra=fields(left=len(self.sessions)))
        for session in list(self.sessions):
            session.abort()

    async def close(self) -> None:
        await self.dictionaries.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
