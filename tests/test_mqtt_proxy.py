"""MQTT listeners behind L4 balancers (PROXY protocol) and their ALPN rule, both engines.

With ``[server] proxy_protocol`` on, the MQTT listeners (TLS and plain TCP) read a
PROXY v1/v2 header before anything else, as the MMTP listener does: only peers in
``proxy_trusted`` may connect, the header comes before TLS, and the box's address
from it is the one counted against ``max_connections_per_ip`` and reported.
Clients are paho-mqtt whose socket writes the header first, and raw MQTT.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from mqtt_harness import PahoBox, RawBox, admin_get, mqtt_ssl_context, token_password
from test_proxy_protocol import proxied, refused_count, tcp_connections, v1, v2, wait_until

from channel.mqtt import MQTT_3_1_1, MQTT_5, Connect
from tests.gateway_harness import RunningGateway, gateway

pytestmark = pytest.mark.both_engines

BOTH_LISTENERS = {"port": 0, "tcp_port": 0}


def _rc(value: object) -> int:
    return int(getattr(value, "value", value))


def connect_packet(gw: RunningGateway, device_id: str) -> Connect:
    return Connect(device_id, username=device_id, password=gw.token(device_id))


async def peer_ip(gw: RunningGateway, device_id: str) -> Any:
    return (await admin_get(gw, f"/admin/devices/{device_id}"))["peer_ip"]


async def refused(gw: RunningGateway, port: int, header: bytes, tls: bool, device: str) -> None:
    """The connection is cut before the box gets a CONNACK (or a TLS handshake)."""
    context = mqtt_ssl_context(gw.ca_cert) if tls else None
    try:
        box, connack = await RawBox.connect(
            port, connect_packet(gw, device), MQTT_5, context=context, proxy_header=header
        )
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return
    assert connack is None, connack
    box.writer.close()


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "tcp"])
async def test_paho_behind_a_balancer_is_known_by_its_own_address(
    tmp_path: Path, tls: bool
) -> None:
    server = proxied(max_connections_per_ip=1)
    async with gateway(tmp_path, server=server, mqtt=BOTH_LISTENERS) as gw:
        port = gw.mqtt_port if tls else gw.mqtt_tcp_port
        ca = gw.ca_cert if tls else None
        first = PahoBox(port, "till-1", MQTT_5, ca=ca, username="till-1",
                        password=token_password(gw, "till-1"),
                        proxy_header=v2("198.51.100.7"))  # fmt: skip
        assert _rc((await first.connect())[1]) == 0
        assert await peer_ip(gw, "till-1") == "198.51.100.7"
        # Another box through the same balancer, a v1 header: the balancer's own
        # address is not what the per-address limit of 1 counts.
        second = PahoBox(port, "till-2", MQTT_3_1_1, ca=ca, username="till-2",
                         password=token_password(gw, "till-2"),
                         proxy_header=v1("2001:db8::9", "2001:db8::1"))  # fmt: skip
        assert _rc((await second.connect())[1]) == 0
        assert await peer_ip(gw, "till-2") == "2001:db8::9"
        # A second box behind the first one's address is over that address's limit.
        await refused(gw, port, v2("198.51.100.7"), tls, "till-3")
        assert await refused_count(gw, "RATE_LIMITED") == 1
        await first.disconnect()
        await second.disconnect()
        await wait_until(lambda: tcp_connections(gw) == 0)
        # The address was released with its connection.
        again = PahoBox(port, "till-3", MQTT_5, ca=ca, username="till-3",
                        password=token_password(gw, "till-3"),
                        proxy_header=v2("198.51.100.7"))  # fmt: skip
        assert _rc((await again.connect())[1]) == 0
        await again.disconnect()


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "tcp"])
async def test_only_trusted_balancers_with_a_header_may_connect(tmp_path: Path, tls: bool) -> None:
    async with gateway(tmp_path, server=proxied(), mqtt=BOTH_LISTENERS) as gw:
        port = gw.mqtt_port if tls else gw.mqtt_tcp_port
        # A balancer that forgot the header: the box's TLS or CONNECT straight away.
        await refused(gw, port, b"", tls, "till-4")
        # A malformed header.
        await refused(gw, port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", tls, "till-4")
        assert await refused_count(gw, "PROXY_INVALID") == 2
        # The balancer's health check (v2 LOCAL) is the balancer's own connection.
        box, connack = await RawBox.connect(
            port, connect_packet(gw, "till-4"), MQTT_5,
            context=mqtt_ssl_context(gw.ca_cert) if tls else None,
            proxy_header=v2("198.51.100.7")[:12] + b"\x20\x00\x00\x00",
        )  # fmt: skip
        assert connack is not None and connack.reason_code == 0
        assert await peer_ip(gw, "till-4") == "127.0.0.1"
        await box.disconnect()
    async with gateway(tmp_path / "u", server=proxied("192.0.2.1/32"), mqtt=BOTH_LISTENERS) as gw:
        port = gw.mqtt_port if tls else gw.mqtt_tcp_port
        # Not the balancer: cut at accept, whatever it says.
        await refused(gw, port, v2("198.51.100.7"), tls, "till-5")
        assert await refused_count(gw, "PROXY_UNTRUSTED") == 1
        await wait_until(lambda: tcp_connections(gw) == 0)


async def test_without_the_setting_a_header_is_not_mqtt(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=BOTH_LISTENERS) as gw:
        await refused(gw, gw.mqtt_tcp_port, v2("198.51.100.7"), False, "till-6")
        box = PahoBox(gw.mqtt_tcp_port, "till-6", MQTT_5, username="till-6",
                      password=token_password(gw, "till-6"))  # fmt: skip
        assert _rc((await box.connect())[1]) == 0
        assert await peer_ip(gw, "till-6") == "127.0.0.1"
        await box.disconnect()


# ------------------------------------------------------------------------ ALPN


@pytest.mark.parametrize(
    ("offered", "selected"),
    [(None, None), (["mqtt"], "mqtt"), (["x-amzn-mqtt-ca", "mqtt"], "mqtt")],
)
async def test_a_box_offering_no_alpn_or_mqtt_is_welcome(
    tmp_path: Path, offered: list[str] | None, selected: str | None
) -> None:
    async with gateway(tmp_path) as gw:
        context = mqtt_ssl_context(gw.ca_cert)
        if offered is not None:
            context.set_alpn_protocols(offered)
        box, connack = await RawBox.connect(
            gw.mqtt_port, connect_packet(gw, "till-7"), MQTT_5, context=context
        )
        assert connack is not None and connack.reason_code == 0
        sslobj = box.writer.get_extra_info("ssl_object")
        assert sslobj.selected_alpn_protocol() == selected
        await box.disconnect()


@pytest.mark.parametrize("offered", [["h2"], ["mmtp/1", "http/1.1"]])
async def test_a_box_offering_only_other_protocols_is_refused(
    tmp_path: Path, offered: list[str]
) -> None:
    async with gateway(tmp_path) as gw:
        context = mqtt_ssl_context(gw.ca_cert)
        context.set_alpn_protocols(offered)
        with pytest.raises(ssl.SSLError, match=r"(?i)no.application.protocol"):
            await RawBox.connect(
                gw.mqtt_port, connect_packet(gw, "till-8"), MQTT_5, context=context
            )
        assert gw.node.registry.get("till-8") is None
