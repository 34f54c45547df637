"""The admin HTTP endpoints of a node (separate port from devices).

``GET /metrics`` (Prometheus), ``GET /healthz`` (the process is alive),
``GET /readyz`` (accepting devices; 503 while starting or draining),
``GET /admin/routes`` (current RPC routes, clusters and breaker states),
``POST /admin/reload`` (re-read the config file's [rpc] section, like SIGHUP),
``GET /admin/devices/{device_id}`` (is this device connected here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from channel.config import ConfigError, load_config

if TYPE_CHECKING:
    from channel.gateway.node import GatewayNode

NODE_KEY: web.AppKey[Any] = web.AppKey("node")


async def metrics(request: web.Request) -> web.Response:
    node: GatewayNode = request.app[NODE_KEY]
    body = generate_latest(node.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    node: GatewayNode = request.app[NODE_KEY]
    return web.json_response({"status": "ok", "node": node.node_id})


async def readyz(request: web.Request) -> web.Response:
    node: GatewayNode = request.app[NODE_KEY]
    body = {
        "ready": node.ready,
        "draining": node.draining,
        "connections": len(node.sessions),
        "sessions": len(node.by_device),
    }
    return web.json_response(body, status=200 if node.ready else 503)


async def routes(request: web.Request) -> web.Response:
    node: GatewayNode = request.app[NODE_KEY]
    return web.json_response(node.router.describe())


async def reload(request: web.Request) -> web.Response:
    node: GatewayNode = request.app[NODE_KEY]
    source = node.config.source
    if source == "defaults":
        return web.json_response(
            {"error": "the node runs without a config file; nothing to reload"}, status=409
        )
    try:
        node.reload_routes(load_config(source))
    except (ConfigError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({"reloaded": source, "routes": node.router.describe()})


async def device(request: web.Request) -> web.Response:
    node: GatewayNode = request.app[NODE_KEY]
    device_id = request.match_info["device_id"]
    session = node.by_device.get(device_id)
    if session is None or session.auth is None:
        return web.json_response({"device_id": device_id, "online": False}, status=404)
    auth = session.auth
    return web.json_response(
        {
            "device_id": device_id,
            "online": True,
            "node": node.node_id,
            "user_id": auth.device.user_id,
            "app_id": auth.device.app_id,
            "app_version": auth.device.app_version,
            "platform": auth.device.platform,
            "resumed": auth.resumed,
            "in_flight": session.in_flight,
        }
    )


async def start_admin(node: GatewayNode) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app[NODE_KEY] = node
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/routes", routes)
    app.router.add_post("/admin/reload", reload)
    app.router.add_get("/admin/devices/{device_id}", device)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server = node.config.server
    site = web.TCPSite(runner, server.admin_host, server.admin_port, reuse_port=None)
    await site.start()
    port = runner.addresses[0][1]
    return runner, int(port)


async def stop_admin(runner: object) -> None:
    assert isinstance(runner, web.AppRunner)
    await runner.cleanup()
