"""Sessions that lose nothing, on one node: QoS 0/1/2, persistence, takeover, the queue bound.

paho-mqtt for what a library does; ``RawBox`` (the codec over TLS) where the
test must hold an acknowledgement back, cut the connection at a chosen
step, or read packet ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from mqtt_harness import PahoBox, RawBox, admin_get, mqtt_ssl_context, token_password

from channel.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    PINGREQ,
    Connack,
    Connect,
    Disconnect,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    Subscription,
)
from channel.mqtt.encoder import encode
from tests.gateway_harness import RunningGateway, gateway
from tests.test_gateway_handshake import admin_text

pytestmark = pytest.mark.both_engines

VERSIONS = [MQTT_3_1_1, MQTT_5]
OPEN = {"subscribe_allow": ["#"], "publish_allow": ["#"], "uplink_topics": []}


def paho_box(gw: RunningGateway, client_id: str, version: int, **kwargs: Any) -> PahoBox:
    return PahoBox(gw.mqtt_port, client_id, version, ca=gw.ca_cert, username=client_id,
                   password=token_password(gw, client_id), **kwargs)  # fmt: skip


def connect_packet(gw: RunningGateway, client_id: str, version: int, *, clean: bool = True,
                   expiry_s: int | None = None, properties: Properties | None = None,
                   **kwargs: Any) -> Connect:  # fmt: skip
    props = properties or Properties()
    if version == MQTT_5 and expiry_s is not None:
        props = dataclasses.replace(props, session_expiry_interval_s=expiry_s)
    return Connect(client_id, clean_start=clean, username=client_id,
                   password=gw.token(client_id), properties=props, **kwargs)  # fmt: skip


async def raw_box(
    gw: RunningGateway, client_id: str, version: int, **kwargs: Any
) -> tuple[RawBox, Connack]:
    box, connack = await RawBox.connect(
        gw.mqtt_port, connect_packet(gw, client_id, version, **kwargs), version, ca=gw.ca_cert
    )
    assert connack is not None and connack.reason_code == ReasonCode.SUCCESS, connack
    return box, connack


def persistent(version: int) -> dict[str, Any]:
    """CONNECT arguments of a session that outlives its connection, at either level."""
    return {"clean": False} if version == MQTT_3_1_1 else {"clean": False, "expiry_s": 600}


@pytest.mark.parametrize("version", VERSIONS)
async def test_qos_0_1_2_reach_a_subscriber_at_their_qos(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        sub, pub = paho_box(gw, "sub", version), paho_box(gw, "pub", version)
        await sub.connect()
        await pub.connect()
        assert [getattr(c, "value", c) for c in await sub.subscribe("t/#", qos=2)] == [2]
        for qos in (0, 1, 2):
            await pub.publish(f"t/{qos}", f"qos {qos}".encode(), qos)
        got = sorted([(m.topic, m.payload, m.qos) for m in [await sub.message() for _ in range(3)]])
        assert got == [("t/0", b"qos 0", 0), ("t/1", b"qos 1", 1), ("t/2", b"qos 2", 2)]
        await sub.disconnect()
        await pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_subscription_sent_just_before_disconnect_is_kept(
    tmp_path: Path, version: int
) -> None:
    """SUBSCRIBE and DISCONNECT in one write: the DISCONNECT waits for the SUBSCRIBE."""
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        box, _ = await raw_box(gw, "keeper", version, **persistent(version))
        await box.send_raw(
            encode(Subscribe(1, (Subscription("k/#", 1),)), version) + encode(Disconnect(), version)
        )
        await box.closed()
        box, connack = await raw_box(gw, "keeper", version, **persistent(version))
        assert connack.session_present
        publisher = paho_box(gw, "kpub", version)
        await publisher.connect()
        await publisher.publish("k/1", b"kept", 1)
        message = await box.expect(Publish)
        assert (message.topic, message.payload) == ("k/1", b"kept")
        await box.send(Puback(message.packet_id))
        await box.disconnect()
        await publisher.disconnect()


async def test_a_qos0_message_right_after_connecting_reaches_the_box(tmp_path: Path) -> None:
    """CONNECT, SUBSCRIBE and a PUBLISH to itself in one write: the PUBLISH is routed before
    the box's presence is written, and must reach it all the same."""
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        version = MQTT_5
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.mqtt_port, ssl=mqtt_ssl_context(gw.ca_cert)
        )
        box = RawBox(reader, writer, version)
        await box.send(
            connect_packet(gw, "quick", version),
            Subscribe(1, (Subscription("me/#", 0),)),
            Publish("me/now", b"hello", 0),
        )
        await box.expect(Connack)
        await box.expect(Suback)
        message = await box.expect(Publish)
        assert (message.topic, message.payload, message.qos) == ("me/now", b"hello", 0)
        await box.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_offline_session_gets_its_queue_on_reconnect(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        sub = paho_box(gw, "away", version, clean=version != MQTT_3_1_1)
        flags, _, _ = await sub.connect(
            clean_start=False, expiry_s=600 if version == MQTT_5 else None
        )
        await sub.subscribe("q/#", qos=1)
        await sub.disconnect()
        pub = paho_box(gw, "talker", version)
        await pub.connect()
        for n in range(3):
            await pub.publish(f"q/{n}", f"m{n}".encode(), 1)
        await pub.publish("q/zero", b"not queued", 0)
        await pub.publish("q/last", b"last", 1)
        sub = paho_box(gw, "away", version, clean=version != MQTT_3_1_1)
        flags, _, _ = await sub.connect(
            clean_start=False, expiry_s=600 if version == MQTT_5 else None
        )
        assert flags.session_present
        got = [(await sub.message()).payload for _ in range(4)]
        assert got == [b"m0", b"m1", b"m2", b"last"]  # QoS 0 is not kept for offline sessions
        await sub.disconnect()
        await pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_clean_start_forgets_the_session(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        box, _ = await raw_box(gw, "forget", version, **persistent(version))
        await box.send(Subscribe(1, (Subscription("f/#", 1),)))
        await box.expect(Suback)
        await box.disconnect()
        pub = paho_box(gw, "fpub", version)
        await pub.connect()
        await pub.publish("f/old", b"old", 1)
        box, connack = await raw_box(gw, "forget", version)  # clean start
        assert not connack.session_present
        await box.send(Subscribe(2, (Subscription("f/#", 1),)))
        await box.expect(Suback)
        await pub.publish("f/new", b"new", 1)
        message = await box.expect(Publish)
        assert message.payload == b"new"  # nothing of the old session came first
        await box.send(Puback(message.packet_id))
        await box.disconnect()
        await pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_unacknowledged_qos1_message_comes_again_under_its_packet_id(
    tmp_path: Path, version: int
) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        box, _ = await raw_box(gw, "slow", version, **persistent(version))
        await box.send(Subscribe(1, (Subscription("r/#", 1),)))
        await box.expect(Suback)
        pub = paho_box(gw, "rpub", version)
        await pub.connect()
        await pub.publish("r/1", b"again", 1)
        first = await box.expect(Publish)
        box.abort()  # no PUBACK
        box, connack = await raw_box(gw, "slow", version, **persistent(version))
        assert connack.session_present
        second = await box.expect(Publish)
        assert (second.payload, second.packet_id) == (b"again", first.packet_id)
        assert (first.dup, second.dup) == (False, True)  # MQTT 3.3.1.1: a resend has DUP
        await box.send(Puback(second.packet_id))
        await pub.publish("r/2", b"next", 1)
        assert (await box.expect(Publish)).payload == b"next"  # not "again" a third time
        await box.disconnect()
        await pub.disconnect()


async def session_closed(gw: RunningGateway, client_id: str) -> None:
    """Wait until the node has recorded the end of the client's connection, and the
    clock has left the millisecond it was recorded in."""
    store = gw.node.mqtt.store
    async with asyncio.timeout(10):
        while True:
            record = (await store.records([client_id])).get(client_id)
            if record is not None and record.disconnected_at_ms:
                break
            await asyncio.sleep(0.01)
        while int(time.time() * 1000) <= record.disconnected_at_ms:
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("version", VERSIONS)
async def test_only_a_resent_publish_has_dup_set_as_paho_sees_it(
    tmp_path: Path, version: int
) -> None:
    """A message that may have reached the session's previous connection comes with
    DUP 1; one queued after that connection closed is a first attempt: DUP 0."""
    async with gateway(tmp_path, mqtt={**OPEN, "dup_clock_margin_ms": 0}) as gw:
        box, _ = await raw_box(gw, "dupe", version, **persistent(version))
        await box.send(Subscribe(1, (Subscription("d/#", 1),)))
        await box.expect(Suback)
        pub = paho_box(gw, "dpub", version)
        await pub.connect()
        await pub.publish("d/1", b"sent before", 1)
        first = await box.expect(Publish)
        assert not first.dup
        box.abort()  # no PUBACK
        await session_closed(gw, "dupe")
        await pub.publish("d/2", b"queued after", 1)
        sub = paho_box(gw, "dupe", version, clean=version != MQTT_3_1_1)
        flags, _, _ = await sub.connect(
            clean_start=False, expiry_s=600 if version == MQTT_5 else None
        )
        assert flags.session_present
        got = {m.payload: m for m in [await sub.message(), await sub.message()]}
        resent, queued = got[b"sent before"], got[b"queued after"]
        assert (resent.mid, resent.dup, queued.dup) == (first.packet_id, True, False)
        await sub.disconnect()
        await pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_qos2_publish_not_yet_received_comes_again_with_dup(
    tmp_path: Path, version: int
) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        box, _ = await raw_box(gw, "dupe2", version, **persistent(version))
        await box.send(Subscribe(1, (Subscription("e/#", 2),)))
        await box.expect(Suback)
        pub = paho_box(gw, "epub", version)
        await pub.connect()
        await pub.publish("e/1", b"exactly", 2)
        first = await box.expect(Publish)
        box.abort()  # no PUBREC: the message is still ours to send
        box, connack = await raw_box(gw, "dupe2", version, **persistent(version))
        assert connack.session_present
        again = await box.expect(Publish)
        assert (again.payload, again.packet_id, first.dup, again.dup) == (
            b"exactly",
            first.packet_id,
            False,
            True,
        )
        await box.send(Pubrec(again.packet_id))
        assert (await box.expect(Pubrel)).packet_id == again.packet_id
        await box.send(Pubcomp(again.packet_id))
        await box.disconnect()
        await pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_session_taken_over_gets_what_the_old_connection_had_with_dup(
    tmp_path: Path, version: int
) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        old, _ = await raw_box(gw, "dupe3", version, **persistent(version))
        await old.send(Subscribe(1, (Subscription("t/#", 1),)))
        await old.expect(Suback)
        pub = paho_box(gw, "tpub", version)
        await pub.connect()
        await pub.publish("t/1", b"held", 1)
        first = await old.expect(Publish)
        new, connack = await raw_box(gw, "dupe3", version, **persistent(version))
        assert connack.session_present
        again = await new.expect(Publish)
        assert (again.payload, again.packet_id, first.dup, again.dup) == (
            b"held",
            first.packet_id,
            False,
            True,
        )
        await new.send(Puback(again.packet_id))
        await old.closed()
        await new.disconnect()
        await pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_released_qos2_message_is_released_again_not_resent(
    tmp_path: Path, version: int
) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        box, _ = await raw_box(gw, "twice", version, **persistent(version))
        await box.send(Subscribe(1, (Subscription("x/#", 2),)))
        await box.expect(Suback)
        pub = paho_box(gw, "xpub", version)
        await pub.connect()
        await pub.publish("x/1", b"once", 2)
        message = await box.expect(Publish)
        await box.send(Pubrec(message.packet_id))
        assert (await box.expect(Pubrel)).packet_id == message.packet_id
        box.abort()  # no PUBCOMP
        box, connack = await raw_box(gw, "twice", version, **persistent(version))
        assert connack.session_present
        again = await box.expect(Pubrel)  # the PUBREL, not the PUBLISH
        assert again.packet_id == message.packet_id
        await box.send(Pubcomp(again.packet_id))
        await box.send(PINGREQ)
        await box.expect(Pingresp)  # and nothing else came
        await box.disconnect()
        await pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_qos2_publish_sent_again_is_routed_once(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        sub = paho_box(gw, "once-sub", version)
        await sub.connect()
        await sub.subscribe("o/#", qos=2)
        box, _ = await raw_box(gw, "once-pub", version, **persistent(version))
        await box.send(Publish("o/1", b"exactly once", 2, packet_id=7))
        assert (await box.expect(Pubrec)).packet_id == 7
        box.abort()  # before PUBREL: the box sends the PUBLISH again
        box, connack = await raw_box(gw, "once-pub", version, **persistent(version))
        assert connack.session_present
        await box.send(Publish("o/1", b"exactly once", 2, packet_id=7, dup=True))
        assert (await box.expect(Pubrec)).packet_id == 7
        await box.send(Pubrel(7))
        assert (await box.expect(Pubcomp)).packet_id == 7
        # The marker on the same topic at the same QoS: only then does MQTT order them
        # (4.6, "Ordered Topic"), so a second copy of the first would come before it. (A
        # QoS 1 marker on another topic may overtake it: paho hands a QoS 2 message over
        # at the PUBREL, a round trip after the PUBLISH.)
        await box.send(Publish("o/1", b"marker", 2, packet_id=8))
        assert (await box.expect(Pubrec)).packet_id == 8
        await box.send(Pubrel(8))
        assert (await box.expect(Pubcomp)).packet_id == 8
        assert [(await sub.message()).payload for _ in range(2)] == [b"exactly once", b"marker"]
        await box.disconnect()
        await sub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_second_connection_takes_the_session_over(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        old, _ = await raw_box(gw, "twin", version)
        new, _ = await raw_box(gw, "twin", version)
        ended = await old.closed()
        if version == MQTT_5:
            assert ended == [Disconnect(ReasonCode.SESSION_TAKEN_OVER, ended[0].properties)]
        else:
            assert ended == []  # 3.1.1 has no server DISCONNECT: the connection closes
        assert gw.node.registry.get("twin") is not None
        await new.send(PINGREQ)
        await new.expect(Pingresp)  # the new one is untouched
        assert "channel_mqtt_takeovers_total 1.0" in await admin_text(gw, "/metrics")
        await new.disconnect()


async def test_the_offline_queue_keeps_the_newest_and_counts_what_it_drops(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN, push={"queue_cap": 3}) as gw:
        version = MQTT_5
        box, _ = await raw_box(gw, "full", version, **persistent(version))
        await box.send(Subscribe(1, (Subscription("b/#", 1),)))
        await box.expect(Suback)
        await box.disconnect()
        pub = paho_box(gw, "bpub", version)
        await pub.connect()
        for n in range(5):
            await pub.publish("b/x", f"{n}".encode(), 1)
        box, _ = await raw_box(gw, "full", version, **persistent(version))
        got = []
        for _ in range(3):
            message = await box.expect(Publish)
            got.append(message.payload)
            await box.send(Puback(message.packet_id))
        assert got == [b"2", b"3", b"4"]  # the oldest two were dropped
        assert "channel_mqtt_queue_overflow_dropped_total 2.0" in await admin_text(gw, "/metrics")
        await box.disconnect()
        await pub.disconnect()


async def test_receive_maximum_bounds_what_is_in_flight(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        box, _ = await raw_box(gw, "narrow", MQTT_5, properties=Properties(receive_maximum=1))
        await box.send(Subscribe(1, (Subscription("n/#", 1),)))
        await box.expect(Suback)
        pub = paho_box(gw, "npub", MQTT_5)
        await pub.connect()
        for n in range(3):
            await pub.publish("n/x", f"{n}".encode(), 1)  # routed once this returns
        first = await box.expect(Publish)
        await box.send(PINGREQ)
        await box.expect(Pingresp)  # no second PUBLISH before the first is acknowledged
        await box.send(Puback(first.packet_id))
        second = await box.expect(Publish)
        await box.send(Puback(second.packet_id))
        third = await box.expect(Publish)
        assert [first.payload, second.payload, third.payload] == [b"0", b"1", b"2"]
        await box.send(Puback(third.packet_id))
        lookup = await admin_get(gw, "/admin/devices/narrow")
        assert lookup["inflight"] == 0
        await box.disconnect()
        await pub.disconnect()
