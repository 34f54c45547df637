"""The gateway as a benchmark sees it: a real ``channel serve`` process and bare devices.

``GatewayProcess`` starts ``channel serve`` in a subprocess on OS-chosen ports
(``--port 0 --admin-port 0``) with a temporary state dir, optional TOML and
``CHANNEL_<SECTION>__<KEY>`` settings, reads its one JSON ``listening`` line,
mints device tokens with its dev key, reads its RSS and CPU from ``/proc``,
and stops it with SIGTERM. The subprocess raises its own open-file soft limit
to the hard limit before the CLI runs (``channel serve`` does not, and a
benchmark node holds thousands of sockets).

``TlsLink`` is a client connection that does TLS itself, over a plain TCP
transport with ``ssl.MemoryBIO``: it can offer a saved TLS session (asyncio's
``create_connection`` cannot, per connection), counts bytes at the socket
(what crosses TCP, TLS records included) and round trips (how often the
client had to wait for the server), and costs a few KiB per connection, so
one client process holds thousands. ``MmtpDevice`` speaks MMTP over it with
the sans-I/O ``channel.wire.Connection``; ``EchoDevice`` just sends a probe and
waits for it to come back (for bare TLS servers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from channel import fastopen
from channel.security.tokens import DeviceClaims, TokenSigner, load_private_key
from channel.wire import (
    Connection,
    ConnectionErrorReceived,
    Event,
    Hello,
    HelloAccepted,
    HelloAck,
    ResponseReceived,
    Role,
    StreamErrorReceived,
)
from sdk_client.tcp import release_after_failed_handoff

#: Raises RLIMIT_NOFILE to the hard limit, then runs the ``channel`` CLI in this process
#: (so the announced pid is the node's pid: RSS and CPU are read from it).
LAUNCHER = (
    "import resource, sys\n"
    "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n"
    "from channel.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Settings = Mapping[str, Mapping[str, Any]]


class GatewayError(RuntimeError):
    """The gateway did not start or answer; the message carries its log tail."""


# --------------------------------------------------------------------------- /proc


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's open-file soft limit to the hard one; return (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` from ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise GatewayError(f"no VmRSS for pid {pid}")


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds ``pid`` has used (``/proc/<pid>/stat`` utime, stime)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        stat = handle.read()
    # The command name may contain spaces; the fields after its ')' are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / _CLOCK_TICKS, int(fields[12]) / _CLOCK_TICKS


def cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used."""
    user, system = cpu_times(pid)
    return user + system


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_rss_kib(
    pids: Sequence[int],
    *,
    interval_s: float = 0.5,
    window: int = 4,
    tolerance_kib: int = 256,
    timeout_s: float = 30.0,
) -> int:
    """Total RSS of ``pids`` once it stops moving: the last ``window`` readings, taken
    ``interval_s`` apart, lie within ``tolerance_kib`` (or ``timeout_s`` passed)."""
    readings: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        readings.append(sum(rss_kib(pid) for pid in pids))
        recent = readings[-window:]
        if len(recent) == window and max(recent) - min(recent) <= tolerance_kib:
            return recent[-1]
        if time.monotonic() > deadline:
            return readings[-1]
        time.sleep(interval_s)


# --------------------------------------------------------------------------- tokens


class TokenMinter:
    """Device tokens signed with a node's dev token key (key id 1)."""

    def __init__(self, private_key_path: str | Path, key_id: int = 1) -> None:
        self._signer = TokenSigner(load_private_key(Path(private_key_path)), key_id)

    def token(
        self, device_id: str, *, user_id: str = "", app_id: str = "bench", ttl_s: int = 3600
    ) -> bytes:
        now = int(time.time())
        claims = DeviceClaims(
            device_id=device_id,
            user_id=user_id or f"u-{device_id}",
            app_id=app_id,
            expires_at=now + ttl_s,
            issued_at=now,
        )
        return self._signer.issue(claims)


# --------------------------------------------------------------------------- process


def settings_env(settings: Settings) -> dict[str, str]:
    """``{"server": {"max_connections": 5}}`` -> ``{"CHANNEL_SERVER__MAX_CONNECTIONS": "5"}``."""
    env = {}
    for section, values in settings.items():
        for key, value in values.items():
            text = json.dumps(value) if not isinstance(value, str) else value
            env[f"CHANNEL_{section.upper()}__{key.upper()}"] = text
    return env


class GatewayProcess:
    """``channel serve`` in a subprocess on free ports; use as a context manager.

    ``settings`` become ``CHANNEL_<SECTION>__<KEY>`` variables; ``config_toml`` is
    written to the state dir and passed as ``--config``. Several nodes may share a
    ``state_dir`` (same dev CA, token key and ticket secret: tickets resume on any of
    them) if they are started one after the other.
    """

    def __init__(
        self,
        *,
        state_dir: str | Path | None = None,
        config_toml: str | None = None,
        settings: Settings | None = None,
        log_level: str = "warning",
        name: str = "gateway",
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self._own_dir = state_dir is None
        self.state_dir = Path(state_dir or tempfile.mkdtemp(prefix="channel-bench-"))
        self.config_toml = config_toml
        self.settings: dict[str, dict[str, Any]] = {
            "server": {"drain_timeout_s": 1.0},
        }
        for section, values in (settings or {}).items():
            self.settings.setdefault(section, {}).update(values)
        self.log_level = log_level
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._minter: TokenMinter | None = None

    # -- life cycle

    def start(self) -> GatewayProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "serve",
            "--port",
            "0",
            "--admin-port",
            "0",
            "--state-dir",
            str(self.state_dir),
            # Every listener on a free port (the push API's default, 8080, may be taken).
            "--api-port",
            str(self.settings.get("api", {}).get("port", 0)),
            "--log-level",
            self.log_level,
        ]
        if "port" not in self.settings.get("mqtt", {}):
            args += ["--mqtt-port", "0"]  # never the fixed default 8883
        if self.config_toml is not None:
            config_path = self.state_dir / f"{self.name}.toml"
            config_path.write_text(self.config_toml, encoding="utf-8")
            args += ["--config", str(config_path)]
        # The caller's CHANNEL_ settings do not leak in, but for the engine choice (the
        # tests run every gateway on each engine through it).
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CHANNEL_") or k == "CHANNEL_SERVER__ENGINE"
        }
        env.update(settings_env(self.settings))
        self._stdout_path = self.state_dir / f"{self.name}.stdout"
        self._stderr_path = self.state_dir / f"{self.name}.log"
        # Files, not pipes: a node that logs a lot must never block on a full pipe.
        with self._stdout_path.open("wb") as out, self._stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
            )
        self.info = self._wait_listening()
        if self.info.get("pid") != self.proc.pid:
            raise GatewayError(f"{self.name}: announced pid {self.info.get('pid')} != child pid")
        return self

    def _wait_listening(self) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            text = self._stdout_path.read_text(encoding="utf-8", errors="replace")
            for line in text.split("\n")[:-1]:  # complete lines only
                with contextlib.suppress(json.JSONDecodeError):
                    info = json.loads(line)
                    if isinstance(info, dict) and info.get("event") == "listening":
                        return info
            if self.proc.poll() is not None:
                raise GatewayError(
                    f"{self.name} exited with {self.proc.returncode} before listening:\n"
                    + self.log_tail()
                )
            time.sleep(0.05)
        self.stop()
        raise GatewayError(f"{self.name}: no 'listening' line in {self.startup_timeout_s} s")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (the node drains), wait; SIGKILL if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self._stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- what it announced

    @property
    def pid(self) -> int:
        return int(self.info["pid"])

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def admin_port(self) -> int:
        return int(self.info["admin_port"])

    @property
    def ca_cert(self) -> Path:
        return Path(self.info["ca_cert"])

    @property
    def token_key(self) -> Path:
        return Path(self.info["dev_token_key"])

    @property
    def tls_cert(self) -> Path:
        """The dev server certificate and key (for a baseline server with the same cert)."""
        return self.ca_cert.parent / "server.pem"

    @property
    def tls_key(self) -> Path:
        return self.ca_cert.parent / "server.key"

    def token(self, device_id: str, **claims: Any) -> bytes:
        if self._minter is None:
            self._minter = TokenMinter(self.token_key)
        return self._minter.token(device_id, **claims)

    # -- measurements

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def admin_json(self, path: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """GET an admin endpoint's JSON (``/readyz`` answers 503 with JSON while draining)."""
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
        result: dict[str, Any] = json.loads(body)
        return result

    def readyz(self) -> dict[str, Any]:
        return self.admin_json("/readyz")


def wait_connections(
    gateways: Iterable[GatewayProcess],
    expected: int,
    *,
    key: str = "connections",
    timeout_s: float = 30.0,
) -> int:
    """Poll ``/readyz`` of every node until their ``key`` counts sum to ``expected``;
    return the last sum (which differs from ``expected`` on timeout)."""
    nodes = list(gateways)
    deadline = time.monotonic() + timeout_s
    while True:
        total = sum(int(g.readyz()[key]) for g in nodes)
        if total == expected or time.monotonic() > deadline:
            return total
        time.sleep(0.1)


# --------------------------------------------------------------------------- devices

#: A typical mobile RPC body (~300 B of JSON), as in ``stress/frame_speed.py``.
RPC_BODY = json.dumps(
    {
        "userId": "2088031882206968",
        "assetTypes": ["BALANCE", "YUEBAO", "HUABEI"],
        "currency": "CNY",
        "extParams": {"chInfo": "ch_home", "spm": "a90.b856.c22", "sourceAppId": "20000056"},
        "page": {"size": 20, "cursor": "eyJvIjoyMH0"},
        "filter": {"from": "2026-11-01", "to": "2026-11-26", "types": ["TRANSFER", "PAY"]},
        "client": {"lat": "31.2304", "lng": "121.4737", "net": "4G"},
    },
    separators=(",", ":"),
).encode()


def rpc_headers(i: int) -> list[tuple[str, str]]:
    """App headers of call ``i``: a fresh trace id, timestamp and signature every time."""
    return [
        ("trace-id", f"{i:032x}"),
        ("ts", str(int(time.time() * 1000))),
        ("sign", f"{i * 7919:064x}"),
        ("locale", "zh-CN"),
        ("biz-scene", "home"),
        ("content-type", "application/json"),
        ("app-scene", "bill-list"),
    ]


def device_hello(device_id: str, *, token: bytes = b"", resume_ticket: bytes = b"") -> Hello:
    """The HELLO an SDK sends (app preset 2, identity fields filled in)."""
    return Hello(
        device_id=device_id,
        app_id="bench",
        token=token,
        resume_ticket=resume_ticket,
        preset_id=2,
        app_version="8.12.3",
        platform="android",
        client_time_ms=int(time.time() * 1000),
    )


class TlsLink(asyncio.Protocol):
    """TLS 1.3 over a plain TCP transport, done with ``ssl.MemoryBIO``.

    Counts bytes at the socket (``bytes_out``/``bytes_in``, TLS records included)
    and round trips: ``round_trips`` goes up each time data arrives after the client
    sent something since it last received, i.e. each time the client waited for the
    server (TCP's own SYN round trip is not seen here; add 1 for it).
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        session: ssl.SSLSession | None = None,
        server_hostname: str = "localhost",
    ) -> None:
        loop = asyncio.get_running_loop()
        self._context = context
        self._session = session
        self._server_hostname = server_hostname
        self.transport: asyncio.Transport | None = None
        self.ssl: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls_up = False
        self._sent_since_received = False
        self.bytes_out = 0
        self.bytes_in = 0
        self.round_trips = 0
        #: Socket bytes up to the end of the TLS handshake (the client Finished included).
        self.tls_bytes_out = 0
        self.tls_bytes_in = 0
        self.closed: asyncio.Future[None] = loop.create_future()

    # -- hooks for subclasses

    def tls_ready(self) -> None:
        """The handshake finished; queue application data with ``self.ssl.write``."""

    def app_data_received(self, data: bytes) -> None:
        """Decrypted application data."""

    def link_failed(self, exc: BaseException) -> None:
        """The handshake or the connection failed (also called on an early close)."""

    def tls_closed(self) -> None:
        """The server ended the TLS session (close_notify); TCP may stay open a while."""

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence no isinstance.
        self.transport = transport  # type: ignore[assignment]
        self.ssl = self._context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=False,
            server_hostname=self._server_hostname,
            session=self._session,
        )
        self._session = None
        self._handshake()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._sent_since_received:
            self.round_trips += 1
            self._sent_since_received = False
        self._incoming.write(data)
        if self._tls_up:
            self._read_app()
        else:
            self._handshake()

    def eof_received(self) -> bool | None:
        self._incoming.write_eof()
        if self._tls_up:
            self._read_app()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self._tls_up:
            self.link_failed(exc or ConnectionResetError("closed during the TLS handshake"))
        else:
            self.link_failed(exc or ConnectionResetError("connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -- TLS plumbing

    def _handshake(self) -> None:
        assert self.ssl is not None
        try:
            self.ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._fail(exc)
            return
        self._tls_up = True
        self.tls_bytes_in = self.bytes_in
        self.tls_bytes_out = self.bytes_out + self._outgoing.pending
        self.tls_ready()
        self._flush()
        if self._incoming.pending:
            self._read_app()

    def _read_app(self) -> None:
        assert self.ssl is not None
        chunks = []
        while True:
            try:
                chunk = self.ssl.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.tls_closed()
                break
            except (ssl.SSLError, OSError) as exc:
                self._fail(exc)
                return
            if not chunk:  # what SSLObject.read gives for a close_notify
                self.tls_closed()
                break
            chunks.append(chunk)
        if chunks:
            self.app_data_received(b"".join(chunks))
        self._flush()

    def send_app(self, data: bytes) -> None:
        if self.ssl is None or self.transport is None or not data:
            return
        self.ssl.write(data)
        self._flush()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self.transport is not None:
            self.bytes_out += len(data)
            self._sent_since_received = True
            self.transport.write(data)

    def _fail(self, exc: BaseException) -> None:
        self.link_failed(exc)
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- inspection

    @property
    def session(self) -> ssl.SSLSession | None:
        return self.ssl.session if self.ssl is not None else None

    @property
    def syn_carried_data(self) -> bool:
        """The SYN carried the ClientHello (TCP Fast Open): TCP's round trip was shared."""
        if self.transport is None:
            return False
        return fastopen.syn_carried_data(self.transport.get_extra_info("socket"))

    @property
    def session_reused(self) -> bool:
        return bool(self.ssl is not None and self.ssl.session_reused)


Call = tuple[str, bytes, Sequence[tuple[str, str]]]
#: Linux: choose the source port at connect() time, by the whole 4-tuple. A plain
#: bind(ip, 0) needs a port no other socket on ``ip`` holds, TIME_WAIT ones included,
#: and after a few 10,000 connections that search burns the client's (system) CPU.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def connect_link(
    protocol: asyncio.Protocol,
    port: int,
    source_ip: str = "127.0.0.1",
    host: str = "127.0.0.1",
    *,
    fast_open: bool = False,
) -> None:
    """Open TCP from ``source_ip`` to ``host:port`` and hand it to ``protocol``.

    ``fast_open``: as the SDK does, the SYN carries the first write (the TLS
    ClientHello) when the kernel holds a cookie for this source and destination.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        if fast_open:
            fastopen.enable_on_client(sock)
        sock.bind((source_ip, 0))
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    try:
        await loop.create_connection(lambda: protocol, sock=sock)
    except BaseException:
        release_after_failed_handoff(sock)
        raise


class MmtpDevice(TlsLink):
    """A bare MMTP device: HELLO (plus pipelined calls) right after TLS, then calls."""

    def __init__(
        self,
        context: ssl.SSLContext,
        hello: Hello,
        *,
        session: ssl.SSLSession | None = None,
        pipelined: Sequence[Call] = (),
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        super().__init__(context, session=session)
        loop = asyncio.get_running_loop()
        self.hello = hello
        self.conn = Connection(Role.CLIENT)
        self.ack: asyncio.Future[HelloAck] = loop.create_future()
        self._pipelined = pipelined
        self._calls: dict[int, asyncio.Future[ResponseReceived | StreamErrorReceived]] = {}
        self._on_event = on_event
        self.first_calls: list[asyncio.Future[ResponseReceived | StreamErrorReceived]] = []

    def tls_ready(self) -> None:
        self.conn.send_hello(self.hello)
        for op, body, headers in self._pipelined:
            self.first_calls.append(self._start_call(op, body, headers))
        assert self.ssl is not None
        self.ssl.write(self.conn.data_to_send())

    def _start_call(
        self, op: str, body: bytes, headers: Sequence[tuple[str, str]]
    ) -> asyncio.Future[ResponseReceived | StreamErrorReceived]:
        stream_id = self.conn.send_request(op, body, headers)
        future: asyncio.Future[ResponseReceived | StreamErrorReceived] = (
            asyncio.get_running_loop().create_future()
        )
        self._calls[stream_id] = future
        return future

    def call(
        self, op: str, body: bytes, headers: Sequence[tuple[str, str]] = ()
    ) -> asyncio.Future[ResponseReceived | StreamErrorReceived]:
        """Send a REQUEST; the future gets its RESPONSE or stream ERROR."""
        future = self._start_call(op, body, headers)
        self.send_app(self.conn.data_to_send())
        return future

    def app_data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except Exception as exc:
            self._fail(exc)
            return
        for event in events:
            if isinstance(event, (ResponseReceived, StreamErrorReceived)):
                future = self._calls.pop(event.stream_id, None)
                if future is not None and not future.done():
                    future.set_result(event)
            elif isinstance(event, HelloAccepted):
                if not self.ack.done():
                    self.ack.set_result(event.ack)
            elif isinstance(event, ConnectionErrorReceived):
                self.link_failed(ConnectionError(f"gateway error {event.code}: {event.message}"))
            if self._on_event is not None:
                self._on_event(event)
        reply = self.conn.data_to_send()  # PONG, SETTINGS ACK
        if reply and self.ssl is not None:
            self.ssl.write(reply)

    def link_failed(self, exc: BaseException) -> None:
        if not self.ack.done():
            self.ack.set_exception(exc)
            self.ack.exception()  # retrieved: callers that stopped waiting must not warn
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()


class EchoDevice(TlsLink):
    """For a bare TLS echo server: send ``probe`` after the handshake, wait for it back."""

    def __init__(
        self,
        context: ssl.SSLContext,
        probe: bytes,
        *,
        session: ssl.SSLSession | None = None,
    ) -> None:
        super().__init__(context, session=session)
        self._probe = probe
        self._echoed = 0
        self.ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def tls_ready(self) -> None:
        assert self.ssl is not None
        self.ssl.write(self._probe)

    def app_data_received(self, data: bytes) -> None:
        self._echoed += len(data)
        if self._echoed >= len(self._probe) and not self.ack.done():
            self.ack.set_result(None)

    def link_failed(self, exc: BaseException) -> None:
        if not self.ack.done():
            self.ack.set_exception(exc)
            self.ack.exception()


def close_worker_processes(
    pipes: Sequence[Any], procs: Sequence[Any], farewell: str, reply_timeout_s: float
) -> None:
    """Ask each benchmark client process to finish (``farewell``), then make sure it is gone."""
    for pipe, proc in zip(pipes, procs, strict=True):
        if proc.is_alive():
            try:
                pipe.send((farewell, {}))
                if pipe.poll(reply_timeout_s):
                    pipe.recv()
            except (OSError, EOFError):
                pass
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
