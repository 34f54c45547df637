"""MQTT semantics beyond delivery: retained, wills, keepalive, aliases, limits, sharing, drain."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.properties import Properties as PahoProperties
from test_mqtt_sessions import OPEN, paho_box, raw_box

from channel.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    PINGREQ,
    Disconnect,
    Pingresp,
    Properties,
    Puback,
    Publish,
    ReasonCode,
    RetainHandling,
    Suback,
    Subscribe,
    Subscription,
    Will,
)
from tests.gateway_harness import gateway

pytestmark = pytest.mark.both_engines

VERSIONS = [MQTT_3_1_1, MQTT_5]


def publish_props(**values: Any) -> PahoProperties:
    props = PahoProperties(3)  # PacketTypes.PUBLISH
    for name, value in values.items():
        setattr(props, name, value)
    return props


@pytest.mark.parametrize("version", VERSIONS)
async def test_retained_messages(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        pub = paho_box(gw, "rpub", version)
        await pub.connect()
        await pub.publish("r/a", b"kept a", 1, retain=True)
        await pub.publish("r/b", b"kept b", 2, retain=True)
        sub = paho_box(gw, "rsub", version)
        await sub.connect()
        await sub.subscribe("r/+", qos=1)
        got = sorted([(m.topic, m.payload, m.retain, m.qos) for m in
                      [await sub.message(), await sub.message()]])  # fmt: skip
        assert got == [("r/a", b"kept a", True, 1), ("r/b", b"kept b", True, 1)]
        # Live messages to an existing subscription are not flagged retained.
        await pub.publish("r/a", b"live", 1, retain=True)
        live = await sub.message()
        assert (live.payload, live.retain) == (b"live", False)
        # An empty retained message clears it.
        await pub.publish("r/a", b"", 1, retain=True)
        assert (await sub.message()).payload == b""
        late = paho_box(gw, "rlate", version)
        await late.connect()
        await late.subscribe("r/+", qos=1)
        first = await late.message()
        assert (first.topic, first.payload) == ("r/b", b"kept b")
        await pub.publish("r/marker", b"m", 1)
        assert (await late.message()).payload == b"m"  # r/a is gone
        for box in (pub, sub, late):
            await box.disconnect()


async def test_retain_handling_options(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        pub = paho_box(gw, "hpub", MQTT_5)
        await pub.connect()
        await pub.publish("h/x", b"retained", 1, retain=True)
        box, _ = await raw_box(gw, "hsub", MQTT_5)
        never = Subscription("h/#", 1, retain_handling=RetainHandling.DO_NOT_SEND)
        await box.send(Subscribe(1, (never,)))
        await box.expect(Suback)
        if_new = Subscription("h/+", 1, retain_handling=RetainHandling.SEND_IF_NEW_SUBSCRIPTION)
        await box.send(Subscribe(2, (if_new,)))
        await box.expect(Suback)
        message = await box.expect(Publish)
        assert (message.payload, message.retain) == (b"retained", True)
        await box.send(Puback(message.packet_id), Subscribe(3, (if_new,)))
        await box.expect(Suback)  # not new: no retained message again
        await box.send(PINGREQ)
        await box.expect(Pingresp)
        await box.disconnect()
        await pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_will_is_published_when_a_box_vanishes_not_when_it_says_goodbye(
    tmp_path: Path, version: int
) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        watcher = paho_box(gw, "watch", version)
        await watcher.connect()
        await watcher.subscribe("status/#", qos=1)
        polite = paho_box(gw, "polite", version)
        await polite.connect(will=("status/polite", b"gone", 1, False))
        await polite.disconnect()
        rude = paho_box(gw, "rude", version)
        await rude.connect(will=("status/rude", b"vanished", 1, False))
        rude.kill()
        message = await watcher.message()
        assert (message.topic, message.payload) == ("status/rude", b"vanished")
        assert watcher.messages.empty()  # the polite box's will was discarded
        await watcher.disconnect()


async def test_a_will_delay_is_cancelled_by_a_reconnect(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        watcher = paho_box(gw, "watch2", MQTT_5)
        await watcher.connect()
        await watcher.subscribe("status/#", qos=1)
        soon = Will("status/soon", b"soon", 1, properties=Properties(will_delay_interval_s=1))
        box, _ = await raw_box(gw, "soon", MQTT_5, expiry_s=60, will=soon)
        box.abort()
        box, connack = await raw_box(gw, "soon", MQTT_5, clean=False, expiry_s=60)
        assert connack.session_present  # back within the delay: no will
        later = Will("status/later", b"later", 1, properties=Properties(will_delay_interval_s=2))
        other, _ = await raw_box(gw, "later", MQTT_5, expiry_s=60, will=later)
        other.abort()
        # Had it not been cancelled, the 1 s will would have come before this 2 s one.
        assert (await watcher.message()).topic == "status/later"
        await box.disconnect()
        await watcher.disconnect()


async def test_disconnect_with_will_message_sends_the_will(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        watcher = paho_box(gw, "watch3", MQTT_5)
        await watcher.connect()
        await watcher.subscribe("status/#", qos=1)
        box, _ = await raw_box(gw, "leaver", MQTT_5, will=Will("status/leaver", b"bye", 1))
        await box.send(Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE))
        assert (await watcher.message()).payload == b"bye"
        await watcher.disconnect()


async def test_keepalive_times_one_and_a_half_ends_a_silent_box(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        watcher = paho_box(gw, "watch4", MQTT_5)
        await watcher.connect()
        await watcher.subscribe("status/#", qos=1)
        started = time.monotonic()
        box, _ = await raw_box(gw, "sleepy", MQTT_3_1_1, keep_alive_s=1,
                               will=Will("status/sleepy", b"timed out", 1))  # fmt: skip
        assert await box.closed(timeout_s=10) == []
        elapsed = time.monotonic() - started
        assert 1.4 <= elapsed < 5, elapsed
        assert (await watcher.message()).payload == b"timed out"
        await watcher.disconnect()


async def test_a_box_asking_for_no_keepalive_is_told_the_servers(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt={**OPEN, "max_keepalive_s": 45}) as gw:
        box, connack = await raw_box(gw, "eternal", MQTT_5, keep_alive_s=0)
        assert connack.properties.server_keep_alive_s == 45
        await box.disconnect()


async def test_topic_aliases_both_ways(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt={**OPEN, "topic_alias_maximum": 4}) as gw:
        box, connack = await raw_box(gw, "alias", MQTT_5,
                                     properties=Properties(topic_alias_maximum=2))  # fmt: skip
        assert connack.properties.topic_alias_maximum == 4
        await box.send(Subscribe(1, (Subscription("al/#", 0),)))
        await box.expect(Suback)
        await box.send(Publish("al/one", b"1", properties=Properties(topic_alias=3)))
        await box.send(Publish("", b"2", properties=Properties(topic_alias=3)))
        first, second = await box.expect(Publish), await box.expect(Publish)
        # Ours towards the box: the topic once, then the alias alone.
        assert (first.topic, first.properties.topic_alias, first.payload) == ("al/one", 1, b"1")
        assert (second.topic, second.properties.topic_alias, second.payload) == ("", 1, b"2")
        await box.send(Publish("", b"3", properties=Properties(topic_alias=4)))  # never set
        ended = await box.closed()
        assert ended == [Disconnect(ReasonCode.PROTOCOL_ERROR, ended[0].properties)]
        box, _ = await raw_box(gw, "alias", MQTT_5)
        await box.send(Publish("al/x", b"x", properties=Properties(topic_alias=5)))  # > 4
        ended = await box.closed()
        assert ended[0].reason_code == ReasonCode.TOPIC_ALIAS_INVALID


async def test_packet_size_limits_both_ways(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt={**OPEN, "max_packet_size_bytes": 2048}) as gw:
        box, connack = await raw_box(gw, "small", MQTT_5,
                                     properties=Properties(maximum_packet_size=64))  # fmt: skip
        assert connack.properties.maximum_packet_size == 2048
        await box.send(Subscribe(1, (Subscription("ps/#", 1),)))
        await box.expect(Suback)
        pub = paho_box(gw, "pspub", MQTT_5)
        await pub.connect()
        await pub.publish("ps/big", b"x" * 100, 1)  # too large for the box: not sent
        await pub.publish("ps/small", b"ok", 1)
        message = await box.expect(Publish)
        assert message.payload == b"ok"
        await box.send(Puback(message.packet_id))
        await box.send(Publish("ps/huge", b"y" * 4096, 0))  # over the server's limit
        ended = await box.closed()
        # Both engines say why at MQTT 5 (the native one from the fixed header, in Rust).
        assert ended and ended[-1].reason_code == ReasonCode.PACKET_TOO_LARGE
        await pub.disconnect()


async def test_message_expiry_counts_down_while_queued(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        box, _ = await raw_box(gw, "exp", MQTT_5, clean=False, expiry_s=600)
        await box.send(Subscribe(1, (Subscription("e/#", 1),)))
        await box.expect(Suback)
        await box.disconnect()
        pub = paho_box(gw, "epub", MQTT_5)
        await pub.connect()
        await pub.publish(
            "e/x", b"soon stale", 1, properties=publish_props(MessageExpiryInterval=60)
        )
        box, _ = await raw_box(gw, "exp", MQTT_5, clean=False, expiry_s=600)
        message = await box.expect(Publish)
        assert message.payload == b"soon stale"
        assert 0 < message.properties.message_expiry_interval_s <= 60
        await box.send(Puback(message.packet_id))
        await box.disconnect()
        await pub.disconnect()


async def test_subscription_identifiers_and_overlapping_subscriptions(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        box, _ = await raw_box(gw, "ids", MQTT_5)
        await box.send(
            Subscribe(1, (Subscription("s/#", 1),), Properties(subscription_identifiers=(5,)))
        )
        await box.send(
            Subscribe(2, (Subscription("s/+", 2),), Properties(subscription_identifiers=(6,)))
        )
        await box.expect(Suback)
        await box.expect(Suback)
        pub = paho_box(gw, "idpub", MQTT_5)
        await pub.connect()
        await pub.publish("s/x", b"both", 2)
        message = await box.expect(Publish)
        # One message, at the highest QoS of the two subscriptions, naming both.
        assert message.qos == 2 and sorted(message.properties.subscription_identifiers) == [5, 6]
        await box.disconnect()
        await pub.disconnect()


async def test_a_shared_subscription_delivers_each_message_once(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        shared: queue.Queue[Any] = queue.Queue()  # both members' messages, in arrival order
        members = [paho_box(gw, f"worker{n}", MQTT_5, messages=shared) for n in range(2)]
        for member in members:
            await member.connect()
            await member.subscribe("$share/workers/jobs/#", qos=1)
        pub = paho_box(gw, "boss", MQTT_5)
        await pub.connect()
        for n in range(20):
            await pub.publish(f"jobs/{n}", f"{n}".encode(), 1)
        got = sorted([int((await members[0].message()).payload) for _ in range(20)])
        assert got == list(range(20))
        await pub.publish("jobs/end", b"end", 1)
        assert (await members[0].message()).payload == b"end"  # no copy came twice
        for box in (*members, pub):
            await box.disconnect()


async def test_dollar_topics_are_not_matched_by_wildcards(tmp_path: Path) -> None:
    acl = {**OPEN, "subscribe_allow": ["#", "$SYS/#"], "publish_allow": ["#", "$SYS/#"]}
    async with gateway(tmp_path, mqtt=acl) as gw:
        everything, system = paho_box(gw, "all", MQTT_5), paho_box(gw, "sys", MQTT_5)
        for box, topic_filter in ((everything, "#"), (system, "$SYS/#")):
            await box.connect()
            await box.subscribe(topic_filter, qos=1)
        pub = paho_box(gw, "spub", MQTT_5)
        await pub.connect()
        await pub.publish("$SYS/load", b"1", 1)
        await pub.publish("plain", b"2", 1)
        assert (await system.message()).topic == "$SYS/load"
        assert (await everything.message()).topic == "plain"  # not $SYS/load first
        for box in (everything, system, pub):
            await box.disconnect()


async def test_request_response_between_boxes(tmp_path: Path) -> None:
    async with gateway(tmp_path, mqtt=OPEN) as gw:
        asker, answerer = paho_box(gw, "asker", MQTT_5), paho_box(gw, "answerer", MQTT_5)
        await asker.connect()
        await answerer.connect()
        await asker.subscribe("replies/asker", qos=1)
        await answerer.subscribe("questions", qos=1)
        await asker.publish("questions", b"2+2?", 1,
                            properties=publish_props(ResponseTopic="replies/asker",
                                                     CorrelationData=b"q1"))  # fmt: skip
        question = await answerer.message()
        assert question.properties.ResponseTopic == "replies/asker"
        assert question.properties.CorrelationData == b"q1"
        await answerer.publish(question.properties.ResponseTopic, b"4", 1,
                               properties=publish_props(CorrelationData=b"q1"))  # fmt: skip
        answer = await asker.message()
        assert (answer.payload, answer.properties.CorrelationData) == (b"4", b"q1")
        await asker.disconnect()
        await answerer.disconnect()


@pytest.mark.parametrize("reference", ["", "mqtt-2.example:8883"])
async def test_drain_says_why(tmp_path: Path, reference: str) -> None:
    async with gateway(tmp_path, mqtt={**OPEN, "server_reference": reference}) as gw:
        box, _ = await raw_box(gw, "drained", MQTT_5)
        old, _ = await raw_box(gw, "drained-311", MQTT_3_1_1)
        await gw.node.drain(5)
        (ended,) = await box.closed()
        assert isinstance(ended, Disconnect)
        if reference:
            assert ended.reason_code == ReasonCode.USE_ANOTHER_SERVER
            assert ended.properties.server_reference == reference
        else:
            assert ended.reason_code == ReasonCode.SERVER_SHUTTING_DOWN
        assert await old.closed() == []
