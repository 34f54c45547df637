"""TLS over a plain TCP transport with ``ssl.MemoryBIO``: the lean TLS engine.

uvloop's built-in TLS transport costs ~23.5 KiB per idle connection (and
grows to ~31 KiB after reconnect churn); doing TLS ourselves over a plain
uvloop TCP transport with ``SSLContext.wrap_bio`` costs ~17.6 KiB and stays
flat. ``TlsServerProtocol`` is the TCP-side protocol; to the inner protocol
(``DeviceSession``) it is the transport, with the subset of
``asyncio.Transport`` the gateway uses plus ``get_extra_info("ssl_object")``.

Per connection it keeps one ``SSLObject``, its two (normally empty) memory
BIOs and a handful of slots: no read buffer (``SSLObject.read`` allocates
the plaintext it returns), no write queue (ciphertext goes straight to the
TCP transport, whose buffer and flow control the inner protocol sees through
``get_write_buffer_size`` and ``pause_writing``/``resume_writing``).

The handshake timeout is a timer that exists only while the handshake runs;
a client that fails the handshake or never finishes it is closed without the
inner protocol ever hearing of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, cast

log = logging.getLogger("channel.tls")

_HANDSHAKE = 0
_OPEN = 1
_CLOSING = 2
_CLOSED = 3

#: Largest plaintext taken out of the SSL object per read (a TLS record is <= 16 KiB).
READ_SIZE = 65536


class TlsServerProtocol(asyncio.Protocol):
    """Server-side TLS over a plain TCP transport; the transport of ``inner``."""

    __slots__ = (
        "_context",
        "_incoming",
        "_inner",
        "_inner_connected",
        "_outgoing",
        "_read_paused",
        "_read_scheduled",
        "_sslobj",
        "_state",
        "_timeout_s",
        "_timer",
        "_transport",
    )

    def __init__(
        self, context: ssl.SSLContext, inner: asyncio.Protocol, handshake_timeout_s: float
    ) -> None:
        self._context = context
        self._inner = inner
        self._inner_connected = False
        self._timeout_s = handshake_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._sslobj: ssl.SSLObject | None = None
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self._state = _HANDSHAKE
        self._read_paused = False
        self._read_scheduled = False

    # ------------------------------------------------------- TCP side (protocol)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        try:
            self._sslobj = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        except ssl.SSLError:
            log.exception("cannot create a TLS session")
            self._state = _CLOSED
            self._transport.abort()
            return
        if self._timeout_s and self._timeout_s > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._timeout_s, self._handshake_timed_out)

    def data_received(self, data: bytes) -> None:
        incoming = self._incoming
        if incoming is None or self._state >= _CLOSING:
            return
        incoming.write(data)
        if self._state == _HANDSHAKE and not self._handshake_step():
            return
        if not self._read_paused:
            self._read_plaintext()

    def eof_received(self) -> bool | None:
        # TCP FIN without close_notify (or after it): nothing more will come; close.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._cancel_timer()
        if self._inner_connected:
            self._inner_connected = False
            inner = self._inner
            inner.connection_lost(exc)
        # Drop the TLS state now rather than whenever the inner protocol lets go of us.
        self._sslobj = None
        self._incoming = None
        self._outgoing = None
        self._transport = None

    def pause_writing(self) -> None:
        if self._inner_connected:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner_connected:
            self._inner.resume_writing()

    # ------------------------------------------------------------- handshake

    def _handshake_step(self) -> bool:
        """Advance the handshake; True once it is complete and the inner protocol is connected."""
        sslobj = self._sslobj
        assert sslobj is not None
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
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
        # TLS 1.3: the server's session ticket follows its Finished; send it now.
        self._flush()
        self._inner_connected = True
        self._inner.connection_made(self)  # type: ignore[arg-type]
        return self._state == _OPEN

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

    def _read_plaintext(self) -> None:
        sslobj = self._sslobj
        inner = self._inner
        while self._state == _OPEN and not self._read_paused and sslobj is not None:
            try:
                chunk = sslobj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                # close_notify from the peer: answer with ours and close.
                self.close()
                return
            except (ssl.SSLError, ValueError) as exc:
                log.debug("TLS record error: %s", exc)
                self._flush()
                self.abort()
                return
            if not chunk:
                self.close()
                return
            inner.data_received(chunk)
        # Post-handshake messages (key updates) the reads may have produced.
        self._flush()

    def _resume_pending_reads(self) -> None:
        self._read_scheduled = False
        if self._state == _OPEN and not self._read_paused:
            self._read_plaintext()

    def _flush(self) -> None:
        outgoing = self._outgoing
        transport = self._transport
        if outgoing is None or transport is None or not outgoing.pending:
            return
        transport.write(outgoing.read())

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
        if self._transport is None:
            return default
        return self._transport.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._transport is not None:
            self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        size = self._outgoing.pending if self._outgoing is not None else 0
        if self._transport is not None:
            size += self._transport.get_write_buffer_size()
        return size

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
        # Records that arrived before the pause are still in the incoming BIO.
        incoming, sslobj = self._incoming, self._sslobj
        if (
            incoming is not None
            and sslobj is not None
            and (incoming.pending or sslobj.pending())
            and not self._read_scheduled
        ):
            self._read_scheduled = True
            asyncio.get_running_loop().call_soon(self._resume_pending_reads)

    def is_reading(self) -> bool:
        return not self._read_paused and self._state == _OPEN


def tls_server_factory(
    context: ssl.SSLContext,
    inner_factory: Any,
    handshake_timeout_s: float,
) -> Any:
    """A ``create_server`` protocol factory: TLS terminated here, ``inner_factory()`` inside."""

    def factory() -> TlsServerProtocol:
        return TlsServerProtocol(context, inner_factory(), handshake_timeout_s)

    return factory
