"""The ``uvloop`` TLS engine: the event loop's own TLS transport, behind an accept gate.

``create_server(ssl=...)`` starts TLS on every accepted socket before any
code of ours sees it, so connections could only be counted (and refused)
after their handshake. Here the server accepts plain TCP; ``GatedTlsAcceptor``
counts the connection at accept, cuts it at once when it is over a limit, and
only then upgrades it with ``loop.start_tls`` (the same TLS transport
``ssl=`` would have made, with the same handshake timeout). The acceptor then
stands between that transport and the inner protocol, forwarding, so it
hears the connection end and releases its count.

One race needs care: uvloop starts reading a socket right after
``connection_made`` returns (pausing there does nothing), and ``start_tls``
runs a loop turn later, so the ClientHello may reach the acceptor as plain
TCP data first. Those bytes are kept and handed to the TLS protocol right
after ``start_tls`` has installed it (a callback queued behind the task's
first step, which does that synchronously and pauses reading), through the
buffered-protocol interface both uvloop's and asyncio's TLS protocols have:
bytes fed before its ``connection_made`` wait in its incoming BIO for the
handshake, so the order of those two does not matter either.

The default engine (``tlsproto``) needs none of this: it is its own TLS layer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, cast

from channel.engine.tlsproto import AcceptGate, ProxiedPeer, peer_ip_of
from channel.security.tls import ServerContextRef, context_ref

log = logging.getLogger("channel.tls")


class GatedTlsAcceptor(asyncio.Protocol):
    """One TCP connection: counted, upgraded to TLS, then a pass-through to ``inner``."""

    __slots__ = (
        "_ciphertext",
        "_connected",
        "_early",
        "_gate",
        "_handshake",
        "_inner",
        "_lost",
        "_peer_ip",
        "_proxied",
        "_settings",
        "_switched",
        "_tcp",
    )

    def __init__(self, settings: _Listener, inner: asyncio.Protocol) -> None:
        self._settings = settings
        self._gate = settings.gate
        self._inner = inner
        self._peer_ip: str | None = None
        # Behind a balancer: its PROXY header's reader, then the device's address; TLS
        # starts once the header is read.
        self._proxied: ProxiedPeer | None = None
        self._tcp: asyncio.Transport | None = None  # only while the header is read
        self._connected = False
        self._lost = False
        # False while we are still the TCP protocol: data then is ciphertext (the
        # ClientHello, read before start_tls took over), kept in _ciphertext.
        self._switched = False
        self._ciphertext: list[bytes] | None = None
        # Plaintext that arrived between the handshake's end and our connection_made.
        self._early: list[bytes] | None = None
        # The start_tls task, held while it runs (the loop keeps only a weak reference).
        self._handshake: asyncio.Task[None] | None = None

    # --------------------------------------------------- as the TCP protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        peer_ip = peer_ip_of(tcp)
        gate = self._gate
        if gate.proxy is not None:
            if not ProxiedPeer.accept(gate, peer_ip):
                self._lost = True
                tcp.abort()
                return
            self._peer_ip = ""
            self._proxied = ProxiedPeer(gate.proxy, tcp.get_extra_info("peername"))
            self._tcp = tcp
            return  # TLS starts once the PROXY header is read (_read_proxy_header)
        if not gate.admit_connection(peer_ip):
            self._lost = True
            tcp.abort()
            return
        self._peer_ip = peer_ip
        self._upgrade_soon(tcp)

    def _upgrade_soon(self, tcp: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        self._handshake = loop.create_task(self._start_tls(tcp))
        loop.call_soon(self._hand_over_ciphertext, tcp)

    def _hand_over_ciphertext(self, tcp: asyncio.Transport) -> None:
        """Runs right after start_tls installed the TLS protocol (and paused reading)."""
        self._switched = True
        ciphertext, self._ciphertext = self._ciphertext, None
        tls_protocol = tcp.get_protocol()
        if not ciphertext or tls_protocol is self or self._lost:
            return
        data = b"".join(ciphertext)
        # uvloop's TLS protocol is a buffered protocol without subclassing one.
        protocol: Any = tls_protocol
        if not hasattr(protocol, "buffer_updated"):
            protocol.data_received(data)
            return
        view = memoryview(data)
        while view:
            buffer = protocol.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            protocol.buffer_updated(size)
            view = view[size:]

    async def _start_tls(self, tcp: asyncio.Transport) -> None:
        try:
            await self._upgrade(tcp)
        finally:
            self._handshake = None

    async def _upgrade(self, tcp: asyncio.Transport) -> None:
        settings = self._settings
        try:
            tls = await asyncio.get_running_loop().start_tls(
                tcp,
                self,
                settings.context,
                server_side=True,
                ssl_handshake_timeout=settings.handshake_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, RuntimeError) as exc:
            # A failed, refused or unfinished handshake: nobody inside hears of it.
            log.debug("TLS handshake failed: %s", exc)
            tcp.abort()
            self._release()
            return
        if self._lost or tls is None:
            return
        self._connected = True
        self._inner.connection_made(cast(asyncio.BaseTransport, tls))
        early, self._early = self._early, None
        for data in early or ():
            if self._connected:
                self._inner.data_received(data)

    def _release(self) -> None:
        if self._peer_ip is not None:
            peer_ip, self._peer_ip = self._peer_ip, None
            self._gate.release_connection(peer_ip)

    # ------------------------------------ as the TLS transport's app protocol

    def _read_proxy_header(self, proxied: ProxiedPeer, data: bytes) -> None:
        """Before TLS: the balancer's PROXY header, then TLS over what follows it."""
        tcp = self._tcp
        assert tcp is not None
        rest = proxied.read(self._gate, data)
        if rest is None:
            self._lost = True
            tcp.abort()
            return
        if proxied.address is None:
            return
        self._peer_ip = proxied.address[0]
        self._tcp = None
        self._ciphertext = [rest] if rest else None
        self._upgrade_soon(tcp)

    def data_received(self, data: bytes) -> None:
        if self._connected:
            self._inner.data_received(data)
        elif self._proxied is not None and self._proxied.address is None:
            if not self._lost:
                self._read_proxy_header(self._proxied, data)
        elif not self._switched:
            # Still the TCP protocol: the start of the TLS handshake, kept for it. At
            # most one read's worth: start_tls pauses reading in the next loop turn.
            if self._ciphertext is None:
                self._ciphertext = [data]
            else:
                self._ciphertext.append(data)
        elif not self._lost:
            # The handshake just ended; start_tls has not returned to us yet.
            if self._early is None:
                self._early = [data]
            else:
                self._early.append(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._connected else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._early = None
        self._tcp = None
        self._release()
        if self._connected:
            self._connected = False
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._connected:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._connected:
            self._inner.resume_writing()


class _Listener:
    """What every acceptor of one listener shares."""

    __slots__ = ("contexts", "gate", "handshake_timeout_s")

    def __init__(self, contexts: ServerContextRef, gate: AcceptGate, timeout_s: float) -> None:
        self.contexts = contexts
        self.gate = gate
        self.handshake_timeout_s = timeout_s

    @property
    def context(self) -> ssl.SSLContext:
        return self.contexts.context


def gated_tls_factory(
    context: ssl.SSLContext | ServerContextRef,
    inner_factory: Any,
    handshake_timeout_s: float,
    gate: AcceptGate,
) -> Any:
    """A ``create_server`` protocol factory (plain TCP) for the ``uvloop`` TLS engine."""
    settings = _Listener(context_ref(context), gate, handshake_timeout_s)

    def factory() -> GatedTlsAcceptor:
        return GatedTlsAcceptor(settings, inner_factory())

    return factory
