"""The MQTT codec: spec byte vectors, every rule's error, round trips, split reads, fuzzing.

Vectors are literal bytes. Where the OASIS specifications print an example
(MQTT 3.1.1 Figures 3.6, 3.11, 3.20, 3.26, 3.30 and Table 2.4; MQTT 5.0
Figures 3-6 and 3-9 and the variable byte integer table) the bytes are the
spec's; the rest of each packet is laid out field by field from the packet's
section, with the field named in the comment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqtt_strategies import (
    auths,
    client_packets,
    connacks,
    connects,
    disconnects,
    pub_acks,
    publishes,
    server_packets,
    subacks,
    subscribes,
    text,
    unsubacks,
    unsubscribes,
)

from channel.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    PINGREQ,
    PINGRESP,
    Auth,
    Connack,
    Connect,
    Disconnect,
    InvalidTopic,
    LocalMqttError,
    MalformedPacket,
    MqttError,
    MqttProtocolError,
    Packet,
    PacketTooLarge,
    Parser,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    RetainHandling,
    Role,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    UnsupportedProtocolVersion,
    Will,
    connack_return_code,
    decode,
    encode,
    encode_publish,
    prepare_publish,
)
from channel.mqtt.primitives import read_string, string_bytes, varint_bytes
from channel.mqtt.property_codec import encode_properties
from channel.mqtt.publish import push_bytes, push_properties, topic_head
from channel.mqtt.reasons import ALLOWED_REASON_CODES, PacketType
from channel.mqtt.slots import fast_init

R = ReasonCode
V4, V5 = MQTT_3_1_1, MQTT_5


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# ------------------------------------------------------------ spec vectors

# (protocol level, bytes, packet); encode(packet) must give exactly these bytes.
VECTORS: list[tuple[int, str, Packet]] = [
    # 3.1.1 Figure 3.6 variable header (flags CE: user name, password, will QoS 1,
    # will, clean session; keep alive 10), then client id "c1", will topic "a/b",
    # will message "bye", user name "u", password "pw".
    (V4, "101f 00044d515454 04 ce 000a 00026331 0003612f62 0003627965 000175 00027077",
     Connect("c1", True, 10, "u", b"pw", Will("a/b", b"bye", 1, False))),
    (V4, "1010 00044d515454 04 00 003c 0004626f7831", Connect("box1", False, 60)),
    (V4, "2002 00 00", Connack()),
    (V4, "2002 01 00", Connack(session_present=True)),
    (V4, "2002 00 05", Connack(False, R.NOT_AUTHORIZED)),
    (V4, "2002 00 01", Connack(False, R.UNSUPPORTED_PROTOCOL_VERSION)),
    # 3.1.1 Figure 3.11: topic "a/b", packet id 10; payload "hi".
    (V4, "3209 0003612f62 000a 6869", Publish("a/b", b"hi", 1, packet_id=10)),
    (V4, "3d09 0003612f62 000a 6869", Publish("a/b", b"hi", 2, True, 10, dup=True)),
    (V4, "3107 0003612f62 6869", Publish("a/b", b"hi", 0, retain=True)),
    (V4, "4002 000a", Puback(10)),
    (V4, "5002 000a", Pubrec(10)),
    (V4, "6202 000a", Pubrel(10)),
    (V4, "7002 000a", Pubcomp(10)),
    # 3.1.1 Figures 3.20 and 3.22: packet id 10, "a/b" QoS 1, "c/d" QoS 2.
    (V4, "820e 000a 0003612f62 01 0003632f64 02",
     Subscribe(10, (Subscription("a/b", 1), Subscription("c/d", 2)))),
    # 3.1.1 Figure 3.26: granted QoS 0, granted QoS 2, failure.
    (V4, "9005 000a 00 02 80", Suback(10, (R.GRANTED_QOS_0, R.GRANTED_QOS_2, R(0x80)))),
    # 3.1.1 Figure 3.30: "a/b", "c/d".
    (V4, "a20c 000a 0003612f62 0003632f64", Unsubscribe(10, ("a/b", "c/d"))),
    (V4, "b002 000a", Unsuback(10)),
    (V4, "c000", PINGREQ),
    (V4, "d000", PINGRESP),
    (V4, "e000", Disconnect()),
    # 5.0 Figure 3-6 variable header (flags CE, keep alive 10, property length 5,
    # Session Expiry Interval 10), then client id "c1", will property length 0,
    # will topic "a/b", will payload "bye", user name "u", password "pw".
    (V5, "1026 00044d515454 05 ce 000a 05 110000000a 00026331 00 0003612f62 0003627965 "
         "000175 00027077",
     Connect("c1", True, 10, "u", b"pw", Will("a/b", b"bye", 1, False),
             Properties(session_expiry_interval_s=10))),
    # Password without user name is legal in 5.0; will delay 5 s, retained QoS 0 will.
    (V5, "101c 00044d515454 05 66 0000 00 0000 05 1800000005 0001 74 0000 00026b6b",
     Connect("", True, 0, None, b"kk", Will("t", b"", 0, True,
             Properties(will_delay_interval_s=5)))),
    (V5, "2003 00 00 00", Connack()),
    # Receive Maximum 20, Topic Alias Maximum 10 (properties go out in identifier order).
    (V5, "2009 00 00 06 210014 22000a",
     Connack(properties=Properties(receive_maximum=20, topic_alias_maximum=10))),
    (V5, "2003 00 87 00", Connack(False, R.NOT_AUTHORIZED)),
    # 5.0 Figure 3-9: topic "a/b", packet id 10, property length 0; payload "hi".
    (V5, "320a 0003612f62 000a 00 6869", Publish("a/b", b"hi", 1, packet_id=10)),
    # Topic Alias 1 with an empty topic name.
    (V5, "3008 0000 03 230001 6869", Publish("", b"hi", properties=Properties(topic_alias=1))),
    # Two Subscription Identifiers (a server's PUBLISH matching two subscriptions) and
    # a User Property.
    (V5, "3012 0001 74 0c 0b01 0b8001 2600016b000176 6869",
     Publish("t", b"hi", properties=Properties(subscription_identifiers=(1, 128),
                                               user_properties=(("k", "v"),)))),
    (V5, "4002 000a", Puback(10)),
    (V5, "4003 000a 10", Puback(10, R.NO_MATCHING_SUBSCRIBERS)),
    (V5, "4009 000a 87 05 1f00026e6f",
     Puback(10, R.NOT_AUTHORIZED, Properties(reason_string="no"))),
    (V5, "5003 000a 97", Pubrec(10, R.QUOTA_EXCEEDED)),
    (V5, "6203 000a 92", Pubrel(10, R.PACKET_IDENTIFIER_NOT_FOUND)),
    (V5, "7002 000a", Pubcomp(10)),
    (V5, "820f 000a 00 0003612f62 01 0003632f64 02",
     Subscribe(10, (Subscription("a/b", 1), Subscription("c/d", 2)))),
    # Options 0x2D: QoS 1, no local, retain as published, retain handling 2;
    # Subscription Identifier 5.
    (V5, "820b 0001 02 0b05 0003612f62 2d",
     Subscribe(1, (Subscription("a/b", 1, True, True, RetainHandling.DO_NOT_SEND),),
               Properties(subscription_identifiers=(5,)))),
    (V5, "9006 000a 00 00 02 80", Suback(10, (R(0), R(2), R(0x80)))),
    (V5, "9008 000a 04 1f00016e 8f", Suback(10, (R.TOPIC_FILTER_INVALID,),
                                              Properties(reason_string="n"))),
    (V5, "a20d 000a 00 0003612f62 0003632f64", Unsubscribe(10, ("a/b", "c/d"))),
    (V5, "b005 000a 00 00 11", Unsuback(10, (R.SUCCESS, R.NO_SUBSCRIPTION_EXISTED))),
    (V5, "e000", Disconnect()),
    (V5, "e001 04", Disconnect(R.DISCONNECT_WITH_WILL_MESSAGE)),
    (V5, "e007 9c 05 1c00026832",
     Disconnect(R.USE_ANOTHER_SERVER, Properties(server_reference="h2"))),
    (V5, "f000", Auth()),
    (V5, "f00e 18 0c 15000553435241 4d 16000178",
     Auth(R.CONTINUE_AUTHENTICATION,
          Properties(authentication_method="SCRAM", authentication_data=b"x"))),
    (V5, "c000", PINGREQ),
    (V5, "d000", PINGRESP),
]  # fmt: skip
_IDS = [f"v{v}-{type(p).__name__}-{i}" for i, (v, _, p) in enumerate(VECTORS)]


@pytest.mark.parametrize(("version", "hex_bytes", "packet"), VECTORS, ids=_IDS)
def test_vector_decodes_and_encodes(version: int, hex_bytes: str, packet: Packet) -> None:
    data = h(hex_bytes)
    assert decode(data, version) == packet
    assert encode(packet, version) == data


@pytest.mark.parametrize(("version", "hex_bytes", "packet"), VECTORS, ids=_IDS)
def test_vector_fed_byte_by_byte(version: int, hex_bytes: str, packet: Packet) -> None:
    data = h(hex_bytes)
    parser = _parser_for(packet, version)
    for i in range(len(data) - 1):
        assert parser.feed(data[i : i + 1]) == []
        assert parser.buffered_bytes == i + 1
    assert parser.feed(data[-1:]) == [packet]
    assert parser.buffered_bytes == 0


def _parser_for(packet: Packet, version: int) -> Parser:
    """A parser in the state where ``packet`` may arrive next."""
    if isinstance(packet, Connect):
        return Parser(Role.SERVER)
    server_sends = (Connack, Suback, Unsuback) + ((Disconnect, Auth) if version == V5 else ())
    if (
        isinstance(packet, server_sends)
        or packet is PINGRESP
        or (isinstance(packet, Publish) and packet.properties.subscription_identifiers)
    ):
        return Parser(Role.CLIENT, version)
    parser = Parser(Role.SERVER)
    assert parser.feed(encode(Connect("x"), version)) == [Connect("x")]
    return parser


def test_longer_forms_peers_may_send_decode_to_the_short_ones() -> None:
    # 5.0 3.4.2.1: reason code and property length may be present even when 0.
    assert decode(h("4004 000a 00 00"), V5) == Puback(10)
    assert decode(h("4003 000a 00"), V5) == Puback(10)
    assert decode(h("e002 00 00"), V5) == Disconnect()
    assert decode(h("f001 00"), V5) == Auth()


@pytest.mark.parametrize(
    ("value", "hex_bytes"),
    [
        # MQTT 3.1.1 Table 2.4 / MQTT 5.0 Table 1-1: Variable Byte Integer sizes.
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
        (268_435_455, "ffffff7f"),
    ],
)
def test_variable_byte_integer_table(value: int, hex_bytes: str) -> None:
    assert varint_bytes(value) == h(hex_bytes)
    # The same bytes as a PUBLISH's Remaining Length announce a packet of that size.
    parser = Parser(Role.CLIENT, V4, max_packet_size_bytes=64)
    size = 1 + len(h(hex_bytes)) + value
    expected = PacketTooLarge if size > 64 else MalformedPacket  # 0: no topic name
    with pytest.raises(expected) as caught:
        parser.feed(b"\x30" + h(hex_bytes))
    if size > 64:
        assert f"packet of {size} bytes" in str(caught.value)


def test_utf8_string_example() -> None:
    # 1.5.3 / 1.5.4 non-normative example: "A" U+2A6D4.
    assert read_string(h("0005 41 f0aa9b94"), 0) == ("A\U0002a6d4", 7)
    assert string_bytes("A\U0002a6d4") == h("0005 41 f0aa9b94")


# ------------------------------------------------------------ every rule's error


def _server(version: int | None) -> Parser:
    """A server's parser before CONNECT (``None``) or after one at ``version``."""
    parser = Parser(Role.SERVER)
    if version is not None:
        parser.feed(encode(Connect("x"), version))
    return parser


_C = "00044d515454"  # protocol name "MQTT"
_X = "0001 78"  # client id "x"
# (id, side, level, hex bytes, error class, reason code). side "server" parses what a
# client sends (level None: before CONNECT), "client" what a server sends.
ERRORS: list[tuple[str, str, int | None, str, type[MqttError], int]] = [
    ("first-not-connect", "server", None, "c000", MqttProtocolError, 0x82),
    ("type-0-reserved", "server", None, "0000", MalformedPacket, 0x81),
    ("mqtt-3.1", "server", None, f"100f 00064d5149736470 03 02 003c {_X}",
     UnsupportedProtocolVersion, 0x84),
    ("level-6", "server", None, f"100d {_C} 06 02 003c {_X}", UnsupportedProtocolVersion, 0x84),
    ("name-not-mqtt", "server", None, f"100d 00044d515458 04 02 003c {_X}",
     UnsupportedProtocolVersion, 0x84),
    ("connect-reserved-flag", "server", None, f"100d {_C} 04 03 003c {_X}", MalformedPacket, 0x81),
    ("will-qos-without-will", "server", None, f"100d {_C} 04 0a 003c {_X}", MalformedPacket, 0x81),
    ("will-retain-without-will", "server", None, f"100e {_C} 05 22 003c 00 {_X}",
     MalformedPacket, 0x81),
    ("will-qos-3", "server", None, f"1012 {_C} 04 1e 003c {_X} 000174 0000",
     MalformedPacket, 0x81),
    ("will-topic-wildcard", "server", None, f"1012 {_C} 04 06 003c {_X} 000123 0000",
     InvalidTopic, 0x90),
    ("v4-password-without-user", "server", None, f"1010 {_C} 04 42 003c {_X} 000170",
     MalformedPacket, 0x81),
    ("connect-trailing-byte", "server", None, f"100e {_C} 04 02 003c {_X} ff",
     MalformedPacket, 0x81),
    ("connect-truncated", "server", None, f"100c {_C} 04 02 003c 0001", MalformedPacket, 0x81),
    ("connect-only-protocol-name", "server", None, f"1006 {_C}", MalformedPacket, 0x81),
    ("string-u0000", "server", None, f"100d {_C} 04 02 003c 000100", MalformedPacket, 0x81),
    ("string-surrogate", "server", None, f"100f {_C} 04 02 003c 0003eda080",
     MalformedPacket, 0x81),
    ("string-overlong", "server", None, f"100e {_C} 04 02 003c 0002c080", MalformedPacket, 0x81),
    ("property-not-allowed", "server", None, f"1011 {_C} 05 02 003c 03230001 {_X}",
     MalformedPacket, 0x81),
    ("property-unknown", "server", None, f"1010 {_C} 05 02 003c 020500 {_X}",
     MalformedPacket, 0x81),
    ("property-twice", "server", None,
     f"1018 {_C} 05 02 003c 0a 1100000001 1100000002 {_X}", MqttProtocolError, 0x82),
    ("receive-maximum-0", "server", None, f"1011 {_C} 05 02 003c 03 210000 {_X}",
     MqttProtocolError, 0x82),
    ("maximum-packet-size-0", "server", None, f"1013 {_C} 05 02 003c 05 2700000000 {_X}",
     MqttProtocolError, 0x82),
    ("request-problem-information-2", "server", None, f"1010 {_C} 05 02 003c 02 1702 {_X}",
     MqttProtocolError, 0x82),
    ("property-length-past-end", "server", None, f"100e {_C} 05 02 003c 09 {_X}",
     MalformedPacket, 0x81),
    ("second-connect", "server", 4, f"100d {_C} 04 02 003c {_X}", MqttProtocolError, 0x82),
    ("publish-qos-3", "server", 4, "3607 0003612f62 000a", MalformedPacket, 0x81),
    ("publish-dup-qos-0", "server", 4, "3805 0003612f62", MqttProtocolError, 0x82),
    ("publish-wildcard", "server", 4, "3005 0003612f23", InvalidTopic, 0x90),
    ("publish-plus", "server", 5, "3006 0003612f2b 00", InvalidTopic, 0x90),
    ("publish-empty-topic-v4", "server", 4, "3002 0000", InvalidTopic, 0x90),
    ("publish-empty-topic-no-alias", "server", 5, "3003 0000 00", MqttProtocolError, 0x82),
    ("publish-packet-id-0", "server", 4, "3207 0003612f62 0000", MqttProtocolError, 0x82),
    ("publish-topic-alias-0", "server", 5, "3009 0003612f62 03 230000", MqttProtocolError, 0x82),
    ("client-publish-subscription-id", "server", 5, "3008 0003612f62 02 0b01",
     MqttProtocolError, 0x82),
    ("subscription-id-0", "client", 5, "3008 0003612f62 02 0b00", MqttProtocolError, 0x82),
    ("response-topic-wildcard", "server", 5, "300a 0003612f62 04 08000123", InvalidTopic, 0x90),
    ("reason-string-in-publish", "server", 5, "3009 0003612f62 03 1f0000", MalformedPacket, 0x81),
    ("user-property-past-properties", "server", 5, "3010 0003612f62 07 2600016b000576 686868",
     MalformedPacket, 0x81),
    ("puback-packet-id-0", "server", 4, "4002 0000", MqttProtocolError, 0x82),
    ("puback-v4-long", "server", 4, "4003 000a 00", MalformedPacket, 0x81),
    ("puback-short", "server", 5, "4001 00", MalformedPacket, 0x81),
    ("puback-unknown-reason", "server", 5, "4003 000a 05", MalformedPacket, 0x81),
    ("pubrel-reason-of-puback", "server", 5, "6203 000a 10", MalformedPacket, 0x81),
    ("pubrel-flags-0", "server", 4, "6002 000a", MalformedPacket, 0x81),
    ("puback-flags", "server", 4, "4102 000a", MalformedPacket, 0x81),
    ("subscribe-flags-0", "server", 4, "8008 000a 0003612f62 01", MalformedPacket, 0x81),
    ("subscribe-empty", "server", 4, "8202 000a", MqttProtocolError, 0x82),
    ("subscribe-v4-option-bits", "server", 4, "8208 000a 0003612f62 04", MalformedPacket, 0x81),
    ("subscribe-v4-qos-3", "server", 4, "8208 000a 0003612f62 03", MalformedPacket, 0x81),
    ("subscribe-reserved-bit-6", "server", 5, "8209 000a 00 0003612f62 41", MalformedPacket, 0x81),
    ("subscribe-retain-handling-3", "server", 5, "8209 000a 00 0003612f62 30",
     MqttProtocolError, 0x82),
    ("subscribe-qos-3", "server", 5, "8209 000a 00 0003612f62 03", MqttProtocolError, 0x82),
    ("subscribe-hash-inside", "server", 4, "820a 000a 0005612f232f62 00", InvalidTopic, 0x8F),
    ("subscribe-plus-in-level", "server", 4, "8208 000a 0003612b62 00", InvalidTopic, 0x8F),
    ("subscribe-share-without-filter", "server", 4, "820d 000a 00082473686172652f67 00",
     InvalidTopic, 0x8F),
    ("subscribe-share-name-wildcard", "server", 4, "820f 000a 000a2473686172652f2b2f78 00",
     InvalidTopic, 0x8F),
    ("subscribe-shared-no-local", "server", 5, "8210 000a 00 000a2473686172652f672f78 04",
     MqttProtocolError, 0x82),
    ("subscribe-two-subscription-ids", "server", 5, "820d 000a 04 0b010b02 0003612f62 00",
     MqttProtocolError, 0x82),
    ("subscribe-packet-id-0", "server", 4, "8208 0000 0003612f62 00", MqttProtocolError, 0x82),
    ("unsubscribe-empty", "server", 4, "a202 000a", MqttProtocolError, 0x82),
    ("unsubscribe-flags-0", "server", 4, "a007 000a 0003612f62", MalformedPacket, 0x81),
    ("unsubscribe-bad-filter", "server", 4, "a207 000a 000323612f", InvalidTopic, 0x8F),
    ("pingreq-body", "server", 4, "c001 00", MalformedPacket, 0x81),
    ("auth-in-v4", "server", 4, "f000", MalformedPacket, 0x81),
    ("connack-to-server", "server", 4, "2002 0000", MqttProtocolError, 0x82),
    ("suback-to-server", "server", 5, "9004 000a 00 00", MqttProtocolError, 0x82),
    ("pingresp-to-server", "server", 5, "d000", MqttProtocolError, 0x82),
    ("disconnect-flags", "server", 5, "e100", MalformedPacket, 0x81),
    ("disconnect-v4-body", "server", 4, "e001 00", MalformedPacket, 0x81),
    ("disconnect-unknown-reason", "server", 5, "e001 01", MalformedPacket, 0x81),
    ("disconnect-trailing", "server", 5, "e003 00 00 ff", MalformedPacket, 0x81),
    ("auth-reason-of-connack", "server", 5, "f001 87", MalformedPacket, 0x81),
    ("remaining-length-5-bytes", "server", 4, "30 ffffffff01", MalformedPacket, 0x81),
    ("remaining-length-not-shortest", "server", 4, "c0 8000", MalformedPacket, 0x81),
    ("subscribe-to-client", "client", 4, "8208 000a 0003612f62 01", MqttProtocolError, 0x82),
    ("connect-to-client", "client", 5, f"100e {_C} 05 02 003c 00 {_X}", MqttProtocolError, 0x82),
    ("disconnect-to-v4-client", "client", 4, "e000", MqttProtocolError, 0x82),
    ("connack-reserved-flags", "client", 4, "2002 02 00", MalformedPacket, 0x81),
    ("connack-v4-return-code-6", "client", 4, "2002 00 06", MalformedPacket, 0x81),
    ("connack-v5-success-code-of-suback", "client", 5, "2003 00 01 00", MalformedPacket, 0x81),
    ("connack-refusal-session-present", "client", 5, "2003 01 87 00", MqttProtocolError, 0x82),
    ("suback-v4-return-code-3", "client", 4, "9003 000a 03", MalformedPacket, 0x81),
    ("suback-empty", "client", 5, "9003 000a 00", MqttProtocolError, 0x82),
    ("unsuback-v5-empty", "client", 5, "b003 000a 00", MqttProtocolError, 0x82),
    ("unsuback-v4-long", "client", 4, "b003 000a 00", MalformedPacket, 0x81),
    ("server-reference-in-connect", "server", None, f"1010 {_C} 05 02 003c 03 1c0000 {_X}",
     MalformedPacket, 0x81),
]  # fmt: skip


@pytest.mark.parametrize(
    ("side", "version", "hex_bytes", "error", "reason"),
    [e[1:] for e in ERRORS],
    ids=[e[0] for e in ERRORS],
)
def test_rule_violation_raises_its_reason_code(
    side: str, version: int | None, hex_bytes: str, error: type[MqttError], reason: int
) -> None:
    parser = _server(version) if side == "server" else Parser(Role.CLIENT, version)
    with pytest.raises(error) as caught:
        parser.feed(h(hex_bytes))
    assert type(caught.value) is error
    assert caught.value.reason_code == reason
    with pytest.raises(error):  # the parser is spent
        parser.feed(b"")


def test_version_is_known_when_a_connect_fails_after_its_level() -> None:
    parser = Parser()
    with pytest.raises(MalformedPacket):
        parser.feed(h(f"1011 {_C} 05 02 003c 03230001 {_X}"))
    assert parser.version == V5  # so the session answers with a 5.0 CONNACK 0x81
    parser = Parser()
    with pytest.raises(UnsupportedProtocolVersion):
        parser.feed(h(f"100d {_C} 06 02 003c {_X}"))
    assert parser.version is None


def test_error_carries_the_packets_before_it() -> None:
    parser = _server(V4)
    with pytest.raises(MqttProtocolError) as caught:
        parser.feed(h("4002 0001 c000 4002 0000 c000"))
    assert caught.value.packets == (Puback(1), PINGREQ)


def test_connect_then_pipelined_packets_use_the_connects_level() -> None:
    data = encode(Connect("box"), V5) + h("3008 0003612f62 02 0100")
    packets = Parser().feed(data)
    indicator = Properties(payload_format_indicator=0)
    assert packets == [Connect("box"), Publish("a/b", properties=indicator)]
    # The same PUBLISH bytes under a 3.1.1 CONNECT are a topic and a payload.
    data = encode(Connect("box"), V4) + h("3008 0003612f62 02 0100")
    assert Parser().feed(data)[1] == Publish("a/b", h("020100"))


# ------------------------------------------------------------ the encoder's refusals

LOCAL_ERRORS: list[tuple[str, Packet, int]] = [
    ("publish-qos-3", Publish("a", qos=3, packet_id=1), V4),
    ("publish-qos-1-no-id", Publish("a", qos=1), V4),
    ("publish-qos-0-with-id", Publish("a", packet_id=5), V4),
    ("publish-qos-0-dup", Publish("a", dup=True), V5),
    ("publish-wildcard", Publish("a/+"), V5),
    ("publish-empty-v4", Publish(""), V4),
    ("publish-empty-no-alias", Publish(""), V5),
    ("publish-u0000", Publish("a\x00b"), V4),
    ("publish-surrogate", Publish("\ud800"), V4),
    ("publish-topic-too-long", Publish("a" * 65536), V4),
    ("publish-reason-string", Publish("a", properties=Properties(reason_string="x")), V5),
    ("puback-id-0", Puback(0), V5),
    ("puback-refusal-v4", Puback(1, R.NOT_AUTHORIZED), V4),
    ("puback-reason-not-allowed", Puback(1, R.SESSION_TAKEN_OVER), V5),
    ("pubrel-reason-of-puback", Pubrel(1, R.QUOTA_EXCEEDED), V5),
    ("auth-v4", Auth(), V4),
    ("disconnect-reason-v4", Disconnect(R.SERVER_SHUTTING_DOWN), V4),
    ("password-without-user-v4", Connect("x", password=b"p"), V4),
    ("keep-alive-too-big", Connect("x", keep_alive_s=70_000), V4),
    ("connect-topic-alias", Connect("x", properties=Properties(topic_alias=1)), V5),
    ("will-qos-3", Connect("x", will=Will("t", b"", 3)), V4),
    ("will-wildcard", Connect("x", will=Will("t/#", b"")), V4),
    ("receive-maximum-0", Connack(properties=Properties(receive_maximum=0)), V5),
    ("message-expiry-too-big",
     Publish("a", properties=Properties(message_expiry_interval_s=1 << 32)), V5),
    ("connack-refusal-session-present", Connack(True, R.NOT_AUTHORIZED), V5),
    ("connack-reason-of-disconnect", Connack(False, R.SESSION_TAKEN_OVER), V5),
    ("subscribe-empty", Subscribe(1, ()), V4),
    ("subscribe-bad-filter", Subscribe(1, (Subscription("a/#/b"),)), V4),
    ("subscribe-v5-options-in-v4", Subscribe(1, (Subscription("a", no_local=True),)), V4),
    ("subscribe-shared-no-local", Subscribe(1, (Subscription("$share/g/a", no_local=True),)), V5),
    ("subscribe-two-ids",
     Subscribe(1, (Subscription("a"),), Properties(subscription_identifiers=(1, 2))), V5),
    ("suback-empty", Suback(1, ()), V4),
    ("suback-reason-not-allowed", Suback(1, (R.SESSION_TAKEN_OVER,)), V5),
    ("unsubscribe-empty", Unsubscribe(1, ()), V5),
    ("unsuback-refusal-v4", Unsuback(1, (R.NOT_AUTHORIZED,)), V4),
    ("unsuback-v5-without-codes", Unsuback(1), V5),
    ("level-3", Connect("x"), 3),
]  # fmt: skip


@pytest.mark.parametrize(
    ("packet", "version"), [e[1:] for e in LOCAL_ERRORS], ids=[e[0] for e in LOCAL_ERRORS]
)
def test_encoder_refuses_what_the_protocol_cannot_carry(packet: Packet, version: int) -> None:
    with pytest.raises(LocalMqttError):
        encode(packet, version)


def test_level_4_gets_the_nearest_311_codes_and_no_properties() -> None:
    assert encode(Connack(False, R.QUOTA_EXCEEDED), V4) == h("2002 00 03")
    assert encode(Connack(False, R.BANNED), V4) == h("2002 00 05")
    assert connack_return_code(R.BAD_AUTHENTICATION_METHOD) == 4
    assert encode(Suback(1, (R.GRANTED_QOS_1, R.NOT_AUTHORIZED)), V4) == h("9004 0001 01 80")
    assert encode(Unsuback(1, (R.NO_SUBSCRIPTION_EXISTED,)), V4) == h("b002 0001")
    assert encode(Puback(1, R.NO_MATCHING_SUBSCRIBERS, Properties(reason_string="r")), V4) == (
        h("4002 0001")
    )
    publish = Publish("a", b"x", properties=Properties(message_expiry_interval_s=5))
    assert encode(publish, V4) == h("3004 000161 78")


# ------------------------------------------------------------ round trips

ROUND_TRIPS = {
    "connect": connects,
    "connack": connacks,
    "publish-from-client": lambda v: publishes(v, from_client=True),
    "publish-from-server": lambda v: publishes(v, from_client=False),
    "puback-pubrec-pubrel-pubcomp": pub_acks,
    "subscribe": subscribes,
    "suback": subacks,
    "unsubscribe": unsubscribes,
    "unsuback": unsubacks,
    "pingreq-pingresp": lambda v: st.sampled_from([PINGREQ, PINGRESP]),
    "disconnect": disconnects,
    "auth": lambda v: auths(),
}


@pytest.mark.parametrize("version", [V4, V5])
@pytest.mark.parametrize("kind", sorted(ROUND_TRIPS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip(kind: str, version: int, data: st.DataObject) -> None:
    if kind == "auth" and version == V4:
        return
    packet = data.draw(ROUND_TRIPS[kind](version))
    encoded = encode(packet, version)
    assert decode(encoded, version) == packet
    assert encode(decode(encoded, version), version) == encoded


@pytest.mark.parametrize("version", [V4, V5])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_publish_fast_paths_give_the_same_bytes(version: int, data: st.DataObject) -> None:
    p = data.draw(publishes(version, from_client=False))
    fields = {"version": version, "retain": p.retain, "properties": p.properties}
    encoded = encode(p, version)
    assert encode_publish(p.topic, p.payload, p.qos, p.packet_id, dup=p.dup, **fields) == encoded
    prepared = prepare_publish(p.topic, p.payload, p.qos, **fields)
    assert prepared.to_bytes(p.packet_id, p.dup) == encoded
    if p.qos and not p.retain and p.properties.topic_alias is None:
        # A connection's pushes: QoS 1/2 on a topic encoded once per connection.
        props = encode_properties(p.properties, PacketType.PUBLISH) if version == V5 else b""
        head = topic_head(p.topic, version)
        assert push_bytes(head, p.payload, p.qos, p.packet_id, p.dup, props) == encoded


@settings(max_examples=200, deadline=None)
@given(message_id=text, headers=st.lists(st.tuples(text, text), max_size=4).map(tuple))
def test_push_properties_are_the_user_properties_encoded(
    message_id: str, headers: tuple[tuple[str, str], ...]
) -> None:
    props = Properties(user_properties=(("message-id", message_id), *headers))
    assert push_properties(message_id, headers) == encode_properties(props, PacketType.PUBLISH)


def test_topic_head_refuses_what_encode_publish_refuses() -> None:
    for topic, version in (("a/#", V4), ("a/+", V5), ("", V5), ("a\x00", V4), ("a", 3)):
        with pytest.raises(LocalMqttError):
            encode_publish(topic, b"", 1, 1, version=version)
        with pytest.raises(LocalMqttError):
            topic_head(topic, version)


def test_prepared_publish_refuses_bad_packet_ids() -> None:
    with pytest.raises(LocalMqttError):
        prepare_publish("a", b"", 1, version=V4).to_bytes(0)
    with pytest.raises(LocalMqttError):
        prepare_publish("a", b"", 0, version=V4).to_bytes(0, dup=True)
    with pytest.raises(LocalMqttError):
        prepare_publish("a/#", b"", 0, version=V4)
    with pytest.raises(LocalMqttError):
        encode_publish("a", b"", 0, version=3)


@pytest.mark.parametrize("version", [V4, V5])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_client_stream_split_anywhere(version: int, data: st.DataObject) -> None:
    """A client's whole conversation, cut at random points, parses to the same packets."""
    packets = [data.draw(connects(version)), *data.draw(st.lists(client_packets(version)))]
    stream = b"".join(encode(p, version) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = Parser(Role.SERVER, max_packet_size_bytes=1 << 20)
    got: list[Packet] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += parser.feed(stream[start:end])
    assert got == packets
    assert parser.buffered_bytes == 0
    assert parser.version == version


@pytest.mark.parametrize("version", [V4, V5])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_server_stream_byte_by_byte(version: int, data: st.DataObject) -> None:
    packets = data.draw(st.lists(server_packets(version), max_size=6))
    stream = b"".join(encode(p, version) for p in packets)
    parser = Parser(Role.CLIENT, version)
    got = [p for i in range(len(stream)) for p in parser.feed(stream[i : i + 1])]
    assert got == packets


# ------------------------------------------------------------ the bounded buffer


def test_too_large_packet_is_refused_from_its_fixed_header() -> None:
    parser = _server(V4)
    parser.max_packet_size_bytes = 1000
    # 1 + 2 + 998 = 1001 bytes announced: refused before a byte of the body arrives.
    with pytest.raises(PacketTooLarge) as caught:
        parser.feed(h("30 e607"))
    assert caught.value.reason_code == R.PACKET_TOO_LARGE
    assert parser.buffered_bytes == 0
    # Exactly at the limit is fine, and held only while incomplete.
    parser = _server(V4)
    parser.max_packet_size_bytes = 1000
    packet = Publish("t", b"x" * (1000 - 3 - 3))
    data = encode(packet, V4)
    assert len(data) == 1000
    for i in range(0, len(data) - 100, 100):
        assert parser.feed(data[i : i + 100]) == []
        assert parser.buffered_bytes <= 1000
    assert parser.feed(data[len(data) - 100 :]) == [packet]


def test_hostile_remaining_length_cannot_grow_the_buffer() -> None:
    parser = Parser()
    with pytest.raises(PacketTooLarge):
        parser.feed(h("10 ffffff7f"))  # a 256 MiB CONNECT
    assert parser.version is None
    assert parser.buffered_bytes == 0


def test_parser_copies_what_it_keeps() -> None:
    parser = _server(V4)
    data = bytearray(encode(Publish("a/b", b"payload"), V4))
    assert parser.feed(memoryview(data)[:5]) == []
    data[:] = b"\xff" * len(data)  # the caller reuses its buffer
    assert parser.feed(encode(Publish("a/b", b"payload"), V4)[5:]) == [Publish("a/b", b"payload")]


def test_parser_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        Parser(Role.SERVER, V4)
    with pytest.raises(ValueError):
        Parser(Role.CLIENT)
    with pytest.raises(ValueError):
        Parser(max_packet_size_bytes=10)


# ------------------------------------------------------------ mutation fuzzing


def _conversations() -> list[tuple[str, int, bytes]]:
    """Valid byte streams: (direction parsed by, level, bytes), from the vectors."""
    streams = []
    for version in (V4, V5):
        client, server = (
            [encode(Connect("box-1", False, 30, "u", b"p", Will("w", b"x", 1)), version)],
            [],
        )
        for v, hex_bytes, packet in VECTORS:
            if v != version or isinstance(packet, Connect):
                continue
            parser = _parser_for(packet, version)
            (client if parser.role is Role.SERVER else server).append(h(hex_bytes))
        streams.append(("server", version, b"".join(client)))
        streams.append(("client", version, b"".join(server)))
    return streams


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not out:
            out.append(rng.randrange(256))
        op = rng.randrange(8)
        i = rng.randrange(len(out))
        if op == 0:
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            out.insert(i, rng.randrange(256))
        elif op == 2:
            del out[i : i + rng.randint(1, 8)]
        elif op == 3:
            out[i] = rng.choice((0x00, 0x7F, 0x80, 0xFF))
        elif op == 4:  # an oversized or overlong remaining length
            out[i : i + 1] = rng.choice((b"\xff\xff\xff\x7f", b"\xff\xff\xff\xff\x01", b"\x80\x00"))
        elif op == 5:
            j = rng.randrange(len(out))
            out[i:i] = out[j : j + rng.randint(1, 32)]
        elif op == 6:
            del out[i:]
        else:
            out[i:i] = rng.randbytes(rng.randint(1, 16))
    return bytes(out)


def _feed_in_chunks(
    rng: random.Random, parser: Parser, data: bytes
) -> tuple[MqttError | None, bool]:
    """Feed ``data`` in random chunks; nothing but an ``MqttError`` may escape.

    Returns the error (if any) and whether a CONNECT had been parsed before it.
    """
    pos = 0
    connected = False
    while pos < len(data):
        size = rng.choice((1, 2, 3, 7, 64, 4096))
        try:
            packets = parser.feed(data[pos : pos + size])
        except MqttError as error:
            connected = connected or any(isinstance(p, Connect) for p in error.packets)
            with pytest.raises(MqttError) as again:
                parser.feed(b"\x00")
            assert again.value is error
            return error, connected
        connected = connected or any(isinstance(p, Connect) for p in packets)
        assert parser.buffered_bytes <= parser.max_packet_size_bytes
        pos += size
    return None, connected


@pytest.mark.parametrize(
    ("side", "version", "stream"),
    _conversations(),
    ids=lambda v: v if isinstance(v, str | int) else "",
)
def test_mutated_streams_raise_only_mqtt_errors(side: str, version: int, stream: bytes) -> None:
    rng = random.Random(f"mqtt-fuzz-{side}-{version}")
    errors = 0
    for _ in range(1500):
        if side == "server":
            parser = Parser(max_packet_size_bytes=rng.choice((64, 200, 1 << 16)))
        else:
            parser = Parser(Role.CLIENT, version, max_packet_size_bytes=rng.choice((64, 1 << 16)))
        error, connected = _feed_in_chunks(rng, parser, _mutate(rng, stream))
        if error is None:
            continue
        errors += 1
        # The session can always answer with the error's code: in a CONNACK while the
        # CONNECT itself is bad, in a DISCONNECT after.
        answer = PacketType.CONNACK if side == "server" and not connected else PacketType.DISCONNECT
        assert error.reason_code in ALLOWED_REASON_CODES[answer], (error, connected)
    assert errors > 500  # the mutations do reach the error paths


@pytest.mark.parametrize("version", [V4, V5])
@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=64))
def test_random_bytes_after_connect(version: int, tail: bytes) -> None:
    parser = _server(version)
    with contextlib.suppress(MqttError):
        parser.feed(tail)
    assert parser.buffered_bytes <= len(tail)


# ------------------------------------------------------------ the packet classes


@pytest.mark.parametrize(
    "cls",
    [Auth, Connack, Connect, Disconnect, Properties, Puback, Pubcomp, Publish, Pubrec, Pubrel,
     Suback, Subscribe, Subscription, Unsuback, Unsubscribe, Will],
)  # fmt: skip
def test_packet_classes_stay_frozen_dataclasses(cls: type) -> None:
    fields = dataclasses.fields(cls)
    required = {f.name: f"{f.name}-value" for f in fields if f.default is dataclasses.MISSING}
    made = cls(**required)
    for f in fields:  # every field set, from its argument or its default
        expected = required.get(f.name, f.default)
        assert getattr(made, f.name) == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, fields[0].name, "changed")
    assert dataclasses.replace(made) == made
    assert list(inspect.signature(cls).parameters) == [f.name for f in fields]


def test_fast_init_refuses_fields_it_cannot_build() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError):
        fast_init(WithFactory)
