"""Start real gateway nodes (and real HTTP upstreams) inside a test, on free ports.

``async with gateway(tmp_path, rpc=...) as gw:`` gives a started ``GatewayNode``
on 127.0.0.1 port 0 with a dev CA under ``tmp_path``, plus helpers to mint
device tokens. Everything is real: TLS 1.3, the wire core, aiohttp upstreams.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from channel.api.keys import ensure_dev_api_key
from channel.config import GatewayConfig, load_config
from channel.gateway.node import GatewayNode
from channel.security.tokens import DeviceClaims, TokenSigner, load_private_key


@dataclass
class RunningGateway:
    node: GatewayNode
    port: int
    admin_port: int
    ca_cert: Path
    signer: TokenSigner
    api_port: int = 0
    #: The node's dev API key (every scope, admin too; "" when [api] keys are set).
    api_key: str = ""
    #: MQTT over TLS, and plain TCP (0 when off).
    mqtt_port: int = 0
    mqtt_tcp_port: int = 0

    def token(
        self,
        device_id: str,
        *,
        user_id: str = "u1",
        app_id: str = "demo",
        ttl_s: int = 3600,
        scopes: tuple[str, ...] = (),
        now: float | None = None,
    ) -> bytes:
        issued = int(time.time() if now is None else now)
        claims = DeviceClaims(
            device_id=device_id,
            user_id=user_id,
            app_id=app_id,
            expires_at=issued + ttl_s,
            issued_at=issued,
            scopes=scopes,
        )
        return self.signer.issue(claims)


def gateway_config(state_dir: Path, **sections: dict[str, Any]) -> GatewayConfig:
    overrides: dict[str, dict[str, Any]] = {
        "server": {"port": 0, "admin_port": 0, "state_dir": str(state_dir)},
        "api": {"port": 0},
        "log": {"json": False},
        "mqtt": {"port": 0},
    }
    rpc = sections.pop("rpc", {})
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    # The engine the test runs on (tests/conftest.py sets it; native by default).
    engine = os.environ.get("CHANNEL_SERVER__ENGINE", "native")
    overrides["server"].setdefault("engine", engine)
    config = load_config(None, environ={}, overrides=overrides)
    config.rpc = rpc
    return config


@contextlib.asynccontextmanager
async def gateway(state_dir: Path, **sections: dict[str, Any]) -> AsyncIterator[RunningGateway]:
    config = gateway_config(state_dir, **sections)
    node = GatewayNode(config)
    addresses = await node.start()
    try:
        assert node.ca_cert is not None and node.dev_token_key is not None
        signer = TokenSigner(load_private_key(node.dev_token_key), 1)
        # The node made it (no [api] keys): every scope, the admin port's too.
        api_key = ensure_dev_api_key(config.state_dir)[0] if not config.api.keys else ""
        yield RunningGateway(
            node,
            addresses.device_port,
            addresses.admin_port,
            node.ca_cert,
            signer,
            addresses.api_port,
            api_key,
            addresses.mqtt_port,
            addresses.mqtt_tcp_port,
        )
    finally:
        await node.close()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def http_upstream(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1:0; yields its base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
