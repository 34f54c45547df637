"""Opening the TCP connection under TLS, with TCP Fast Open where the kernel offers it.

With a fast-open cookie from an earlier connection to the same gateway, the
socket's ``connect()`` returns at once and the SYN leaves with the first
write, which is the TLS ClientHello: TCP's round trip and TLS's overlap (see
``channel/fastopen.py``). Without a cookie the kernel sends a plain SYN that
asks for one, so the first connection is as before and teaches the next.
"""

from __future__ import annotations

import asyncio
import os
import socket

from channel import fastopen


async def open_socket(host: str, port: int, *, fast_open: bool) -> socket.socket:
    """A connected (or, with fast open, connecting) non-blocking TCP socket to ``host:port``.

    Addresses are tried in ``getaddrinfo`` order; the last error is raised when
    none connects.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    if not infos:
        raise OSError(f"no address for {host!r}")
    last_error: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if fast_open:
                fastopen.enable_on_client(sock)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    assert last_error is not None
    raise last_error


def release_after_failed_handoff(sock: socket.socket) -> None:
    """Call after ``loop.create_connection(sock=sock)`` raised: close the socket unless the
    loop already closed its descriptor.

    uvloop closes the descriptor of a socket it was handed when the connection then
    fails (its transport owned it), but not the Python socket object; left alone, that
    object closes the same number again when it is collected, by then possibly another
    connection's descriptor (seen as ``EBADF``, or ``EEXIST`` from epoll, on unrelated
    sockets). The check runs in the same turn as the loop's close, before any other code
    could reuse the number.
    """
    fd = sock.fileno()
    if fd < 0:
        return
    try:
        os.fstat(fd)
    except OSError:
        sock.detach()  # the loop closed it: forget the number
    else:
        sock.close()
