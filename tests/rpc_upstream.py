"""Real HTTP upstreams for the RPC proxy tests (a helper module, not a conftest).

``UpstreamFarm`` starts aiohttp.web apps on 127.0.0.1 port 0 — never a fixed
port — and records every hit. Behaviour is set per upstream (status, body,
headers, or a ``gate`` the handler waits on to simulate a slow service), and
tests wait for hits with ``wait_hits()`` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from channel.rpc import DeviceContext, RoutingConfig, RpcRequest, RpcResponse, RpcRouter

Responder = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


@dataclass
class Hit:
    op: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Upstream:
    """One HTTP upstream; mutate ``status``/``body``/``headers``/``gate``/``responder``."""

    name: str
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: When set, the handler waits for it before answering (a slow upstream).
    gate: asyncio.Event | None = None
    responder: Responder | None = None
    hits: list[Hit] = field(default_factory=list)
    url: str = ""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with self._changed:
            self.hits.append(Hit(request.match_info["op"], CIMultiDict(request.headers), body))
            self._changed.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        if self.responder is not None:
            return await self.responder(request, body)
        return web.Response(
            status=self.status, body=self.body or self.name.encode(), headers=self.headers
        )

    async def wait_hits(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.hits) >= count)

    def ops(self) -> list[str]:
        return [hit.op for hit in self.hits]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/rpc/{op}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        sockets = self._runner.addresses
        host, port = sockets[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()


class UpstreamFarm:
    """Starts upstreams and "dead" endpoints; ``close()`` tears everything down."""

    def __init__(self) -> None:
        self.upstreams: list[Upstream] = []
        self._dead: list[socket.socket] = []

    async def start(self, name: str = "upstream", **behaviour: Any) -> Upstream:
        upstream = Upstream(name, **behaviour)
        await upstream.start()
        self.upstreams.append(upstream)
        return upstream

    def dead_url(self) -> str:
        """An endpoint that refuses connections: bound (so no one else takes it), not listening."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self._dead.append(sock)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.stop()
        for sock in self._dead:
            sock.close()


@asynccontextmanager
async def upstream_farm() -> AsyncIterator[UpstreamFarm]:
    farm = UpstreamFarm()
    try:
        yield farm
    finally:
        await farm.close()


@asynccontextmanager
async def running_router(
    rpc: dict[str, Any], *, clock: Callable[[], float] | None = None
) -> AsyncIterator[RpcRouter]:
    config = RoutingConfig.from_dict(rpc)
    cls = FastFirstRouter if FAST_FIRST else RpcRouter
    router = cls(config) if clock is None else cls(config, clock=clock)
    await router.start()
    try:
        yield router
    finally:
        await router.close()


#: ``running_router`` makes a ``FastFirstRouter`` (set by a test module's fixture, so
#: the same tests run on both paths).
FAST_FIRST = False


class FastFirstRouter(RpcRouter):
    """``handle()`` as the gateway calls the router: the fast path (``start_call``)
    whenever it takes the call, the ordinary one otherwise; counts both."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_calls = 0
        self.task_calls = 0

    async def handle(self, request: RpcRequest) -> RpcResponse:
        answer: asyncio.Future[RpcResponse] = asyncio.get_running_loop().create_future()
        call = self.start_call(request, answer.set_result)
        if call is None:
            self.task_calls += 1
            return await super().handle(request)
        self.fast_calls += 1
        try:
            return await answer
        except asyncio.CancelledError:
            call.cancel()
            raise


class FakeClock:
    """A monotonic clock the test moves by hand (for breakers and endpoint rests)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def device(**overrides: Any) -> DeviceContext:
    fields: dict[str, Any] = {
        "device_id": "dev-1",
        "user_id": "user-1",
        "app_id": "wallet",
        "app_version": "8.12.3",
        "platform": "android",
        "zone": "hz",
        "scopes": ("rpc", "push"),
        "session_id": "sess-1",
    }
    fields.update(overrides)
    return DeviceContext(**fields)


def rpc_request(
    op: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"{}",
    **device_overrides: Any,
) -> RpcRequest:
    return RpcRequest(op=op, headers=headers, body=body, device=device(**device_overrides))


def cluster(*urls: str, **extra: Any) -> dict[str, Any]:
    return {"endpoints": list(urls), **extra}
