"""The PROXY protocol (v1, v2) before the device's TLS: the parser, then real gateways.

The parser is fed literal headers (from the protocol's text), whole and a byte at a
time. The gateway tests run a node with ``[server] proxy_protocol`` on both engines
(and both of the Python engine's TLS engines) and play the balancer themselves: a
PROXY header naming a device address, then the device's TLS and HELLO over the same
TCP connection. The native engine's parser has its own tests (cargo test).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import struct
from pathlib import Path

import pytest
from gateway_harness import RunningGateway, gateway
from raw_device import RawDevice
from test_gateway_handshake import admin_text, hello

from channel.config import ConfigError, load_config
from channel.engine.native import NativeEngine
from channel.engine.proxyproto import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
    ProxyPolicy,
)
from channel.engine.python import PythonEngine
from channel.wire import HelloAccepted

# ------------------------------------------------------------------ headers


def v2(
    source: str,
    destination: str = "10.0.0.9",
    ports: tuple[int, int] = (51000, 8443),
    *,
    command: int = 0x1,
    transport: int = 0x1,
    tlvs: bytes = b"",
) -> bytes:
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x1 if src.version == 4 else 0x2
    body = src.packed + dst.packed + struct.pack("!HH", *ports) + tlvs
    return (
        V2_SIGNATURE
        + bytes([0x20 | command, family << 4 | transport])
        + (struct.pack("!H", len(body)) + body)
    )


def v1(source: str, destination: str = "10.0.0.9", ports: str = "51000 8443") -> bytes:
    family = "TCP4" if ipaddress.ip_address(source).version == 4 else "TCP6"
    return f"PROXY {family} {source} {destination} {ports}\r\n".encode()


def feed_bytewise(data: bytes, limit: int = 1024) -> ProxyHeader:
    reader = ProxyHeaderReader(limit)
    for index in range(len(data)):
        result = reader.feed(data[index : index + 1])
        if result is not None:
            assert index == len(data) - 1 or result.rest == b""
            return result
    raise AssertionError("header never completed")


# ------------------------------------------------------------------ parser


@pytest.mark.parametrize(
    ("header", "source", "port"),
    [
        (v1("198.51.100.7"), "198.51.100.7", 51000),
        (v1("2001:db8::1", "2001:db8::2"), "2001:db8::1", 51000),
        (v2("198.51.100.7"), "198.51.100.7", 51000),
        (v2("2001:db8::1", "2001:db8::2", (1, 2)), "2001:db8::1", 1),
        (v2("::ffff:198.51.100.7", "::ffff:10.0.0.9"), "198.51.100.7", 51000),
        # TLVs (here an ALPN TLV as HAProxy sends) are skipped whole.
        (v2("198.51.100.7", tlvs=b"\x01\x00\x06mmtp/1"), "198.51.100.7", 51000),
    ],
)
def test_headers_name_the_device_whole_or_byte_by_byte(
    header: bytes, source: str, port: int
) -> None:
    tls = b"\x16\x03\x01\x00\x05hello"
    whole = ProxyHeaderReader().feed(header + tls)
    assert whole is not None and (whole.source_ip, whole.source_port) == (source, port)
    assert whole.rest == tls
    assert feed_bytewise(header).source_ip == source


def test_local_and_unknown_headers_name_no_device() -> None:
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    for header in (local, b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ff::1 ff::2 1 2\r\n"):
        result = ProxyHeaderReader().feed(header + b"x")
        assert result is not None and result.source_ip is None and result.rest == b"x"
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x04abcd"  # PROXY, family UNSPEC: use the peer
    result = ProxyHeaderReader().feed(unspec)
    assert result is not None and result.source_ip is None


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x16\x03\x01\x02\x00\x01", "no PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "expected"),
        (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "not an IP address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "over 65535"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "no CRLF"),
        (b"PROXY " + b"9" * 120, "no CRLF within 107"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
        (V2_SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12), "unknown command"),
        (V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "not a stream"),
        (V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216), "not IPv4 or IPv6"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "need 12"),
        (V2_SIGNATURE + b"\x21\x11\x04\x00", "over the limit of 1024"),
    ],
)
def test_bad_headers_are_refused_with_the_reason(data: bytes, words: str) -> None:
    with pytest.raises(ProxyHeaderError, match=words):
        ProxyHeaderReader().feed(data)


def test_an_oversized_v2_header_is_refused_from_its_length_field() -> None:
    reader = ProxyHeaderReader(64)
    header = v2("198.51.100.7", tlvs=b"\x04" + struct.pack("!H", 40) + bytes(40))
    assert reader.feed(header[:15]) is None
    with pytest.raises(ProxyHeaderError, match="over the limit of 64"):
        reader.feed(header[15:16])  # the length is whole: refused before the rest


def test_policy_trusts_networks_and_mapped_addresses() -> None:
    policy = ProxyPolicy(["10.1.0.0/16", "2001:db8::/32", "127.0.0.1"])
    assert policy.trusts("10.1.200.3") and policy.trusts("::ffff:10.1.0.1")
    assert policy.trusts("2001:db8::42") and policy.trusts("127.0.0.1")
    assert not policy.trusts("10.2.0.1") and not policy.trusts("") and not policy.trusts("x")


def test_configuration_is_checked() -> None:
    base = {"engine": "python"}
    with pytest.raises(ConfigError, match="no balancer address is trusted"):
        load_config(environ={}, overrides={"server": {**base, "proxy_protocol": True}})
    with pytest.raises(ConfigError, match="not an address or CIDR"):
        load_config(environ={}, overrides={"server": {**base, "proxy_trusted": ["10.0.0.0/33"]}})
    with pytest.raises(ConfigError, match="proxy_max_header_bytes"):
        load_config(environ={}, overrides={"server": {**base, "proxy_max_header_bytes": 20}})
    config = load_config(
        environ={
            "CHANNEL_SERVER__PROXY_PROTOCOL": "true",
            "CHANNEL_SERVER__PROXY_TRUSTED": '["10.0.0.2/32", "10.0.1.0/24"]',
            "CHANNEL_SERVER__ENGINE": "python",
        }
    )
    assert config.server.proxy_trusted == ["10.0.0.2/32", "10.0.1.0/24"]


# ------------------------------------------------------------------ gateways
#
# Every gateway test runs on both engines (the native one reads the header in Rust,
# native/engine/src/proxy.rs); the Python engine's two TLS engines each get a run.


def proxied(trusted: str = "127.0.0.1/32", **server: object) -> dict[str, object]:
    return {"proxy_protocol": True, "proxy_trusted": [trusted], **server}


def tcp_connections(gw: RunningGateway) -> int:
    """Sockets the node counts against its limits (handshaking ones included)."""
    engine = gw.node.engine
    if isinstance(engine, PythonEngine):
        return engine._tcp_connections
    assert isinstance(engine, NativeEngine)
    return int(engine.stats()["connections"])


def connections_from(gw: RunningGateway, peer_ip: str) -> int | None:
    """The Python engine's per-address count (None: the native engine's is internal)."""
    engine = gw.node.engine
    return engine.connections_from(peer_ip) if isinstance(engine, PythonEngine) else None


async def accepted(gw: RunningGateway, header: bytes, device_id: str) -> RawDevice:
    device = await RawDevice.connect(gw.port, gw.ca_cert, proxy_header=header)
    await device.send_hello(hello(gw, device_id))
    (event,) = await device.events()
    assert isinstance(event, HelloAccepted)
    return device


async def refused_before_tls(gw: RunningGateway, header: bytes) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await RawDevice.connect(gw.port, gw.ca_cert, proxy_header=header)


async def refused_count(gw: RunningGateway, reason: str) -> float:
    for line in (await admin_text(gw, "/metrics")).splitlines():
        if line.startswith(f'channel_refused_connections_total{{reason="{reason}"}}'):
            return float(line.split()[1])
    return 0.0


async def per_ip_limits_count_the_device(tmp_path: Path, **server: object) -> None:
    async with gateway(tmp_path, server={**proxied(max_connections_per_ip=2), **server}) as gw:
        first = await accepted(gw, v2("198.51.100.7"), "a1")
        second = await accepted(gw, v1("198.51.100.7"), "a2")
        assert connections_from(gw, "198.51.100.7") in (2, None)
        # A third device behind the same address is over the limit: cut before TLS...
        await refused_before_tls(gw, v2("198.51.100.7"))
        assert await refused_count(gw, "RATE_LIMITED") == 1
        # ...while another address, through the same balancer, is welcome: the
        # balancer's own address (three connections now) is not counted.
        other = await accepted(gw, v2("2001:db8::7", "2001:db8::1"), "b1")
        assert connections_from(gw, "127.0.0.1") in (0, None)
        for device in (first, second, other):
            await device.close()
        await wait_until(lambda: tcp_connections(gw) == 0)
        # The device's address was released with its connections.
        again = [await accepted(gw, v2("198.51.100.7"), f"c{i}") for i in range(2)]
        for device in again:
            await device.close()


@pytest.mark.both_engines
async def test_per_ip_limits_count_the_device_address_from_the_header(tmp_path: Path) -> None:
    await per_ip_limits_count_the_device(tmp_path)


@pytest.mark.both_engines
@pytest.mark.engine_only("python")
async def test_per_ip_limits_count_the_device_address_on_uvloop_tls(tmp_path: Path) -> None:
    await per_ip_limits_count_the_device(tmp_path, tls_engine="uvloop")


async def only_trusted_balancers(tmp_path: Path, **server: object) -> None:
    async with gateway(tmp_path, server=proxied("127.0.0.1/32", **server)) as gw:
        # A balancer that forgot the header (the device's TLS straight away).
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await RawDevice.connect(gw.port, gw.ca_cert)
        # A malformed header.
        await refused_before_tls(gw, b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n")
        assert await refused_count(gw, "PROXY_INVALID") == 2
        # A health check from the balancer itself (v2 LOCAL): counted as the balancer.
        local = await accepted(gw, V2_SIGNATURE + b"\x20\x00\x00\x00", "lb-check")
        assert connections_from(gw, "127.0.0.1") in (1, None)
        await local.close()
    async with gateway(tmp_path / "u", server=proxied("192.0.2.1/32", **server)) as gw:
        # Anyone but the balancer is cut at accept: not a byte is read from it.
        await refused_before_tls(gw, v2("198.51.100.7"))
        assert await refused_count(gw, "PROXY_UNTRUSTED") == 1
        await wait_until(lambda: tcp_connections(gw) == 0)
        assert gw.node.engine.connection_count == 0


@pytest.mark.both_engines
async def test_only_trusted_balancers_may_connect_and_each_must_send_a_header(
    tmp_path: Path,
) -> None:
    await only_trusted_balancers(tmp_path)


@pytest.mark.both_engines
@pytest.mark.engine_only("python")
async def test_only_trusted_balancers_may_connect_on_uvloop_tls(tmp_path: Path) -> None:
    await only_trusted_balancers(tmp_path, tls_engine="uvloop")


@pytest.mark.both_engines
async def test_a_header_that_never_ends_is_cut_at_the_handshake_deadline(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, server=proxied(handshake_timeout_s=0.5)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(v2("198.51.100.7")[:20])  # never finished
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the node
        writer.close()
        await wait_until(lambda: tcp_connections(gw) == 0)


@pytest.mark.both_engines
async def test_logs_name_the_device_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway(tmp_path, server=proxied()) as gw:
        device = await RawDevice.connect(gw.port, gw.ca_cert, proxy_header=v2("198.51.100.23"))
        with caplog.at_level(logging.INFO, logger="channel.mmtp"):
            await device.send_hello(hello(gw, "liar", token=b"not-a-token"))
            await device.events()
        refusals = [r for r in caplog.records if r.getMessage() == "hello refused"]
        assert refusals and refusals[0].__dict__["fields"].get("peer") == "198.51.100.23", [
            r.__dict__ for r in refusals
        ]
        await device.close()


def test_both_engines_accept_the_setting() -> None:
    for engine in ("native", "python"):
        config = load_config(
            environ={},
            overrides={
                "server": {"engine": engine, "proxy_protocol": True, "proxy_trusted": ["10.0.0.2"]}
            },
        )
        assert config.server.proxy_protocol


async def wait_until(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)
