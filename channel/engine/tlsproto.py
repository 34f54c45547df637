"""TLS over a plain TCP transport with ``ssl.MemoryBIO``: the lean TLS engine.

uvloop's built-in TLS transport costs ~23.5 KiB per idle connection (and
grows to ~31 KiB after reconnect churn); doing TLS ourselves over a plain
uvloop TCP transport with ``SSLContext.wrap_bio`` costs ~14 KiB and stays
flat. ``TlsServerProtocol`` is the TCP-side protocol; to the inner protocol
(``DeviceSession``) it is the transport, with the subset of
``asyncio.Transport`` the gateway uses plus ``get_extra_info("ssl_object")``.

Per connection it keeps one ``SSLObject`` and a handful of slots: no read
buffer (``SSLObject.read`` allocates the plaintext it returns), no write
queue (ciphertext goes straight to the TCP transport, whose buffer and flow
control the inner protocol sees through ``get_write_buffer_size`` and
``pause_writing``/``resume_writing``), and no memory BIOs of its own.

**One pair of memory BIOs per listener, shared by all its connections.** An
OpenSSL memory BIO keeps the largest buffer it ever held (the ClientHello on
one side, the server's first flight on the other): two private BIOs cost
~2.2 KiB per connection for ever. Sharing is sound because every use of a
connection's ``SSLObject`` leaves both BIOs empty before any other
connection's code runs:

* incoming bytes are written, and the records in them are all decrypted
  (``SSLObject.read`` until it wants more; OpenSSL keeps a partial record in
  its own per-connection buffer, so the BIO is then empty) *before* the
  inner protocol sees any plaintext; whatever OpenSSL refused (bytes after a
  bad record or a close_notify) is dropped, not left for the next connection;
* every operation that can produce ciphertext (handshake, read, write,
  ``unwrap``) is followed by a flush that empties the outgoing BIO into this
  connection's TCP transport (or drops it when that is gone).

Callbacks into the inner protocol therefore always find both BIOs empty,
whatever they do to other connections (a replaced session is closed from
inside its successor's HELLO). Plaintext the inner protocol is not ready for
(it paused reading) waits in a list that exists only then.

The handshake timeout is a timer that exists only while the handshake runs;
a client that fails the handshake or never finishes it is closed without the
inner protocol ever hearing of it.

**ALPN is checked on the ClientHello.** OpenSSL (through Python's ``ssl``)
lets a client that offers no ``mmtp/1`` complete the handshake without ALPN;
MMTP requires the handshake to fail. The bytes of the ClientHello are read
here first (``channel.security.clienthello``, bounded at 16 KiB): a client
that does not offer ``mmtp/1`` gets a ``no_application_protocol`` alert and
the connection ends before OpenSSL sees a byte; one whose first bytes are not
a ClientHello this reader understands gets ``decode_error``. Until the
ClientHello is whole its bytes wait in a buffer of this connection (they
cannot wait in the shared BIO).

**Counted at TCP accept.** With an ``AcceptGate`` (the node), a connection is
counted against the per-address and total limits the moment TCP accepts it,
before any TLS work, and released when TCP closes; one over a limit is cut at
once, with no TLS object ever made for it. Counting only once TLS completed
let 150 idle connections from one address be held for a handshake timeout
each, whatever ``max_connections_per_ip`` said.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
from collections.abc import Callable
from typing import Any, Protocol, cast

from channel.engine.proxyproto import ProxyHeaderError, ProxyHeaderReader, ProxyPolicy
from channel.security.clienthello import (
    ALERT_DECODE_ERROR,
    ALERT_NO_APPLICATION_PROTOCOL,
    MAX_CLIENT_HELLO_BYTES,
    MalformedClientHello,
    fatal_alert,
    read_client_hello,
)
from channel.security.tls import ServerContextRef, context_ref
from channel.wire.hello import ALPN_PROTOCOL

log = logging.getLogger("channel.tls")

_HANDSHAKE = 0
_OPEN = 1
_CLOSING = 2
_CLOSED = 3

#: Largest plaintext taken out of the SSL object per read: a TLS record's (2**14 bytes).
#: ``SSLObject.read(n)`` allocates n bytes before shrinking them to what it read.
READ_SIZE = 16384

#: The ALPN protocol id a ClientHello must offer (RFC 7301), as it is on the wire.
ALPN_BYTES = ALPN_PROTOCOL.encode()
#: Most bytes kept while the ClientHello is incomplete: its largest size and room for
#: the headers of the records it is split into.
MAX_HELLO_BUFFER_BYTES = 2 * MAX_CLIENT_HELLO_BYTES

#: Judges the ALPN protocols a ClientHello offers (None: it offers none); False refuses it.
AlpnRule = Callable[[tuple[bytes, ...] | None], bool]


def mmtp_alpn(offered: tuple[bytes, ...] | None) -> bool:
    """MMTP: the client must offer ``mmtp/1`` (spec 3.2)."""
    return ALPN_BYTES in (offered or ())


#: ``channel_refused_connections_total`` reasons of the PROXY protocol: a peer that is
#: not a configured balancer, a header that is missing or malformed.
REFUSED_PROXY_UNTRUSTED = "PROXY_UNTRUSTED"
REFUSED_PROXY_INVALID = "PROXY_INVALID"

#: What to do once the plaintext before it has been delivered.
_END_CLOSE = 1  # close_notify (or EOF) from the peer: answer with ours and close
_END_ABORT = 2  # a bad record: cut the connection


class AcceptGate(Protocol):
    """Counts connections from TCP accept to TCP close (the node's limits)."""

    #: Set when devices arrive through load balancers that send a PROXY protocol
    #: header first (``[server] proxy_protocol``): only they may connect.
    proxy: ProxyPolicy | None

    def admit_connection(self, peer_ip: str) -> bool:
        """Count a just-accepted connection in the total and under ``peer_ip`` ("": in
        the total only, its device's address is not known yet); False: refused, cut it."""

    def admit_address(self, peer_ip: str) -> bool:
        """Count a connection admitted with "" under its device's address, now known
        from its PROXY header; False: over the per-address limit, cut it."""

    def refuse(self, reason: str) -> None:
        """Count a connection cut for ``reason`` (a PROXY header refused)."""

    def release_connection(self, peer_ip: str) -> None:
        """The connection ``admit_connection`` counted (under ``peer_ip``) is gone."""


class ProxiedPeer:
    """A connection from a balancer until its PROXY header is read, then the device's
    address it named. Both Python TLS engines use it before any TLS work."""

    __slots__ = ("_balancer", "_reader", "address")

    def __init__(self, policy: ProxyPolicy, balancer: Any) -> None:
        self._reader: ProxyHeaderReader | None = policy.reader()
        self._balancer = balancer
        #: (ip, port) of the device once the header is read; the balancer's for a header
        #: that names no address (v2 LOCAL: the balancer's own health check).
        self.address: tuple[str, int] | None = None

    @staticmethod
    def accept(gate: AcceptGate, peer_ip: str) -> bool:
        """At TCP accept: only a trusted balancer, counted in the total for now."""
        assert gate.proxy is not None
        if not gate.proxy.trusts(peer_ip):
            log.debug("refused: %s is not in server.proxy_trusted", peer_ip)
            gate.refuse(REFUSED_PROXY_UNTRUSTED)
            return False
        return gate.admit_connection("")

    def read(self, gate: AcceptGate, data: bytes) -> bytes | None:
        """Feed bytes; the bytes after the header once it is read (and the device's
        address is counted), b"" while it is incomplete, None: refused, cut it."""
        reader = self._reader
        if reader is None:
            return data
        try:
            header = reader.feed(data)
        except ProxyHeaderError as exc:
            log.debug("refused: %s", exc)
            self._reader = None
            gate.refuse(REFUSED_PROXY_INVALID)
            return None
        if header is None:
            return b""
        self._reader = None
        balancer = self._balancer
        if header.source_ip is not None:
            self.address = (header.source_ip, header.source_port)
        elif isinstance(balancer, tuple):
            self.address = (sys.intern(str(balancer[0])), int(balancer[1]))
        else:
            self.address = ("", 0)
        if not gate.admit_address(self.address[0]):
            return None
        return header.rest


def peer_ip_of(transport: asyncio.BaseTransport) -> str:
    """The peer's address, interned: devices behind one NAT address share the string."""
    peer = transport.get_extra_info("peername")
    return sys.intern(peer[0]) if isinstance(peer, tuple) else ""


class SharedBios:
    """The memory BIO pair every connection of one listener (one event loop) uses."""

    __slots__ = ("incoming", "outgoing")

    def __init__(self) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()


class TlsServerProtocol(asyncio.Protocol):
    """Server-side TLS over a plain TCP transport; the transport of ``inner``."""

    __slots__ = (
        "_alpn_ok",
        "_bios",
        "_context",
        "_end",
        "_gate",
        "_hello",
        "_inner",
        "_inner_connected",
        "_peer_ip",
        "_plaintext",
        "_proxied",
        "_read_paused",
        "_read_scheduled",
        "_sslobj",
        "_state",
        "_timeout_s",
        "_timer",
        "_transport",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        inner: asyncio.Protocol,
        handshake_timeout_s: float,
        bios: SharedBios | None = None,
        gate: AcceptGate | None = None,
        alpn_ok: AlpnRule = mmtp_alpn,
    ) -> None:
        self._context = context
        self._alpn_ok = alpn_ok
        self._gate = gate
        # The address the gate counted this connection under (None: not counted; "": in
        # the total only, while its PROXY header is awaited).
        self._peer_ip: str | None = None
        # Behind a balancer: its PROXY header's reader, then the device's address.
        self._proxied: ProxiedPeer | None = None
        # ClientHello bytes while it is incomplete (b"": none yet); None once checked.
        self._hello: bytes | None = b""
        self._bios = bios if bios is not None else SharedBios()
        self._inner = inner
        self._inner_connected = False
        self._timeout_s = handshake_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._sslobj: ssl.SSLObject | None = None
        # Decrypted, not yet delivered (the inner protocol paused reading); None: nothing.
        self._plaintext: list[bytes] | None = None
        self._end = 0
        self._state = _HANDSHAKE
        self._read_paused = False
        self._read_scheduled = False

    # ------------------------------------------------------- TCP side (protocol)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        gate = self._gate
        if gate is not None:
            peer_ip = peer_ip_of(transport)
            if gate.proxy is not None:
                admitted = ProxiedPeer.accept(gate, peer_ip)
                peer_ip = ""
                if admitted:
                    self._proxied = ProxiedPeer(gate.proxy, transport.get_extra_info("peername"))
            else:
                admitted = gate.admit_connection(peer_ip)
            if not admitted:
                self._state = _CLOSED
                self._transport.abort()
                return
            self._peer_ip = peer_ip
        bios = self._bios
        try:
            self._sslobj = self._context.wrap_bio(bios.incoming, bios.outgoing, server_side=True)
        except ssl.SSLError:
            log.exception("cannot create a TLS session")
            self._state = _CLOSED
            self._transport.abort()
            return
        if self._timeout_s and self._timeout_s > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._timeout_s, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        sslobj = self._sslobj
        if sslobj is None or self._state >= _CLOSING:
            return
        proxied = self._proxied
        if proxied is not None and proxied.address is None:
            data = self._read_proxy_header(proxied, data)
            if not data:
                return
        if self._hello is not None:
            data = self._check_client_hello(data)
            if not data:
                return
        incoming = self._bios.incoming
        incoming.write(data)
        connected_now = False
        try:
            if self._state == _HANDSHAKE:
                if not self._handshake_step(sslobj):
                    return
                connected_now = True
            self._decrypt(sslobj)
        finally:
            if incoming.pending:
                self._drop_unread(incoming)
            self._flush()
        if connected_now:
            self._inner_connected = True
            self._inner.connection_made(self)  # type: ignore[arg-type]
        self._deliver()

    def eof_received(self) -> bool | None:
        # TCP FIN without close_notify (or after it): nothing more will come; close.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._cancel_timer()
        if self._peer_ip is not None and self._gate is not None:
            peer_ip, self._peer_ip = self._peer_ip, None
            self._gate.release_connection(peer_ip)
        if self._inner_connected:
            self._inner_connected = False
            inner = self._inner
            inner.connection_lost(exc)
        # Drop the TLS state now rather than whenever the inner protocol lets go of us.
        self._sslobj = None
        self._plaintext = None
        self._transport = None

    def pause_writing(self) -> None:
        if self._inner_connected:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner_connected:
            self._inner.resume_writing()

    # ------------------------------------------------------------- handshake

    def _read_proxy_header(self, proxied: ProxiedPeer, data: bytes) -> bytes:
        """The bytes after the balancer's PROXY header (b"" until it is whole); the
        connection is counted under the device's address from then on."""
        assert self._gate is not None
        rest = proxied.read(self._gate, data)
        if rest is None:
            self.abort()
            return b""
        if proxied.address is not None:
            self._peer_ip = proxied.address[0]
        return rest

    def _check_client_hello(self, data: bytes) -> bytes:
        """Every byte so far once the ClientHello is whole and offers mmtp/1; else b""."""
        received = self._hello + data if self._hello else data
        try:
            hello = read_client_hello(received)
        except MalformedClientHello as exc:
            log.debug("not a ClientHello we accept: %s", exc)
            self._refuse_hello(ALERT_DECODE_ERROR)
            return b""
        if hello is None:
            if len(received) > MAX_HELLO_BUFFER_BYTES:  # a ClientHello in tiny records
                self._refuse_hello(ALERT_DECODE_ERROR)
            else:
                self._hello = received
            return b""
        self._hello = None
        if not self._alpn_ok(hello.alpn_protocols):
            log.debug("ClientHello with ALPN refused: %s", hello.alpn_protocols)
            self._refuse_hello(ALERT_NO_APPLICATION_PROTOCOL)
            return b""
        return received

    def _refuse_hello(self, alert: int) -> None:
        self._hello = None
        self._state = _CLOSED
        self._cancel_timer()
        if self._transport is not None:
            self._transport.write(fatal_alert(alert))
            self._transport.close()

    def _handshake_step(self, sslobj: ssl.SSLObject) -> bool:
        """Advance the handshake; True once it is complete (the inner protocol is told later)."""
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLError, ValueError, OSError) as exc:
            # Garbage, a refused version or certificate: send the alert, close, tell nobody.
            log.debug("TLS handshake failed: %s", exc)
            self._flush()
            self._state = _CLOSED
            self._cancel_timer()
            if self._transport is not None:
                self._transport.close()
            return False
        self._cancel_timer()
        self._state = _OPEN
        return True

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE and self._transport is not None:
            log.debug("TLS handshake timed out")
            self._state = _CLOSED
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ data

    def _decrypt(self, sslobj: ssl.SSLObject) -> None:
        """Take every whole record out of the shared incoming BIO, before anyone else runs."""
        chunks = self._plaintext
        while not self._end:
            try:
                chunk = sslobj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._end = _END_CLOSE
                break
            except (ssl.SSLError, ValueError) as exc:
                log.debug("TLS record error: %s", exc)
                self._end = _END_ABORT
                break
            if not chunk:
                self._end = _END_CLOSE
                break
            if chunks is None:
                chunks = self._plaintext = [chunk]
            else:
                chunks.append(chunk)

    def _drop_unread(self, incoming: ssl.MemoryBIO) -> None:
        """Empty the shared incoming BIO: its bytes must never reach another connection.

        After a bad record or a close_notify the rest is garbage. Otherwise OpenSSL
        only wants more input once it has taken all there was (a partial record goes
        to its own buffer), so bytes left here would be a broken assumption: this
        connection is cut rather than its stream silently corrupted.
        """
        left = len(incoming.read())
        if not self._end and self._state in (_HANDSHAKE, _OPEN):
            log.warning("TLS input left unread (%d bytes); closing the connection", left)
            self._end = _END_ABORT
            if self._state == _HANDSHAKE:
                self.abort()

    def _deliver(self) -> None:
        """Hand decrypted plaintext to the inner protocol while it reads; then any ending."""
        chunks = self._plaintext
        if chunks is not None:
            inner = self._inner
            delivered = 0
            while delivered < len(chunks) and self._state == _OPEN and not self._read_paused:
                chunk = chunks[delivered]
                delivered += 1
                inner.data_received(chunk)
            if self._plaintext is chunks:  # connection_lost may have dropped it meanwhile
                del chunks[:delivered]
                if not chunks or self._state != _OPEN:
                    self._plaintext = None
        if self._end and self._plaintext is None and self._state == _OPEN:
            if self._end == _END_CLOSE:
                self.close()
            else:
                self.abort()

    def _resume_pending_reads(self) -> None:
        self._read_scheduled = False
        if self._state == _OPEN and not self._read_paused:
            self._deliver()

    def _flush(self) -> None:
        outgoing = self._bios.outgoing
        if not outgoing.pending:
            return
        data = outgoing.read()  # taken even with no transport: it is no other connection's
        if self._transport is not None:
            self._transport.write(data)

    # -------------------------------------------------- inner side (transport)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN or self._sslobj is None:
            return
        if not data:
            return
        try:
            self._sslobj.write(data)
        except ssl.SSLError as exc:
            log.debug("TLS write failed: %s", exc)
            self.abort()
            return
        self._flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        if self._state >= _CLOSING:
            return
        self._state = _CLOSING
        self._cancel_timer()
        sslobj = self._sslobj
        if sslobj is not None:
            with contextlib.suppress(ssl.SSLError, ValueError, OSError):
                sslobj.unwrap()  # queues our close_notify; the peer's is not awaited
            self._flush()
        if self._transport is not None:
            self._transport.close()  # after the buffered bytes are written

    def abort(self) -> None:
        if self._state == _CLOSED and self._transport is None:
            return
        self._state = _CLOSED
        self._cancel_timer()
        if self._transport is not None:
            self._transport.abort()

    def is_closing(self) -> bool:
        transport = self._transport
        return self._state >= _CLOSING or transport is None or transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._sslobj
        if name == "ssl_object":
            return sslobj
        if name == "sslcontext":
            return self._context
        if name == "peercert":
            return sslobj.getpeercert() if sslobj is not None else default
        if name == "cipher":
            return sslobj.cipher() if sslobj is not None else default
        if name == "compression":
            return sslobj.compression() if sslobj is not None else default
        if name == "peername" and self._proxied is not None:
            # The device, as its balancer's PROXY header named it.
            return self._proxied.address or default
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._transport is not None:
            self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        # The outgoing BIO is always empty between calls: everything is in the transport.
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def pause_reading(self) -> None:
        if self._read_paused:
            return
        self._read_paused = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._read_paused:
            return
        self._read_paused = False
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()
        # Plaintext decrypted before the pause (or the ending behind it) is still to deliver.
        if (self._plaintext or self._end) and not self._read_scheduled:
            self._read_scheduled = True
            asyncio.get_running_loop().call_soon(self._resume_pending_reads)

    def is_reading(self) -> bool:
        return not self._read_paused and self._state == _OPEN


def tls_server_factory(
    context: ssl.SSLContext | ServerContextRef,
    inner_factory: Any,
    handshake_timeout_s: float,
    gate: AcceptGate | None = None,
    alpn_ok: AlpnRule = mmtp_alpn,
) -> Any:
    """A ``create_server`` protocol factory: TLS terminated here, ``inner_factory()`` inside.

    Its connections share one pair of memory BIOs (see the module doc); a
    server's protocols all run on its event loop's thread. With ``gate``,
    connections are counted (and refused) at TCP accept. ``alpn_ok`` judges the
    ALPN protocols a ClientHello offers (default: MMTP's rule). Each connection takes
    the context ``context`` holds when it is accepted (a reload swaps it for new ones).
    """
    bios = SharedBios()
    ref = context_ref(context)

    def factory() -> TlsServerProtocol:
        return TlsServerProtocol(
            ref.context, inner_factory(), handshake_timeout_s, bios, gate, alpn_ok
        )

    return factory
