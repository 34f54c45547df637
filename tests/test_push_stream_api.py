"""The Redis stream push API: a backend XADDs requests, reads results and receipts."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.gateway_harness import gateway
from tests.test_push_e2e import online

pytestmark = pytest.mark.both_engines

WAIT_S = 10.0


async def results_after(client: Any, stream: str, cursor: str, want: int) -> list[dict[str, Any]]:
    """Read the receipt stream (blocking reads) until ``want`` entries of results came."""
    found: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while len(found) < want:
            reply = await client.xread({stream: cursor}, count=100, block=1000)
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    cursor = entry_id
                    found.extend(r for r in json.loads(fields[b"r"]) if "request_id" in r)
    return found


async def test_pushes_xadded_to_the_request_stream_are_accepted_and_delivered(
    tmp_path: Path, redis_server: Any
) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    streams = {"request_stream": f"{prefix}:push", "receipt_stream": f"{prefix}:receipts"}
    push = {"backend": "redis", "redis_url": redis_server.url, "key_prefix": prefix, **streams}
    client = aioredis.from_url(redis_server.url)
    try:
        async with gateway(tmp_path, push=push) as gw, online(gw, "d1") as (device,):
            start = "0"
            await client.xadd(
                streams["request_stream"],
                {"push": json.dumps({"device_id": "d1", "body": "via xadd"}), "id": "req-1"},
            )
            await client.xadd(
                streams["request_stream"],
                {"push": json.dumps({"device_id": "d1", "ttl_s": -5, "body": "x"}), "id": "req-2"},
            )
            await client.xadd(
                streams["request_stream"],
                {
                    "batch": json.dumps({"messages": [{"user_id": "u1", "body": "to the user"}]}),
                    "id": "req-3",
                },
            )
            # 300 KiB: under the API's request limit, over what one PUSH frame carries.
            await client.xadd(
                streams["request_stream"],
                {"push": json.dumps({"device_id": "d1", "body": "x" * 300_000}), "id": "req-4"},
            )
            await client.xadd(
                streams["request_stream"],
                {
                    "batch": json.dumps({"messages": [{"device_id": "d1"}]}),
                    "id": "req-5",
                },
            )
            results = await results_after(client, streams["receipt_stream"], start, 5)
            by_id = {r["request_id"]: r for r in results}
            assert by_id["req-1"]["status"] == "accepted"
            assert by_id["req-2"]["status"] == "rejected"
            assert by_id["req-2"]["error"]["field"] == "ttl_s"
            assert by_id["req-3"]["status"] == "accepted"
            assert by_id["req-4"]["status"] == "rejected"
            assert by_id["req-4"]["error"]["field"] == "body"
            assert by_id["req-5"]["error"]["field"].startswith("messages[0].")
            await device.wait_pushes(2)
            assert sorted(device.bodies) == [b"to the user", b"via xadd"]
            # Every request is acknowledged in the consumer group once its results are
            # written. A node handles its reads in turn, so by the time a later request's
            # result is out, all the earlier ones are acknowledged.
            newest = await client.xrevrange(streams["receipt_stream"], count=1)
            last_id = await client.xadd(
                streams["request_stream"],
                {"push": json.dumps({"device_id": "d1", "body": "last"}), "id": "req-6"},
            )
            (last,) = await results_after(client, streams["receipt_stream"], newest[0][0], 1)
            assert last["request_id"] == "req-6"
            pending = await client.xpending_range(
                streams["request_stream"], "channel", min="-", max="+", count=100
            )
            assert [p["message_id"] for p in pending] in ([], [last_id])
    finally:
        await client.aclose()


async def test_an_entry_nested_too_deep_is_rejected_and_its_batch_still_served(
    tmp_path: Path, redis_server: Any
) -> None:
    # json.loads' RecursionError escaped the entry parser: the whole read failed
    # (a warning), was retried for ever, and the valid entries read with it were
    # never accepted.
    prefix = f"s{uuid.uuid4().hex[:8]}"
    streams = {"request_stream": f"{prefix}:push", "receipt_stream": f"{prefix}:receipts"}
    push = {"backend": "redis", "redis_url": redis_server.url, "key_prefix": prefix, **streams}
    client = aioredis.from_url(redis_server.url)
    deep = '{"device_id": "d1", "body": ' + "[" * 50_000 + "]" * 50_000 + "}"
    try:
        async with gateway(tmp_path, push=push) as gw, online(gw, "d1") as (device,):
            await client.xadd(streams["request_stream"], {"push": deep, "id": "deep"})
            await client.xadd(
                streams["request_stream"],
                {"push": json.dumps({"device_id": "d1", "body": "fine"}), "id": "fine"},
            )
            results = await results_after(client, streams["receipt_stream"], "0", 2)
            by_id = {r["request_id"]: r for r in results}
            assert by_id["deep"]["status"] == "rejected"
            assert by_id["deep"]["error"]["field"] == "push"
            assert by_id["fine"]["status"] == "accepted"
            await device.wait_pushes(1)
            assert device.bodies == [b"fine"]
    finally:
        await client.aclose()
