"""The PROXY protocol (v1 text, v2 binary) header a load balancer puts before a connection.

An L4 balancer that passes TLS through (HAProxy ``send-proxy-v2``, AWS NLB, GCP
TCP proxy) opens its own TCP connection to the node: without this header every
device would appear to come from the balancer's address, and per-address limits,
logs and metrics would lump all devices together. The balancer writes one header
(https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt) before the first
byte of the device's stream; the node reads it, and only then sees the ClientHello.

Sans-I/O, like ``channel.wire``: ``ProxyHeaderReader.feed(data)`` returns ``None``
while the header is incomplete, a ``ProxyHeader`` (with the bytes after it) once
it is whole, and raises ``ProxyHeaderError`` on anything else. Bounds, checked as
bytes arrive, so a peer cannot make the reader buffer or wait for more:

* v1: the header line is at most 107 bytes (the protocol's own limit);
* v2: at most ``max_header_bytes`` in all (16-byte fixed part + addresses + TLVs),
  refused from the length field, before the rest is read.

Who may send a header is the caller's business (``[server] proxy_trusted``): the
header is a claim about someone else's address, believed only from a balancer.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from dataclasses import dataclass

#: The 12 bytes every v2 header starts with.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The longest v1 line the protocol allows, CRLF included ("PROXY UNKNOWN" + two IPv6 …).
V1_MAX_BYTES = 107
V2_FIXED_BYTES = 16
#: The smallest bound that still admits a TCP/IPv6 header (16 + 36 address bytes).
V2_MIN_LIMIT_BYTES = V2_FIXED_BYTES + 36
_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_V2_FAMILY_UNSPEC = 0x0
_V2_FAMILY_INET = 0x1
_V2_FAMILY_INET6 = 0x2
_V2_TRANSPORT_STREAM = 0x1


class ProxyHeaderError(ValueError):
    """Not a PROXY header this node accepts; the message says what was wrong."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. ``source`` is None for v2 LOCAL (the balancer's own health
    check) and for v1 UNKNOWN / v2 UNSPEC: the connection's real peer is then used."""

    version: int
    source_ip: str | None
    source_port: int
    destination_ip: str | None
    destination_port: int
    #: Bytes received after the header: the start of the device's own stream.
    rest: bytes


class ProxyHeaderReader:
    """Reads one header from the first bytes of a connection (see the module doc)."""

    __slots__ = ("_buffer", "_max_header_bytes")

    def __init__(self, max_header_bytes: int = 1024) -> None:
        if max_header_bytes < V2_MIN_LIMIT_BYTES:
            raise ValueError(f"max_header_bytes must be >= {V2_MIN_LIMIT_BYTES}")
        self._max_header_bytes = max_header_bytes
        self._buffer = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        head = buffer[:12]
        if V2_SIGNATURE.startswith(head) and not V1_PREFIX.startswith(head[:6]):
            result = self._v2(buffer)
        elif V1_PREFIX.startswith(head[:6]):
            result = _v1(buffer)
        else:
            raise ProxyHeaderError("no PROXY protocol header (the balancer must send one)")
        if result is None:
            self._buffer = buffer
        return result

    def _v2(self, buffer: bytes) -> ProxyHeader | None:
        if len(buffer) < V2_FIXED_BYTES:
            return None
        version_command, family_transport, length = struct.unpack_from("!BBH", buffer, 12)
        if version_command >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2: version {version_command >> 4}, expected 2")
        total = V2_FIXED_BYTES + length
        if total > self._max_header_bytes:
            raise ProxyHeaderError(
                f"PROXY v2 header of {total} bytes is over the limit of "
                f"{self._max_header_bytes} (server.proxy_max_header_bytes)"
            )
        if len(buffer) < total:
            return None
        command = version_command & 0x0F
        body, rest = buffer[V2_FIXED_BYTES:total], buffer[total:]
        if command == _V2_COMMAND_LOCAL:
            return ProxyHeader(2, None, 0, None, 0, rest)
        if command != _V2_COMMAND_PROXY:
            raise ProxyHeaderError(f"PROXY v2: unknown command {command}")
        family, transport = family_transport >> 4, family_transport & 0x0F
        if family == _V2_FAMILY_UNSPEC:
            return ProxyHeader(2, None, 0, None, 0, rest)
        if transport != _V2_TRANSPORT_STREAM:
            raise ProxyHeaderError(f"PROXY v2: transport {transport} is not a stream (TCP)")
        if family == _V2_FAMILY_INET:
            size, make = 4, ipaddress.IPv4Address
        elif family == _V2_FAMILY_INET6:
            size, make = 16, ipaddress.IPv6Address  # type: ignore[assignment]
        else:
            raise ProxyHeaderError(f"PROXY v2: address family {family} is not IPv4 or IPv6")
        if len(body) < 2 * size + 4:
            raise ProxyHeaderError(f"PROXY v2: {len(body)} address bytes, need {2 * size + 4}")
        source, destination = make(body[:size]), make(body[size : 2 * size])
        source_port, destination_port = struct.unpack_from("!HH", body, 2 * size)
        return ProxyHeader(
            2, _text(source), source_port, _text(destination), destination_port, rest
        )


def _v1(buffer: bytes) -> ProxyHeader | None:
    end = buffer.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(buffer) >= V1_MAX_BYTES or b"\n" in buffer[:V1_MAX_BYTES]:
            raise ProxyHeaderError(f"PROXY v1: no CRLF within {V1_MAX_BYTES} bytes")
        return None
    line, rest = buffer[:end], buffer[end + 2 :]
    try:
        words = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1: not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return ProxyHeader(1, None, 0, None, 0, rest)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1: expected 'PROXY TCP4|TCP6 src dst sport dport'")
    version = 4 if words[1] == "TCP4" else 6
    source, destination = _v1_address(words[2], version), _v1_address(words[3], version)
    return ProxyHeader(1, source, _v1_port(words[4]), destination, _v1_port(words[5]), rest)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not an IPv{version} address")
    return _text(address)


def _v1_port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1: {text!r} is not a port")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1: port {port} is over 65535")
    return port


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as the node's counters and logs key it (IPv4-mapped IPv6 as IPv4),
    interned: devices behind one NAT address share the string."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return sys.intern(str(address))


class ProxyPolicy:
    """Who may send a header (``[server] proxy_trusted``, CIDR networks) and how long
    it may be (``[server] proxy_max_header_bytes``)."""

    __slots__ = ("_networks", "max_header_bytes")

    def __init__(self, networks: list[str], max_header_bytes: int = 1024) -> None:
        self._networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.max_header_bytes = max_header_bytes

    def trusts(self, peer_ip: str) -> bool:
        """True if ``peer_ip`` is a balancer's address: its header will be believed."""
        try:
            address = ipaddress.ip_address(peer_ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def reader(self) -> ProxyHeaderReader:
        return ProxyHeaderReader(self.max_header_bytes)
