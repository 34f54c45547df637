"""The Python engine's MQTT listeners: MQTT over TLS 1.3 and, if asked, plain TCP.

Each accepted connection gets a ``PyMqttConnection``, which is the
``MqttTransport`` the MQTT front writes through and which hands it the byte
stream (``data_received``). TLS is the Python engine's own
(``channel.engine.tlsproto``: ``ssl.MemoryBIO`` over plain TCP, a shared BIO
pair per listener) with its own ALPN rule: MQTT clients offer no ALPN or
``mqtt`` (anything else is refused in the handshake).

Connections are counted against ``[server] max_connections`` and
``max_connections_per_ip`` when TCP accepts them, before any TLS work, through
the same gate as the MMTP listener. Behind balancers (``[server]
proxy_protocol``) both listeners read the PROXY header first, as the MMTP
listener does: only ``proxy_trusted`` peers may connect, and the box's address
from the header is the one counted, logged and given to the front. One sweep
enforces the deadlines: a CONNECT within ``[server] handshake_timeout_s`` of
TCP accept (until the front calls ``set_idle``), then keepalive x 1.5 of
silence, and slow consumers (``[limits] send_buffer_high_water_bytes`` / ``slow_consumer_grace_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import TYPE_CHECKING, cast

from channel.engine.tlsproto import AcceptGate, ProxiedPeer, peer_ip_of, tls_server_factory
from channel.mqtt.transport import MqttFront, MqttHandler
from channel.security.tls import peer_certificate_identity

if TYPE_CHECKING:
    from channel.config import GatewayConfig

log = logging.getLogger("channel.engine.mqtt")

#: How often deadlines are checked (their precision).
SWEEP_INTERVAL_S = 0.5
#: A closed plain TCP connection waits this long for the peer's FIN after ours, reading
#: and dropping what still comes (the packets the box sent before it saw our
#: DISCONNECT): closing at once would answer them with a reset, and the box would lose
#: the DISCONNECT it had not read yet.
CLOSE_LINGER_S = 2.0
MQTT_ALPN = b"mqtt"


def mqtt_alpn(offered: tuple[bytes, ...] | None) -> bool:
    """MQTT clients offer no ALPN, or ``mqtt`` among others."""
    return not offered or MQTT_ALPN in offered


class PyMqttConnection(asyncio.Protocol):
    """One MQTT connection on the Python engine: the transport of its MQTT handler."""

    __slots__ = (
        "_closing",
        "_counted_ip",
        "_handler",
        "_linger",
        "_listener",
        "_paused_since",
        "_proxied",
        "_tls",
        "_transport",
        "cert_cn",
        "idle_s",
        "ip",
        "last_seen",
        "opened_at",
    )

    def __init__(self, listener: PyMqttListener, tls: bool) -> None:
        self._listener = listener
        self._tls = tls
        self._transport: asyncio.Transport | None = None
        self._handler: MqttHandler | None = None
        self._counted_ip: str | None = None
        # Plain TCP behind a balancer: its PROXY header's reader until the header is read.
        self._proxied: ProxiedPeer | None = None
        self._paused_since = 0.0
        self._closing = False
        self._linger: asyncio.TimerHandle | None = None
        self.ip = ""
        self.cert_cn: str | None = None
        #: Silence allowed (None: the CONNECT deadline still applies; 0: none).
        self.idle_s: float | None = None
        self.opened_at = self.last_seen = time.monotonic()

    # ------------------------------------------------------------ asyncio side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        listener = self._listener
        # Over TLS behind a balancer this is the box's address (the TLS layer read the
        # PROXY header before the handshake); over plain TCP it is known from ours.
        self.ip = peer_ip_of(transport)
        if not self._tls:  # TLS connections were counted by the TLS layer
            if not self._admit(listener.gate, transport):
                self._transport.abort()
                self._transport = None
                return
        elif listener.client_certificates:
            sslobj = transport.get_extra_info("ssl_object")
            self.cert_cn = peer_certificate_identity(sslobj) if sslobj is not None else None
        high = listener.config.limits.send_buffer_high_water_bytes
        self._transport.set_write_buffer_limits(high=high, low=high // 4)
        listener.connections.add(self)
        if self._proxied is None:
            self._handler = listener.front.opened(self)

    def _admit(self, gate: AcceptGate, transport: asyncio.BaseTransport) -> bool:
        """Plain TCP: count the connection (behind a balancer, in the total only until
        its PROXY header names the box); False: refused."""
        if gate.proxy is None:
            admitted = gate.admit_connection(self.ip)
        else:
            admitted = ProxiedPeer.accept(gate, self.ip)
            if admitted:
                self._proxied = ProxiedPeer(gate.proxy, transport.get_extra_info("peername"))
                self.ip = ""
        if admitted:
            self._counted_ip = self.ip
        return admitted

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self._closing:
            return
        if self._proxied is not None:
            data = self._read_proxy_header(self._proxied, data)
            if not data:
                return
        if self._handler is not None:
            self._handler.data_received(data)

    def _read_proxy_header(self, proxied: ProxiedPeer, data: bytes) -> bytes:
        """The bytes after the balancer's PROXY header (b"" until it is whole); once it
        is, the box's address is counted and the MQTT front hears of the connection."""
        rest = proxied.read(self._listener.gate, data)
        if rest is None:
            self.abort()
            return b""
        if proxied.address is None:
            return b""
        self._proxied = None
        self.ip = self._counted_ip = proxied.address[0]
        if self._transport is not None:
            self._handler = self._listener.front.opened(self)
        return rest

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.connections.discard(self)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._counted_ip is not None:
            ip, self._counted_ip = self._counted_ip, None
            self._listener.gate.release_connection(ip)
        self._transport = None
        handler, self._handler = self._handler, None
        if handler is not None:
            handler.connection_lost()

    def pause_writing(self) -> None:
        self._paused_since = time.monotonic()

    def resume_writing(self) -> None:
        self._paused_since = 0.0

    # ---------------------------------------------------- MqttTransport side

    @property
    def peer_ip(self) -> str:
        return self.ip

    @property
    def client_cert_cn(self) -> str | None:
        return self.cert_cn

    @property
    def tls(self) -> bool:
        return self._tls

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        self._closing = True
        if not self._tls and transport.can_write_eof():
            transport.write_eof()  # our FIN after what was written; theirs ends it
            self._linger = asyncio.get_running_loop().call_later(CLOSE_LINGER_S, transport.close)
        else:
            transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def set_idle(self, timeout_ms: int) -> None:
        self.idle_s = timeout_ms / 1000

    def push_holder(self) -> None:
        """Pushes stay with the connection (``channel.mqtt.flow``): the reference."""
        return None

    # ---------------------------------------------------------------- sweep

    def overdue(self, now: float, handshake_s: float, grace_s: float) -> str | None:
        """Why this connection must be cut now, or None."""
        if self.idle_s is None:
            return "no CONNECT in time" if now - self.opened_at > handshake_s else None
        if self.idle_s and now - self.last_seen > self.idle_s:
            return "keepalive expired"
        if self._paused_since and now - self._paused_since > grace_s:
            return "slow consumer"
        return None


class PyMqttListener:
    """The MQTT listeners of one node on the Python engine, and their sweep."""

    def __init__(self, config: GatewayConfig, gate: AcceptGate, front: MqttFront) -> None:
        self.config = config
        self.gate = gate
        self.front = front
        self.client_certificates = bool(config.tls.client_ca)
        self.connections: set[PyMqttConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.Task[None] | None = None
        #: Connections cut by the sweep, by reason.
        self.cut: dict[str, int] = {}

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Listen on ``port`` (0: any free one), TLS with ``ssl_context``, else plain."""
        loop = asyncio.get_running_loop()
        server_cfg = self.config.server
        reuse_port = server_cfg.reuse_port or server_cfg.workers > 1 or None
        if ssl_context is not None:
            factory = tls_server_factory(
                ssl_context,
                lambda: PyMqttConnection(self, tls=True),
                server_cfg.handshake_timeout_s,
                self.gate,
                alpn_ok=mqtt_alpn,
            )
        else:

            def factory() -> PyMqttConnection:
                return PyMqttConnection(self, tls=False)

        server = await loop.create_server(
            factory, host=host, port=port, reuse_port=reuse_port, backlog=4096
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_forever())
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self.sweep(time.monotonic())
            except Exception:
                log.exception("mqtt sweep failed")

    def sweep(self, now: float) -> None:
        handshake_s = self.config.server.handshake_timeout_s
        grace_s = self.config.limits.slow_consumer_grace_s
        for conn in list(self.connections):
            reason = conn.overdue(now, handshake_s, grace_s)
            if reason is not None:
                self.cut[reason] = self.cut.get(reason, 0) + 1
                conn.abort()

    def stop_accepting(self) -> None:
        for server in self._servers:
            server.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers = []
        for conn in list(self.connections):
            conn.abort()
