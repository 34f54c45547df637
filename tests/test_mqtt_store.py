"""The MQTT store contract, run on memory, a real Redis and a real Redis Cluster; and the
pure pieces under the sessions (ACL patterns, outbound flow, routed messages)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from channel.config import PushConfig
from channel.mqtt.acl import AclError, TopicPatterns
from channel.mqtt.flow import Outbound, accepted_at_ms, stable_packet_id
from channel.mqtt.messages import BrokerMessage, RetainedMessage, broker_message_of
from channel.mqtt.properties import Properties
from channel.mqtt.redis_store import redis_mqtt_store
from channel.mqtt.sessions import SubOptions
from channel.mqtt.store import MemoryMqttStore, MqttStore
from channel.push.model import new_message_id
from channel.push.redis import redis_backend
from tests.test_push_stores import redis_config

NOW = 1_800_000_000_000
Q1 = SubOptions(1)
Q2 = SubOptions(2, no_local=True, retain_as_published=True, retain_handling=2, subscription_id=77)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[MqttStore]:
    if request.param == "memory":
        yield MemoryMqttStore()
        return
    if request.param == "redis":
        config: PushConfig = redis_config(request.getfixturevalue("redis_server").url)
    else:
        config = redis_config(request.getfixturevalue("redis_cluster").url, cluster=True)
    backend = await redis_backend(config)
    try:
        yield redis_mqtt_store(backend, config)
    finally:
        await backend.close()


async def test_a_persistent_session_survives_its_connection(store: MqttStore) -> None:
    present, record = await store.open("box", True, 60, NOW)
    assert not present and record.generation == 1 and record.subscriptions == {}
    await store.subscribe("box", 1, {"a/#": Q1, "b/+": Q2})
    await store.release("box", 1, 7, "msg-7")
    await store.receive("box", 1, 9, True)
    assert await store.close("box", 1, 60, NOW)
    present, record = await store.open("box", False, 60, NOW + 59_000)
    assert present and record.generation == 2
    assert record.disconnected_at_ms == NOW  # when the previous connection closed
    assert (await store.open("box", False, 60, NOW + 60_000))[1].disconnected_at_ms == 0
    assert await store.close("box", 3, 60, NOW + 61_000)
    present, record = await store.open("box", False, 60, NOW + 62_000)
    assert present and record.generation == 4
    assert record.subscriptions == {"a/#": Q1, "b/+": Q2}
    assert (record.released, record.received) == ({7: "msg-7"}, {9})
    await store.release("box", 4, 7, None)
    await store.receive("box", 4, 9, False)
    await store.subscribe("box", 4, {"a/#": None})
    (found,) = (await store.records(["box", "nobody"])).values()
    assert found.subscriptions == {"b/+": Q2} and not found.released and not found.received


async def test_a_session_ends_at_its_expiry_or_a_clean_start(store: MqttStore) -> None:
    await store.open("exp", True, 5, NOW)
    await store.subscribe("exp", 1, {"x": Q1})
    await store.close("exp", 1, 5, NOW)
    present, record = await store.open("exp", False, 5, NOW + 5_001)  # expired
    assert not present and record.subscriptions == {}
    await store.subscribe("exp", 2, {"x": Q1})
    await store.close("exp", 2, 0, NOW)  # expiry 0: ends with the connection
    assert not (await store.open("exp", False, 5, NOW))[0]
    await store.subscribe("exp", 3, {"x": Q1})
    await store.close("exp", 3, 60, NOW)
    present, record = await store.open("exp", True, 60, NOW)  # clean start
    assert not present and record.subscriptions == {}


async def test_a_taken_over_connection_cannot_write(store: MqttStore) -> None:
    await store.open("twin", True, 60, NOW)
    await store.open("twin", False, 60, NOW)  # generation 2 took it over
    await store.subscribe("twin", 1, {"late/#": Q1})
    await store.release("twin", 1, 3, "m")
    assert not await store.close("twin", 1, 0, NOW)  # not the owner: nothing ended
    assert await store.generation("twin") == 2
    present, record = await store.open("twin", False, 60, NOW)
    assert present and record.subscriptions == {} and record.released == {}


async def test_global_subscriptions(store: MqttStore) -> None:
    await store.set_global("c1", {"TopicA": Q1, "$share/g/jobs/#": Q2}, 0)
    await store.set_global("c2", {"TopicA": Q2}, NOW)
    await store.set_global("c1", {"TopicA": None}, 0)
    entries = sorted((e.client_id, e.topic_filter, e.options, e.expires_at_ms)
                     for e in await store.global_entries())  # fmt: skip
    assert entries == [("c1", "$share/g/jobs/#", Q2, 0), ("c2", "TopicA", Q2, NOW)]


async def test_retained_messages(store: MqttStore) -> None:
    for topic in ("a/b", "a/c", "a/b/c", "TopicA", "x/y"):
        assert await store.retain(topic, topic.encode(), cap=3)
    # The namespace "a/b" (first two levels) holds a/b and a/b/c: a cap of 2 refuses a
    # third topic there, but not a new value for one it holds, nor another namespace.
    assert not await store.retain("a/b/d", b"over", cap=2)
    assert await store.retain("a/b", b"a/b", cap=2)
    assert await store.retain("a/d", b"a/d", cap=2)
    assert await store.retain("a/d", None, cap=2)
    assert sorted(t for t, _ in await store.retained("a/+")) == ["a/b", "a/c"]
    assert sorted(t for t, _ in await store.retained("#")) == [
        "TopicA",
        "a/b",
        "a/b/c",
        "a/c",
        "x/y",
    ]
    assert [t for t, _ in await store.retained("TopicA")] == ["TopicA"]
    assert await store.retain("a/b", None, cap=3)
    assert sorted(t for t, _ in await store.retained("a/#")) == ["a/b/c", "a/c"]


def test_acl_patterns() -> None:
    rules = TopicPatterns(["devices/%c/#", "shops/%u/+"])
    assert rules.covers("devices/d1/push", "d1", "u1")
    assert rules.covers("devices/d1/#", "d1", "u1")
    assert not rules.covers("devices/+/push", "d1", "u1")
    assert not rules.covers("#", "d1", "u1")
    assert rules.covers("shops/u1/news", "d1", "u1")
    assert not rules.covers("shops/u1/#", "d1", "u1")
    assert rules.matches("devices/d1/up/x", "d1", "u1")
    # An id that is not one level stands for nothing.
    assert not rules.covers("devices/a/b/#", "a/b", "u1")
    assert rules.expand("a/b", "u+") == []
    with pytest.raises(AclError):
        TopicPatterns(["devices/%client/#"])
    with pytest.raises(AclError):
        TopicPatterns(["a/#/b"])


def test_stable_packet_ids_wait_for_their_turn() -> None:
    flow = Outbound(limit=10, max_waiting=10)
    ids: list[int] = []

    def build(packet_id: int) -> bytes:
        ids.append(packet_id)
        return packet_id.to_bytes(2, "big")

    first = "m-1"
    clash = next(
        f"x-{n}" for n in range(200_000) if stable_packet_id(f"x-{n}") == stable_packet_id(first)
    )
    assert flow.offer(first, True, 1, build, True) is not None
    assert flow.offer(first, True, 1, build, True) is None  # already in flight: not twice
    assert flow.offer(clash, True, 1, build, True) is None  # same id: it waits
    assert [w.message_id for w in flow.waiting] == [clash]
    sent = flow.done(stable_packet_id(first))
    assert sent is not None and sent.message_id == first
    assert flow.ready() == [stable_packet_id(clash).to_bytes(2, "big")]
    assert ids == [stable_packet_id(first), stable_packet_id(clash)]


def test_a_routed_message_travels_in_one_push_header() -> None:
    message = BrokerMessage("a/b", b"payload", 2, True,
                            Properties(content_type="text/plain", correlation_data=b"\x00\x01",
                                       user_properties=(("k", "v"),)), "origin", NOW)  # fmt: skip
    name, value = message.header()
    assert broker_message_of(b"payload", (("x", "y"), (name, value))) == message
    assert broker_message_of(b"payload", (("mqtt", "not base64!"),)) is None
    assert broker_message_of(b"payload", (("x", "y"),)) is None
    retained = RetainedMessage.of(message)
    assert RetainedMessage.unpack(retained.pack()) == retained


def test_a_message_id_tells_when_it_was_accepted() -> None:
    for at_ms in (0, 1, NOW, NOW + 7, 2**48 - 1):
        assert accepted_at_ms(new_message_id(at_ms)) == at_ms
    assert accepted_at_ms("") is None
    assert accepted_at_ms("not-a-message-id-of-ours") is None  # 24 characters, not base32
