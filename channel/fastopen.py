"""TCP Fast Open (RFC 7413): the TLS ClientHello rides in the TCP SYN.

A device that has connected to a gateway before holds a TFO cookie for the
gateway's address (the kernel keeps it). On its next connection the SYN
carries the ClientHello, so the TCP and TLS round trips overlap: a resumed
TLS 1.3 handshake with the first request pipelined behind HELLO answers in
two round trips from ``connect()`` instead of three. The first connection
of a device (no cookie yet) takes the usual three.

Only the ClientHello travels in the SYN, never application data: a SYN the
network duplicates yields a second handshake that goes nowhere, so TFO needs
no replay protection here (TLS 0-RTT would).

Linux only. The server side needs bit 0x2 of ``net.ipv4.tcp_fastopen``
(``sysctl -w net.ipv4.tcp_fastopen=3``), the client side bit 0x1 (on by
default). Without them every call here degrades to plain TCP.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Protocol

#: ``setsockopt`` on a client socket: the SYN waits for the first write and carries
#: it when a cookie is cached (Linux >= 4.11; Python may not export the name).
TCP_FASTOPEN_CONNECT: int = getattr(socket, "TCP_FASTOPEN_CONNECT", 30)
TCP_FASTOPEN: int = getattr(socket, "TCP_FASTOPEN", 23)
SYSCTL_PATH = Path("/proc/sys/net/ipv4/tcp_fastopen")
SYSCTL_CLIENT = 0x1
SYSCTL_SERVER = 0x2
#: ``tcpi_options`` bit: the SYN's data was accepted by the server (client side) /
#: the connection was opened by a SYN with data (server side).
_TCPI_OPT_SYN_DATA = 0x20
#: ``struct tcp_info``: state, ca_state, retransmits, probes, backoff, options, ...
_TCPI_OPTIONS_OFFSET = 5


class _SockOpts(Protocol):
    """What we need of a socket: real sockets and uvloop's ``PseudoSocket`` both have it."""

    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def supported() -> bool:
    return sys.platform.startswith("linux")


def sysctl_value() -> int | None:
    """``net.ipv4.tcp_fastopen``, or None where it cannot be read."""
    try:
        return int(SYSCTL_PATH.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def server_enabled_by_kernel() -> bool:
    value = sysctl_value()
    return value is not None and bool(value & SYSCTL_SERVER)


def client_enabled_by_kernel() -> bool:
    value = sysctl_value()
    return value is not None and bool(value & SYSCTL_CLIENT)


def enable_on_listener(sock: _SockOpts, queue_length: int) -> bool:
    """Accept fast-open SYNs on a listening socket (at most ``queue_length`` pending).

    Returns False where the platform refuses; the listener then works as before.
    """
    if queue_length <= 0 or not supported():
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN, queue_length)
    except OSError:
        return False
    return True


def enable_on_client(sock: _SockOpts) -> bool:
    """Defer the SYN of ``sock`` to its first write, to carry that write (set before connect)."""
    if not supported():
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
    except OSError:
        return False
    return True


def syn_carried_data(sock: _SockOpts | None) -> bool:
    """True if this connection's SYN carried data that the server took."""
    if sock is None or not supported():
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return False
    return len(info) > _TCPI_OPTIONS_OFFSET and bool(
        info[_TCPI_OPTIONS_OFFSET] & _TCPI_OPT_SYN_DATA
    )
