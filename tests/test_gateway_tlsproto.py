"""TLS over plain TCP with ssl.MemoryBIO (``channel.engine.tlsproto``), over real sockets.

Also runs the gateway's handshake and RPC tests once more with the other TLS
engine (uvloop's built-in TLS transport), so both engines stay covered.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import gateway_harness
import pytest
import test_gateway_handshake as handshake_tests
import test_gateway_rpc as rpc_tests

from channel.engine.tlsproto import TlsServerProtocol, tls_server_factory
from channel.security.devcert import ensure_dev_certificates
from channel.security.tls import (
    client_ssl_context,
    negotiated_protocol_ok,
    server_ssl_context,
)

# The same tests again with uvloop's TLS transport (their own files run the default engine).
test_uvloop_engine_full_and_resumed = handshake_tests.test_full_handshake_then_resumed_with_ticket
test_uvloop_engine_no_hello_timeout = handshake_tests.test_no_hello_is_a_handshake_timeout
test_uvloop_engine_pipelined = (
    handshake_tests.test_pipelined_request_is_answered_in_the_first_round_trip
)
test_uvloop_engine_tls12_and_alpn = handshake_tests.test_tls12_and_missing_alpn_are_refused
test_uvloop_engine_unfinished_tls = handshake_tests.test_unfinished_tls_handshake_is_dropped
test_uvloop_engine_rpc_call = rpc_tests.test_call_reaches_upstream_with_verified_identity
test_uvloop_engine_slow_consumer = rpc_tests.test_device_that_stops_reading_is_dropped
test_uvloop_engine_drain = rpc_tests.test_drain_finishes_calls_in_flight_then_closes
test_uvloop_engine_mtls = rpc_tests.test_mutual_tls_identifies_iot_devices


@pytest.fixture(autouse=True)
def _uvloop_engine_for_reused_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not request.node.name.startswith("test_uvloop_engine_"):
        return
    original = gateway_harness.load_config

    def load_config(*args: Any, **kwargs: Any) -> Any:
        config = original(*args, **kwargs)
        config.server.engine = "python"  # the TLS engines are the Python engine's
        config.server.tls_engine = "uvloop"
        return config

    monkeypatch.setattr(gateway_harness, "load_config", load_config)


def test_default_engine_is_memorybio_and_uvloop_is_selectable(tmp_path: Path) -> None:
    assert gateway_harness.gateway_config(tmp_path).server.tls_engine == "memorybio"
    config = gateway_harness.gateway_config(tmp_path, server={"tls_engine": "uvloop"})
    assert config.server.tls_engine == "uvloop"
    from channel.config import ConfigError

    with pytest.raises(ConfigError):
        gateway_harness.gateway_config(tmp_path, server={"tls_engine": "openssl"})


# --------------------------------------------------------------------------- harness


class Inner(asyncio.Protocol):
    """Records what the TLS layer tells it; echoes unless told otherwise."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.transport: Any = None
        self.made = 0
        self.lost: list[Exception | None] = []
        self.received = bytearray()
        self.paused = 0
        self.resumed = 0
        self.gone = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.made += 1
        self.transport = transport
        _changed()

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)
        _changed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        if not self.gone.done():
            self.gone.set_result(None)
        _changed()

    def pause_writing(self) -> None:
        self.paused += 1
        _changed()

    def resume_writing(self) -> None:
        self.resumed += 1
        _changed()


class Server:
    def __init__(self, ca: Path, port: int, inners: list[Inner]) -> None:
        self.ca, self.port, self.inners = ca, port, inners

    def client_context(self) -> ssl.SSLContext:
        return client_ssl_context(self.ca)

    async def connect(self, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1",
            self.port,
            ssl=self.client_context(),
            server_hostname="localhost",
            **kwargs,
        )


@pytest.fixture
def certs(tmp_path: Path) -> Iterator[Any]:
    yield ensure_dev_certificates(tmp_path / "tls")


@pytest.fixture
async def server(certs: Any) -> AsyncIterator[Server]:
    inners: list[Inner] = []
    context = server_ssl_context(certs.cert, certs.key)

    def inner() -> Inner:
        proto = Inner()
        inners.append(proto)
        return proto

    loop = asyncio.get_running_loop()
    srv = await loop.create_server(
        tls_server_factory(context, inner, 0.5), host="127.0.0.1", port=0
    )
    try:
        yield Server(certs.ca_cert, srv.sockets[0].getsockname()[1], inners)
    finally:
        srv.close()
        await srv.wait_closed()


#: Events of the waiters in ``wait_for``; every Inner callback sets them all.
_waiters: list[asyncio.Event] = []


def _changed() -> None:
    for event in _waiters:
        event.set()


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, re-checking after each Inner callback."""
    event = asyncio.Event()
    _waiters.append(event)
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await event.wait()
                event.clear()
    finally:
        _waiters.remove(event)


# ----------------------------------------------------------------------------- tests


async def test_handshake_then_echo_and_transport_info(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    (inner,) = server.inners
    transport = inner.transport
    sslobj = transport.get_extra_info("ssl_object")
    assert isinstance(sslobj, ssl.SSLObject)
    assert negotiated_protocol_ok(sslobj)
    assert sslobj.version() == "TLSv1.3"
    assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
    assert transport.get_extra_info("sockname")[1] == server.port
    assert transport.get_extra_info("cipher") is not None
    assert not transport.is_closing()
    # A big write crosses several TLS records and comes back whole.
    payload = bytes(range(256)) * 1000
    writer.write(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
    # The server closes: close_notify, then EOF at the client; connection_lost once.
    transport.close()
    assert transport.is_closing()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await asyncio.wait_for(inner.gone, 5)
    assert inner.made == 1 and inner.lost == [None]
    writer.close()


async def test_session_resumption_works(server: Server) -> None:
    context = server.client_context()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=context, server_hostname="localhost"
    )
    writer.write(b"x")
    await reader.readexactly(1)  # the ticket arrived with or before the echo
    session = writer.get_extra_info("ssl_object").session
    writer.close()
    raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", server.port)
    # Resume by hand over a memory BIO (asyncio cannot offer a session per connection).
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost", session=session)
    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw_writer.write(outgoing.read())
            incoming.write(await asyncio.wait_for(raw_reader.read(65536), 5))
    raw_writer.write(outgoing.read())
    assert client.session_reused
    raw_writer.close()


async def test_handshake_timeout_closes_without_inner_callback(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the 0.5 s timeout
    (inner,) = server.inners
    assert inner.made == 0 and inner.lost == []
    writer.close()


async def test_garbage_instead_of_client_hello_is_closed(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        while await reader.read(65536):  # maybe an alert, then EOF
            pass
    (inner,) = server.inners
    assert inner.made == 0 and inner.lost == []
    writer.close()


async def test_close_notify_from_the_client_closes(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"hello")
    await asyncio.wait_for(reader.readexactly(5), 5)
    (inner,) = server.inners
    writer.close()  # uvloop's TLS transport sends close_notify
    await asyncio.wait_for(inner.gone, 5)
    assert inner.made == 1 and inner.lost == [None]
    assert inner.received == b"hello"


async def test_write_buffer_limits_pause_and_resume_the_inner_protocol(server: Server) -> None:
    reader, writer = await server.connect(limit=16384)
    writer.write(b"go")
    await asyncio.wait_for(reader.readexactly(2), 5)
    (inner,) = server.inners
    transport = inner.transport
    inner.echo = False
    transport.set_write_buffer_limits(high=65536, low=16384)
    chunk = b"z" * 65536
    written = 0
    # The client does not read (its stream reader stops at 32 KiB): the buffers fill.
    while not inner.paused and written < 256 * 1024 * 1024:
        transport.write(chunk)
        written += len(chunk)
        await asyncio.sleep(0)
    assert inner.paused == 1 and inner.resumed == 0
    assert transport.get_write_buffer_size() > 65536
    transport.pause_reading()  # what PyMmtpSession does on pause_writing
    transport.resume_reading()
    # Drain at the client: the buffer falls under the low mark and the inner protocol resumes.
    got = 0
    async with asyncio.timeout(30):
        while got < written:
            got += len(await reader.read(1 << 20))
    await wait_for(lambda: inner.resumed == 1)
    assert got == written
    assert transport.get_write_buffer_size() == 0
    writer.close()


async def test_pause_reading_holds_back_plaintext(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"a")
    await asyncio.wait_for(reader.readexactly(1), 5)
    (inner,) = server.inners
    inner.transport.pause_reading()
    # Pausing stops the TCP transport underneath, so nothing more is even read.
    assert not inner.transport.is_reading()
    assert not inner.transport._transport.is_reading()
    writer.write(b"held")
    await writer.drain()
    assert inner.received == b"a"
    inner.transport.resume_reading()
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    writer.close()


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


class _BioClient(asyncio.Protocol):
    """A cheap TLS client (memory BIOs), so the measurement is mostly the server's."""

    def __init__(self, context: ssl.SSLContext, done: asyncio.Future[None]) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.done = done
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._step()

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        self._step()

    def _step(self) -> None:
        if not self.done.done():
            try:
                self.sslobj.do_handshake()
                self.done.set_result(None)
            except ssl.SSLWantReadError:
                pass
        if self.done.done():
            _drain_plaintext(self.sslobj)
        if self.outgoing.pending:
            self.transport.write(self.outgoing.read())


def _drain_plaintext(sslobj: ssl.SSLObject) -> None:
    try:
        while sslobj.read(65536):  # consume the session ticket
            pass
    except ssl.SSLError:
        pass


async def test_many_idle_connections_stay_small(server: Server) -> None:
    loop = asyncio.get_running_loop()
    context = server.client_context()
    n = 300
    clients: list[_BioClient] = []

    async def one() -> None:
        done: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            lambda: _BioClient(context, done), "127.0.0.1", server.port
        )
        await asyncio.wait_for(done, 10)
        clients.append(proto)

    await asyncio.gather(*(one() for _ in range(20)))  # warm up allocator and caches
    gc.collect()
    before = _rss_kib()
    for _ in range(n // 50):
        await asyncio.gather(*(one() for _i in range(50)))
    await wait_for(lambda: sum(i.made for i in server.inners) == n + 20)
    gc.collect()
    per_connection_kib = (_rss_kib() - before) / n
    # Server (~14 KiB of OpenSSL state) plus this cheap client, both in this process.
    assert per_connection_kib < 48, per_connection_kib
    for inner in server.inners:
        tls = inner.transport
        assert isinstance(tls, TlsServerProtocol)
        assert not hasattr(tls, "__dict__")
        assert tls._timer is None  # the handshake timer is gone once the handshake is done
        assert tls._plaintext is None  # nothing decrypted and held back
        # One pair of memory BIOs for the whole listener, empty between callbacks.
        assert tls._bios is server.inners[0].transport._bios
        assert tls._bios.incoming.pending == 0 and tls._bios.outgoing.pending == 0
    for client in clients:
        client.transport.abort()
    await wait_for(lambda: all(i.lost for i in server.inners))
    for inner in server.inners:
        assert len(inner.lost) == 1
        assert inner.transport._sslobj is None  # TLS state released on connection_lost


# ------------------------------------------------- one pair of memory BIOs per listener


class RawTls:
    """A TLS client over a plain TCP stream, so a test decides where records are cut."""

    def __init__(
        self, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, reader: Any
    ) -> None:
        self.sslobj, self.incoming, self.outgoing = sslobj, incoming, outgoing
        self.reader: asyncio.StreamReader = reader
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    async def connect(cls, server: Server) -> RawTls:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        sslobj = server.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
        client = cls(sslobj, incoming, outgoing, reader)
        client.writer = writer
        while True:
            try:
                sslobj.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                incoming.write(await asyncio.wait_for(reader.read(65536), 5))
        writer.write(outgoing.read())  # the client Finished
        return client

    def seal(self, data: bytes) -> bytes:
        """``data`` as TLS records, not sent."""
        self.sslobj.write(data)
        return self.outgoing.read()

    def send_raw(self, wire: bytes) -> None:
        assert self.writer is not None
        self.writer.write(wire)

    async def read(self, size: int) -> bytes:
        """Exactly ``size`` plaintext bytes, or fewer if the server closes (close_notify/EOF)."""
        got = bytearray()
        async with asyncio.timeout(5):
            while len(got) < size:
                try:
                    chunk = self.sslobj.read(size - len(got))
                    if not chunk:
                        break  # the server's close_notify
                    got += chunk
                    continue
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLZeroReturnError:
                    break
                data = await self.reader.read(65536)
                if not data:
                    break
                self.incoming.write(data)
        return bytes(got)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def test_connections_sharing_the_bios_keep_their_streams_apart(server: Server) -> None:
    a = await RawTls.connect(server)
    b = await RawTls.connect(server)
    await wait_for(lambda: len(server.inners) == 2 and all(i.made for i in server.inners))
    inner_a = server.inners[0]
    message_a = bytes(range(256)) * 80  # 20 KiB: two records
    wire_a = a.seal(message_a)
    # A's first record whole and the start of its second: the server keeps the partial
    # record in A's own SSL state, not in the BIO that B's bytes go through next.
    cut = len(wire_a) - 1000
    a.send_raw(wire_a[:cut])
    await wait_for(lambda: len(inner_a.received) == 16384)
    message_b = b"b" * 5000
    b.send_raw(b.seal(message_b))
    assert await b.read(len(message_b)) == message_b
    a.send_raw(wire_a[cut:])
    assert await a.read(len(message_a)) == message_a
    a.close()
    b.close()


async def test_closing_other_connections_from_a_callback(server: Server) -> None:
    """A session replaced from inside its successor's HELLO: the closes' close_notify
    records go to their own connections, and the caller's stream goes on."""
    clients = [await RawTls.connect(server) for _ in range(3)]
    await wait_for(lambda: len(server.inners) == 3 and all(i.made for i in server.inners))
    killer = server.inners[0]
    echo = killer.data_received

    def data_received(data: bytes) -> None:
        if data == b"kill":
            for other in server.inners[1:]:
                other.transport.close()
        echo(data)

    killer.data_received = data_received  # type: ignore[method-assign]
    clients[0].send_raw(clients[0].seal(b"kill"))
    assert await clients[0].read(4) == b"kill"
    for client in clients[1:]:
        assert await client.read(1) == b""  # close_notify, not someone else's records
    clients[0].send_raw(clients[0].seal(b"still here"))
    assert await clients[0].read(10) == b"still here"
    for client in clients:
        client.close()


async def test_plaintext_decrypted_before_a_pause_waits_for_resume(server: Server) -> None:
    client = await RawTls.connect(server)
    await wait_for(lambda: len(server.inners) == 1 and server.inners[0].made == 1)
    inner = server.inners[0]
    inner.echo = False
    record = inner.data_received

    def data_received(data: bytes) -> None:
        record(data)
        inner.transport.pause_reading()  # after the first record: the rest must wait

    inner.data_received = data_received  # type: ignore[method-assign]
    message = bytes(range(256)) * 160  # 40 KiB: three records, sent in one write
    client.send_raw(client.seal(message))
    await wait_for(lambda: len(inner.received) == 16384)
    assert not inner.transport.is_reading()
    inner.data_received = record  # type: ignore[method-assign]
    inner.transport.resume_reading()
    await wait_for(lambda: len(inner.received) == len(message))
    assert inner.received == message
    client.close()


# ------------------------------------------------------------ ALPN on the ClientHello


def _client_flight(context: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.MemoryBIO, bytes]:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return client, incoming, outgoing.read()


async def test_client_hello_without_mmtp_alpn_gets_an_alert_and_nothing_else(
    server: Server,
) -> None:
    for offered in ([], ["h2"]):
        context = ssl.create_default_context(cafile=str(server.ca))
        if offered:
            context.set_alpn_protocols(offered)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        client, incoming, flight = _client_flight(context)
        writer.write(flight)
        answer = await asyncio.wait_for(reader.read(), 5)  # everything, up to EOF
        # One plaintext fatal alert, no_application_protocol (120): no ServerHello.
        assert answer == bytes.fromhex("15 03 03 00 02 02 78")
        incoming.write(answer)
        with pytest.raises(ssl.SSLError, match="no application protocol"):
            client.do_handshake()
        writer.close()
    assert all(inner.made == 0 for inner in server.inners)


async def test_client_hello_trickled_a_byte_at_a_time_completes(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    client, incoming, flight = _client_flight(server.client_context())
    for i in range(len(flight)):
        writer.write(flight[i : i + 1])
        await writer.drain()
    incoming.write(await asyncio.wait_for(reader.read(4096), 5))  # ServerHello ... Finished
    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            incoming.write(await asyncio.wait_for(reader.read(4096), 5))
    assert client.selected_alpn_protocol() == "mmtp/1"
    writer.close()


async def test_client_hello_in_too_many_tiny_records_is_refused(server: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    # A 16 KiB ClientHello header, then its body one byte per record: 6 bytes per
    # byte of body, so the buffer limit (32 KiB) is reached long before the end.
    header = b"\x01" + (16 * 1024).to_bytes(3, "big")
    tiny = b"".join(b"\x16\x03\x01\x00\x01" + bytes((i % 256,)) for i in range(8000))
    writer.write(b"\x16\x03\x01\x00\x04" + header + tiny)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer == bytes.fromhex("15 03 03 00 02 02 32")  # decode_error
    writer.close()
