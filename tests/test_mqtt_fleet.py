"""MQTT across a fleet: real ``channel serve`` processes sharing a real Redis.

Sessions live in Redis, so a box may come back on any node: a second
connection on another node takes the session over (the old one is told 0x8E
and nothing loops), a persistent session moves with its subscriptions and
queue, and ``kill -9`` of a box's node loses nothing it had not acknowledged.
Boxes are ``RawBox`` (the codec over TLS) so acknowledgements can be held back.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
import pytest
from mqtt_harness import RawBox

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
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    Subscription,
)
from tests.test_gateway_process import token_for
from tests.test_push_fleet import Fleet, Node, fleet  # noqa: F401  (the fixture)

pytestmark = pytest.mark.both_engines

VERSIONS = [MQTT_3_1_1, MQTT_5]
OPEN_ACL = {
    "CHANNEL_MQTT__SUBSCRIBE_ALLOW": '["#"]',
    "CHANNEL_MQTT__PUBLISH_ALLOW": '["#"]',
    "CHANNEL_MQTT__UPLINK_TOPICS": "[]",
}


async def start(fleet: Fleet) -> tuple[Node, Node]:  # noqa: F811
    fleet.env.update(OPEN_ACL)
    return await fleet.start_node(), await fleet.start_node()


def mqtt_port(node: Node) -> int:
    return int(node.info["mqtt_port"])


async def connect(
    node: Node, client_id: str, version: int, *, persistent: bool = True
) -> tuple[RawBox, Connack]:
    properties = Properties(session_expiry_interval_s=600) if version == MQTT_5 else Properties()
    packet = Connect(client_id, clean_start=not persistent, username=client_id,
                     password=token_for(node.info, client_id),
                     properties=properties if persistent else Properties())  # fmt: skip
    box, connack = await RawBox.connect(mqtt_port(node), packet, version, ca=node.ca_cert)
    assert connack is not None and connack.reason_code == ReasonCode.SUCCESS, connack
    return box, connack


async def subscribe(box: RawBox, topic_filter: str, qos: int = 1) -> None:
    await box.send(Subscribe(1, (Subscription(topic_filter, qos),)))
    await box.expect(Suback)


async def receive(box: RawBox, count: int) -> list[Publish]:
    """``count`` PUBLISHes, each acknowledged once read."""
    got: list[Publish] = []
    while len(got) < count:
        packet = await box.expect(Publish)
        got.append(packet)
        if packet.qos == 1:
            await box.send(Puback(packet.packet_id))
    return got


async def push(http: aiohttp.ClientSession, node: Node, device_id: str, body: str) -> str:
    reply = await node.post(http, "/v1/push", {"device_id": device_id, "body": body,
                                               "ttl_s": 600})  # fmt: skip
    return str(reply["message_id"])


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_takeover_on_another_node_ends_the_old_connection(
    fleet: Fleet,  # noqa: F811
    version: int,
) -> None:
    a, b = await start(fleet)
    old, _ = await connect(a, "twin", version)
    await subscribe(old, "news/#")
    new, connack = await connect(b, "twin", version)
    assert connack.session_present  # the session came along, subscriptions and all
    ended = await old.closed()
    if version == MQTT_5:
        assert ended == [Disconnect(ReasonCode.SESSION_TAKEN_OVER, ended[0].properties)]
    else:
        assert ended == []  # 3.1.1 has no server DISCONNECT: the connection closes
    async with aiohttp.ClientSession() as http:
        # A's end of the old connection must not end the session B now holds.
        await push(http, a, "twin", "via a")
        (got,) = await receive(new, 1)
        assert (got.topic, got.payload) == ("devices/twin/push", b"via a")
        publisher, _ = await connect(a, "news-desk", version, persistent=False)
        await publisher.send(Publish("news/today", b"headline", 1, packet_id=1))
        await publisher.expect(Puback)
        (news,) = await receive(new, 1)
        assert news.payload == b"headline"
        await new.send(PINGREQ)
        await new.expect(Pingresp)  # still connected: nothing took it back
        await publisher.disconnect()
    await new.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_persistent_session_moves_to_another_node_with_its_queue(
    fleet: Fleet,  # noqa: F811
    version: int,
) -> None:
    a, b = await start(fleet)
    box, _ = await connect(a, "mover", version)
    await subscribe(box, "jobs/#")
    await box.disconnect()
    async with aiohttp.ClientSession() as http:
        pushed = await push(http, b, "mover", "queued push")
        publisher, _ = await connect(b, "dispatcher", version, persistent=False)
        await publisher.send(Publish("jobs/1", b"queued job", 1, packet_id=1))
        await publisher.expect(Puback)
        await publisher.disconnect()
        box, connack = await connect(b, "mover", version)
        assert connack.session_present
        got = await receive(box, 2)
        assert sorted(p.payload for p in got) == [b"queued job", b"queued push"]
        if version == MQTT_5:
            (push_packet,) = [p for p in got if p.payload == b"queued push"]
            assert ("message-id", pushed) in push_packet.properties.user_properties
        # Backend -> box RPC through the node that does not hold the box.
        ask = {"op": "till.ping", "body": "", "timeout_ms": 10000}
        call = asyncio.ensure_future(a.post(http, "/v1/devices/mover/rpc", ask))
        request = await box.expect(Publish)
        await box.send(Puback(request.packet_id))
        if version == MQTT_5:
            topic = request.properties.response_topic
            props = Properties(correlation_data=request.properties.correlation_data)
        else:
            topic = "devices/mover/call-res/" + request.topic.rsplit("/", 1)[1]
            props = Properties()
        await box.send(Publish(topic, b"pong", 1, packet_id=2, properties=props))
        await box.expect(Puback)
        answer: dict[str, Any] = await call
        assert answer["status"] == 0 and answer["body"] == "pong"
    await box.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_kill_9_of_the_boxs_node_loses_nothing_unacknowledged(
    fleet: Fleet,  # noqa: F811
    version: int,
) -> None:
    a, b = await start(fleet)
    box, _ = await connect(a, "survivor", version)
    await subscribe(box, "feed/#")
    publisher, _ = await connect(b, "feeder", version, persistent=False)
    sent: set[bytes] = set()
    acked: set[bytes] = set()
    async with aiohttp.ClientSession() as http:

        async def send_round(index: int) -> None:
            body = f"push {index}"
            await push(http, b, "survivor", body)
            await publisher.send(Publish("feed/x", f"feed {index}".encode(), 1, packet_id=index))
            await publisher.expect(Puback)
            sent.update({body.encode(), f"feed {index}".encode()})

        for index in range(1, 6):
            await send_round(index)
        for packet in await receive(box, 6):  # some acknowledged on A...
            acked.add(packet.payload)
        held = await box.expect(Publish)  # ...one held back, unacknowledged, when A dies
        assert not held.dup
        os.kill(a.serve.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(a.serve.proc.wait, 10)
        await box.closed()
        for index in range(6, 11):
            await send_round(index)
        box, connack = await connect(b, "survivor", version)
        assert connack.session_present
        again: list[bytes] = []
        async with asyncio.timeout(30):
            while not sent <= acked | set(again):
                (packet,) = await receive(box, 1)
                again.append(packet.payload)
                if packet.payload == held.payload:
                    assert packet.dup  # sent again: DUP set (A never recorded a close)
        assert sent == acked | set(again)
        # What A had in flight comes again once (QoS 1: at least once, no loop).
        assert len(again) == len(set(again))
    await box.disconnect()
    await publisher.disconnect()
