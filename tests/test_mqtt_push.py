"""One push and RPC system: API pushes, topics and calls reach MQTT boxes; box requests and
uplink messages reach backends (paho-mqtt over TLS; memory and Redis push backends)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mqtt_harness import PahoBox, admin_get, token_password
from paho.mqtt.properties import Properties as PahoProperties

from channel.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    PINGREQ,
    Properties,
    Puback,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    Subscription,
)
from channel.mqtt.packets import Pingresp
from channel.push import envelopes as env
from tests.gateway_harness import RunningGateway, gateway
from tests.rpc_upstream import upstream_farm
from tests.test_gateway_handshake import admin_text
from tests.test_mqtt_sessions import persistent, raw_box, session_closed
from tests.test_push_e2e import online

pytestmark = pytest.mark.both_engines

VERSIONS = [MQTT_3_1_1, MQTT_5]
WAIT_S = 20.0


@pytest.fixture(params=["memory", "redis"])
def push_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    server = request.getfixturevalue("redis_server")
    prefix = f"m{uuid.uuid4().hex[:8]}"
    return {"backend": "redis", "redis_url": server.url, "key_prefix": prefix,
            "request_stream": f"{prefix}:push", "receipt_stream": f"{prefix}:receipts"}  # fmt: skip


class Api:
    def __init__(self, http: aiohttp.ClientSession, gw: RunningGateway) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{gw.api_port}"
        self.headers = {"Authorization": f"Bearer {gw.api_key}"}

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.http.post(self.base + path, json=body, headers=self.headers) as reply:
            return reply.status, await reply.json()

    async def get(self, path: str) -> Any:
        async with self.http.get(self.base + path, headers=self.headers) as reply:
            return await reply.json()

    async def status(self, message_id: str, device_id: str, wanted: str) -> dict[str, Any]:
        """Follow the receipts (long polls) until the message is ``wanted`` for the device."""
        cursor = "0"
        async with asyncio.timeout(WAIT_S):
            while True:
                body = await self.get(f"/v1/messages/{message_id}")
                if body.get("devices", {}).get(device_id) == wanted:
                    return dict(body)
                page = await self.get(f"/v1/receipts?after={cursor}&wait_ms=1000")
                cursor = page["cursor"]


@asynccontextmanager
async def api_node(tmp_path: Path, **sections: Any) -> AsyncIterator[tuple[RunningGateway, Api]]:
    async with gateway(tmp_path, **sections) as gw, aiohttp.ClientSession() as http:
        yield gw, Api(http, gw)


def box(gw: RunningGateway, device_id: str, version: int, **kwargs: Any) -> PahoBox:
    return PahoBox(gw.mqtt_port, device_id, version, ca=gw.ca_cert, username=device_id,
                   password=token_password(gw, device_id), **kwargs)  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_push_reaches_the_box_and_is_reported_delivered(
    tmp_path: Path, version: int, push_backend: dict[str, Any]
) -> None:
    async with api_node(tmp_path, push=push_backend) as (gw, api):
        till = box(gw, "till-1", version)
        await till.connect()
        status, accepted = await api.post(
            "/v1/push",
            {"device_id": "till-1", "body": "price update", "headers": {"kind": "prices"},
             "priority": "high"},
        )  # fmt: skip
        assert status == 202, accepted
        message = await till.message()
        assert (message.topic, message.payload, message.qos) == ("devices/till-1/push",
                                                                 b"price update", 1)  # fmt: skip
        if version == MQTT_5:
            props = message.user_properties()
            assert props["message-id"] == accepted["message_id"]
            assert (props["kind"], props["priority"]) == ("prices", "high")
        final = await api.status(accepted["message_id"], "till-1", "delivered")
        assert final["status"] == "delivered"
        await till.disconnect()


async def test_pushes_wait_for_an_offline_box_with_ttl_collapse_and_revoke(
    tmp_path: Path, push_backend: dict[str, Any]
) -> None:
    async with api_node(tmp_path, push=push_backend) as (gw, api):
        _, first = await api.post("/v1/push", {"device_id": "till-2", "body": "v1",
                                               "collapse_key": "menu"})  # fmt: skip
        _, _second = await api.post("/v1/push", {"device_id": "till-2", "body": "v2",
                                                "collapse_key": "menu"})  # fmt: skip
        _, third = await api.post("/v1/push", {"device_id": "till-2", "body": "recalled"})
        status, revoked = await api.post(f"/v1/messages/{third['message_id']}/revoke", {})
        assert status == 200 and revoked["revoked"] == ["till-2"]
        _, fourth = await api.post("/v1/push", {"device_id": "till-2", "body": "v3"})
        # A clean session gets the pushes queued for its device all the same.
        till = box(gw, "till-2", MQTT_5)
        await till.connect()
        assert [(await till.message()).payload for _ in range(2)] == [b"v2", b"v3"]
        await api.status(fourth["message_id"], "till-2", "delivered")
        collapsed = await api.get(f"/v1/messages/{first['message_id']}")
        assert collapsed["devices"]["till-2"] == "revoked"
        await till.disconnect()


async def test_a_qos2_push_is_delivered_at_pubrec(tmp_path: Path) -> None:
    async with api_node(tmp_path, mqtt={"push_qos": 2}) as (gw, api):
        raw, _ = await raw_box(gw, "till-3", MQTT_5)
        _, accepted = await api.post("/v1/push", {"device_id": "till-3", "body": "exactly"})
        message = await raw.expect(Publish)
        assert (message.qos, message.payload) == (2, b"exactly")
        await raw.send(Pubrec(message.packet_id))
        await raw.expect(Pubrel)
        await api.status(accepted["message_id"], "till-3", "delivered")
        # A refusing PUBREC ends the exchange too: no PUBREL, FAILED with the reason.
        _, refused = await api.post("/v1/push", {"device_id": "till-3", "body": "no"})
        message = await raw.expect(Publish)
        await raw.send(Pubrec(message.packet_id, ReasonCode.QUOTA_EXCEEDED), PINGREQ)
        await raw.expect(Pingresp)
        await api.status(refused["message_id"], "till-3", "failed")
        metrics = await admin_text(gw, "/metrics")
        assert 'channel_mqtt_pushes_refused_total{reason="QUOTA_EXCEEDED"} 1.0' in metrics
        await raw.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_copy_of_a_push_arriving_after_its_ack_is_not_written_again(
    tmp_path: Path, version: int, push_backend: dict[str, Any]
) -> None:
    """A box connecting reads its queue while a push's routed copy is on the way (or
    is forwarded from the node it left): the copy that comes after the PUBACK would be
    a second delivery. Replayed here by sending the acknowledged push's envelope to the
    node's inbox again, as the late copy arrives."""
    async with api_node(tmp_path, push=push_backend) as (gw, api):
        backend, delivery = gw.node.backend, gw.node.delivery
        assert backend is not None and delivery is not None
        raw, _ = await raw_box(gw, "till-9", version)
        _, first = await api.post("/v1/push", {"device_id": "till-9", "body": "once"})
        got = await raw.expect(Publish)
        queued, _ = await backend.queue.pending("till-9", int(time.time() * 1000))
        (message,) = [m for m in queued if m.message_id == first["message_id"]]
        await raw.send(Puback(got.packet_id))
        await api.status(first["message_id"], "till-9", "delivered")
        await backend.router.send(delivery.node_no, [env.device_push("till-9", message)])
        # The inbox is read in order: the late copy is handled before this push.
        _, second = await api.post("/v1/push", {"device_id": "till-9", "body": "next"})
        following = await raw.expect(Publish)
        assert following.payload == b"next"
        await raw.send(Puback(following.packet_id))
        await api.status(second["message_id"], "till-9", "delivered")
        await raw.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_pubacks_alone_or_with_other_packets_and_a_bad_one(
    tmp_path: Path, version: int
) -> None:
    """Bare PUBACKs skip the MQTT parser on the native engine; a PUBACK sharing a write
    with another packet, and one with packet id 0, go through it as before."""
    async with api_node(tmp_path) as (gw, api):
        raw, _ = await raw_box(gw, "till-7", version)
        _, first = await api.post("/v1/push", {"device_id": "till-7", "body": "one"})
        got = await raw.expect(Publish)
        await raw.send(Puback(got.packet_id))  # alone
        await api.status(first["message_id"], "till-7", "delivered")
        _, second = await api.post("/v1/push", {"device_id": "till-7", "body": "two"})
        got = await raw.expect(Publish)
        await raw.send(Puback(got.packet_id), PINGREQ)  # with another packet
        await raw.expect(Pingresp)
        await api.status(second["message_id"], "till-7", "delivered")
        _, third = await api.post("/v1/push", {"device_id": "till-7", "body": "three"})
        await raw.expect(Publish)
        await raw.send_raw(b"\x40\x02\x00\x00")  # packet id 0: malformed
        await raw.closed()
        status = await api.get(f"/v1/messages/{third['message_id']}")
        assert status["devices"]["till-7"] == "accepted"  # still queued for the box


@pytest.mark.parametrize("version", VERSIONS)
async def test_pushes_past_the_in_flight_window_wait_and_go_in_order(
    tmp_path: Path, version: int
) -> None:
    """Pushes beyond the in-flight window wait, in order; PUBACKs coming in one write
    (bare: the native engine's short path) free the window and let them go."""
    async with api_node(tmp_path, mqtt={"max_inflight_out": 2}) as (gw, api):
        raw, _ = await raw_box(gw, "till-8", version)
        ids = []
        for n in range(5):
            status, accepted = await api.post("/v1/push", {"device_id": "till-8", "body": f"{n}"})
            assert status == 202
            ids.append(accepted["message_id"])
        first = [await raw.expect(Publish), await raw.expect(Publish)]
        await raw.send(PINGREQ)
        await raw.expect(Pingresp)  # nothing more while two are in flight
        metrics = await admin_text(gw, "/metrics")
        assert "channel_mqtt_inflight 2.0" in metrics
        # What went on the wire, whoever holds the pushes (not the 3 waiting).
        assert 'channel_mqtt_packets_total{direction="out",type="PUBLISH"} 2.0' in metrics
        # The device lookup counts the pushes the native engine holds too.
        device = await admin_get(gw, "/admin/devices/till-8")
        assert (device["inflight"], device["waiting"]) == (2, 3)
        await raw.send(*(Puback(p.packet_id) for p in first))  # one write, two PUBACKs
        second = [await raw.expect(Publish), await raw.expect(Publish)]
        await raw.send(Puback(second[0].packet_id), Puback(second[1].packet_id))
        last = await raw.expect(Publish)
        got = [p.payload for p in (*first, *second, last)]
        assert got == [b"0", b"1", b"2", b"3", b"4"]
        assert not any(p.dup for p in (*first, *second, last))
        await raw.send(Puback(last.packet_id))
        for message_id in ids:
            await api.status(message_id, "till-8", "delivered")
        device = await admin_get(gw, "/admin/devices/till-8")
        assert (device["inflight"], device["waiting"]) == (0, 0)
        metrics = await admin_text(gw, "/metrics")
        assert 'channel_mqtt_packets_total{direction="out",type="PUBLISH"} 5.0' in metrics
        assert 'channel_mqtt_packets_total{direction="in",type="PUBACK"} 5.0' in metrics
        await raw.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_puback_with_nothing_in_flight_under_its_id_changes_nothing(
    tmp_path: Path, version: int
) -> None:
    """A PUBACK for a packet id never used, or acknowledged already, is ignored: the
    connection stays, and a push is reported delivered once."""
    async with api_node(tmp_path) as (gw, api):
        raw, _ = await raw_box(gw, "till-10", version)
        await raw.send(Puback(0x4321))
        await raw.send(PINGREQ)
        await raw.expect(Pingresp)
        _, first = await api.post("/v1/push", {"device_id": "till-10", "body": "one"})
        got = await raw.expect(Publish)
        await raw.send(Puback(got.packet_id), Puback(got.packet_id))  # the second: nothing
        await api.status(first["message_id"], "till-10", "delivered")
        _, second = await api.post("/v1/push", {"device_id": "till-10", "body": "two"})
        got = await raw.expect(Publish)
        assert got.payload == b"two"
        await raw.send(Puback(got.packet_id))
        await api.status(second["message_id"], "till-10", "delivered")
        receipts = await api.get("/v1/receipts?after=0")
        delivered = [r for r in receipts["receipts"] if r["message_id"] == first["message_id"]
                     and r["status"] == "delivered"]  # fmt: skip
        assert len(delivered) == 1
        # Counted alike whoever holds the pushes: 2 PUBLISHes out, 4 PUBACKs in.
        metrics = await admin_text(gw, "/metrics")
        assert 'channel_mqtt_packets_total{direction="out",type="PUBLISH"} 2.0' in metrics
        assert 'channel_mqtt_packets_total{direction="in",type="PUBACK"} 4.0' in metrics
        await raw.disconnect()


async def test_a_push_the_box_refuses_fails_with_the_reason_and_is_not_sent_again(
    tmp_path: Path,
) -> None:
    """MQTT 5: a PUBACK with a reason of 0x80 or more ends the exchange (the push
    leaves the queue and is not sent again, MQTT-4.4.0-2) but is no delivery: FAILED
    with the reason, counted by reason, alike whoever holds the push."""
    async with api_node(tmp_path) as (gw, api):
        raw, _ = await raw_box(gw, "till-12", MQTT_5, **persistent(MQTT_5))
        _, first = await api.post("/v1/push", {"device_id": "till-12", "body": "one"})
        got = await raw.expect(Publish)
        await raw.send(Puback(got.packet_id, ReasonCode.NOT_AUTHORIZED))
        final = await api.status(first["message_id"], "till-12", "failed")
        assert final["status"] == "failed"
        receipts = await api.get("/v1/receipts?after=0")
        failed = [r for r in receipts["receipts"] if r["message_id"] == first["message_id"]]
        assert [r["status"] for r in failed] == ["failed"]
        assert "PUBACK 0x87 NOT_AUTHORIZED" in json.dumps(failed)
        _, second = await api.post("/v1/push", {"device_id": "till-12", "body": "two"})
        got = await raw.expect(Publish)
        assert got.payload == b"two"
        await raw.send(Puback(got.packet_id))
        await api.status(second["message_id"], "till-12", "delivered")
        metrics = await admin_text(gw, "/metrics")
        assert 'channel_mqtt_pushes_refused_total{reason="NOT_AUTHORIZED"} 1.0' in metrics
        assert 'channel_mqtt_packets_total{direction="in",type="PUBACK"} 2.0' in metrics
        assert (await admin_get(gw, "/admin/devices/till-12"))["inflight"] == 0
        await raw.disconnect()
        # Not in the queue any more: the session's next connection gets nothing.
        raw, _ = await raw_box(gw, "till-12", MQTT_5, **persistent(MQTT_5))
        await raw.send(PINGREQ)
        await raw.expect(Pingresp)
        await raw.disconnect()


async def test_a_puback_with_a_reason_it_may_not_carry_ends_the_connection(
    tmp_path: Path,
) -> None:
    """PUBACK 0x81 (Malformed Packet is no PUBACK reason): the connection ends as for
    any malformed packet, the push unacknowledged and still queued, on either engine."""
    async with api_node(tmp_path) as (gw, api):
        raw, _ = await raw_box(gw, "till-13", MQTT_5)
        _, first = await api.post("/v1/push", {"device_id": "till-13", "body": "one"})
        got = await raw.expect(Publish)
        await raw.send_raw(b"\x40\x03" + got.packet_id.to_bytes(2, "big") + b"\x81")
        await raw.closed()
        status = await api.get(f"/v1/messages/{first['message_id']}")
        assert status["devices"]["till-13"] == "accepted"


async def test_the_box_receive_maximum_holds_pushes_and_a_call_back(tmp_path: Path) -> None:
    """Receive Maximum 1: a push in flight holds the next push and a backend call back;
    they go in order, each after the PUBACK before it, the call under a packet id of its
    own (pushes and Python's PUBLISHes share the limit and the ids on either engine)."""
    async with api_node(tmp_path) as (gw, api):
        raw, _ = await raw_box(gw, "till-11", MQTT_5, properties=Properties(receive_maximum=1))
        _, first = await api.post("/v1/push", {"device_id": "till-11", "body": "p1"})
        push = await raw.expect(Publish)
        call = asyncio.ensure_future(api.post("/v1/devices/till-11/rpc",
                                              {"op": "till.print", "body": "c1"}))  # fmt: skip
        _, second = await api.post("/v1/push", {"device_id": "till-11", "body": "p2"})
        await raw.send(PINGREQ)
        await raw.expect(Pingresp)  # nothing more while one is in flight
        order = [push.payload]
        for _ in range(2):
            await raw.send(Puback(push.packet_id))
            push = await raw.expect(Publish)
            order.append(push.payload)
        # The call and the second push in either order: one waits in Python (the
        # reference), both wait in the engine (native).
        assert order[0] == b"p1" and sorted(order[1:]) == [b"c1", b"p2"]
        await raw.send(Puback(push.packet_id))
        await api.status(first["message_id"], "till-11", "delivered")
        await api.status(second["message_id"], "till-11", "delivered")
        assert not call.done()
        await raw.disconnect()
        status, _ = await call
        assert status != 200  # the box went away without answering


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_unacknowledged_push_comes_again_with_dup_under_its_packet_id(
    tmp_path: Path, version: int, push_backend: dict[str, Any]
) -> None:
    """A push the box did not acknowledge goes to its next connection under the same
    packet id with DUP set; one queued after that connection closed has DUP 0."""
    async with api_node(tmp_path, push=push_backend, mqtt={"dup_clock_margin_ms": 0}) as (
        gw, api,
    ):  # fmt: skip
        raw, _ = await raw_box(gw, "till-12", version, **persistent(version))
        # (A subscription makes the session's record visible to ``session_closed``.)
        await raw.send(Subscribe(1, (Subscription("devices/till-12/x", 1),)))
        await raw.expect(Suback)
        _, first = await api.post("/v1/push", {"device_id": "till-12", "body": "before"})
        sent = await raw.expect(Publish)
        assert not sent.dup
        raw.abort()  # no PUBACK
        await session_closed(gw, "till-12")
        _, second = await api.post("/v1/push", {"device_id": "till-12", "body": "after"})
        raw, connack = await raw_box(gw, "till-12", version, **persistent(version))
        assert connack.session_present
        got = {p.payload: p for p in [await raw.expect(Publish), await raw.expect(Publish)]}
        again, queued = got[b"before"], got[b"after"]
        assert (again.packet_id, again.dup, queued.dup) == (sent.packet_id, True, False)
        await raw.send(Puback(again.packet_id), Puback(queued.packet_id))
        await api.status(first["message_id"], "till-12", "delivered")
        await api.status(second["message_id"], "till-12", "delivered")
        await raw.disconnect()


async def test_a_push_too_large_for_the_box_fails(tmp_path: Path) -> None:
    async with api_node(tmp_path) as (gw, api):
        raw, _ = await raw_box(gw, "till-4", MQTT_5,
                               properties=Properties(maximum_packet_size=128))  # fmt: skip
        _, big = await api.post("/v1/push", {"device_id": "till-4", "body": "x" * 500})
        final = await api.status(big["message_id"], "till-4", "failed")
        assert final["status"] == "failed"
        _, small = await api.post("/v1/push", {"device_id": "till-4", "body": "fits"})
        message = await raw.expect(Publish)
        assert message.payload == b"fits"
        await raw.send(Puback(message.packet_id))
        await api.status(small["message_id"], "till-4", "delivered")
        await raw.disconnect()


async def test_topic_pushes_reach_mqtt_subscribers_and_apps_alike(tmp_path: Path) -> None:
    mqtt = {"subscribe_allow": ["devices/%c/#", "topics/public/#", "broadcast"]}
    async with api_node(tmp_path, mqtt=mqtt) as (gw, api), online(gw, "phone") as (phone,):
        subscribed = await phone.client.call("channel.subscribe", b'{"topics": ["public.news"]}')
        assert subscribed.status == 0
        till = box(gw, "till-5", MQTT_5)
        await till.connect()
        await till.subscribe("topics/public/#", qos=1)
        status, _ = await api.post("/v1/push", {"topic": "public.news", "body": "sale today"})
        assert status == 202
        message = await till.message()
        assert (message.topic, message.payload) == ("topics/public/news", b"sale today")
        assert [p.body for p in await phone.wait_pushes(1)] == [b"sale today"]
        await till.subscribe("broadcast", qos=1)
        await api.post("/v1/push", {"broadcast": True, "body": "closing soon"})
        message = await till.message()
        assert (message.topic, message.payload) == ("broadcast", b"closing soon")
        await till.disconnect()


async def _shop_answers(request: web.Request, body: bytes) -> web.StreamResponse:
    if request.match_info["op"] == "shop.fail":
        return web.Response(status=503, body=b"down")
    reply = {"op": request.match_info["op"], "device": request.headers["x-channel-device-id"],
             "echo": body.decode()}  # fmt: skip
    return web.Response(body=json.dumps(reply).encode(), content_type="application/json")


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_box_calls_a_backend_through_the_rpc_router(tmp_path: Path, version: int) -> None:
    async with upstream_farm() as farm:
        shop = await farm.start("shop", responder=_shop_answers)
        rpc = {"clusters": {"shop": {"endpoints": [shop.url]}},
               "routes": [{"match": "shop.", "cluster": "shop"}]}  # fmt: skip
        async with api_node(tmp_path, rpc=rpc) as (gw, _api):
            till = box(gw, "till-6", version)
            await till.connect()
            if version == MQTT_5:
                props = PahoProperties(3)
                props.ResponseTopic = "devices/till-6/answers"
                props.CorrelationData = b"c1"
                await till.publish("devices/till-6/req/shop.sale.record", b'{"total": 12}', 1,
                                   properties=props)  # fmt: skip
                answer = await till.message()
                assert answer.topic == "devices/till-6/answers"
                assert answer.properties.CorrelationData == b"c1"
                assert answer.user_properties()["status"] == "0"
            else:
                await till.publish("devices/till-6/req/shop.sale.record/c7", b'{"total": 12}', 1)
                answer = await till.message()
                assert answer.topic == "devices/till-6/res/c7"
            reply = json.loads(answer.payload)
            assert reply == {"op": "shop.sale.record", "device": "till-6", "echo": '{"total": 12}'}
            # An error comes back the same way, saying what went wrong.
            if version == MQTT_5:
                await till.publish("devices/till-6/req/nothing.here", b"", 1, properties=props)
                failed = await till.message()
                assert failed.user_properties()["status"] == "NOT_FOUND"
            else:
                await till.publish("devices/till-6/req/nothing.here/c8", b"", 1)
                failed = await till.message()
                assert failed.topic == "devices/till-6/res/c8/error"
                assert json.loads(failed.payload)["code"] == "NOT_FOUND"
            # Another box's request topics are not this box's to use.
            rc = await till.publish("devices/till-7/req/shop.sale.record/c9", b"", 1)
            assert getattr(rc, "value", rc) == (0x87 if version == MQTT_5 else 0)
            await till.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_backend_calls_a_box(tmp_path: Path, version: int) -> None:
    async with api_node(tmp_path) as (gw, api):
        raw, _ = await raw_box(gw, "till-8", version)
        call = api.post("/v1/devices/till-8/rpc", {"op": "till.print", "body": "receipt #9",
                                                   "headers": {"copies": "2"}})  # fmt: skip
        pending = asyncio.ensure_future(call)
        request = await raw.expect(Publish)
        await raw.send(Puback(request.packet_id))
        assert request.payload == b"receipt #9"
        if version == MQTT_5:
            assert request.topic == "devices/till-8/call/till.print"
            assert dict(request.properties.user_properties) == {"copies": "2"}
            reply_topic = request.properties.response_topic
            props = Properties(correlation_data=request.properties.correlation_data,
                               user_properties=(("paper", "low"),))  # fmt: skip
        else:
            assert request.topic.startswith("devices/till-8/call/till.print/")
            reply_topic = "devices/till-8/call-res/" + request.topic.rsplit("/", 1)[1]
            props = Properties()
        assert reply_topic is not None
        await raw.send(Publish(reply_topic, b"printed", 1, packet_id=5, properties=props))
        await raw.expect(Puback)
        status, answer = await pending
        assert status == 200 and answer["body"] == "printed"
        if version == MQTT_5:
            assert answer["headers"] == {"paper": "low"}
        await raw.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
async def test_uplink_messages_reach_backends_through_an_rpc_route(
    tmp_path: Path, version: int
) -> None:
    async with upstream_farm() as farm:
        sink = await farm.start("sink")
        rpc = {"clusters": {"sink": {"endpoints": [sink.url]}},
               "routes": [{"match": "mqtt.uplink", "cluster": "sink"}]}  # fmt: skip
        async with api_node(tmp_path, rpc=rpc) as (gw, _api):
            till = box(gw, "till-9", version)
            await till.connect()
            rc = await till.publish("devices/till-9/up/sales", b'{"sale": 1}', 1)
            assert getattr(rc, "value", rc) == 0  # acknowledged once the backend had it
            assert len(sink.hits) == 1
            hit = sink.hits[0]
            assert (hit.op, hit.body) == ("mqtt.uplink", b'{"sale": 1}')
            assert hit.headers["mqtt-topic"] == "devices/till-9/up/sales"
            assert hit.headers["x-channel-device-id"] == "till-9"
            await till.disconnect()


async def test_an_uplink_message_the_backend_refuses_is_not_acknowledged(tmp_path: Path) -> None:
    async with api_node(tmp_path) as (gw, _api):  # no route for mqtt.uplink
        till = box(gw, "till-10", MQTT_5)
        await till.connect()
        rc = await till.publish("devices/till-10/up/sales", b"lost?", 1)
        assert rc.value == 0x83  # implementation specific error: the box keeps it
        await till.disconnect()
        raw, _ = await raw_box(gw, "till-10", MQTT_3_1_1)
        await raw.send(Publish("devices/till-10/up/sales", b"lost?", 1, packet_id=3))
        assert await raw.closed() == []  # 3.1.1: no PUBACK; the box sends it again later


async def test_uplink_messages_reach_backends_through_a_redis_stream(
    tmp_path: Path, redis_server: Any
) -> None:
    import redis.asyncio as redis_client

    prefix = f"u{uuid.uuid4().hex[:8]}"
    push = {"backend": "redis", "redis_url": redis_server.url, "key_prefix": prefix,
            "request_stream": f"{prefix}:push", "receipt_stream": f"{prefix}:receipts"}  # fmt: skip
    stream = f"{prefix}:uplink"
    async with api_node(tmp_path, push=push, mqtt={"uplink_stream": stream}) as (gw, _api):
        till = box(gw, "till-11", MQTT_5)
        await till.connect()
        await till.publish("devices/till-11/up/sales", b'{"sale": 2}', 1)
        client = redis_client.Redis.from_url(redis_server.url)
        try:
            entries = await client.xrange(stream)
        finally:
            await client.aclose()
        assert len(entries) == 1
        fields = entries[0][1]
        assert fields[b"device_id"] == b"till-11" and fields[b"payload"] == b'{"sale": 2}'
        assert fields[b"topic"] == b"devices/till-11/up/sales"
        await till.disconnect()
