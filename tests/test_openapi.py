"""The OpenAPI document is valid and describes exactly the routes the app serves."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiohttp import web
from openapi_spec_validator import validate

from channel.api.app import ROUTES, create_app
from channel.api.keys import ApiKeyring
from channel.api.openapi import openapi_document
from channel.config import ApiConfig, GatewayConfig

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        out.add((route.method.upper(), str(path)))
    return out


def document_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def test_document_is_valid_openapi() -> None:
    validate(openapi_document())
    validate(openapi_document(ApiConfig(max_batch=10, max_rpc_timeout_ms=500)))


def test_every_route_is_documented_and_vice_versa() -> None:
    service: Any = SimpleNamespace(config=GatewayConfig())
    app = create_app(service, ApiConfig(), ApiKeyring([]))
    served = app_routes(app)
    assert served == document_routes(openapi_document())
    assert served == {(method, path) for method, path, _, _ in ROUTES}


def test_scopes_match_the_handlers() -> None:
    document = openapi_document()
    for method, path, _, scope in ROUTES:
        operation = document["paths"][path][method.lower()]
        expected = [{"apiKey": [scope]}] if scope else []
        assert operation["security"] == expected, (method, path)


def test_limits_come_from_config() -> None:
    document = openapi_document(ApiConfig(max_batch=7, max_rpc_timeout_ms=1234))
    schemas = document["components"]["schemas"]
    assert schemas["BatchRequest"]["properties"]["messages"]["maxItems"] == 7
    assert schemas["RpcRequest"]["properties"]["timeout_ms"]["maximum"] == 1234
