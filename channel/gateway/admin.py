"""The admin HTTP endpoints of a node (separate port from devices).

``GET /metrics`` (Prometheus), ``GET /healthz`` (the process is alive),
``GET /readyz`` (accepting devices; 503 while starting or draining),
``GET /admin/routes`` (current RPC routes, clusters and breaker states),
``POST /admin/reload`` (re-read the config file's [rpc] routes and [tls] files, like
SIGHUP; open connections keep their certificate),
``GET /admin/devices/{device_id}`` (is this device connected here),
``GET /admin/compression`` (per app: dictionaries, presets, deliveries,
retraining, and each dictionary's share of the app's bodies and bytes saved;
``POST /admin/compression/reload`` reads the registry now, ``POST
/admin/compression/retrain/{app}`` retrains a sampled app now).

Everything under ``/admin/`` (and any path not listed) needs an API key with the
``admin`` scope (``Authorization: Bearer ck_...``, keys from ``[api] keys``; ``*``
does not imply it). ``/metrics`` and ``/healthz``, ``/readyz`` are open unless
``[admin] open_metrics`` / ``open_health`` say otherwise. Errors are the push
API's ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from channel.api.errors import error_json, json_response
from channel.api.keys import ADMIN_SCOPE, ApiKeyring, AuthError
from channel.compression.service import CompressionService
from channel.config import ConfigError, GatewayConfig, load_config
from channel.httpserver import ConnectionGate, GuardedSite, guard_middleware, runner_options
from channel.metrics import GatewayMetrics
from channel.rpc.router import RpcRouter
from channel.sessions import Session


class AdminTarget(Protocol):
    """What the admin port reads and acts on (the node gives itself)."""

    config: GatewayConfig
    metrics: GatewayMetrics
    router: RpcRouter
    node_id: str
    ready: bool
    draining: bool

    @property
    def connection_count(self) -> int: ...

    @property
    def by_device(self) -> dict[str, Session]: ...

    def reload(self, config: GatewayConfig) -> dict[str, object]: ...

    def compression_view(self) -> dict[str, object]: ...

    @property
    def compression(self) -> CompressionService: ...


NODE_KEY: web.AppKey[Any] = web.AppKey("node")
KEYRING_KEY: web.AppKey[ApiKeyring] = web.AppKey("keyring", ApiKeyring)
OPEN_PATHS_KEY: web.AppKey[frozenset[str]] = web.AppKey("open_paths", frozenset)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def open_paths(open_metrics: bool, open_health: bool) -> frozenset[str]:
    """The paths served without a key."""
    paths = {"/metrics"} if open_metrics else set()
    if open_health:
        paths |= {"/healthz", "/readyz"}
    return frozenset(paths)


@web.middleware
async def _admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Checked before routing answers: without a key, a 404 would map the admin port.
    if request.path not in request.app[OPEN_PATHS_KEY]:
        try:
            key = request.app[KEYRING_KEY].authenticate(request.headers.get("Authorization"))
        except AuthError as exc:
            return json_response(
                401,
                error_json(exc.code, exc.message),
                {"WWW-Authenticate": 'Bearer realm="channel-admin"'},
            )
        if not key.allows(ADMIN_SCOPE):
            message = f"API key {key.key_id} lacks scope {ADMIN_SCOPE!r} (admin port)"
            return json_response(403, error_json("FORBIDDEN", message))
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status, "BAD_REQUEST")
        return json_response(exc.status, error_json(code, f"{exc.reason}: {request.path}"))


async def metrics(request: web.Request) -> web.Response:
    node: AdminTarget = request.app[NODE_KEY]
    body = generate_latest(node.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    node: AdminTarget = request.app[NODE_KEY]
    return web.json_response({"status": "ok", "node": node.node_id})


async def readyz(request: web.Request) -> web.Response:
    node: AdminTarget = request.app[NODE_KEY]
    body = {
        "ready": node.ready,
        "draining": node.draining,
        "connections": node.connection_count,
        "sessions": len(node.by_device),
    }
    return web.json_response(body, status=200 if node.ready else 503)


async def routes(request: web.Request) -> web.Response:
    node: AdminTarget = request.app[NODE_KEY]
    return web.json_response(node.router.describe())


async def reload(request: web.Request) -> web.Response:
    node: AdminTarget = request.app[NODE_KEY]
    source = node.config.source
    if source == "defaults":
        message = "the node runs without a config file; nothing to reload"
        return json_response(409, error_json("CONFLICT", message))
    try:
        in_force = node.reload(load_config(source))
    except (ConfigError, ValueError) as exc:
        # Nothing changed: the routes and certificate in force are the ones before.
        return json_response(400, error_json("BAD_REQUEST", str(exc)))
    return web.json_response({"reloaded": source, **in_force})


async def device(request: web.Request) -> web.Response:
    node: AdminTarget = request.app[NODE_KEY]
    device_id = request.match_info["device_id"]
    session = node.by_device.get(device_id)
    if session is None:
        return web.json_response({"device_id": device_id, "online": False}, status=404)
    device = session.device
    return web.json_response(
        {
            "device_id": device_id,
            "online": True,
            "node": node.node_id,
            "user_id": device.user_id,
            "app_id": device.app_id,
            "app_version": device.app_version,
            "platform": device.platform,
            **session.describe(),
        }
    )


async def compression(request: web.Request) -> web.Response:
    node: AdminTarget = request.app[NODE_KEY]
    return web.json_response(node.compression_view())


async def compression_reload(request: web.Request) -> web.Response:
    node: AdminTarget = request.app[NODE_KEY]
    changed = await node.compression.reload()
    return web.json_response({"changed": changed, **node.compression_view()})


async def compression_retrain(request: web.Request) -> web.Response:
    node: AdminTarget = request.app[NODE_KEY]
    app_id = request.match_info["app"]
    service = node.compression
    if app_id not in service.sampler.apps:
        message = f"app {app_id!r} is not sampled: add it to [compression] sample_apps"
        return json_response(404, error_json("NOT_FOUND", message))
    try:
        verdict = await service.retrain_app(app_id)
    except ValueError as exc:
        return json_response(409, error_json("CONFLICT", str(exc)))
    state = service.apps.get(app_id)
    return web.json_response(
        {
            "app": app_id,
            "trained": verdict is not None,
            "result": state.last_retrain if state else "",
            "current_dictionary": service.current_dictionary(app_id),
        }
    )


def create_admin_app(node: AdminTarget, keyring: ApiKeyring) -> web.Application:
    admin = node.config.admin
    app = web.Application(middlewares=[guard_middleware, _admin_auth])
    app[NODE_KEY] = node
    app[KEYRING_KEY] = keyring
    app[OPEN_PATHS_KEY] = open_paths(admin.open_metrics, admin.open_health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/routes", routes)
    app.router.add_post("/admin/reload", reload)
    app.router.add_get("/admin/devices/{device_id}", device)
    app.router.add_get("/admin/compression", compression)
    app.router.add_post("/admin/compression/reload", compression_reload)
    app.router.add_post("/admin/compression/retrain/{app}", compression_retrain)
    return app


async def start_admin(node: AdminTarget, keyring: ApiKeyring) -> tuple[web.AppRunner, int]:
    http = node.config.http
    runner = web.AppRunner(create_admin_app(node, keyring), access_log=None, **runner_options(http))
    await runner.setup()
    server = node.config.server
    gate = ConnectionGate(http, "admin port")
    site = GuardedSite(runner, server.admin_host, server.admin_port, gate, reuse_port=None)
    await site.start()
    port = runner.addresses[0][1]
    return runner, int(port)


async def stop_admin(runner: object) -> None:
    assert isinstance(runner, web.AppRunner)
    await runner.cleanup()
