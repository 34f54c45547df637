"""The backend around the node under fuzz: an RPC upstream, and pushes and calls to devices.

A fuzzed device should reach every path a real one does, not only the
gateway's built-in ops. ``upstream_main`` (its own process) is an aiohttp
upstream whose answer depends on the op's last part: ``slow`` waits 200 ms
(calls in flight when a connection breaks, CANCELs that find work),
``fail`` answers 503 with Retry-After, ``big`` sends 400 KiB (more than a
default frame), ``headers`` many odd headers; anything else echoes.
``RPC_ROUTES`` sends ``account.`` through every kind of traffic rule (on
headers and on the HELLO's identity fields, both fuzzed), ``dead.`` to a
port nobody listens on, everything else to the echo.

``BackendTraffic`` plays the backend while the lanes fuzz: through the
node's HTTP API it pushes to the lanes' devices, to a topic the seeds
subscribe to and to everyone, calls methods on devices (server-initiated
streams the fuzzed devices rarely answer) and kicks devices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe

import aiohttp
import uvloop
from aiohttp import web

#: Upstream behaviour by the op's last dotted part.
BIG_BODY_BYTES = 400 * 1024


async def _answer(request: web.Request) -> web.Response:
    body = await request.read()
    kind = request.match_info["op"].rsplit(".", 1)[-1]
    if kind == "slow":
        await asyncio.sleep(0.2)
    elif kind == "fail":
        return web.Response(status=503, headers={"Retry-After": "1"}, body=b"busy")
    elif kind == "big":
        return web.Response(body=b"x" * BIG_BODY_BYTES)
    elif kind == "headers":
        headers = {f"x-h{i}": "v" * (i * 7) for i in range(40)}
        headers["x-odd"] = "é\t ;="
        return web.Response(body=body, headers=headers)
    return web.Response(body=body, content_type="application/json")


def upstream_main(pipe: Pipe) -> None:
    """Serve on 127.0.0.1:0; send ``{"url", "pid"}`` up the pipe; stop when it speaks."""
    # Requests aiohttp refuses (the gateway forwards a device's repeated content-type,
    # for one) are answered 400; their tracebacks would only drown the fuzzer's report.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

    async def serve() -> None:
        app = web.Application(client_max_size=2 << 20)
        app.router.add_post("/rpc/{op}", _answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        pipe.send({"url": f"http://127.0.0.1:{runner.addresses[0][1]}", "pid": os.getpid()})
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        await runner.cleanup()

    uvloop.run(serve())


def rpc_routes(upstream_url: str) -> str:
    """The node's ``[rpc]`` section: every rule kind, a mirror, a dead cluster, a default."""
    clusters = "".join(
        f'[rpc.clusters.{name}]\nendpoints = ["{upstream_url}"]\ntimeout_ms = 2000\n'
        f"retries = 1\n{extra}\n"
        for name, extra in (
            ("echo", ""),
            ("canary", ""),
            ("hz", 'zone = "hz"'),
            ("sh", 'zone = "sh"'),
            ("blue", ""),
            ("green", ""),
        )
    )
    rules = (
        '{ kind = "stress", header = "x-stress-test", cluster = "canary" }',
        '{ kind = "gray", percent = 30, cluster = "canary" }',
        '{ kind = "app_version", min = "8.12.0", max = "9.0.0", cluster = "green" }',
        '{ kind = "platform", platforms = ["ios"], cluster = "blue" }',
        '{ kind = "header", header = "locale", values = ["zh-CN"], cluster = "hz" }',
        '{ kind = "zone", clusters = { hz = "hz", sh = "sh" }, failover = ["sh", "hz"] }',
    )
    return f"""
[rpc]
endpoint_down_s = 0.5

{clusters}
[rpc.clusters.dead]
endpoints = ["http://127.0.0.1:1"]
timeout_ms = 300
breaker = {{ failures = 3, window_s = 5, open_s = 1 }}

[[rpc.routes]]
match = "account."
cluster = "echo"
idempotent = true
mirror = {{ cluster = "canary", percent = 10 }}
rules = [{", ".join(rules)}]

[[rpc.routes]]
match = "dead."
cluster = "dead"

[[rpc.routes]]
match = "*"
cluster = "echo"
"""


class BackendTraffic:
    """Pushes, device calls and kicks through the node's HTTP API, ``per_s`` a second."""

    def __init__(self, api_url: str, api_key: str, device_ids: Sequence[str], seed: int) -> None:
        self.api_url = api_url
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.device_ids = list(device_ids)
        self.rng = random.Random(f"{seed}:backend")
        #: API answers by "action status".
        self.answers: Counter[str] = Counter()

    async def run(self, per_s: float = 20.0) -> None:
        async with aiohttp.ClientSession(headers=self.headers) as http:
            while True:
                await asyncio.sleep(1 / per_s)
                action, path, body = self._next()
                try:
                    async with http.post(self.api_url + path, json=body) as reply:
                        await reply.read()
                        self.answers[f"{action} {reply.status}"] += 1
                except aiohttp.ClientError as exc:
                    self.answers[f"{action} {type(exc).__name__}"] += 1

    def _next(self) -> tuple[str, str, dict[str, object]]:
        rng = self.rng
        device = rng.choice(self.device_ids)
        roll = rng.random()
        if roll < 0.5:
            body: dict[str, object] = {
                "device_id": device,
                "body": "p" * rng.choice((2, 300)),
                "ttl_s": 10,  # the node's memory must level off (driver.node_settings)
            }
            if rng.random() < 0.3:
                body["collapse_key"] = rng.choice(("c1", "c2"))
            return "push", "/v1/push", body
        if roll < 0.8:
            op = rng.choice(("device.echo", "device.locate", "x"))
            call: dict[str, object] = {"op": op, "body": "x", "timeout_ms": rng.choice((50, 300))}
            return "call", f"/v1/devices/{device}/rpc", call
        if roll < 0.9:
            return "topic", "/v1/push", {"topic": "public.news", "body": "headline", "ttl_s": 0}
        if roll < 0.97:
            return "kick", f"/v1/devices/{device}/kick", {"reason": "fuzz"}
        return "broadcast", "/v1/push", {"broadcast": True, "body": "all", "ttl_s": 0}
