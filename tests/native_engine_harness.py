"""Drive ``channel._engine.Engine`` directly from a test: real TLS devices made of
Python's ``ssl`` and ``channel.wire.Connection`` (client role), and a driver that
waits for engine events on the eventfd with a deadline (never a sleep).
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from channel._engine import Engine
from channel.wire import Connection, Event, Hello, HelloAccepted, Role

CERTS = Path(__file__).resolve().parent.parent / "native" / "engine" / "tests" / "certs"
WAIT_S = 10.0


def pem(name: str) -> bytes:
    return (CERTS / name).read_bytes()


def engine_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"tls_cert_pem": pem("server.pem"), "tls_key_pem": pem("server.key")}
    config.update(overrides)
    return config


def client_context(*, alpn: bool = True, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn:
        context.set_alpn_protocols(["mmtp/1"])
    if client_cert:
        context.load_cert_chain(str(CERTS / "client.pem"), str(CERTS / "client.key"))
    return context


class Driver:
    """An engine and the events it reported, taken when its eventfd says so."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backlog: list[tuple[Any, ...]] = []
        self.fanout_acks: Counter[bytes] = Counter()
        self.batches = 0

    def _take(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        readable, _, _ = select.select([self.engine.event_fd()], [], [], left)
        if not readable:
            return
        self.batches += 1
        for event in self.engine.take_events():
            if event[0] == "FANOUT_ACKS":
                self.fanout_acks.update(event[1])
            else:
                self.backlog.append(event)

    def expect(
        self, kind: str, where: Callable[[tuple[Any, ...]], bool] | None = None
    ) -> tuple[Any, ...]:
        """The first waiting event of ``kind`` (matching ``where``); others stay."""
        deadline = time.monotonic() + WAIT_S
        while True:
            for i, event in enumerate(self.backlog):
                if event[0] == kind and (where is None or where(event)):
                    return self.backlog.pop(i)
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {kind} event within {WAIT_S} s; have {self.backlog}")
            self._take(deadline)

    def expect_n(self, kind: str, count: int) -> list[tuple[Any, ...]]:
        return [self.expect(kind) for _ in range(count)]

    def wait_fanout_acks(self, message_id: bytes, count: int) -> None:
        deadline = time.monotonic() + WAIT_S * 3
        while self.fanout_acks[message_id] < count:
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.fanout_acks[message_id]} of {count} fan-out acks")
            self._take(deadline)

    def hello(self, device_id: str) -> int:
        event = self.expect("HELLO", lambda e: e[3]["device_id"] == device_id)
        return int(event[1])

    def accept(self, conn: int, heartbeat_s: int = 60) -> None:
        self.engine.submit(
            [("ACCEPT", conn, b"session1", b"ticket", heartbeat_s, int(time.time() * 1000), False)]
        )

    def stats(self) -> Mapping[str, Any]:
        return self.engine.stats()


class Device:
    """A blocking TLS socket with a client-role ``channel.wire.Connection``."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.conn = Connection(Role.CLIENT)
        sock.settimeout(WAIT_S)

    @classmethod
    def connect(
        cls,
        port: int,
        context: ssl.SSLContext | None = None,
        *,
        receive_buffer_bytes: int = 0,
        session: ssl.SSLSession | None = None,
    ) -> Device:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer_bytes:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        raw.settimeout(WAIT_S)
        raw.connect(("127.0.0.1", port))
        sock = (context or client_context()).wrap_socket(
            raw, server_hostname="localhost", session=session
        )
        return cls(sock)

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def hello(self, device_id: str, **fields: Any) -> None:
        self.conn.send_hello(Hello(device_id=device_id, **fields))
        self.flush()

    def events(self) -> list[Event]:
        """The next non-empty batch of events; [] once the server closed."""
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return []
            if not data:
                return []
            events = self.conn.receive_data(data)
            self.flush()
            if events:
                return events

    def until_closed(self) -> list[Event]:
        seen: list[Event] = []
        while events := self.events():
            seen.extend(events)
        return seen

    def close(self) -> None:
        self.sock.close()


def accepted(driver: Driver, port: int, device_id: str, **connect: Any) -> tuple[Device, int]:
    """A device that said HELLO and got HELLO_ACK; (device, conn id)."""
    device = Device.connect(port, **connect)
    device.hello(device_id)
    conn = driver.hello(device_id)
    driver.accept(conn)
    events = device.events()
    assert isinstance(events[0], HelloAccepted), events
    return device, conn
