"""The asyncio adapter: one TLS connection around a sans-I/O ``channel.wire.Connection``.

``ClientProtocol`` only moves bytes: it feeds what the transport delivers to
the wire connection, hands the resulting events to its listener (the
``Client``), and writes whatever the connection queued — coalesced into one
``transport.write`` per event-loop turn. It is a protocol, not a stream, so
no reader task or extra buffer exists per connection.

``client_tls_context`` builds the TLS 1.3 context (ALPN ``mmtp/1``) with
session resumption: asyncio's ``create_connection`` has no ``session``
argument, so the context itself offers the last session whenever asyncio
wraps a new connection (``ResumingSSLContext.wrap_bio``).
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Protocol, cast

from channel.wire import Connection, Event, ProtocolError
from channel.wire.frames import FrameParser, FrameType
from channel.wire.hello import ALPN_PROTOCOL
from sdk_client.errors import ChannelError, ProtocolViolation

#: Parser limit used only to label the frames of the first write (measurement).
_FIRST_WRITE_PARSE_LIMIT = 1 << 30


class ResumingSSLContext(ssl.SSLContext):
    """A client ``SSLContext`` that offers ``resume_session`` on every new connection.

    Keep one context per client: a TLS session can only be resumed through
    the context that created it. Set ``resume_session`` from the last
    connection's ``ssl_object.session`` before connecting again.
    """

    resume_session: ssl.SSLSession | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """Wrap like ``SSLContext.wrap_bio``, offering ``resume_session`` unless told otherwise."""
        if session is None and not server_side:
            session = self.resume_session
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


def client_tls_context(
    ca_file: Path | None,
    *,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> ResumingSSLContext:
    """TLS 1.3 only, ALPN ``mmtp/1``, server certificate and host name verified.

    ``ca_file`` is the CA to trust (the gateway's dev CA in development);
    None trusts the system store. ``client_cert``/``client_key`` present a
    client certificate (mutual TLS, IoT-style devices). Same policy as
    ``channel.security.tls.client_ssl_context``, plus resumption.
    """
    if client_key is not None and client_cert is None:
        raise ValueError("a client key needs its certificate (client_cert=...)")
    context = ResumingSSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies cert and host name
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN_PROTOCOL])
    if client_cert is not None:
        context.load_cert_chain(certfile=client_cert, keyfile=client_key)
    return context


class ByteTotals(Protocol):
    """Where a protocol adds the bytes it moves (the client's stats, shared by its connections)."""

    bytes_sent: int
    bytes_received: int


class ConnectionListener(Protocol):
    """What a ``ClientProtocol`` reports to (implemented by the ``Client``)."""

    def connection_made(self, protocol: ClientProtocol) -> None:
        """TLS is up: send HELLO (and pipelined requests) now; they go out in one write."""

    def events_received(self, protocol: ClientProtocol, events: list[Event]) -> None:
        """The server sent these events (in order)."""

    def connection_lost(self, protocol: ClientProtocol, error: ChannelError | None) -> None:
        """The transport is gone; ``error`` is set if we detected a protocol violation."""


class ClientProtocol(asyncio.Protocol):
    """One MMTP connection's transport glue (see the module docstring)."""

    def __init__(
        self, conn: Connection, listener: ConnectionListener, totals: ByteTotals | None = None
    ) -> None:
        self.conn = conn
        self._listener = listener
        self._totals = totals
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        #: Loop times of the last byte received / written.
        self.last_received = self._loop.time()
        self.last_sent = self.last_received
        self.bytes_sent = 0
        self.bytes_received = 0
        #: Size and frame types of the first write (HELLO plus pipelined requests).
        self.first_write_bytes = 0
        self.first_write_frames: tuple[FrameType, ...] = ()
        self._error: ChannelError | None = None
        self._flush_scheduled = False
        self._acks: list[int] = []
        self._data_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop SSL transports are not asyncio.Transport subclasses
        transport = cast("asyncio.Transport", transport)
        self.transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != ALPN_PROTOCOL:
            self._error = ProtocolViolation(
                0, f"server did not select ALPN {ALPN_PROTOCOL!r} (got {alpn!r}): not an MMTP port"
            )
            transport.abort()
            return
        self._listener.connection_made(self)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.last_received = self._loop.time()
        self.bytes_received += len(data)
        if self._totals is not None:
            self._totals.bytes_received += len(data)
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self._error = ProtocolViolation(exc.code, exc.message)
            self.flush()  # the ERROR frame the wire queued for the server
            self.close()
            return
        self._listener.events_received(self, events)
        self.flush()
        if self.conn.closed:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._listener.connection_lost(self, self._error)

    # ---------------------------------------------------------------- output

    def flush(self) -> None:
        """Write everything the wire connection queued (one write)."""
        self._flush_scheduled = False
        data = self.conn.data_to_send()
        transport = self.transport
        if not data or transport is None or transport.is_closing():
            return
        if not self.bytes_sent:
            self.first_write_bytes = len(data)
            frames = FrameParser(_FIRST_WRITE_PARSE_LIMIT).feed(data)
            self.first_write_frames = tuple(frame.frame_type for frame in frames)
        self.bytes_sent += len(data)
        if self._totals is not None:
            self._totals.bytes_sent += len(data)
        self.last_sent = self._loop.time()
        transport.write(data)

    def schedule_flush(self) -> None:
        """Flush at the end of this event-loop turn, so frames queued in it share a write."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def ack(self, delivery_id: int) -> None:
        """Acknowledge a push; ACKs issued in one loop turn travel in one ACK frame."""
        if self.lost:
            return
        if not self._acks:
            self._loop.call_soon(self.send_pending_acks)
        self._acks.append(delivery_id)

    def send_pending_acks(self) -> None:
        """Send the ACKs batched so far now (before a GOAWAY or a close)."""
        ids, self._acks = self._acks, []
        if ids and not self.lost and not self.conn.closed:
            self.conn.send_ack(*ids)
            self.flush()

    async def wait_for_data(self, timeout_s: float) -> bool:
        """True once any byte arrives (or the connection ends) within ``timeout_s``."""
        if self.lost:
            return True
        waiter = self._loop.create_future()
        self._data_waiter = waiter
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return False
        finally:
            self._data_waiter = None
        return True

    # ------------------------------------------------------------ inspection

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS object of this connection (None before or after it exists)."""
        if self.transport is None:
            return None
        obj = self.transport.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    def close(self) -> None:
        """Flush what is queued, then close gracefully (TLS close_notify)."""
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self, error: ChannelError | None = None) -> None:
        """Drop the connection at once (dead peer); ``error`` becomes the loss reason."""
        if error is not None and self._error is None:
            self._error = error
        if self.transport is not None:
            self.transport.abort()
