"""A gateway against devices that misbehave on purpose, over real TLS.

One device must not be able to take more than its slice of the node (a CPU
budget per device), an answer too large for a device must reach it as a clear
error without leaking its stream, and odd but legal byte sequences must end
connections without a traceback in the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest
from aiohttp import web
from gateway_harness import RunningGateway, gateway, http_upstream
from raw_device import RawDevice
from test_gateway_rpc import call, connect

from channel.engine.pysession import HOLD_BUDGET, PyMmtpSession
from channel.mmtp.session import MmtpSession
from channel.wire import (
    ConnectionErrorReceived,
    ErrorCode,
    Hello,
    PongReceived,
    ResponseReceived,
)
from channel.wire.frames import FrameType, encode_frame
from channel.wire.varint import encode_varint
from sdk_client import Client, UpstreamError

pytestmark = pytest.mark.both_engines


def _hello(gw: RunningGateway, device_id: str) -> Hello:
    return Hello(device_id=device_id, app_id="demo", token=gw.token(device_id), preset_id=2)


# ----------------------------------------------------------- item 5: HELLO + ERROR


async def test_hello_then_error_zero_in_one_read_leaves_no_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with gateway(tmp_path) as gw:
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        device.conn.send_hello(_hello(gw, "d1"))
        hello = device.conn.data_to_send()
        # ERROR on stream 0, code CANCELLED (26), no retry hint, no message: the device
        # gives up in the same write as its HELLO (seen 48 times by the fuzzer).
        device.writer.write(hello + bytes.fromhex("a0 03 00 1a 00"))
        await device.writer.drain()
        assert await device.closed_by_peer()
        deadline = time.monotonic() + 5
        while gw.node.connection_count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the node sees the close a moment after the device
        assert gw.node.connection_count == 0 and "d1" not in gw.node.by_device
    problems = [r for r in caplog.records if r.exc_info or "Fatal error" in r.getMessage()]
    assert not problems, [r.getMessage() for r in problems]


# ---------------------------------------------------- item 2: answers too large


async def _big_answer(request: web.Request) -> web.Response:
    await request.read()
    # 400 KiB that zstd cannot shrink: above the device's 256 KiB max_frame_size,
    # below the upstream response cap (1 MiB).
    return web.Response(body=os.urandom(400 * 1024), content_type="application/octet-stream")


async def _small_answer(request: web.Request) -> web.Response:
    return web.Response(body=await request.read(), content_type="application/json")


async def test_answer_larger_than_the_device_accepts_is_a_clear_error_and_frees_the_stream(
    tmp_path: Path,
) -> None:
    routes = {"/rpc/big.get": _big_answer, "/rpc/small.get": _small_answer}
    async with http_upstream(routes) as url:
        rpc = {
            "clusters": {"up": {"endpoints": [url]}},
            "routes": [{"match": "big.", "cluster": "up"}, {"match": "small.", "cluster": "up"}],
        }
        limits = {"request_burst": 1000, "requests_per_second": 1000.0}
        async with gateway(tmp_path, rpc=rpc, limits=limits) as gw:
            client = Client(
                "127.0.0.1",
                gw.port,
                device_id="d1",
                token=gw.token("d1"),
                ca_file=gw.ca_cert,
                app_id="demo",
                reconnect=False,
                call_timeout_s=30,
            )
            await client.connect()
            try:
                # More calls than the connection has streams (64): a leaked slot each
                # time wedged the connection after 64, and each call waited its timeout.
                for _ in range(100):
                    with pytest.raises(UpstreamError) as info:
                        await client.call("big.get", b"{}")
                    assert info.value.code == ErrorCode.UPSTREAM_ERROR
                    assert "max_frame_size" in str(info.value)
                session = gw.node.by_device["d1"]
                assert isinstance(session, MmtpSession) and session.in_flight == 0
                answer = await client.call("small.get", b'{"still":"usable"}')
                assert answer.body == b'{"still":"usable"}'
                assert client.connected
            finally:
                await client.close()


# ------------------------------------------------------- item 1: a CPU budget


async def test_a_flooding_device_is_paused_while_another_is_answered(
    tmp_path: Path, gateway_engine: str
) -> None:
    limits = {"device_input_cpu_ms_per_s": 100.0, "device_input_burst_ms": 2.0}
    async with gateway(tmp_path, limits=limits) as gw:
        flooder = await connect(gw, "flooder")
        other = await connect(gw, "other")
        count = 20_000
        flood = b"".join(
            encode_frame(FrameType.PING, 0, i.to_bytes(4, "big")) for i in range(count)
        )
        flooder.writer.write(flood)
        await flooder.writer.drain()
        first = await flooder.events()
        assert isinstance(first[0], PongReceived)  # the flood is being processed
        flooding = gw.node.by_device["flooder"]

        other.conn.send_ping(b"other")
        await other.flush()
        assert await other.events() == [PongReceived(b"other")]
        if gateway_engine == "python":
            # Answered while the flood still waits for its budget: ~80 ms of PINGs at a
            # tenth of a core take ~0.8 s (before the budget, a read's PINGs went in one go).
            assert isinstance(flooding, PyMmtpSession)
            assert flooding._holds & HOLD_BUDGET or flooding.conn._parser.buffered_bytes

        pongs = [e for e in first if isinstance(e, PongReceived)]
        while len(pongs) < count:
            pongs += [e for e in await flooder.events(10) if isinstance(e, PongReceived)]
        assert [int.from_bytes(p.payload, "big") for p in pongs] == list(range(count))
        if gateway_engine == "python":
            assert gw.node.metrics.input_budget_pauses._value.get() > 0
        else:
            # The native engine answers PINGs itself, a bounded number per device per
            # poll round (max_frames_per_round): the flood yields to the other device.
            assert gw.node.engine.stats()["fairness_yields"] > 0
        await flooder.close()
        await other.close()


@pytest.mark.engine_only("python")  # the native engine bounds work per poll round instead
async def test_the_budget_can_be_turned_off(tmp_path: Path) -> None:
    async with gateway(tmp_path, limits={"device_input_cpu_ms_per_s": 0}) as gw:
        assert gw.node.mmtp.input_budget is None
        device = await connect(gw, "d1")
        assert isinstance(await call(device, "channel.echo", b"x"), ResponseReceived)
        await device.close()


async def test_oversized_hello_is_refused_before_its_payload(tmp_path: Path) -> None:
    async with gateway(tmp_path, limits={"max_hello_size": 2048}) as gw:
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        # The frame header alone: the gateway refuses from the announced length.
        device.writer.write(bytes([FrameType.HELLO << 4]) + encode_varint(2049))
        await device.writer.drain()
        events = await device.until(ConnectionErrorReceived)
        errors = [e for e in events if isinstance(e, ConnectionErrorReceived)]
        assert errors and errors[0].code == ErrorCode.FRAME_SIZE_ERROR


async def test_unknown_field_hello_with_a_bad_token_is_refused_on_its_fields(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as gw:
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        payload = bytes.fromhex("0201") + bytes.fromhex("0503") + b"dev" + b"\xfe\x01\x00" * 33
        device.writer.write(encode_frame(FrameType.HELLO, 0, payload))
        await device.writer.drain()
        events = await device.until(ConnectionErrorReceived)
        errors = [e for e in events if isinstance(e, ConnectionErrorReceived)]
        assert errors and errors[0].code == ErrorCode.FIELD_ERROR
        assert "unknown numbers" in errors[0].message


# ------------------------------------------- item 6: counted at TCP accept


@pytest.fixture(params=["memorybio", "uvloop"])
def tls_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _idle_tcp(port: int, count: int) -> list[asyncio.Task[bytes]]:
    """``count`` TCP connections that never send a byte; each task ends when it is closed."""
    tasks = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        tasks.append(asyncio.create_task(_until_closed(reader, writer)))
    return tasks


async def _until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    try:
        return await reader.read()
    except ConnectionError:
        return b""
    finally:
        writer.close()


def _sample(gw: RunningGateway, name: str, **labels: str) -> float:
    value = gw.node.metrics.registry.get_sample_value(name, labels or None)
    return float(value or 0)


async def _per_ip_cut_at_accept(gw: RunningGateway) -> None:
    tasks = await _idle_tcp(gw.port, 10)
    closed: set[asyncio.Task[bytes]] = set()
    while len(closed) < 7:
        done, _ = await asyncio.wait(
            set(tasks) - closed, timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        assert done, f"only {len(closed)} of the 7 extra connections were closed"
        closed |= done
    # Cut at once (no TLS byte was ever sent to them), while the three counted
    # ones wait for a ClientHello until their handshake timeout (60 s here).
    assert len(closed) == 7 and all(task.result() == b"" for task in closed)
    assert not any(task.done() for task in set(tasks) - closed)
    assert _sample(gw, "channel_refused_connections_total", reason="RATE_LIMITED") == 7
    assert _sample(gw, "channel_connections") == 3
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _idle_connections_time_out(gw: RunningGateway) -> None:
    tasks = await _idle_tcp(gw.port, 3)
    assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == [b""] * 3
    deadline = time.monotonic() + 5
    while _sample(gw, "channel_connections") and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # the server's side of the close runs after the client's
    device = await connect(gw, "after")
    assert isinstance(await call(device, "channel.echo", b"x"), ResponseReceived)
    await device.close()
    assert _sample(gw, "channel_refused_connections_total", reason="RATE_LIMITED") == 0


@pytest.mark.engine_only("python")
async def test_connections_over_the_per_ip_limit_are_cut_at_accept(
    tmp_path: Path, tls_engine: str
) -> None:
    server = {"max_connections_per_ip": 3, "handshake_timeout_s": 60, "tls_engine": tls_engine}
    async with gateway(tmp_path, server=server) as gw:
        await _per_ip_cut_at_accept(gw)


@pytest.mark.engine_only("native")
async def test_native_engine_cuts_connections_over_the_per_ip_limit_at_accept(
    tmp_path: Path,
) -> None:
    server = {"max_connections_per_ip": 3, "handshake_timeout_s": 60}
    async with gateway(tmp_path, server=server) as gw:
        await _per_ip_cut_at_accept(gw)


@pytest.mark.engine_only("python")
async def test_idle_counted_connections_close_at_the_handshake_timeout_and_free_their_slot(
    tmp_path: Path, tls_engine: str
) -> None:
    server = {"max_connections_per_ip": 3, "handshake_timeout_s": 0.5, "tls_engine": tls_engine}
    async with gateway(tmp_path, server=server) as gw:
        await _idle_connections_time_out(gw)


@pytest.mark.engine_only("native")
async def test_native_engine_closes_idle_connections_at_the_handshake_timeout(
    tmp_path: Path,
) -> None:
    server = {"max_connections_per_ip": 3, "handshake_timeout_s": 0.5}
    async with gateway(tmp_path, server=server) as gw:
        await _idle_connections_time_out(gw)
