"""TCP Fast Open: a returning device's ClientHello rides in the SYN, one round trip saved.

Real sockets and a real gateway. The kernel part needs ``net.ipv4.tcp_fastopen``
with bits 0x1 (client) and 0x2 (server); ``scripts/test.sh`` sets them when it
runs as root, and the tests that need them say so when they skip.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest

from channel import fastopen
from channel.config import ConfigError, load_config
from channel.security.tls import client_ssl_context
from sdk_client import Backoff, ChannelError, Client
from stress.gateway_proc import MmtpDevice, connect_link, device_hello, rpc_headers
from tests.gateway_harness import RunningGateway, gateway

pytestmark = pytest.mark.both_engines

WAIT_S = 5.0

needs_kernel_fastopen = pytest.mark.skipif(
    not (
        fastopen.supported()
        and fastopen.server_enabled_by_kernel()
        and fastopen.client_enabled_by_kernel()
    ),
    reason="needs sysctl net.ipv4.tcp_fastopen=3 (scripts/test.sh sets it when root)",
)


def fresh_device_address() -> str:
    """A loopback source address this host has (almost surely) never connected from.

    Fast-open cookies are cached per source and destination address, so this is
    a device that never met the gateway.
    """
    a, b, c = (secrets.randbelow(254) + 1 for _ in range(3))
    return f"127.{a}.{b}.{c}"


async def first_rpc(
    gw: RunningGateway,
    context: ssl.SSLContext,
    source_ip: str,
    *,
    token: bytes = b"",
    ticket: bytes = b"",
    session: Any = None,
) -> tuple[MmtpDevice, int]:
    """Connect, HELLO with one pipelined echo call; the device and round trips incl. TCP."""
    hello = device_hello("tfo-1", token=token, resume_ticket=ticket)
    device = MmtpDevice(
        context,
        hello,
        session=session,
        pipelined=[("channel.echo", b"hi", rpc_headers(1))],
    )
    await connect_link(device, gw.port, source_ip, fast_open=True)
    await asyncio.wait_for(device.ack, WAIT_S)
    await asyncio.wait_for(device.first_calls[0], WAIT_S)
    round_trips = device.round_trips + (0 if device.syn_carried_data else 1)
    return device, round_trips


def test_listener_option_is_taken_on_linux() -> None:
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert fastopen.enable_on_listener(listener, 16) is fastopen.supported()
        assert fastopen.enable_on_listener(listener, 0) is False  # 0 = off
    finally:
        listener.close()


def test_no_socket_means_no_syn_data() -> None:
    assert fastopen.syn_carried_data(None) is False


def test_negative_queue_is_a_config_error(tmp_path: Path) -> None:
    config_file = tmp_path / "channel.toml"
    config_file.write_text("[server]\ntcp_fastopen_queue = -1\n")
    with pytest.raises(ConfigError, match=r"server\.tcp_fastopen_queue"):
        load_config(config_file, environ={})


@needs_kernel_fastopen
async def test_resumed_device_gets_its_first_answer_one_round_trip_sooner(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as gw:
        address = fresh_device_address()
        context = client_ssl_context(gw.ca_cert)
        token = gw.token("tfo-1", app_id="bench")
        full, full_trips = await first_rpc(gw, context, address, token=token)
        assert not full.syn_carried_data  # first contact: the SYN only asks for a cookie
        assert full_trips == 3  # TCP, TLS, HELLO + call
        ack = full.ack.result()
        # TLS 1.3 sends the session ticket right after the handshake: read by now.
        session = full.session
        assert session is not None and session.has_ticket
        full.close()
        await full.closed

        # A SYN the kernel had to send again (a busy host) goes without its data, and the
        # kernel then backs off fast open for a while: up to three returning connections,
        # each resuming from the one before. With fast open broken, none carries data.
        for _attempt in range(3):
            resumed, resumed_trips = await first_rpc(
                gw, context, address, ticket=ack.resume_ticket, session=session
            )
            assert resumed.session_reused and resumed.ack.result().resumed
            ack, session = resumed.ack.result(), resumed.session
            carried = resumed.syn_carried_data  # the ClientHello rode in the SYN
            resumed.close()
            await resumed.closed
            if carried:
                break
        assert carried
        assert resumed_trips == 2
        assert resumed.bytes_in + resumed.bytes_out < full.bytes_in + full.bytes_out


def make_client(gw: RunningGateway, **options: Any) -> Client:
    return Client(
        "127.0.0.1",
        gw.port,
        device_id="d1",
        token=gw.token("d1"),
        ca_file=gw.ca_cert,
        app_id="demo",
        backoff=Backoff(initial_s=0.01, max_s=0.05),
        **options,
    )


def disconnect_events(client: Client) -> asyncio.Queue[ChannelError]:
    queue: asyncio.Queue[ChannelError] = asyncio.Queue()
    client.on_disconnect(queue.put_nowait)
    return queue


@needs_kernel_fastopen
async def test_sdk_reconnects_with_fast_open(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, make_client(gw) as client:
        # The first connection asked for a cookie (or had one from an earlier test).
        first = client.stats.fast_open_connects
        lost = disconnect_events(client)
        # The kernel keeps cookies in a host-wide cache that other traffic can evict: a
        # reconnect without one asks for a new cookie. Up to three reconnects; with
        # fast open broken in the SDK, none of them uses it.
        for attempt in range(1, 4):
            gw.node.by_device["d1"].abort()
            await asyncio.wait_for(lost.get(), WAIT_S)
            response = await client.call("channel.echo", b"x", timeout=WAIT_S)
            assert response.body == b"x"
            assert client.stats.connects == 1 + attempt and client.resumed
            if client.stats.fast_open_connects > first:
                break
        assert client.stats.fast_open_connects == first + 1
        # The gateway counts them too (operators see whether fast open works in the field).
        counted = gw.node.metrics.registry.get_sample_value("channel_tcp_fastopen_handshakes_total")
        assert counted == client.stats.fast_open_connects


@needs_kernel_fastopen
async def test_sdk_connects_with_fast_open_to_a_gateway_it_has_no_cookie_for(
    tmp_path: Path,
) -> None:
    # A gateway on an address this host never connected to: the kernel has no cookie,
    # sends a bare SYN and fails the ClientHello's write with EINPROGRESS, which the
    # event loop took for a broken connection (the SDK reported UNAVAILABLE).
    host = fresh_device_address()
    async with gateway(tmp_path, server={"host": host}) as gw:
        client = Client(
            host,
            gw.port,
            device_id="d1",
            token=gw.token("d1"),
            ca_file=gw.ca_cert,
            server_hostname="127.0.0.1",
            app_id="demo",
            backoff=Backoff(initial_s=0.01, max_s=0.05),
        )
        async with client:
            response = await client.call("channel.echo", b"x", timeout=WAIT_S)
        assert response.body == b"x"
        assert client.stats.connect_failures == 0
        assert client.stats.fast_open_retries <= 1


async def test_sdk_fast_open_can_be_turned_off(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw, make_client(gw, tcp_fast_open=False) as client:
        lost = disconnect_events(client)
        gw.node.by_device["d1"].abort()
        await asyncio.wait_for(lost.get(), WAIT_S)
        await client.call("channel.echo", b"x", timeout=WAIT_S)
        assert client.stats.connects == 2
        assert client.stats.fast_open_connects == 0
        counted = gw.node.metrics.registry.get_sample_value("channel_tcp_fastopen_handshakes_total")
        assert counted == 0
