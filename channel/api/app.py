"""The HTTP push API: an aiohttp application in front of ``PushService``.

Routes (JSON in and out; ``/openapi.json`` describes them all)::

    POST /v1/push                         push          202 accept result
    POST /v1/push/batch                   push          202 {"results": [...]}
    GET  /v1/messages/{message_id}        status        200 / 404
    POST /v1/messages/{message_id}/revoke revoke        200 / 404
    GET  /v1/devices/{device_id}          presence      200 / 404
    GET  /v1/users/{user_id}/devices      presence      200
    POST /v1/devices/{device_id}/kick     kick          200 / 404
    POST /v1/devices/{device_id}/rpc      rpc           200 / 404 / 502 / 504
    GET  /v1/receipts                     status        200 (long poll)
    GET  /openapi.json                    (no key)

Every request but ``/openapi.json`` carries ``Authorization: Bearer <key>``
(``channel.api.keys``). Every 4xx/5xx answer is
``{"error": {"code", "message", "field"?}}`` (``channel.api.errors``).

The batch route is the hot path (tens of thousands of pushes per second on
one core): the body is decoded once with ``json.loads``, each item validated
by plain code, and the whole batch handed to one ``PushService.accept`` call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from channel import fastjson
from channel.api.errors import ApiError, bad_request, error_json, json_response, not_found
from channel.api.keys import ApiKey, ApiKeyError, ApiKeyring, AuthError, load_keyring
from channel.api.limits import (
    DEFAULT_RECEIPT_COUNT,
    DEFAULT_RPC_TIMEOUT_MS,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_PUSH_BODY_BYTES,
    MAX_RECEIPT_COUNT,
    MAX_RECEIPT_WAIT_MS,
    check_idempotency_key,
)
from channel.api.openapi import openapi_document
from channel.config import ApiConfig, ConfigError
from channel.httpserver import (
    ConnectionGate,
    GuardedSite,
    guard_middleware,
    read_body,
    runner_options,
)
from channel.logs import fields
from channel.push.cursors import CURSOR_HELP, is_receipt_cursor
from channel.push.model import AcceptResult, Presence, PushRequest, Receipt
from channel.push.requests import (
    ValidationError,
    check_name,
    parse_device_call,
    parse_plain_device_push,
    parse_push_request,
    parse_reason,
)
from channel.push.stores import IdempotencyStore, is_running
from channel.wire import ErrorCode
from channel.wire.errors import code_name

if TYPE_CHECKING:
    from channel.push.service import PushService

log = logging.getLogger("channel.api")

SHUTDOWN_GRACE_S = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ApiState:
    service: PushService
    config: ApiConfig
    keyring: ApiKeyring
    default_ttl_s: int
    max_ttl_s: int
    push_body_bytes: int
    body_timeout_s: float
    openapi_body: bytes
    #: Set when the API shuts down: receipt long polls answer at once.
    closing: asyncio.Event


STATE_KEY: web.AppKey[ApiState] = web.AppKey("api_state", ApiState)


# ------------------------------------------------------------------ plumbing


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "BODY_TOO_LARGE"}.get(
            exc.status, "BAD_REQUEST" if exc.status < 500 else "INTERNAL_ERROR"
        )
        message = exc.text if exc.text and exc.status != 404 else exc.reason
        if exc.status == 404:
            message = f"no route {request.method} {request.path} (see /openapi.json)"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_response(exc.status, error_json(code, message), headers)
    except ConnectionResetError:
        raise  # the caller went away: nobody to answer
    except (RedisConnectionError, RedisTimeoutError) as exc:
        log.warning(
            "API request failed: push store unreachable",
            extra=fields(method=request.method, path=request.path, error=str(exc)),
        )
        return json_response(
            503,
            error_json("UNAVAILABLE", "the push store is unreachable; retry shortly"),
            {"Retry-After": "1"},
        )
    except Exception:
        log.exception("API request failed", extra=fields(method=request.method, path=request.path))
        return json_response(500, error_json("INTERNAL_ERROR", "the gateway failed; see its log"))


def _state(request: web.Request) -> ApiState:
    return request.app[STATE_KEY]


def _authorize(request: web.Request, scope: str) -> ApiKey:
    try:
        key = _state(request).keyring.authenticate(request.headers.get("Authorization"))
    except AuthError as exc:
        raise ApiError(
            401, exc.code, exc.message, headers={"WWW-Authenticate": 'Bearer realm="channel"'}
        ) from None
    if not key.allows(scope):
        raise ApiError(
            403, "FORBIDDEN", f"API key {key.key_id} lacks scope {scope!r} for this route"
        )
    return key


async def _read_json(request: web.Request, *, optional: bool = False) -> object:
    limit = _state(request).config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    timeout_s = _state(request).body_timeout_s
    try:
        raw = await read_body(request, timeout_s)
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        raise ApiError(
            408,
            "TIMEOUT",
            f"the request body did not arrive within {timeout_s:g} s ([http] body_timeout_s)",
            close=True,
        ) from None
    if not raw.strip():
        if optional:
            return None
        raise bad_request("the request needs a JSON body")
    try:
        return fastjson.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"the body is not valid JSON ({str(exc)[:200]})") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "BODY_TOO_LARGE", f"the request body is larger than {limit} bytes (max_body_bytes)"
    )


def _path_id(request: web.Request, name: str, what: str) -> str:
    value = request.match_info[name]
    try:
        return check_name(name, value, what)
    except ValidationError as exc:
        raise bad_request(exc.message, exc.field) from None


def _invalid(exc: ValidationError) -> ApiError:
    return bad_request(exc.message, exc.field)


async def _idempotent(
    request: web.Request, key: ApiKey, route: str, run: Callable[[], Awaitable[web.Response]]
) -> web.Response:
    """Run ``run`` once per ``Idempotency-Key``: a retry gets the first answer back."""
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is None:
        return await run()
    if not check_idempotency_key(idempotency_key):
        raise bad_request(
            f"must be 1..{MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters",
            "Idempotency-Key",
        )
    state = _state(request)
    store = state.service.idempotency
    config = state.config
    lease_ms = round(config.idempotency_lease_s * 1000)
    # Scoped by API key and route: two callers never see each other's answers.
    store_key = f"api:{key.key_id}:{route}:{idempotency_key}"
    owner = secrets.token_hex(8).encode("ascii")
    stored = await store.claim(store_key, owner, lease_ms)
    if stored is not None:
        if is_running(stored):
            raise ApiError(
                409,
                "CONFLICT",
                "a request with this Idempotency-Key is still running; retry later",
                "Idempotency-Key",
                headers={"Retry-After": str(max(1, math.ceil(config.idempotency_lease_s)))},
            )
        status_text, _, body = stored.partition(b" ")
        return web.Response(
            status=int(status_text),
            body=body,
            content_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    renewing = asyncio.ensure_future(_renew_lease(store, store_key, owner, lease_ms))
    try:
        response = await run()
    except BaseException:
        renewing.cancel()
        await store.release(store_key, owner)
        raise
    renewing.cancel()
    assert isinstance(response.body, bytes)
    if 200 <= response.status < 300:
        await store.complete(
            store_key, b"%d %b" % (response.status, response.body), config.idempotency_ttl_s
        )
    else:
        await store.release(store_key, owner)
    return response


async def _renew_lease(store: IdempotencyStore, key: str, owner: bytes, lease_ms: int) -> None:
    """Keep a running request's placeholder alive: renewed every third of its lease, so
    two renewals may fail (a Redis hiccup) before it lapses."""
    while True:
        await asyncio.sleep(lease_ms / 3000)
        try:
            if not await store.renew(key, owner, lease_ms):
                log.warning(
                    "idempotency lease lost while the request ran: a retry may run it again",
                    extra=fields(key=key),
                )
                return
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("idempotency lease renewal failed", extra=fields(key=key, error=str(exc)))


def _presence_json(service: PushService, presence: Presence) -> dict[str, object]:
    return {
        "device_id": presence.device_id,
        "online": True,
        "node": service.node_name(presence.node_no),
        "user_id": presence.user_id,
        "since_s": presence.since_s,
    }


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"must be a whole number {low}..{high}", name) from None
    if not low <= value <= high:
        raise bad_request(f"must be {low}..{high}", name)
    return value


# ------------------------------------------------------------------ handlers


async def push(request: web.Request) -> web.Response:
    key = _authorize(request, "push")
    state = _state(request)
    obj = await _read_json(request)
    try:
        push_request = parse_push_request(
            obj,
            default_ttl_s=state.default_ttl_s,
            max_ttl_s=state.max_ttl_s,
            max_body_bytes=state.push_body_bytes,
        )
    except ValidationError as exc:
        raise _invalid(exc) from None

    async def run() -> web.Response:
        (result,) = await state.service.accept([push_request])
        return json_response(202, result.to_json())

    return await _idempotent(request, key, "push", run)


async def push_batch(request: web.Request) -> web.Response:
    key = _authorize(request, "push")
    state = _state(request)
    obj = await _read_json(request)
    if not isinstance(obj, dict) or "messages" not in obj:
        raise bad_request('the body must be {"messages": [push, ...]}', "messages")
    for name in obj:
        if name != "messages":
            raise bad_request("unknown field (known: messages)", str(name)[:64])
    messages = obj["messages"]
    limit = state.config.max_batch
    if not isinstance(messages, list):
        raise bad_request("must be an array of push requests", "messages")
    if len(messages) > limit:
        raise bad_request(
            f"has {len(messages)} push requests, more than max_batch {limit}; split it",
            "messages",
        )
    default_ttl_s, max_ttl_s, body_bytes = (
        state.default_ttl_s,
        state.max_ttl_s,
        state.push_body_bytes,
    )
    valid, slots = parse_batch(messages, default_ttl_s, max_ttl_s, body_bytes)

    async def run() -> web.Response:
        accepted: list[AcceptResult] = await state.service.accept(valid) if valid else []
        return web.Response(
            status=202, body=batch_answer(slots, accepted), content_type="application/json"
        )

    return await _idempotent(request, key, "batch", run)


def batch_answer(slots: list[dict[str, object] | None], accepted: list[AcceptResult]) -> bytes:
    """The 202's body: ``{"results": [...]}``, per item its error (a slot) or the next
    accepted push's result. (Writing the usual result as an f-string instead of a dict
    for orjson measured no faster.)"""
    done = iter(accepted)
    return fastjson.dumps(
        {"results": [slot if slot is not None else next(done).to_json() for slot in slots]}
    )


def parse_batch(
    messages: list[object], default_ttl_s: int, max_ttl_s: int, body_bytes: int
) -> tuple[list[PushRequest], list[dict[str, object] | None]]:
    """A batch's valid requests, and per item None (valid) or its error."""
    valid: list[PushRequest] = []
    slots: list[dict[str, object] | None] = []
    plain = parse_plain_device_push
    for index, item in enumerate(messages):
        # The usual push first, without the full parser's two calls around it.
        parsed: PushRequest | dict[str, object] | None = None
        if type(item) is dict and 2 <= len(item) <= 3:
            parsed = plain(item, default_ttl_s, max_ttl_s, body_bytes)
        if parsed is None:
            parsed = _batch_item(item, index, default_ttl_s, max_ttl_s, body_bytes)
        if isinstance(parsed, PushRequest):
            valid.append(parsed)
            slots.append(None)
        else:
            slots.append(parsed)
    return valid, slots


def _batch_item(
    item: object, index: int, default_ttl_s: int, max_ttl_s: int, body_bytes: int
) -> PushRequest | dict[str, object]:
    """One item of a batch: the request, or its error naming ``messages[index]``. The
    path is put together only for an item that fails (parsed again with it): on every
    field of every item it cost more than a rare bad item's second parse."""
    try:
        return parse_push_request(
            item, default_ttl_s=default_ttl_s, max_ttl_s=max_ttl_s, max_body_bytes=body_bytes
        )
    except ValidationError:
        pass
    try:
        return parse_push_request(
            item,
            default_ttl_s=default_ttl_s,
            max_ttl_s=max_ttl_s,
            max_body_bytes=body_bytes,
            where=f"messages[{index}].",
        )
    except ValidationError as exc:
        return error_json("BAD_REQUEST", exc.message, exc.field)


async def message_status(request: web.Request) -> web.Response:
    _authorize(request, "status")
    message_id = _path_id(request, "message_id", "a message id")
    status = await _state(request).service.status(message_id)
    if status is None:
        raise not_found(f"no message {message_id} (unknown, or past its retention)")
    return json_response(200, status)


async def revoke(request: web.Request) -> web.Response:
    _authorize(request, "revoke")
    message_id = _path_id(request, "message_id", "a message id")
    summary = await _state(request).service.revoke(message_id)
    if summary is None:
        raise not_found(f"no message {message_id} (unknown, or past its retention)")
    return json_response(200, summary)


async def device(request: web.Request) -> web.Response:
    _authorize(request, "presence")
    device_id = _path_id(request, "device_id", "a device id")
    service = _state(request).service
    presence = await service.device_presence(device_id)
    if presence is None:
        raise not_found(f"device {device_id} is not online", device_id=device_id, online=False)
    return json_response(200, _presence_json(service, presence))


async def user_devices(request: web.Request) -> web.Response:
    _authorize(request, "presence")
    user_id = _path_id(request, "user_id", "a user id")
    service = _state(request).service
    devices = await service.user_devices(user_id)
    return json_response(
        200, {"user_id": user_id, "devices": [_presence_json(service, p) for p in devices]}
    )


async def kick(request: web.Request) -> web.Response:
    _authorize(request, "kick")
    device_id = _path_id(request, "device_id", "a device id")
    try:
        reason = parse_reason(await _read_json(request, optional=True))
    except ValidationError as exc:
        raise _invalid(exc) from None
    if not await _state(request).service.kick(device_id, reason):
        raise not_found(f"device {device_id} is not online", device_id=device_id, online=False)
    return json_response(200, {"device_id": device_id, "kicked": True})


#: Device call outcomes other than success, as HTTP statuses (anything else: 502).
_RPC_HTTP_STATUS: dict[int, int] = {ErrorCode.TIMEOUT: 504, ErrorCode.NOT_FOUND: 404}


async def device_rpc(request: web.Request) -> web.Response:
    _authorize(request, "rpc")
    device_id = _path_id(request, "device_id", "a device id")
    state = _state(request)
    try:
        call = parse_device_call(
            await _read_json(request),
            default_timeout_ms=DEFAULT_RPC_TIMEOUT_MS,
            max_timeout_ms=state.config.max_rpc_timeout_ms,
            max_body_bytes=state.push_body_bytes,
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    response = await state.service.call_device(
        device_id, call.op, call.body, call.headers, call.timeout_ms / 1000
    )
    if response.status != 0:
        name = code_name(response.status)
        extra: dict[str, object] = {"status": response.status}
        headers: dict[str, str] = {}
        if response.retry_after_ms > 0:
            extra["retry_after_ms"] = response.retry_after_ms
            headers["Retry-After"] = str(math.ceil(response.retry_after_ms / 1000))
        raise ApiError(
            _RPC_HTTP_STATUS.get(response.status, 502),
            name,
            response.message or f"the device answered {name}",
            extra=extra,
            headers=headers or None,
        )
    out: dict[str, object] = {"status": 0, "headers": dict(response.headers)}
    try:
        out["body"] = response.body.decode("utf-8")
    except UnicodeDecodeError:
        out["body_base64"] = base64.b64encode(response.body).decode("ascii")
    return json_response(200, out)


async def receipts(request: web.Request) -> web.Response:
    _authorize(request, "status")
    after = request.query.get("after", "")
    if not is_receipt_cursor(after):
        raise bad_request(CURSOR_HELP, "after")
    count = _int_query(request, "count", DEFAULT_RECEIPT_COUNT, 1, MAX_RECEIPT_COUNT)
    wait_ms = _int_query(request, "wait_ms", 0, 0, MAX_RECEIPT_WAIT_MS)
    state = _state(request)
    if wait_ms == 0 or state.closing.is_set():
        found, cursor = await state.service.receipts(after, count, 0)
    else:
        found, cursor = await _long_poll(state, after, count, wait_ms)
    return json_response(200, {"receipts": [r.to_json() for r in found], "cursor": cursor})


async def _long_poll(
    state: ApiState, after: str, count: int, wait_ms: int
) -> tuple[list[Receipt], str]:
    """Wait for receipts, but end with none (same cursor) when the API shuts down:
    a poller then simply asks again, elsewhere, without losing anything."""
    read = asyncio.ensure_future(state.service.receipts(after, count, wait_ms))
    closing = asyncio.ensure_future(state.closing.wait())
    try:
        await asyncio.wait((read, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()
        if not read.done():
            read.cancel()
    if read.cancelled() or not read.done():
        return [], after
    return read.result()


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_state(request).openapi_body, content_type="application/json")


#: (method, path, handler, scope or "" for no key): the app and the OpenAPI test read this.
ROUTES: tuple[tuple[str, str, Handler, str], ...] = (
    ("POST", "/v1/push", push, "push"),
    ("POST", "/v1/push/batch", push_batch, "push"),
    ("GET", "/v1/messages/{message_id}", message_status, "status"),
    ("POST", "/v1/messages/{message_id}/revoke", revoke, "revoke"),
    ("GET", "/v1/devices/{device_id}", device, "presence"),
    ("GET", "/v1/users/{user_id}/devices", user_devices, "presence"),
    ("POST", "/v1/devices/{device_id}/kick", kick, "kick"),
    ("POST", "/v1/devices/{device_id}/rpc", device_rpc, "rpc"),
    ("GET", "/v1/receipts", receipts, "status"),
    ("GET", "/openapi.json", openapi, ""),
)


# ------------------------------------------------------------------ lifecycle


def create_app(service: PushService, config: ApiConfig, keyring: ApiKeyring) -> web.Application:
    """The API application (not started); ``start_api`` serves it."""
    gateway = service.config
    app = web.Application(
        middlewares=[guard_middleware, _json_errors], client_max_size=config.max_body_bytes
    )
    app[STATE_KEY] = ApiState(
        service=service,
        config=config,
        keyring=keyring,
        default_ttl_s=gateway.push.default_ttl_s,
        max_ttl_s=gateway.push.max_ttl_s,
        push_body_bytes=min(MAX_PUSH_BODY_BYTES, config.max_body_bytes),
        body_timeout_s=gateway.http.body_timeout_s,
        openapi_body=json.dumps(openapi_document(config), indent=1).encode("utf-8"),
        closing=asyncio.Event(),
    )
    app.on_shutdown.append(_closing)
    for method, path, handler, _scope in ROUTES:
        if method == "GET":
            app.router.add_get(path, handler, allow_head=False)
        else:
            app.router.add_route(method, path, handler)
    return app


async def _closing(app: web.Application) -> None:
    app[STATE_KEY].closing.set()


def api_keyring(state_dir: Path, config: ApiConfig) -> ApiKeyring:
    """The keys from ``[api] keys``, or the development key when there are none."""
    try:
        return load_keyring(state_dir, config.keys)
    except ApiKeyError as exc:
        raise ConfigError(f"api.keys: {exc}") from None


async def start_api(
    service: PushService, config: ApiConfig, keyring: ApiKeyring
) -> tuple[web.AppRunner, int]:
    """Serve the API on ``config.host:config.port`` (0: any free port); returns the
    runner (for ``stop_api``) and the bound port."""
    app = create_app(service, config, keyring)
    # In-flight requests get a few seconds at shutdown; a receipts long poll is then
    # cut (its cursor is still valid for the retry) rather than holding a drain 30 s.
    http = service.config.http
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S, **runner_options(http)
    )
    await runner.setup()
    server = service.config.server
    # Several workers, or the next process of a rolling restart, share the port.
    reuse_port = server.reuse_port or server.workers > 1 or None
    gate = ConnectionGate(http, "push API")
    site = GuardedSite(runner, config.host, config.port, gate, reuse_port=reuse_port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1])
    log.info("push API listening", extra=fields(host=config.host, port=port))
    return runner, port


async def stop_api(runner: Any) -> None:
    assert isinstance(runner, web.AppRunner)
    await runner.cleanup()
