"""Record the seed corpus: real SDK sessions against a real gateway, in plaintext.

``python -m stress.fuzz.capture [--out stress/fuzz/seeds.json]`` starts a
``channel serve`` process, puts a TLS-terminating proxy in front of it (the
gateway's own dev certificate, ALPN ``mmtp/1``), runs scripted
``sdk_client.Client`` sessions through the proxy and writes every
connection's frames, both directions. The sessions cover what a device
sends: HELLO with a token, with a resume ticket, with both; pipelined
requests; calls with app headers (typed fields), with dictionary-compressed
bodies and with presets 0, 1 and 2; topic subscriptions; pings; a cancelled
call; ACKs of pushes sent through the HTTP API; answers (RESPONSE and ERROR)
to backend calls made through the API; GOAWAY. One more session drives the
wire core in client role for what the SDK never sends: SETTINGS, and an
ERROR on stream 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from channel.security.tls import client_ssl_context, server_ssl_context
from channel.wire import (
    Connection,
    ErrorCode,
    Event,
    Hello,
    HelloAccepted,
    PongReceived,
    Role,
)
from sdk_client import ChannelError, Client
from sdk_client.client import Push, Request
from stress.fuzz.frames import split_stream
from stress.fuzz.seeds import DEFAULT_CORPUS, SeedCorpus, SeedSession, blank_credentials
from stress.gateway_proc import GatewayProcess

APP_ID = "fuzz"
USER_ID = "fz-user"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
JSON_BODY = json.dumps(
    {
        "userId": "2088031882206968",
        "assetTypes": ["BALANCE", "YUEBAO"],
        "currency": "CNY",
        "page": {"size": 20, "cursor": "eyJvIjoyMH0"},
        "client": {"net": "4G", "lat": "31.2304"},
    },
    separators=(",", ":"),
).encode()


@dataclass
class Recording:
    label: str
    credential: str
    device_id: str
    client: bytearray = field(default_factory=bytearray)
    server: bytearray = field(default_factory=bytearray)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class CaptureProxy:
    """TLS in (the gateway's certificate), TLS out to the gateway; plaintext recorded."""

    def __init__(self, gateway: GatewayProcess) -> None:
        self._gateway = gateway
        self._server_tls = server_ssl_context(gateway.tls_cert, gateway.tls_key)
        self._client_tls = client_ssl_context(gateway.ca_cert)
        self._server: asyncio.Server | None = None
        self.port = 0
        self.recordings: list[Recording] = []
        #: What the next accepted connection is recorded as (label, credential, device id).
        self.next: tuple[str, str, str] = ("", "", "")

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self._server_tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        recording = Recording(*self.next)
        self.recordings.append(recording)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self._gateway.port, ssl=self._client_tls, server_hostname="localhost"
            )
        except OSError:
            writer.close()
            recording.done.set()
            return
        pipes = [
            asyncio.create_task(_pipe(reader, up_writer, recording.client)),
            asyncio.create_task(_pipe(up_reader, writer, recording.server)),
        ]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for stream in (writer, up_writer):
            stream.close()
        await asyncio.wait(pipes)
        recording.done.set()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bytearray
) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        while data := await reader.read(65536):
            record += data
            writer.write(data)
            await writer.drain()


# ------------------------------------------------------------------ sessions


Scenario = Callable[["Capture"], Awaitable[None]]


class Capture:
    """Runs the scripted sessions through a ``CaptureProxy`` in front of ``gateway``."""

    def __init__(self, gateway: GatewayProcess, proxy: CaptureProxy, state_dir: Path) -> None:
        self.gateway = gateway
        self.proxy = proxy
        self.state_dir = state_dir
        self.api_url = f"http://127.0.0.1:{gateway.info['api_port']}"
        api_key = (gateway.state_dir / "api" / "dev.key").read_text(encoding="ascii").strip()
        self.api_headers = {"Authorization": f"Bearer {api_key}"}

    def client(
        self,
        device_id: str,
        *,
        credential: str,
        label: str = "",
        preset_id: int = 2,
        state_file: Path | None = None,
        token_with_ticket: bool = True,
    ) -> Client:
        """An SDK client whose next connection the proxy records as ``label``."""
        self.proxy.next = (label or device_id, credential, device_id)
        return Client(
            "127.0.0.1",
            self.proxy.port,
            device_id=device_id,
            token=self.gateway.token(device_id, user_id=USER_ID, app_id=APP_ID),
            ca_file=self.gateway.ca_cert,
            app_id=APP_ID,
            app_version="8.12.3",
            platform="android",
            preset_id=preset_id,
            reconnect=False,
            tcp_fast_open=False,
            state_file=state_file,
            token_with_ticket=token_with_ticket,
        )

    async def api(self, path: str, body: dict[str, object]) -> None:
        async with (
            aiohttp.ClientSession(headers=self.api_headers) as http,
            http.post(self.api_url + path, json=body) as reply,
        ):
            await reply.read()

    async def settle(self) -> None:
        """Wait until every recorded connection has ended (the proxy saw both sides close)."""
        for recording in self.proxy.recordings:
            await asyncio.wait_for(recording.done.wait(), 10)


async def calls(capture: Capture) -> None:
    """Token HELLO; calls with headers, compressed bodies, topics, pings, a cancel; GOAWAY."""
    async with capture.client("fz-calls", credential="token", label="calls") as client:
        await client.call("channel.echo", b"hi")
        await client.call("channel.echo", JSON_BODY)
        headers = [
            ("trace-id", TRACE_ID),
            ("ts", str(int(time.time() * 1000))),
            ("sign", "ab" * 32),
            ("locale", "zh-CN"),
            ("content-type", "application/json"),
        ]
        await client.call("channel.echo", JSON_BODY, headers=headers)
        await client.call("channel.time")
        with contextlib.suppress(ChannelError):  # NOT_FOUND: the capture node has no routes
            await client.call("account.balance.get", JSON_BODY, headers=headers[:1])
        await client.subscribe("public.news", "public.fz.topic-1")
        await client.unsubscribe("public.news")
        await client.ping()
        await client.ping()
        cancelled = asyncio.ensure_future(client.call("channel.echo", b"to be cancelled"))
        await asyncio.sleep(0)
        cancelled.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cancelled
        await client.call("channel.echo", b"after the cancel")


async def pushes(capture: Capture) -> None:
    """ACKs of pushes from the API; the device answers backend calls (RESPONSE, ERRORs)."""
    device_id = "fz-push"
    received: asyncio.Queue[Push] = asyncio.Queue()
    client = capture.client(device_id, credential="token", label="pushes")
    client.on_push(received.put_nowait)

    @client.handle("device.echo")
    def _echo(request: Request) -> bytes:
        return request.body

    @client.handle("device.fail")
    def _fail(_request: Request) -> bytes:
        raise ValueError("the handler failed")

    async with client:
        messages: list[dict[str, object]] = [
            {"device_id": device_id, "body": "hello"},
            {
                "device_id": device_id,
                "body": JSON_BODY.decode(),
                "collapse_key": "bill-9",
                "priority": "high",
                "headers": {"x-kind": "bill"},
            },
            {"device_id": device_id, "body_base64": "AAEC"},
        ]
        for message in messages:
            await capture.api("/v1/push", message)
        for _ in messages:
            await asyncio.wait_for(received.get(), 10)
        for op in ("device.echo", "device.fail", "device.unknown"):
            await capture.api(f"/v1/devices/{device_id}/rpc", {"op": op, "body": "ping"})
        await client.call("channel.echo", b"acks flushed")


async def resumes(capture: Capture) -> None:
    """Ticket HELLOs: ticket only, then ticket and token; pipelined calls behind them."""
    state_file = capture.state_dir / "fz-resume.json"
    device_id = "fz-resume"
    async with capture.client(
        device_id, credential="token", label="resume-first", state_file=state_file
    ) as client:
        await client.call("channel.echo", JSON_BODY)
    for credential, with_token in (("ticket", False), ("ticket+token", True)):
        client = capture.client(
            device_id,
            credential=credential,
            label=f"resume-{credential}",
            state_file=state_file,
            token_with_ticket=with_token,
        )
        pipelined = asyncio.ensure_future(client.call("channel.echo", JSON_BODY))
        await asyncio.sleep(0)
        async with client:
            await pipelined
            await client.call("channel.time")
            await client.ping()


async def presets(capture: Capture) -> None:
    """Presets 0 and 1: other HPACK tables, so other indices and literals."""
    for preset_id in (0, 1):
        device_id = f"fz-preset{preset_id}"
        async with capture.client(device_id, credential="token", preset_id=preset_id) as client:
            await client.call("channel.echo", JSON_BODY, headers=[("trace-id", TRACE_ID)])
            await client.call("channel.subscribe", b'{"topics": ["public.news"]}')


async def wire_client(capture: Capture) -> None:
    """The wire core in client role: SETTINGS, a cancelled stream, ERROR on stream 0."""
    device_id = "fz-wire"
    capture.proxy.next = ("wire", "token", device_id)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        capture.proxy.port,
        ssl=client_ssl_context(capture.gateway.ca_cert),
        server_hostname="localhost",
    )
    conn = Connection(Role.CLIENT)
    token = capture.gateway.token(device_id, user_id=USER_ID, app_id=APP_ID)
    hello = Hello(
        device_id=device_id,
        app_id=APP_ID,
        token=token,
        dictionaries=(1,),
        preset_id=1,
        platform="ios",
        client_time_ms=int(time.time() * 1000),
    )
    conn.send_hello(hello)
    writer.write(conn.data_to_send())
    await _until(reader, conn, lambda e: isinstance(e, HelloAccepted))
    conn.send_settings([(1, 8192), (2, 65536), (3, 32), (4, 1 << 20), (5, 60), (6, 8192), (42, 7)])
    conn.send_ping(b"fuzz")
    headers = [("trace-id", TRACE_ID), ("request-id", "0123456789abcdef"), ("ts", "1764000000123")]
    stream_id = conn.send_request("channel.echo", JSON_BODY, headers)
    conn.send_cancel(stream_id)
    writer.write(conn.data_to_send())
    # The answer to a cancelled stream raises no event: wait for the PONG, then for the stream.
    await _until(reader, conn, lambda e: isinstance(e, PongReceived))
    while conn.open_local_streams:
        await _read(reader, conn)
    conn.send_goaway(ErrorCode.NO_ERROR, message="client leaving")
    conn.close_with_error(ErrorCode.NO_ERROR, "done")
    writer.write(conn.data_to_send())
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def _until(
    reader: asyncio.StreamReader, conn: Connection, wanted: Callable[[Event], bool]
) -> None:
    while not any(wanted(event) for event in await _read(reader, conn)):
        pass


async def _read(reader: asyncio.StreamReader, conn: Connection) -> list[Event]:
    data = await asyncio.wait_for(reader.read(65536), 10)
    if not data:
        raise ConnectionError("the gateway closed the capture connection")
    return conn.receive_data(data)


SCENARIOS: tuple[Scenario, ...] = (calls, pushes, resumes, presets, wire_client)


# ------------------------------------------------------------------ corpus


def corpus_of(recordings: list[Recording]) -> SeedCorpus:
    sessions = []
    for rec in recordings:
        if not rec.client:
            continue
        sessions.append(
            SeedSession(
                label=rec.label,
                device_id=rec.device_id,
                user_id=USER_ID,
                app_id=APP_ID,
                credential=rec.credential,
                client=tuple(blank_credentials(f) for f in split_stream(bytes(rec.client))),
                server=tuple(blank_credentials(f) for f in split_stream(bytes(rec.server))),
            )
        )
    return SeedCorpus(tuple(sessions))


async def capture_corpus(gateway: GatewayProcess) -> SeedCorpus:
    """Run every scenario against ``gateway`` (started, with its HTTP API on)."""
    proxy = CaptureProxy(gateway)
    await proxy.start()
    try:
        with tempfile.TemporaryDirectory(prefix="fuzz-capture-") as state:
            capture = Capture(gateway, proxy, Path(state))
            for scenario in SCENARIOS:
                await scenario(capture)
                await capture.settle()
    finally:
        await proxy.close()
    return corpus_of(proxy.recordings)


def capture_gateway() -> GatewayProcess:
    return GatewayProcess(
        name="capture",
        settings={"api": {"port": 0}, "heartbeat": {"interval_s": 30, "min_s": 1}},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stress.fuzz.capture",
        description="Record real SDK sessions against a real gateway as the fuzzer's seeds.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_CORPUS, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    # The pushes scenario makes a device handler fail on purpose; its traceback is noise here.
    logging.getLogger("channel.sdk").setLevel(logging.CRITICAL)
    with capture_gateway() as gateway:
        corpus = asyncio.run(capture_corpus(gateway))
    corpus.save(args.out)
    counts = ", ".join(f"{name} {n}" for name, n in sorted(corpus.frame_types().items()))
    print(f"wrote {args.out}: {len(corpus.sessions)} sessions; client frames: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
