"""A bare MMTP device for gateway tests: the wire core over a real TLS connection.

No SDK logic (no reconnect, no retries), so tests see exactly what the
gateway sends: ``await device.events()`` returns the next batch of events.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

from channel.security.tls import client_ssl_context
from channel.wire import Connection, ConnectionErrorReceived, Event, Hello, Limits, Role
from sdk_client.tcp import release_after_failed_handoff


class RawDevice:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.bytes_sent = 0
        self.bytes_received = 0
        self.writes = 0

    @classmethod
    async def connect(
        cls,
        port: int,
        ca_cert: Path,
        *,
        limits: Limits | None = None,
        context: ssl.SSLContext | None = None,
        receive_buffer_bytes: int = 0,
        proxy_header: bytes = b"",
    ) -> RawDevice:
        ctx = context or client_ssl_context(ca_cert)
        if proxy_header:
            # As a load balancer does: a PROXY protocol header, then the device's TLS.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(proxy_header)
                await writer.drain()
                await writer.start_tls(ctx, server_hostname="localhost")
            except BaseException:
                writer.close()
                raise
        elif receive_buffer_bytes:
            # A small kernel buffer, set before connecting (the window is agreed then),
            # so a device that stops reading backs up into the gateway quickly.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            try:
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=ctx, server_hostname="localhost"
                )
            except BaseException:
                release_after_failed_handoff(sock)
                raise
        else:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
            )
        return cls(reader, writer, Connection(Role.CLIENT, limits=limits))

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.bytes_sent += len(data)
            self.writes += 1
            self.writer.write(data)
            await self.writer.drain()

    async def send_hello(self, hello: Hello) -> None:
        self.conn.send_hello(hello)
        await self.flush()

    async def events(self, timeout_s: float = 5.0) -> list[Event]:
        """The next non-empty batch of events; [] once the gateway closed the connection."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), timeout_s)
            if not data:
                return []
            self.bytes_received += len(data)
            events = self.conn.receive_data(data)
            await self.flush()  # automatic answers (PONG, SETTINGS ACK)
            if events:
                return events

    async def until(self, kind: type, timeout_s: float = 5.0) -> list[Event]:
        """Collect events until one of ``kind`` arrives (or the connection ends)."""
        seen: list[Event] = []
        while True:
            batch = await self.events(timeout_s)
            seen.extend(batch)
            if not batch or any(isinstance(e, kind) for e in batch):
                return seen
            if any(isinstance(e, ConnectionErrorReceived) for e in batch):
                return seen

    async def closed_by_peer(self, timeout_s: float = 5.0) -> bool:
        """True once the gateway closes the connection (reads until EOF)."""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout_s)
                if not data:
                    return True
                self.conn.receive_data(data)
        except (ConnectionError, ssl.SSLError):
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()
