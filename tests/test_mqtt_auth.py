"""Who may connect and what a box may touch: tokens, certificates, ACLs (paho-mqtt over TLS).

A box's client id is its device id; it signs in with its device token as the
password (user name = the device id, or none at MQTT 5), or the token alone as
the user name, or a TLS client certificate whose CN is the device id.
Refusals carry the reason codes the specification gives them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mqtt_harness import PahoBox, RawBox, admin_get, mqtt_ssl_context, token_password

from channel.mqtt import MQTT_3_1_1, MQTT_5, Connect, ReasonCode
from channel.security.tokens import encode_token_text
from tests.gateway_harness import gateway
from tests.test_gateway_handshake import admin_text

pytestmark = pytest.mark.both_engines

VERSIONS = [MQTT_3_1_1, MQTT_5]


def _rc(value: object) -> int:
    return int(getattr(value, "value", value))  # paho's ReasonCode or an int


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_box_signs_in_with_its_token_as_the_password(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path) as gw:
        box = PahoBox(gw.mqtt_port, "till-1", version, ca=gw.ca_cert, username="till-1",
                      password=token_password(gw, "till-1", user_id="shop-9"))  # fmt: skip
        _flags, rc, _ = await box.connect()
        assert _rc(rc) == 0
        session = gw.node.registry.get("till-1")
        assert session is not None and session.protocol == "mqtt"
        assert session.device.user_id == "shop-9"
        lookup = await admin_get(gw, "/admin/devices/till-1")
        assert lookup["protocol"] == "mqtt" and lookup["user_id"] == "shop-9"
        assert lookup["mqtt_version"] == ("5.0" if version == MQTT_5 else "3.1.1")
        await box.disconnect()


async def test_the_token_alone_in_the_user_name_is_enough(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        box = PahoBox(gw.mqtt_port, "till-2", MQTT_3_1_1, ca=gw.ca_cert,
                      username=token_password(gw, "till-2"))  # fmt: skip
        assert _rc((await box.connect())[1]) == 0
        await box.disconnect()


async def test_an_mqtt5_box_without_client_id_gets_its_tokens_device_id(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        # paho sends a password only with a user name: an empty one.
        box = PahoBox(gw.mqtt_port, "", MQTT_5, ca=gw.ca_cert, username="",
                      password=token_password(gw, "till-3"))  # fmt: skip
        _flags, rc, props = await box.connect()
        assert _rc(rc) == 0
        assert props.AssignedClientIdentifier == "till-3"
        assert gw.node.registry.get("till-3") is not None
        await box.disconnect()
        # MQTT 5 also allows a password without a user name.
        raw, connack = await RawBox.connect(
            gw.mqtt_port, Connect("", password=gw.token("till-3")), MQTT_5, ca=gw.ca_cert
        )
        assert connack is not None and connack.reason_code == ReasonCode.SUCCESS
        assert connack.properties.assigned_client_identifier == "till-3"
        await raw.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_refusals_carry_the_right_reason(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path) as gw:
        cases = [
            # another device's token: not authorized
            ("till-4", token_password(gw, "till-5"), ReasonCode.NOT_AUTHORIZED, 5),
            # not a token at all: bad user name or password
            ("till-4", "not-a-token", ReasonCode.BAD_USER_NAME_OR_PASSWORD, 4),
            # an expired token
            ("till-4", encode_token_text(gw.token("till-4", ttl_s=1, now=1_000_000)),
             ReasonCode.BAD_USER_NAME_OR_PASSWORD, 4),
            # no credential at all (anonymous clients are off by default)
            ("till-4", None, ReasonCode.NOT_AUTHORIZED, 5),
        ]  # fmt: skip
        for client_id, password, reason, _return_code in cases:
            username = client_id if password is not None else None
            box = PahoBox(gw.mqtt_port, client_id, version, ca=gw.ca_cert, username=username,
                          password=password)  # fmt: skip
            _flags, rc, _ = await box.connect()
            # paho reports a 3.1.1 return code as the reason code it stands for.
            assert _rc(rc) == int(reason), (password, rc)
            box.client.loop_stop()
        assert gw.node.registry.get("till-4") is None
        metrics = await admin_text(gw, "/metrics")
        assert 'channel_mqtt_auth_failures_total{reason="NOT_AUTHORIZED"} 2.0' in metrics
        assert 'channel_mqtt_auth_failures_total{reason="BAD_USER_NAME_OR_PASSWORD"} 2.0' in metrics


async def test_a_client_certificate_names_the_box(tmp_path: Path) -> None:
    from channel.security.devcert import ensure_dev_certificates, issue_client_certificate

    dev = ensure_dev_certificates(tmp_path / "tls")
    async with gateway(tmp_path, tls={"client_ca": str(dev.ca_cert)}) as gw:
        cert, key = issue_client_certificate(
            dev.ca_cert, dev.ca_key, common_name="till-7", directory=tmp_path / "client"
        )
        box = PahoBox(
            gw.mqtt_port, "till-7", MQTT_5, context=mqtt_ssl_context(gw.ca_cert, cert, key)
        )
        assert _rc((await box.connect())[1]) == 0
        assert gw.node.registry.get("till-7").device.scopes == ("mtls",)  # type: ignore[union-attr]
        await box.disconnect()
        # Another client id with that certificate: refused.
        other = PahoBox(
            gw.mqtt_port, "till-8", MQTT_5, context=mqtt_ssl_context(gw.ca_cert, cert, key)
        )
        assert _rc((await other.connect())[1]) == ReasonCode.NOT_AUTHORIZED
        other.client.loop_stop()


async def test_anonymous_clients_only_when_switched_on(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt={"allow_anonymous": True}) as gw:
        box = PahoBox(gw.mqtt_port, "anyone", MQTT_3_1_1, ca=gw.ca_cert)
        assert _rc((await box.connect())[1]) == 0
        await box.disconnect()
        # 3.1.1: an empty client id needs a clean session (MQTT-3.1.3-8).
        raw, connack = await RawBox.connect(
            gw.mqtt_port, Connect("", clean_start=False), MQTT_3_1_1, ca=gw.ca_cert
        )
        assert connack is not None and connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
        await raw.close()


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_acl_keeps_a_box_in_its_own_topics(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path, mqtt={"subscribe_allow": ["devices/%c/#", "shops/%u/+"],
                                       "uplink_topics": []}) as gw:  # fmt: skip
        box = PahoBox(gw.mqtt_port, "till-9", version, ca=gw.ca_cert, username="till-9",
                      password=token_password(gw, "till-9", user_id="s1"))  # fmt: skip
        await box.connect()
        refused = 0x87 if version == MQTT_5 else 0x80
        for topic_filter, expected in [
            ("devices/till-9/#", 1),
            ("devices/till-9/push", 1),
            ("devices/+/push", refused),  # could reach other boxes' topics
            ("devices/other/#", refused),
            ("#", refused),
            ("shops/s1/news", 1),  # %u: the token's user id
            ("shops/s2/news", refused),
        ]:
            (code,) = await box.subscribe(topic_filter, qos=1)
            assert _rc(code) == expected, topic_filter
        # Publishing outside the allowed topics: PUBACK 0x87 at 5.0, dropped at 3.1.1.
        rc = await box.publish("devices/other/up/x", b"nope", qos=1)
        assert _rc(rc) == (0x87 if version == MQTT_5 else 0)
        metrics = await admin_text(gw, "/metrics")
        assert "channel_mqtt_publishes_denied_total 1.0" in metrics
        assert "channel_mqtt_subscribes_denied_total 4.0" in metrics
        await box.disconnect()


async def test_a_deny_list_refuses_what_it_covers_and_filters_what_it_overlaps(
    tmp_path: Path,
) -> None:
    acl = {"subscribe_allow": ["#"], "publish_allow": ["#"], "subscribe_deny": ["secret/#"],
           "uplink_topics": []}  # fmt: skip
    async with gateway(tmp_path, mqtt=acl) as gw:
        box = PahoBox(gw.mqtt_port, "curious", MQTT_5, ca=gw.ca_cert, username="curious",
                      password=token_password(gw, "curious"))  # fmt: skip
        await box.connect()
        assert _rc((await box.subscribe("secret/plans", qos=1))[0]) == ReasonCode.NOT_AUTHORIZED
        assert _rc((await box.subscribe("+/+", qos=1))[0]) == 1  # may match secret/x: allowed
        await box.publish("secret/plans", b"hidden", 1)
        await box.publish("public/news", b"shown", 1)
        assert (await box.message()).payload == b"shown"  # the secret one was not delivered
        await box.disconnect()
