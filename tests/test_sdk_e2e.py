"""The client SDK against a real gateway node and a real HTTP upstream.

Everything is real: TLS 1.3 on 127.0.0.1 port 0, the gateway's wire core,
routing to an aiohttp upstream. Tests wait on events and futures with
timeouts, never on sleeps; the heartbeat test is the one that must let time
pass, because time passing is what it checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from channel.cli import main as channel_main
from channel.engine.pysession import PyMmtpSession
from channel.mmtp.session import MmtpSession
from channel.security.tokens import DeviceClaims, TokenSigner, encode_token_text
from channel.sessions import Session
from channel.wire import (
    DictionaryStore,
    ErrorCode,
    FrameType,
)
from sdk_client import (
    AuthError,
    Backoff,
    ChannelError,
    Client,
    Forbidden,
    NotFound,
    Push,
    Request,
    Response,
    Timeout,
    Unavailable,
)
from tests.gateway_harness import RunningGateway, gateway, http_upstream

pytestmark = pytest.mark.both_engines

WAIT_S = 5.0


@dataclass
class Upstream:
    """The echo service: answers ``echo:<body>``; ops in ``gated`` wait for ``gate``."""

    url: str = ""
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    gated: set[str] = field(default_factory=set)
    hits: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    @contextlib.contextmanager
    def holding(self, *ops: str) -> Iterator[None]:
        """Hold answers to ``ops`` until ``release()`` or the end of the block."""
        self.gated.update(ops)
        self.gate.clear()
        try:
            yield
        finally:
            self.gate.set()

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()
    state.gate.set()

    async def echo(request: web.Request) -> web.StreamResponse:
        op = request.match_info["op"]
        state.hits.put_nowait(op)
        if op == "echo.missing":
            return web.Response(status=404, text="no such account")
        if op in state.gated:
            await state.gate.wait()
        body = await request.read()
        locale = request.headers.get("locale", "")
        return web.Response(body=b"echo:" + body, headers={"x-locale": locale})

    async with http_upstream({"/rpc/{op}": echo}) as url:
        state.url = url
        yield state


def rpc_config(upstream: Upstream) -> dict[str, Any]:
    return {
        "clusters": {"echo": {"endpoints": [upstream.url]}},
        "routes": [{"match": "echo.", "cluster": "echo"}],
    }


def gateway_for(
    tmp_path: Path, **sections: Any
) -> contextlib.AbstractAsyncContextManager[RunningGateway]:
    """A gateway whose shutdown does not wait long for calls a failed test left behind."""
    server = {"drain_timeout_s": 1, **sections.pop("server", {})}
    return gateway(tmp_path, server=server, **sections)


def make_client(gw: RunningGateway, device_id: str = "d1", **options: Any) -> Client:
    options.setdefault("token", gw.token(device_id))
    options.setdefault("backoff", Backoff(initial_s=0.01, max_s=0.05))
    return Client(
        "127.0.0.1",
        gw.port,
        device_id=device_id,
        ca_file=gw.ca_cert,
        app_id="demo",
        app_version="8.12.3",
        platform="android",
        **options,
    )


def disconnect_events(client: Client) -> asyncio.Queue[ChannelError]:
    queue: asyncio.Queue[ChannelError] = asyncio.Queue()
    client.on_disconnect(queue.put_nowait)
    return queue


def session_of(gw: RunningGateway, device_id: str = "d1") -> MmtpSession:
    session = gw.node.by_device[device_id]
    assert isinstance(session, MmtpSession)
    return session


class Relay:
    """A TCP relay in front of the gateway whose existing paths can go silent.

    ``freeze()`` makes every current connection drop bytes both ways without
    closing anything — a dead network path (radio gone), not a refused one.
    New connections pass normally. Counts bytes per connection.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.paths: list[dict[str, int]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()

    def freeze(self) -> None:
        for path in self.paths:
            path["frozen"] = 1

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        path = {"up": 0, "down": 0, "frozen": 0}
        self.paths.append(path)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, key: str) -> None:
            while data := await src.read(65536):
                if not path["frozen"]:
                    path[key] += len(data)
                    dst.write(data)
            if not path["frozen"]:
                dst.close()

        for pair in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            task = asyncio.create_task(pump(*pair))
            self._tasks.add(task)


# ------------------------------------------------------------------ calls


async def test_call_pipelined_behind_hello_is_answered_in_the_first_round_trip(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with gateway_for(tmp_path, rpc=rpc_config(upstream)) as gw:
        client = make_client(gw)
        # Started before connect(): it must leave in the same write as the HELLO.
        first = asyncio.create_task(
            client.call("echo.hi", b'{"x":1}', headers=[("locale", "zh-CN")], timeout=WAIT_S)
        )
        await client.connect()
        try:
            response = await asyncio.wait_for(first, WAIT_S)
            assert response == Response(0, response.headers, b'echo:{"x":1}')
            assert response.header("x-locale") == "zh-CN"
            stats = client.stats
            assert stats.first_write_requests == 1
            assert stats.first_write_bytes < stats.hello_bytes + 64
            assert client.connected and client.session_id and not client.resumed
            # Later calls reuse the connection (and its HPACK/zstd context).
            again = await client.call("echo.hi", b"x" * 200)
            assert again.body == b"echo:" + b"x" * 200
            assert stats.connects == 1
        finally:
            await client.close()
        assert not client.connected


async def test_token_as_the_text_channel_token_issue_prints(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with gateway_for(tmp_path, rpc=rpc_config(upstream)) as gw:
        printed = encode_token_text(gw.token("d1")) + "\n"  # as read from its file
        async with make_client(gw, token=printed) as client:
            assert client.token == gw.token("d1")
            assert (await client.call("echo.hi", b"text")).body == b"echo:text"


async def test_hello_leaves_the_device_id_to_a_token_that_names_it(
    tmp_path: Path, upstream: Upstream
) -> None:
    """Spec 7.2: a HELLO with a token and no ticket need not repeat the token's device
    id; the gateway takes it from the verified token, and the resumed HELLO (ticket)
    names it again, as the ticket is bound to it."""
    async with gateway_for(tmp_path, rpc=rpc_config(upstream)) as gw:
        client = make_client(gw)
        assert client._make_hello().device_id == ""  # what the first HELLO carries
        async with client:
            assert (await client.call("echo.hi", b"1")).body == b"echo:1"
            assert session_of(gw, "d1").device_id == "d1"
            lost = disconnect_events(client)
            session_of(gw).abort()
            await asyncio.wait_for(lost.get(), WAIT_S)
            assert (await client.call("echo.again", b"2", timeout=WAIT_S)).body == b"echo:2"
            assert client.resumed is True
            assert client._make_hello().device_id == "d1"  # with the ticket
        # A token naming another device: the HELLO says which device it is for, and the
        # gateway refuses the mismatch as before.
        other = make_client(gw, token=gw.token("d2"))
        assert other._make_hello().device_id == "d1"
        with pytest.raises(AuthError):
            await other.connect()
        await other.close()


async def test_error_status_raises_the_mapped_exception(tmp_path: Path, upstream: Upstream) -> None:
    async with gateway_for(tmp_path, rpc=rpc_config(upstream)) as gw, make_client(gw) as client:
        with pytest.raises(NotFound) as caught:
            await client.call("echo.missing", b"{}")
        assert caught.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(NotFound):
            await client.call("nowhere.at.all", b"{}")  # no route
        assert client.connected  # stream errors leave the connection up


# ------------------------------------------------------------------- auth


def _forged(device_id: str) -> bytes:
    now = int(time.time())
    claims = DeviceClaims(device_id, "u1", "demo", expires_at=now + 3600, issued_at=now)
    return TokenSigner(Ed25519PrivateKey.generate(), 1).issue(claims)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("forged", ErrorCode.AUTH_INVALID),
        ("expired", ErrorCode.AUTH_EXPIRED),
        ("garbage", ErrorCode.AUTH_INVALID),
        ("other-device", ErrorCode.FORBIDDEN),
        ("none", ErrorCode.AUTH_REQUIRED),
    ],
)
async def test_bad_token_raises_auth_error_without_retrying(
    tmp_path: Path, case: str, code: ErrorCode
) -> None:
    async with gateway_for(tmp_path) as gw:
        tokens: dict[str, Callable[[], bytes]] = {
            "forged": lambda: _forged("d1"),
            "expired": lambda: gw.token("d1", now=time.time() - 7200, ttl_s=3600),
            "garbage": lambda: b"\x01\x01" + b"\x00" * 80,
            "other-device": lambda: gw.token("d2"),
            "none": lambda: b"",
        }
        client = make_client(gw, token=tokens[case]())
        waiting = asyncio.create_task(client.call("echo.hi", b"", timeout=WAIT_S))
        with pytest.raises(AuthError) as caught:
            await client.connect()
        assert caught.value.code == code
        if code == ErrorCode.FORBIDDEN:
            assert isinstance(caught.value, Forbidden)
        # The pipelined call fails with the same error at once instead of waiting.
        with pytest.raises(AuthError):
            await asyncio.wait_for(waiting, WAIT_S)
        assert client.stats.connect_failures == 1
        assert not client.connected
        # No retry loop: the gateway saw exactly one refused HELLO.
        failures = gw.node.metrics.auth_failures.labels(code.name)._value.get()
        assert failures == 1
        with pytest.raises(AuthError):
            await client.call("echo.hi", b"")
        await client.close()


# -------------------------------------------------------- reconnect, GOAWAY


async def test_reconnects_after_the_server_drops_and_resumes_the_session(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with gateway_for(tmp_path, rpc=rpc_config(upstream)) as gw, make_client(gw) as client:
        lost = disconnect_events(client)
        first_session = client.session_id
        assert client.stats.tls_resumed == 0
        session_of(gw).abort()
        reason = await asyncio.wait_for(lost.get(), WAIT_S)
        assert isinstance(reason, Unavailable)
        # A call made while disconnected waits for the next connection.
        response = await client.call("echo.after", b"1", timeout=WAIT_S)
        assert response.body == b"echo:1"
        assert client.resumed is True
        assert client.session_id == first_session
        assert client.stats.connects == 2
        assert client.stats.resumed_sessions == 1
        assert client.stats.tls_resumed == 1  # TLS session ticket reused too
        # Resumed HELLO carries the ticket; the token stays as fallback by default.
        assert client.resume_ticket


async def test_lost_call_is_retried_only_when_idempotent(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with gateway_for(tmp_path, rpc=rpc_config(upstream)) as gw, make_client(gw) as client:
        with upstream.holding("echo.plain", "echo.retried"):
            plain = asyncio.create_task(client.call("echo.plain", b"p", timeout=WAIT_S))
            retried = asyncio.create_task(
                client.call("echo.retried", b"r", timeout=WAIT_S, idempotent=True)
            )
            hits = {await asyncio.wait_for(upstream.hits.get(), WAIT_S) for _ in range(2)}
            assert hits == {"echo.plain", "echo.retried"}
            session_of(gw).abort()
            with pytest.raises(Unavailable, match="connection lost"):
                await asyncio.wait_for(plain, WAIT_S)
            upstream.release()
            assert (await asyncio.wait_for(retried, WAIT_S)).body == b"echo:r"
        assert client.stats.calls_retried == 1


async def test_goaway_moves_new_calls_to_a_new_connection(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with gateway_for(tmp_path, rpc=rpc_config(upstream)) as gw, make_client(gw) as client:
        lost = disconnect_events(client)
        old = session_of(gw)
        old.goaway(ErrorCode.SHUTTING_DOWN, 20, "node restarting")
        reason = await asyncio.wait_for(lost.get(), WAIT_S)
        assert reason.code == ErrorCode.SHUTTING_DOWN
        fresh = await client.call("echo.fresh", b"f", timeout=WAIT_S)
        assert fresh.body == b"echo:f"
        assert session_of(gw) is not old
        assert client.stats.connects == 2 and client.resumed


async def test_goaway_lets_in_flight_calls_finish_on_the_old_connection(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with gateway_for(tmp_path, rpc=rpc_config(upstream)) as gw, make_client(gw) as client:
        with upstream.holding("echo.slow"):
            in_flight = asyncio.create_task(client.call("echo.slow", b"s", timeout=WAIT_S))
            assert await asyncio.wait_for(upstream.hits.get(), WAIT_S) == "echo.slow"
            session_of(gw).goaway(ErrorCode.SHUTTING_DOWN, 20, "node restarting")
            # New calls go to a new connection while the old one finishes its call.
            fresh = await client.call("echo.fresh", b"f", timeout=WAIT_S)
            assert fresh.body == b"echo:f"
            assert not in_flight.done()
            upstream.release()
            assert (await asyncio.wait_for(in_flight, WAIT_S)).body == b"echo:s"


async def test_session_replaced_stops_reconnecting(tmp_path: Path) -> None:
    async with gateway_for(tmp_path) as gw:
        first = make_client(gw)
        lost = disconnect_events(first)
        await first.connect()
        second = make_client(gw)
        await second.connect()
        reason = await asyncio.wait_for(lost.get(), WAIT_S)
        assert reason.code == ErrorCode.SESSION_REPLACED
        with pytest.raises(ChannelError) as caught:
            await first.call("echo.hi", b"")
        assert caught.value.code == ErrorCode.SESSION_REPLACED
        assert first.stats.connects == 1
        await first.close()
        await second.close()


# ---------------------------------------------------------------- heartbeats


async def test_heartbeats_keep_an_idle_connection_past_the_idle_limit(tmp_path: Path) -> None:
    heartbeat = {"interval_s": 1, "min_s": 1, "max_s": 5, "idle_factor": 1.5}
    async with gateway_for(tmp_path, heartbeat=heartbeat) as gw, make_client(gw) as client:
        lost = disconnect_events(client)
        assert client.heartbeat_s == 1
        session = session_of(gw)
        # Twice the 1.5 s idle limit with no call: only PINGs keep it open.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(lost.get(), 3.2)
        assert client.stats.pings_sent >= 2
        assert gw.node.frames_received(FrameType.PING) >= 2
        assert session_of(gw) is session and client.connected
        assert client.stats.connects == 1


# -------------------------------------------------------------------- pushes


async def test_duplicate_push_is_delivered_once_and_both_are_acked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway_for(tmp_path) as gw:
        acked = spy_acks(gw, monkeypatch)
        async with make_client(gw) as client:
            delivered: list[Push] = []

            @client.on_push
            async def on_push(push: Push) -> None:
                delivered.append(push)

            session = session_of(gw)
            assert session.push("msg-1", b'{"title":"hi"}', (("collapse-key", "c"),), True) is None
            assert session.push("msg-1", b'{"title":"hi"}', (("collapse-key", "c"),), True) is None
            session.flush()
            # Both deliveries acknowledged, batched into one ACK frame.
            assert await asyncio.wait_for(acked.get(), WAIT_S) == ["msg-1", "msg-1"]
            assert delivered == [Push(b"msg-1", (("collapse-key", "c"),), b'{"title":"hi"}')]
            assert client.stats.pushes_duplicate == 1
            assert gw.node.frames_received(FrameType.ACK) == 1
            # A redelivery on a later connection (new delivery id) is still a duplicate.
            session.push("msg-1", b'{"title":"hi"}', (), True)
            session.push("msg-2", b"second", (), True)
            session.flush()
            assert await asyncio.wait_for(acked.get(), WAIT_S) == ["msg-1", "msg-2"]
            assert [p.message_id for p in delivered] == [b"msg-1", b"msg-2"]


def spy_acks(gw: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> asyncio.Queue[list[str]]:
    """The message ids of every ACK the node's sessions report, one list per ACK batch."""
    acked: asyncio.Queue[list[str]] = asyncio.Queue()
    registry = gw.node.registry
    report = registry.acks

    report_many = registry.acks_many

    def acks(session: Session, message_ids: Sequence[str]) -> None:
        acked.put_nowait(list(message_ids))
        report(session, message_ids)

    # The native engine reports every ACK of an event batch at once (one device here).
    def acks_many(sessions: Sequence[Session | None], message_ids: Sequence[str]) -> None:
        acked.put_nowait(list(message_ids))
        report_many(sessions, message_ids)

    monkeypatch.setattr(registry, "acks", acks)
    monkeypatch.setattr(registry, "acks_many", acks_many)
    return acked


async def test_push_handler_failure_leaves_the_push_unacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway_for(tmp_path) as gw:
        acked = spy_acks(gw, monkeypatch)
        async with make_client(gw) as client:

            @client.on_push
            def on_push(push: Push) -> None:
                if push.body == b"bad":
                    raise RuntimeError("cannot store")

            session = session_of(gw)
            session.push("m-bad", b"bad", (), True)
            session.push("m-good", b"good", (), True)
            session.flush()
            assert await asyncio.wait_for(acked.get(), WAIT_S) == ["m-good"]
            assert client.stats.push_handler_errors == 1


# ------------------------------------------------------ backend -> device


async def test_backend_to_device_calls_reach_the_handlers(tmp_path: Path) -> None:
    async with gateway_for(tmp_path) as gw, make_client(gw) as client:

        @client.handle("device.location.get")
        async def location(request: Request) -> bytes:
            assert request.header("precision") == "high"
            return json.dumps({"lat": 30.27, "asked": request.body.decode()}).encode()

        @client.handle("device.fail")
        def fail(request: Request) -> bytes:
            raise RuntimeError("sensor off")

        @client.handle("device.nope")
        def nope(request: Request) -> Response:
            raise NotFound(ErrorCode.NOT_FOUND, "no such sensor")

        device_id = session_of(gw).device_id
        ok, unknown, failing, missing = await asyncio.gather(
            gw.node.call_device(device_id, "device.location.get", b"why", (("precision", "high"),)),
            gw.node.call_device(device_id, "device.unknown"),
            gw.node.call_device(device_id, "device.fail"),
            gw.node.call_device(device_id, "device.nope"),
        )
        assert ok.status == 0
        assert json.loads(ok.body) == {"lat": 30.27, "asked": "why"}
        assert [unknown.status, failing.status, missing.status] == [
            ErrorCode.NOT_FOUND,
            ErrorCode.INTERNAL_ERROR,
            ErrorCode.NOT_FOUND,
        ]
        assert client.stats.requests_served == 3
        absent = await gw.node.call_device("nobody", "device.location.get")
        assert absent.status == ErrorCode.NOT_FOUND


# ------------------------------------------------------- limits and timeouts


async def test_calls_wait_for_a_free_stream_instead_of_failing(
    tmp_path: Path, upstream: Upstream
) -> None:
    limits = {"max_concurrent_streams": 2}
    async with (
        gateway_for(tmp_path, rpc=rpc_config(upstream), limits=limits) as gw,
        make_client(gw) as client,
    ):
        with upstream.holding(*(f"echo.s{i}" for i in range(5))):
            calls = [
                asyncio.create_task(client.call(f"echo.s{i}", b"%d" % i, timeout=WAIT_S))
                for i in range(5)
            ]
            for _ in range(2):
                await asyncio.wait_for(upstream.hits.get(), WAIT_S)
            assert session_of(gw).in_flight == 2
            upstream.release()
            bodies = [r.body for r in await asyncio.wait_for(asyncio.gather(*calls), WAIT_S)]
        assert bodies == [b"echo:%d" % i for i in range(5)]
        assert client.stats.calls_retried == 0


async def test_refused_stream_is_retried_once_a_stream_ends(
    tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals: asyncio.Queue[ErrorCode] = asyncio.Queue()
    original = MmtpSession.stream_error

    def stream_error(self: MmtpSession, stream_id: int, code: ErrorCode, *args: Any) -> None:
        refusals.put_nowait(code)
        original(self, stream_id, code, *args)

    monkeypatch.setattr(MmtpSession, "stream_error", stream_error)
    limits = {"max_pending_requests": 1}
    async with (
        gateway_for(tmp_path, rpc=rpc_config(upstream), limits=limits) as gw,
        make_client(gw) as client,
    ):
        with upstream.holding("echo.first"):
            first = asyncio.create_task(client.call("echo.first", b"1", timeout=WAIT_S))
            assert await asyncio.wait_for(upstream.hits.get(), WAIT_S) == "echo.first"
            # One pending call per device: the gateway refuses the second, and the
            # client sends it again once the first call has ended.
            second = asyncio.create_task(client.call("echo.second", b"2", timeout=WAIT_S))
            code = await asyncio.wait_for(refusals.get(), WAIT_S)
            assert code == ErrorCode.REFUSED_STREAM
            assert not second.done()
            upstream.release()
            assert (await asyncio.wait_for(first, WAIT_S)).body == b"echo:1"
            assert (await asyncio.wait_for(second, WAIT_S)).body == b"echo:2"
        assert client.stats.calls_retried == 1
        assert refusals.empty()


async def test_call_timeout_raises_and_cancels_the_stream(
    tmp_path: Path, upstream: Upstream
) -> None:
    async with gateway_for(tmp_path, rpc=rpc_config(upstream)) as gw, make_client(gw) as client:
        with upstream.holding("echo.stuck"):
            with pytest.raises(Timeout, match="sent, no answer"):
                await client.call("echo.stuck", b"", timeout=0.2)
            # The gateway got a CANCEL and stopped serving the stream.
            assert await client.call("echo.next", b"n") == Response(
                0, (("x-locale", ""), ("content-type", "application/octet-stream")), b"echo:n"
            )
            assert gw.node.frames_received(FrameType.CANCEL) == 1
            assert session_of(gw).in_flight == 0


async def test_dead_connection_is_detected_by_heartbeat_and_replaced(tmp_path: Path) -> None:
    heartbeat = {"interval_s": 1, "min_s": 1, "max_s": 5, "idle_factor": 5}
    async with gateway_for(tmp_path, heartbeat=heartbeat) as gw:
        relay = Relay(gw.port)
        async with relay as port:
            client = make_client(gw)
            client.port = port
            lost = disconnect_events(client)
            await client.connect()
            try:
                relay.freeze()  # the server is still there, but nothing gets through
                reason = await asyncio.wait_for(lost.get(), WAIT_S)
                assert isinstance(reason, Unavailable) and "no frame" in reason.message
                rtt = await client.ping(timeout=WAIT_S)  # on the new connection
                assert rtt > 0 and client.resumed and client.stats.connects == 2
                full, resumed = relay.paths
                # The resumed TLS handshake skips the certificate: far fewer bytes down.
                assert resumed["down"] < full["down"]
            finally:
                await client.close(timeout_s=0.5)


# ------------------------------------------------------------- dictionaries


@pytest.mark.engine_only("python")  # the gateway sends DICT only through the wire core
async def test_delivered_dictionary_is_kept_and_announced_next_time(tmp_path: Path) -> None:
    from tests.helpers import trained_dictionary

    dictionary = trained_dictionary(dict_id=9)
    store = DictionaryStore()
    async with gateway_for(tmp_path) as gw, make_client(gw, dictionaries=store) as client:
        got: asyncio.Future[Push] = asyncio.get_running_loop().create_future()
        client.on_push(got.set_result)
        session = session_of(gw)
        assert isinstance(session, PyMmtpSession)
        session.conn.send_dictionary(dictionary)
        session.conn.send_push(b"after-dict", b"compressed with it " * 8)
        session.flush()
        push = await asyncio.wait_for(got, WAIT_S)
        assert push.body == b"compressed with it " * 8
        assert store.ids == (9,)
        # Next connection: HELLO lists it and pipelined requests may use it.
        lost = disconnect_events(client)
        session.abort()
        await asyncio.wait_for(lost.get(), WAIT_S)
        await client.ping(timeout=WAIT_S)
        again = session_of(gw)
        assert isinstance(again, PyMmtpSession)
        assert again.conn.hello is not None and again.conn.hello.dictionaries == (9,)
        assert again.conn.outgoing_dictionary == 9


# ----------------------------------------------------------------------- CLI


async def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.to_thread(channel_main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_device_cli_call_and_ping(
    tmp_path: Path, upstream: Upstream, capsys: pytest.CaptureFixture[str]
) -> None:
    async with gateway_for(tmp_path / "gw", rpc=rpc_config(upstream)) as gw:
        token_file = tmp_path / "d1.token"
        token_file.write_text(encode_token_text(gw.token("d1")) + "\n")
        state = tmp_path / "d1.state"
        base = [
            "device",
            "--port",
            str(gw.port),
            "--ca",
            str(gw.ca_cert),
            "--device",
            "d1",
            "--app",
            "demo",
            "--token-file",
            str(token_file),
            "--resume-state",
            str(state),
        ]

        code, out, err = await _cli(
            [*base, "call", "echo.cli", '{"a":1}', "--header", "locale=en"], capsys
        )
        assert (code, out) == (0, 'echo:{"a":1}'), err
        assert "status 0" in err and "session new" in err
        assert state.stat().st_mode & 0o777 == 0o600

        code, out, err = await _cli([*base, "ping", "--count", "2"], capsys)
        assert code == 0, err
        assert "session resumed" in out  # the ticket from the state file
        assert out.count("pong in") == 2

        code, out, err = await _cli([*base, "call", "echo.missing", "{}"], capsys)
        assert (code, out) == (1, "")
        assert "NOT_FOUND" in err


async def test_device_cli_listen_prints_pushes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with gateway_for(tmp_path / "gw") as gw:
        argv = [
            "device",
            "--port",
            str(gw.port),
            "--ca",
            str(gw.ca_cert),
            "--device",
            "d9",
            "--token",
            encode_token_text(gw.token("d9")),
            "listen",
            "--count",
            "1",
            "--seconds",
            str(WAIT_S),
        ]
        listening = asyncio.create_task(asyncio.to_thread(channel_main, argv))
        session = await _wait_for_session(gw, "d9", listening)
        session.push("m1", "héllo".encode(), (("kind", "greeting"),), True)
        session.flush()
        assert await asyncio.wait_for(listening, WAIT_S) == 0
        line = json.loads(capsys.readouterr().out)
        assert line == {"message_id": b"m1".hex(), "headers": {"kind": "greeting"}, "body": "héllo"}


async def _wait_for_session(gw: RunningGateway, device_id: str, task: asyncio.Task[int]) -> Session:
    """The device's session once authenticated (or the CLI's failure, if it exits first)."""
    authenticated = gw.node.wait_authenticated(device_id)
    done, _ = await asyncio.wait(
        {authenticated, task}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED
    )
    assert authenticated in done, "the CLI exited (or took too long) before connecting"
    return authenticated.result()
