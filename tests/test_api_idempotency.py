"""Idempotency-Key leases: held while the first request runs, freed when its node dies.

The placeholder a request writes before its work is a short lease its node renews
(``[api] idempotency_lease_s``); the answer is then kept for ``idempotency_ttl_s``.
One test kills a real gateway process (SIGKILL) between its claim and its work, on
the Redis backend: the window is made certain by a TCP proxy in front of Redis that
lets the claim through and holds every command after it. Another gateway then
answers retries 409 while the dead node's lease lasts, and runs the request once
Redis has expired it (a keyspace notification, not a timer).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio

from channel.config import ConfigError, load_config
from tests.gateway_harness import gateway
from tests.redis_servers import RedisFactory
from tests.test_api_http import api_gateway, push_backend  # noqa: F401 (fixture)
from tests.test_gateway_process import ServeProcess

LEASE_S = 3.0


class HoldAfterProxy:
    """TCP proxy to Redis that, once ``trigger`` has gone through towards Redis, holds
    every later command of every connection (replies still flow back).

    ``passed`` is set when the reply to the trigger's command reached the client: from
    then on the client is stuck between its claim and its work."""

    def __init__(self, redis_port: int, trigger: bytes) -> None:
        self.redis_port = redis_port
        self.trigger = trigger
        self.holding = False
        self.passed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.redis_port)
        saw_trigger = asyncio.Event()
        tasks = [
            asyncio.ensure_future(self._to_redis(client_r, redis_w, saw_trigger)),
            asyncio.ensure_future(self._to_client(redis_r, client_w, saw_trigger)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            client_w.close()
            redis_w.close()

    async def _to_redis(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, saw: asyncio.Event
    ) -> None:
        tail = b""
        while data := await reader.read(65536):
            if self.holding:
                continue  # held: never reaches Redis
            if self.trigger in tail + data:
                # Marked before it is sent: its reply may come back during the drain.
                self.holding = True
                saw.set()
            writer.write(data)
            await writer.drain()
            tail = (tail + data)[-len(self.trigger) :]

    async def _to_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, saw: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if saw.is_set():
                self.passed.set()


@contextlib.asynccontextmanager
async def hold_after(redis_port: int, trigger: bytes) -> AsyncIterator[tuple[HoldAfterProxy, int]]:
    proxy = HoldAfterProxy(redis_port, trigger)
    port = await proxy.start()
    try:
        yield proxy, port
    finally:
        await proxy.close()


async def post(
    http: aiohttp.ClientSession, base: str, api_key: str, body: object, key: str
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
    async with http.post(base + "/v1/push", json=body, headers=headers) as reply:
        return reply.status, await reply.json(), reply.headers


async def test_a_key_claimed_by_a_killed_node_is_free_after_its_lease(
    tmp_path: Path, redis_factory: RedisFactory
) -> None:
    server = redis_factory("--notify-keyspace-events", "Kx")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store_key = f"{prefix}:i:{{api:dev:push:crash-1}}"
    push_section = {
        "backend": "redis",
        "redis_url": server.url,
        "key_prefix": prefix,
        "request_stream_enabled": False,
    }
    api_section = {"port": 0, "idempotency_lease_s": LEASE_S}
    watcher = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
    expired = watcher.pubsub()
    await expired.subscribe(f"__keyspace@0__:{store_key}")
    push = {"device_id": "d1", "body": "once"}
    async with (
        hold_after(server.port, store_key.encode()) as (proxy, proxy_port),
        gateway(tmp_path / "b", push=push_section, api=api_section) as survivor,
        aiohttp.ClientSession() as http,
    ):
        doomed = ServeProcess(
            tmp_path / "a",
            "--port",
            "0",
            "--admin-port",
            "0",
            env={
                "CHANNEL_PUSH__BACKEND": "redis",
                "CHANNEL_PUSH__REDIS_URL": f"redis://127.0.0.1:{proxy_port}/0",
                "CHANNEL_PUSH__KEY_PREFIX": prefix,
                "CHANNEL_PUSH__REQUEST_STREAM_ENABLED": "false",
                "CHANNEL_API__PORT": "0",
                "CHANNEL_API__IDEMPOTENCY_LEASE_S": str(LEASE_S),
            },
        )
        try:
            (info,) = await asyncio.to_thread(doomed.wait_listening)
            doomed_key = (tmp_path / "a" / "api" / "dev.key").read_text().strip()
            base = f"http://127.0.0.1:{info['api_port']}"
            first = asyncio.ensure_future(post(http, base, doomed_key, push, "crash-1"))
            async with asyncio.timeout(10):
                await proxy.passed.wait()  # claimed; its work is held at the proxy
            doomed.proc.kill()
            await asyncio.to_thread(doomed.proc.wait, 10)
        finally:
            doomed.stop()
        with contextlib.suppress(aiohttp.ClientError):
            await first

        survivor_base = f"http://127.0.0.1:{survivor.api_port}"
        status, body, _ = await post(http, survivor_base, survivor.api_key, push, "crash-1")
        assert (status, body["error"]["code"]) == (409, "CONFLICT")  # the lease still runs
        # Nobody renews the dead node's lease: Redis expires it within LEASE_S.
        async with asyncio.timeout(LEASE_S + 5):
            async for event in expired.listen():
                if event["type"] == "message" and event["data"] == b"expired":
                    break
        status, body, headers = await post(http, survivor_base, survivor.api_key, push, "crash-1")
        assert status == 202 and "Idempotent-Replayed" not in headers
        again = await post(http, survivor_base, survivor.api_key, push, "crash-1")
        assert again[0] == 202 and again[1] == body and again[2]["Idempotent-Replayed"] == "true"
    await expired.aclose()
    await watcher.aclose()


async def test_a_running_request_keeps_its_key_past_the_lease(
    tmp_path: Path,
    push_backend: dict[str, Any],  # noqa: F811 (fixture)
) -> None:
    lease_s = 0.5
    api_section = {"port": 0, "idempotency_lease_s": lease_s}
    async with api_gateway(tmp_path, push=push_backend, api=api_section) as (gw, api):
        service = gw.node.push
        assert service is not None
        entered, release = asyncio.Event(), asyncio.Event()
        accept = service.accept

        async def held_accept(requests: Any) -> Any:
            entered.set()
            await release.wait()
            return await accept(requests)

        service.accept = held_accept  # type: ignore[method-assign]
        # Renewals come a third of a lease apart: nine of them span three leases.
        renewals: list[bool] = []
        nine_renewals = asyncio.Event()
        renew = service.idempotency.renew

        async def counted_renew(key: str, owner: bytes, lease_ms: int) -> bool:
            renewed = await renew(key, owner, lease_ms)
            renewals.append(renewed)
            if len(renewals) >= 9:
                nine_renewals.set()
            return renewed

        service.idempotency.renew = counted_renew  # type: ignore[method-assign]
        push = {"device_id": "d1", "body": "slow"}
        key = {"Idempotency-Key": "slow-1"}
        first = asyncio.ensure_future(api.call("POST", "/v1/push", push, headers=key))
        async with asyncio.timeout(5):
            await entered.wait()
        # Three leases go by while the first request works: its node renews the lease.
        async with asyncio.timeout(10 * lease_s + 5):
            await nine_renewals.wait()
        assert all(renewals), renewals
        busy = await api.call("POST", "/v1/push", push, headers=key)
        assert (busy.status, busy.body["error"]["code"]) == (409, "CONFLICT")
        release.set()
        done = await first
        assert done.status == 202
        replay = await api.call("POST", "/v1/push", push, headers=key)
        assert replay.body == done.body and replay.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(
    "setting",
    ["idempotency_lease_s = 0.1", "idempotency_lease_s = 301", "idempotency_ttl_s = 0"],
)
def test_bad_lease_settings_are_named(tmp_path: Path, setting: str) -> None:
    config_file = tmp_path / "channel.toml"
    config_file.write_text(f"[api]\n{setting}\n")
    with pytest.raises(ConfigError, match=r"api\.idempotency_"):
        load_config(config_file, environ={})
