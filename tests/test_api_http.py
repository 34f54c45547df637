"""The HTTP push API end to end: aiohttp client → API → gateway → real SDK devices.

Real gateway node (TLS 1.3 on port 0, memory push backend), its API on port 0,
SDK clients as devices. Answers are also checked against the schemas of
``/openapi.json``, so the document cannot drift from what the API sends.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate
from redis.exceptions import ConnectionError as RedisConnectionError

from channel.api.keys import ApiKeyring, ensure_dev_api_key, new_api_key
from sdk_client import Request
from tests.gateway_harness import RunningGateway, gateway
from tests.test_push_e2e import online, push_section

pytestmark = pytest.mark.both_engines

WAIT_S = 5.0


@pytest.fixture(params=["memory", "redis"])
def push_backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The [push] section: the in-memory stores, or a real Redis."""
    return push_section(request)


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any


class Api:
    """A JSON client for one API port with a default key."""

    def __init__(self, session: aiohttp.ClientSession, base: str, key: str) -> None:
        self.session = session
        self.base = base
        self.key = key
        self.document: dict[str, Any] = {}

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        key: str | None = "",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        schema: str | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        key = self.key if key == "" else key
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.session.request(method, self.base + path, data=data, headers=sent) as r:
            assert r.content_type == "application/json", await r.text()
            reply = Reply(r.status, await r.json(), r.headers)
        if reply.status >= 400:
            self.check(reply.body, "Error")
            assert set(reply.body["error"]) <= {"code", "message", "field"}
        elif schema:
            self.check(reply.body, schema)
        return reply

    def check(self, body: object, schema: str) -> None:
        root = {"components": self.document["components"], "$ref": f"#/components/schemas/{schema}"}
        jsonschema.Draft202012Validator(root).validate(body)


@asynccontextmanager
async def api_gateway(
    tmp_path: Path, **sections: dict[str, Any]
) -> AsyncIterator[tuple[RunningGateway, Api]]:
    """A gateway with its API; the dev key (every scope) is the default key."""
    async with (
        gateway(tmp_path, **{"api": {"port": 0}, **sections}) as gw,
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, f"http://127.0.0.1:{gw.api_port}", gw.api_key)
        reply = await api.call("GET", "/openapi.json", key=None)
        assert reply.status == 200
        api.document = reply.body
        yield gw, api


async def wait_status(api: Api, message_id: str, status: str) -> dict[str, Any]:
    """Follow the receipt stream (long polls) until the message reaches ``status``."""
    cursor = "0"
    async with asyncio.timeout(WAIT_S):
        while True:
            reply = await api.call("GET", f"/v1/messages/{message_id}", schema="MessageStatus")
            assert reply.status == 200
            if reply.body.get("status") == status:
                return dict(reply.body)
            page = await api.call("GET", f"/v1/receipts?after={cursor}&wait_ms=1000")
            cursor = page.body["cursor"]


# ------------------------------------------------------------------ push


async def test_push_reaches_the_device_and_becomes_delivered(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api), online(gw, "d1") as (device,):
        reply = await api.call(
            "POST",
            "/v1/push",
            {"device_id": "d1", "body": "hello", "headers": {"kind": "chat"}, "priority": "high"},
            schema="AcceptResult",
        )
        assert reply.status == 202
        result = reply.body
        assert result["status"] == "accepted" and result["target"] == "device"
        assert (result["queued"], result["online"], result["expired"]) == (1, 1, [])
        (push,) = await device.wait_pushes(1)
        assert push.body == b"hello"
        assert push.message_id == result["message_id"].encode()
        assert ("kind", "chat") in push.headers and ("priority", "high") in push.headers
        status = await wait_status(api, result["message_id"], "delivered")
        assert status["devices"] == {"d1": "delivered"}
        page = await api.call("GET", "/v1/receipts?after=0&count=10", schema="ReceiptPage")
        assert [(r["message_id"], r["status"], r["device_id"]) for r in page.body["receipts"]] == [
            (result["message_id"], "delivered", "d1")
        ]


async def test_binary_body_user_topic_and_broadcast_targets(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api), online(gw, "a", "b", user_id="u9") as devs:
        a, b = devs
        await a.client.subscribe("public.news")
        binary = base64.b64encode(b"\x00\xff").decode()
        user = await api.call("POST", "/v1/push", {"user_id": "u9", "body_base64": binary})
        assert user.status == 202 and user.body["queued"] == 2
        await a.wait_pushes(1)
        await b.wait_pushes(1)
        assert a.bodies == b.bodies == [b"\x00\xff"]
        topic = await api.call("POST", "/v1/push", {"topic": "public.news", "body": "t"})
        assert topic.status == 202 and topic.body["target"] == "topic"
        await a.wait_pushes(2)
        everyone = await api.call("POST", "/v1/push", {"broadcast": True, "body": "all"})
        assert everyone.status == 202 and "queued" not in everyone.body
        await a.wait_pushes(3)
        await b.wait_pushes(2)
        assert a.bodies == [b"\x00\xff", b"t", b"all"] and b.bodies == [b"\x00\xff", b"all"]


async def test_batch_accepts_the_valid_items_and_names_the_bad_ones(tmp_path: Path) -> None:
    async with api_gateway(tmp_path, api={"port": 0, "max_batch": 4}) as (gw, api):
        async with online(gw, "d1", "d2") as (d1, d2):
            batch = {
                "messages": [
                    {"device_id": "d1", "body": "one"},
                    {"device_id": "bad id", "body": "x"},
                    {"device_ids": ["d1", "d2"], "body": "both", "ttl_s": 60},
                    {"device_id": "d2", "body": "x", "ttl": 5},
                ]
            }
            reply = await api.call("POST", "/v1/push/batch", batch, schema="BatchResult")
            assert reply.status == 202
            results = reply.body["results"]
            assert [("message_id" in r) for r in results] == [True, False, True, False]
            assert results[1]["error"]["field"] == "messages[1].device_id"
            assert results[3]["error"] == {
                "code": "BAD_REQUEST",
                "message": results[3]["error"]["message"],
                "field": "messages[3].ttl",
            }
            assert results[2]["queued"] == 2
            await d1.wait_pushes(2)
            await d2.wait_pushes(1)
            assert d1.bodies == [b"one", b"both"] and d2.bodies == [b"both"]

        too_many = {"messages": [{"device_id": "d", "body": ""}] * 5}
        reply = await api.call("POST", "/v1/push/batch", too_many)
        assert reply.status == 400 and reply.body["error"]["field"] == "messages"
        assert "max_batch 4" in reply.body["error"]["message"]
        for body, field in [({}, "messages"), ({"messages": {}}, "messages"), ([], "messages")]:
            reply = await api.call("POST", "/v1/push/batch", body)
            assert (reply.status, reply.body["error"]["field"]) == (400, field)
        empty = await api.call("POST", "/v1/push/batch", {"messages": []})
        assert (empty.status, empty.body) == (202, {"results": []})


async def test_validation_and_request_errors_are_json(tmp_path: Path) -> None:
    async with api_gateway(tmp_path, api={"port": 0, "max_body_bytes": 2048}) as (_, api):
        reply = await api.call("POST", "/v1/push", {"device_id": "d1", "body": "", "ttl_s": -1})
        assert reply.status == 400
        assert reply.body["error"]["code"] == "BAD_REQUEST"
        assert reply.body["error"]["field"] == "ttl_s"
        reply = await api.call("POST", "/v1/push", raw=b"{not json")
        assert reply.status == 400 and "not valid JSON" in reply.body["error"]["message"]
        reply = await api.call("POST", "/v1/push", raw=b"")
        assert reply.status == 400
        reply = await api.call("POST", "/v1/push", {"device_id": "d1", "body": "x" * 3000})
        assert (reply.status, reply.body["error"]["code"]) == (413, "BODY_TOO_LARGE")
        reply = await api.call("GET", "/v1/nothing")
        assert (reply.status, reply.body["error"]["code"]) == (404, "NOT_FOUND")
        reply = await api.call("GET", "/v1/push")
        assert (reply.status, reply.body["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")
        assert "POST" in reply.headers["Allow"]
        reply = await api.call("GET", "/v1/receipts?count=0")
        assert (reply.status, reply.body["error"]["field"]) == (400, "count")
        reply = await api.call("GET", "/v1/receipts?wait_ms=30001")
        assert (reply.status, reply.body["error"]["field"]) == (400, "wait_ms")
        # The schema says object: null is refused, not taken for "no headers".
        reply = await api.call("POST", "/v1/push", {"device_id": "d1", "body": "", "headers": None})
        assert (reply.status, reply.body["error"]["field"]) == (400, "headers")
        rpc = {"op": "app.echo", "headers": None}
        reply = await api.call("POST", "/v1/devices/d1/rpc", rpc)
        assert (reply.status, reply.body["error"]["field"]) == (400, "headers")


# ------------------------------------------------------------------ keys


async def test_keys_and_scopes(tmp_path: Path) -> None:
    push_key, push_record = new_api_key("sender", ["push"])
    all_key, all_record = new_api_key("ops", ["*"])
    api_config = {"port": 0, "keys": [push_record, all_record]}
    async with api_gateway(tmp_path, api=api_config) as (_, api):
        api.key = push_key
        missing = await api.call("GET", "/v1/devices/d1", key=None)
        assert (missing.status, missing.body["error"]["code"]) == (401, "AUTH_REQUIRED")
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await api.call("GET", "/v1/devices/d1", key=push_key[:-4] + "AAAA")
        assert (wrong.status, wrong.body["error"]["code"]) == (401, "AUTH_INVALID")
        assert push_key[:-4] not in json.dumps(wrong.body)
        # The dev key is not made when keys are configured.
        dev = await api.call("GET", "/v1/devices/d1", key=f"ck_dev_{'A' * 43}")
        assert dev.status == 401
        forbidden = await api.call("GET", "/v1/devices/d1")
        assert (forbidden.status, forbidden.body["error"]["code"]) == (403, "FORBIDDEN")
        assert "'presence'" in forbidden.body["error"]["message"]
        assert "sender" in forbidden.body["error"]["message"]
        sent = await api.call("POST", "/v1/push", {"device_id": "d1", "body": "x"})
        assert sent.status == 202
        status = await api.call("GET", f"/v1/messages/{sent.body['message_id']}")
        assert status.status == 403
        status = await api.call("GET", f"/v1/messages/{sent.body['message_id']}", key=all_key)
        assert status.status == 200 and status.body["status"] == "accepted"


async def test_dev_key_when_none_configured(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api):
        key_file = gw.node.config.state_dir / "api" / "dev.key"
        assert key_file.read_text().strip() == api.key
        assert (
            ApiKeyring([ensure_dev_api_key(gw.node.config.state_dir)[1]])
            .authenticate(f"Bearer {api.key}")
            .allows("kick")
        )
        reply = await api.call("GET", "/v1/users/u1/devices", schema="UserDevices")
        assert reply.status == 200


async def test_openapi_document_is_served_without_a_key(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (_, api):
        validate(api.document)
        assert "/v1/push/batch" in api.document["paths"]


# ------------------------------------------------------------------ idempotency


async def test_idempotency_key_replays_the_first_answer(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api), online(gw, "d1") as (device,):
        push = {"device_id": "d1", "body": "once"}
        first = await api.call("POST", "/v1/push", push, headers={"Idempotency-Key": "k1"})
        again = await api.call("POST", "/v1/push", push, headers={"Idempotency-Key": "k1"})
        assert first.status == again.status == 202
        assert first.body == again.body
        assert "Idempotent-Replayed" not in first.headers
        assert again.headers["Idempotent-Replayed"] == "true"
        other = await api.call("POST", "/v1/push", push, headers={"Idempotency-Key": "k2"})
        assert other.body["message_id"] != first.body["message_id"]
        await device.wait_pushes(2)
        assert device.bodies == [b"once", b"once"]  # k1 once, k2 once

        batch = {"messages": [push]}
        one = await api.call("POST", "/v1/push/batch", batch, headers={"Idempotency-Key": "k1"})
        two = await api.call("POST", "/v1/push/batch", batch, headers={"Idempotency-Key": "k1"})
        assert one.body == two.body and two.headers["Idempotent-Replayed"] == "true"
        assert one.body["results"][0]["message_id"] != first.body["message_id"]

        # A refused request does not use the key up.
        bad = await api.call(
            "POST", "/v1/push", {"device_id": "d1"}, headers={"Idempotency-Key": "k3"}
        )
        good = await api.call("POST", "/v1/push", push, headers={"Idempotency-Key": "k3"})
        assert (bad.status, good.status) == (400, 202)
        assert "Idempotent-Replayed" not in good.headers

        # The first request with a key still running: a retry is told to wait.
        assert gw.node.push is not None
        await gw.node.push.idempotency.claim("api:dev:push:k4", b"another node", 60_000)
        busy = await api.call("POST", "/v1/push", push, headers={"Idempotency-Key": "k4"})
        assert (busy.status, busy.body["error"]["code"]) == (409, "CONFLICT")
        assert busy.headers["Retry-After"] == "10"  # the lease, [api] idempotency_lease_s

        long_key = await api.call("POST", "/v1/push", push, headers={"Idempotency-Key": "k" * 129})
        assert (long_key.status, long_key.body["error"]["field"]) == (400, "Idempotency-Key")


# ------------------------------------------------------------------ status, revoke


async def test_revoke_an_undelivered_push(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api):
        queued = await api.call("POST", "/v1/push", {"device_id": "d1", "body": "stale"})
        message_id = queued.body["message_id"]
        assert queued.body["online"] == 0
        reply = await api.call("POST", f"/v1/messages/{message_id}/revoke", schema="RevokeResult")
        assert reply.status == 200
        assert reply.body == {"message_id": message_id, "revoked": ["d1"], "already_final": []}
        again = await api.call("POST", f"/v1/messages/{message_id}/revoke")
        assert again.body["revoked"] == [] and again.body["already_final"] == ["d1"]
        status = await api.call("GET", f"/v1/messages/{message_id}")
        assert status.body["status"] == "revoked"
        async with online(gw, "d1") as (device,):
            await api.call("POST", "/v1/push", {"device_id": "d1", "body": "fresh"})
            await device.wait_pushes(1)
            assert device.bodies == [b"fresh"]
        for method, path in [
            ("GET", "/v1/messages/nope"),
            ("POST", "/v1/messages/nope/revoke"),
        ]:
            reply = await api.call(method, path)
            assert (reply.status, reply.body["error"]["code"]) == (404, "NOT_FOUND")


async def test_receipts_long_poll_wakes_on_a_delivery(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api), online(gw, "d1"):
        start = await api.call("GET", "/v1/receipts?after=0&wait_ms=0")
        assert start.body["receipts"] == []
        poll = asyncio.create_task(
            api.call("GET", f"/v1/receipts?after={start.body['cursor']}&wait_ms=10000")
        )
        sent = await api.call("POST", "/v1/push", {"device_id": "d1", "body": "x"})
        async with asyncio.timeout(WAIT_S):
            page = await poll
        assert [r["message_id"] for r in page.body["receipts"]] == [sent.body["message_id"]]
        assert page.body["cursor"] != start.body["cursor"]


# ------------------------------------------------------------------ devices


async def test_presence_lookups(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api), online(gw, "p1", "p2", user_id="u5"):
        reply = await api.call("GET", "/v1/devices/p1", schema="Presence")
        assert reply.status == 200
        assert reply.body["online"] is True and reply.body["user_id"] == "u5"
        assert reply.body["node"] == gw.node.node_id
        offline = await api.call("GET", "/v1/devices/ghost")
        assert offline.status == 404 and offline.body["error"]["code"] == "NOT_FOUND"
        users = await api.call("GET", "/v1/users/u5/devices", schema="UserDevices")
        assert sorted(d["device_id"] for d in users.body["devices"]) == ["p1", "p2"]
        nobody = await api.call("GET", "/v1/users/u0/devices")
        assert nobody.body == {"user_id": "u0", "devices": []}
        bad = await api.call("GET", "/v1/devices/a%20b")
        assert (bad.status, bad.body["error"]["field"]) == (400, "device_id")


async def test_kick(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api), online(gw, "k1"):
        session = gw.node.by_device["k1"]
        reply = await api.call(
            "POST", "/v1/devices/k1/kick", {"reason": "fraud check"}, schema="KickResult"
        )
        assert reply.status == 200 and reply.body == {"device_id": "k1", "kicked": True}
        await asyncio.wait_for(gw.node.wait_closed(session), WAIT_S)
        ghost = await api.call("POST", "/v1/devices/ghost/kick")
        assert ghost.status == 404
        bad = await api.call("POST", "/v1/devices/k1/kick", {"why": 1})
        assert (bad.status, bad.body["error"]["field"]) == (400, "why")


async def test_backend_to_device_rpc(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api), online(gw, "r1") as (device,):
        never = asyncio.Event()

        @device.client.handle("app.echo")
        async def echo(request: Request) -> bytes:
            return b"echo:" + request.body + b":" + (request.header("x-n") or "").encode()

        @device.client.handle("app.bytes")
        async def raw(request: Request) -> bytes:
            return b"\xff\x00"

        @device.client.handle("app.slow")
        async def slow(request: Request) -> bytes:
            await never.wait()
            return b""

        @device.client.handle("app.fail")
        async def fail(request: Request) -> bytes:
            raise RuntimeError("boom")

        path = "/v1/devices/r1/rpc"
        ok = await api.call(
            "POST",
            path,
            {"op": "app.echo", "body": "hi", "headers": {"x-n": "7"}},
            schema="RpcResult",
        )
        assert ok.status == 200 and ok.body["status"] == 0 and ok.body["body"] == "echo:hi:7"
        binary = await api.call("POST", path, {"op": "app.bytes"}, schema="RpcResult")
        assert binary.body["body_base64"] == base64.b64encode(b"\xff\x00").decode()
        timeout = await api.call("POST", path, {"op": "app.slow", "timeout_ms": 200})
        assert (timeout.status, timeout.body["error"]["code"]) == (504, "TIMEOUT")
        failed = await api.call("POST", path, {"op": "app.fail"})
        assert (failed.status, failed.body["error"]["code"]) == (502, "INTERNAL_ERROR")
        unknown = await api.call("POST", path, {"op": "app.nope"})
        assert (unknown.status, unknown.body["error"]["code"]) == (404, "NOT_FOUND")
        offline = await api.call("POST", "/v1/devices/ghost/rpc", {"op": "app.echo"})
        assert (offline.status, offline.body["error"]["code"]) == (404, "NOT_FOUND")
        too_long = await api.call("POST", path, {"op": "app.echo", "timeout_ms": 30_001})
        assert (too_long.status, too_long.body["error"]["field"]) == (400, "timeout_ms")
        never.set()


async def test_unreachable_store_is_503_and_other_failures_500(tmp_path: Path) -> None:
    async with api_gateway(tmp_path) as (gw, api):
        assert gw.node.push is not None

        async def store_down(requests: object) -> list[object]:
            raise RedisConnectionError("Connection refused")

        async def bug(requests: object) -> list[object]:
            raise RuntimeError("bug")

        push = {"device_id": "d1", "body": "x"}
        gw.node.push.accept = store_down  # type: ignore[method-assign,assignment]
        down = await api.call("POST", "/v1/push", push, headers={"Idempotency-Key": "k"})
        assert (down.status, down.body["error"]["code"]) == (503, "UNAVAILABLE")
        assert down.headers["Retry-After"] == "1"
        gw.node.push.accept = bug  # type: ignore[method-assign,assignment]
        failed = await api.call("POST", "/v1/push", push, headers={"Idempotency-Key": "k"})
        assert (failed.status, failed.body["error"]["code"]) == (500, "INTERNAL_ERROR")
        assert "bug" not in failed.body["error"]["message"]
        del gw.node.push.accept  # back to the class's method
        # Failed attempts released the key: the retry runs.
        retry = await api.call("POST", "/v1/push", push, headers={"Idempotency-Key": "k"})
        assert retry.status == 202 and "Idempotent-Replayed" not in retry.headers


# ------------------------------------------------------------------ receipt cursors

#: Cursors no store ever hands out: each once answered 500 with a traceback.
BAD_CURSORS = [
    "abc",
    "1-",
    "-1",
    "zzz-1",
    "1-x",
    "1#",
    "#3",
    "1-2#x",
    "1.5",
    "+1",
    " 1",
    "1-2-3",
    "$$",
    "99999999999999999999",  # past a stream id's 64 bits
    "1-99999999999999999999",
    "٣",  # a digit, but not an ASCII one
]


async def test_bad_receipt_cursors_are_refused_by_name(
    tmp_path: Path, push_backend: dict[str, Any]
) -> None:
    async with api_gateway(tmp_path, push=push_backend) as (_, api):
        for cursor in BAD_CURSORS:
            reply = await api.call("GET", "/v1/receipts?" + urlencode({"after": cursor}))
            assert (reply.status, reply.body["error"]["field"]) == (400, "after"), cursor
            assert reply.body["error"]["code"] == "BAD_REQUEST"
        # Every cursor form a store hands out still reads, on either backend.
        for cursor in ["", "$", "0", "0-0", "12", "1700000000000-3", "1700000000000-3#2"]:
            reply = await api.call(
                "GET", "/v1/receipts?" + urlencode({"after": cursor}), schema="ReceiptPage"
            )
            assert reply.status == 200, (cursor, reply.body)
