"""The gateway's handshake over real TLS: auth, resumption, limits, timeouts."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gateway_harness import RunningGateway, gateway
from raw_device import RawDevice

from channel.security.tokens import DeviceClaims, TokenSigner
from channel.wire import (
    ConnectionErrorReceived,
    ErrorCode,
    Hello,
    HelloAccepted,
    ResponseReceived,
)
from channel.wire.frames import FrameType
from channel.wire.varint import encode_varint

pytestmark = pytest.mark.both_engines


def hello(gw: RunningGateway, device_id: str = "d1", **fields: object) -> Hello:
    token = fields.pop("token", None)
    return Hello(
        device_id=device_id,
        app_id=str(fields.pop("app_id", "demo")),
        token=token if isinstance(token, bytes) else gw.token(device_id),
        preset_id=2,
        app_version="8.12.3",
        platform="android",
        client_time_ms=int(time.time() * 1000),
        **fields,  # type: ignore[arg-type]
    )


async def refused_with(device: RawDevice) -> int:
    events = await device.until(ConnectionErrorReceived)
    errors = [e for e in events if isinstance(e, ConnectionErrorReceived)]
    assert errors, events
    assert await device.closed_by_peer()
    return errors[0].code


async def test_full_handshake_then_resumed_with_ticket(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        await device.send_hello(hello(gw))
        (accepted,) = await device.events()
        assert isinstance(accepted, HelloAccepted)
        assert not accepted.ack.resumed and accepted.ack.heartbeat_s == 240
        assert 0 < len(accepted.ack.resume_ticket) <= 80
        assert gw.node.by_device["d1"].auth is not None
        await device.close()

        again = await RawDevice.connect(gw.port, gw.ca_cert)
        await again.send_hello(hello(gw, token=b"", resume_ticket=accepted.ack.resume_ticket))
        (resumed,) = await again.events()
        assert isinstance(resumed, HelloAccepted) and resumed.ack.resumed
        assert resumed.ack.session_id == accepted.ack.session_id
        await again.close()


@pytest.mark.parametrize("case", ["forged", "expired", "other-device", "other-app", "none"])
async def test_bad_credentials_are_refused_with_a_code(tmp_path: Path, case: str) -> None:
    async with gateway(tmp_path) as gw:
        now = int(time.time())
        if case == "forged":
            forger = TokenSigner(Ed25519PrivateKey.generate(), 1)
            token = forger.issue(DeviceClaims("d1", "u1", "demo", now + 600, now))
        elif case == "expired":
            token = gw.token("d1", ttl_s=60, now=time.time() - 600)
        elif case == "other-device":
            token = gw.token("d2")
        elif case == "other-app":
            token = gw.token("d1", app_id="other")
        else:
            token = b""
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        await device.send_hello(hello(gw, token=token))
        code = await refused_with(device)
        expected = {
            "forged": ErrorCode.AUTH_INVALID,
            "expired": ErrorCode.AUTH_EXPIRED,
            "other-device": ErrorCode.FORBIDDEN,
            "other-app": ErrorCode.FORBIDDEN,
            "none": ErrorCode.AUTH_REQUIRED,
        }[case]
        assert code == expected
        assert "d1" not in gw.node.by_device
        metrics = await admin_text(gw, "/metrics")
        assert f'channel_auth_failures_total{{code="{expected.name}"}} 1.0' in metrics


async def test_tampered_ticket_without_token_is_refused(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        await device.send_hello(hello(gw))
        (accepted,) = await device.events()
        assert isinstance(accepted, HelloAccepted)
        ticket = bytearray(accepted.ack.resume_ticket)
        ticket[-1] ^= 1
        other = await RawDevice.connect(gw.port, gw.ca_cert)
        await other.send_hello(hello(gw, token=b"", resume_ticket=bytes(ticket)))
        assert await refused_with(other) == ErrorCode.TICKET_INVALID


async def test_pipelined_request_is_answered_in_the_first_round_trip(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        device.conn.send_hello(hello(gw))
        device.conn.send_request("no.such.op", b'{"a":1}')
        await device.flush()
        assert device.writes == 1  # HELLO and the request in one write
        events = await device.until(ResponseReceived)
        assert isinstance(events[0], HelloAccepted)
        response = events[-1]
        assert isinstance(response, ResponseReceived)
        assert response.status == ErrorCode.NOT_FOUND
        await device.close()


async def test_second_connection_replaces_the_first(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        first = await RawDevice.connect(gw.port, gw.ca_cert)
        await first.send_hello(hello(gw))
        await first.events()
        second = await RawDevice.connect(gw.port, gw.ca_cert)
        await second.send_hello(hello(gw))
        assert isinstance((await second.events())[0], HelloAccepted)
        assert await refused_with(first) == ErrorCode.SESSION_REPLACED
        await second.close()


async def test_oversized_frame_is_a_frame_size_error(tmp_path: Path) -> None:
    async with gateway(tmp_path, limits={"max_frame_size": 4096}) as gw:
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        await device.send_hello(hello(gw))
        (accepted,) = await device.events()
        assert isinstance(accepted, HelloAccepted) and accepted.ack.max_frame_size == 4096
        # Only the frame header: the gateway must refuse before the payload arrives.
        device.writer.write(bytes([FrameType.REQUEST << 4]) + encode_varint(1 << 20))
        assert await refused_with(device) == ErrorCode.FRAME_SIZE_ERROR


async def test_no_hello_is_a_handshake_timeout(tmp_path: Path) -> None:
    async with gateway(tmp_path, server={"handshake_timeout_s": 0.5}) as gw:
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        assert await refused_with(device) == ErrorCode.HANDSHAKE_TIMEOUT


async def test_unfinished_tls_handshake_is_dropped(tmp_path: Path) -> None:
    async with gateway(tmp_path, server={"handshake_timeout_s": 0.5}) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"\x16\x03\x01\x00")  # the start of a ClientHello, then nothing
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_tls12_and_missing_alpn_are_refused(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        # Both engines read the ClientHello before TLS answers it (the native one in
        # Rust) and send the alerts; only the Python engine's optional uvloop TLS cannot.
        alert = gw.node.engine.name == "native" or gw.node.config.server.tls_engine == "memorybio"
        tls12 = ssl.create_default_context(cafile=str(gw.ca_cert))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        tls12.set_alpn_protocols(["mmtp/1"])
        # Spec 3.1: TLS 1.3 only; the client hears why (alert protocol_version).
        with pytest.raises(ssl.SSLError if alert else (ssl.SSLError, ConnectionError)) as refused:
            await asyncio.open_connection(
                "127.0.0.1", gw.port, ssl=tls12, server_hostname="localhost"
            )
        assert not alert or "alert protocol version" in str(refused.value)
        for offered in ([], ["h2"], ["h2", "http/1.1"]):
            context = ssl.create_default_context(cafile=str(gw.ca_cert))
            if offered:
                context.set_alpn_protocols(offered)
            if alert:
                # Spec 3.2: the handshake fails (RFC 7301 alert no_application_protocol).
                with pytest.raises(ssl.SSLError, match="no application protocol"):
                    await RawDevice.connect(gw.port, gw.ca_cert, context=context)
            else:
                # uvloop's TLS transport cannot refuse on ALPN: ERROR right after it.
                device = await RawDevice.connect(gw.port, gw.ca_cert, context=context)
                assert await refused_with(device) == ErrorCode.UNSUPPORTED_VERSION
        both = ssl.create_default_context(cafile=str(gw.ca_cert))
        both.set_alpn_protocols(["h2", "mmtp/1"])
        device = await RawDevice.connect(gw.port, gw.ca_cert, context=both)
        await device.send_hello(hello(gw))
        assert isinstance((await device.events())[0], HelloAccepted)
        await device.close()


async def test_connections_per_ip_are_capped(tmp_path: Path) -> None:
    async with gateway(tmp_path, server={"max_connections_per_ip": 2}) as gw:
        kept = [await RawDevice.connect(gw.port, gw.ca_cert) for _ in range(2)]
        for i, device in enumerate(kept):
            await device.send_hello(hello(gw, f"k{i}"))
            await device.events()
        # Counted at TCP accept: the third is cut before any TLS byte is sent.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await RawDevice.connect(gw.port, gw.ca_cert)
        for device in kept:
            await device.close()


async def test_silent_device_is_closed_after_the_idle_limit(tmp_path: Path) -> None:
    heartbeat = {"interval_s": 1, "min_s": 1, "max_s": 5, "idle_factor": 1.5}
    async with gateway(tmp_path, heartbeat=heartbeat) as gw:
        talker = await RawDevice.connect(gw.port, gw.ca_cert)
        await talker.send_hello(hello(gw, "talker"))
        await talker.events()
        silent = await RawDevice.connect(gw.port, gw.ca_cert)
        await silent.send_hello(hello(gw, "silent"))
        (accepted,) = await silent.events()
        assert isinstance(accepted, HelloAccepted) and accepted.ack.heartbeat_s == 1
        closed = asyncio.create_task(refused_with(silent))
        while not closed.done():  # the talker pings at its interval and stays
            talker.conn.send_ping()
            await talker.flush()
            await asyncio.wait([closed], timeout=0.5)
        assert closed.result() == ErrorCode.IDLE_TIMEOUT
        assert "talker" in gw.node.by_device and "silent" not in gw.node.by_device
        await talker.close()


async def test_health_and_readiness(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        assert '"ready": true' in await admin_text(gw, "/readyz")
        assert '"status": "ok"' in await admin_text(gw, "/healthz")
        device = await RawDevice.connect(gw.port, gw.ca_cert)
        await device.send_hello(hello(gw))
        await device.events()
        text = await admin_text(gw, "/metrics")
        assert 'channel_handshakes_total{kind="full"} 1.0' in text
        assert 'channel_frames_total{direction="in",type="HELLO"} 1.0' in text
        # Bytes through TLS both ways (the HELLO and its HELLO_ACK at least).
        assert float(_sample(text, 'channel_bytes_total{direction="in"}')) > 0
        assert float(_sample(text, 'channel_bytes_total{direction="out"}')) > 0
        # Each family once: Prometheus refuses a scrape with a second HELP or TYPE line
        # for a name (an unused Counter and a collector both named channel_frames did).
        declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
        assert len(declared) == len(set(declared)), sorted(declared)
        await device.close()


def _sample(text: str, name: str) -> str:
    (value,) = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")]
    return value


async def admin_text(gw: RunningGateway, path: str) -> str:
    url = f"http://127.0.0.1:{gw.admin_port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()
