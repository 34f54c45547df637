"""The OpenAPI 3.1 document of the HTTP push API, served at ``GET /openapi.json``.

Built as a plain dict from the same limits the handlers enforce (``ApiConfig``
and ``channel.push.requests``), so the document cannot drift from them;
``tests/test_openapi.py`` validates it and checks that its paths and methods
are exactly the application's routes, with the same scopes.

Each operation's ``security`` names the API key scope it needs (OpenAPI 3.1
allows role names for non-OAuth schemes).
"""

from __future__ import annotations

from typing import Any

from channel.api import limits as api_limits
from channel.api.errors import API_ERROR_CODES
from channel.config import ApiConfig
from channel.push import requests as limits
from channel.push.cursors import CURSOR_HELP, RECEIPT_CURSOR_PATTERN
from channel.push.model import PushStatus, TargetKind
from channel.security.tokens import MAX_ID_BYTES
from channel.wire import ErrorCode

JSON = "application/json"
#: JSON Schema's maxLength counts characters; where the server counts UTF-8 bytes the
#: schema says how many in this extension keyword too.
MAX_BYTES = "x-max-utf8-bytes"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: str, *, required: bool = True) -> Schema:
    return {"required": required, "content": {JSON: {"schema": _ref(schema)}}}


def _answer(description: str, schema: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    common = ("400", "401", "403", *(str(s) for s in statuses), "408", "429", "503")
    return {status: {"$ref": f"#/components/responses/E{status}"} for status in common}


def _path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": _ref("Id"),
    }


_IDEMPOTENCY_KEY_PARAMETER: Schema = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe: the first answer for this key (per API key and route) is "
        "stored and returned again, with `Idempotent-Replayed: true`. While the first "
        "request is still running a retry gets 409 CONFLICT with Retry-After; if the node "
        "running it dies, the key is free again within [api] idempotency_lease_s (10 s)."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": api_limits.MAX_IDEMPOTENCY_KEY_CHARS,
        "pattern": api_limits.IDEMPOTENCY_KEY_PATTERN,
    },
}
_IDEMPOTENCY_KEY: Schema = {"$ref": "#/components/parameters/IdempotencyKey"}


def _operation(
    operation_id: str,
    scope: str,
    summary: str,
    description: str,
    responses: dict[str, Schema],
    *,
    parameters: list[Schema] | None = None,
    request_body: Schema | None = None,
    tag: str = "push",
) -> Schema:
    op: Schema = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "description": description,
        "security": [{"apiKey": [scope]}],
        "responses": responses,
    }
    if parameters:
        op["parameters"] = parameters
    if request_body is not None:
        op["requestBody"] = request_body
    return op


def _schemas(config: ApiConfig) -> dict[str, Schema]:
    headers: Schema = {
        "type": "object",
        "description": (
            f"Application headers: at most {limits.MAX_HEADERS}, lowercase names "
            "[a-z0-9-], text values without control characters. `collapse-key`, "
            "`priority` and `x-channel-*` are reserved."
        ),
        "maxProperties": limits.MAX_HEADERS,
        "propertyNames": {
            "pattern": limits.HEADER_NAME_PATTERN,
            "maxLength": limits.MAX_HEADER_NAME_BYTES,
        },
        "additionalProperties": {
            "type": "string",
            "pattern": limits.HEADER_VALUE_PATTERN,
            "maxLength": limits.MAX_HEADER_VALUE_BYTES,
            MAX_BYTES: limits.MAX_HEADER_VALUE_BYTES,
        },
    }
    error_codes = sorted({*API_ERROR_CODES, *(code.name for code in ErrorCode if code)})
    targets = ("device_id", "device_ids", "user_id", "topic", "broadcast")
    statuses = [s.value for s in PushStatus]
    presence: Schema = {
        "type": "object",
        "required": ["device_id", "online", "node", "user_id", "since_s"],
        "properties": {
            "device_id": {"type": "string"},
            "online": {"const": True},
            "node": {"type": "string", "description": "Id of the gateway node it is connected to"},
            "user_id": {"type": "string"},
            "since_s": {"type": "integer", "description": "Connected since (unix seconds)"},
        },
    }
    return {
        "Id": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_BYTES,
            MAX_BYTES: MAX_ID_BYTES,
            "pattern": limits.ID_PATTERN,
            "description": (
                f"1..{MAX_ID_BYTES} UTF-8 bytes ({MAX_BYTES}); no control characters, "
                "whitespace, separators or invisible format characters (soft hyphen, "
                "zero-width and bidi marks, BOM)"
            ),
        },
        "Headers": headers,
        "PushRequest": {
            "type": "object",
            "description": (
                "One push: exactly one target (`device_id`, `device_ids`, `user_id`, "
                "`topic`, `broadcast`) and exactly one of `body` / `body_base64`."
            ),
            "additionalProperties": False,
            "allOf": [
                {"oneOf": [{"required": [t]} for t in targets]},
                {"oneOf": [{"required": ["body"]}, {"required": ["body_base64"]}]},
            ],
            "properties": {
                "device_id": _ref("Id"),
                "device_ids": {
                    "type": "array",
                    "items": _ref("Id"),
                    "minItems": 1,
                    "maxItems": limits.MAX_DEVICE_IDS,
                    "description": "Several devices (duplicates are sent once)",
                },
                "user_id": {
                    "allOf": [_ref("Id")],
                    "description": (
                        "Every device the user connected from within "
                        "`push.user_devices_ttl_s` (30 days; the newest "
                        "`push.user_devices_cap`): online ones now, offline ones from "
                        "their queue when they connect (ttl 0: online ones only). A "
                        "device that has signed in as another user since never gets it"
                    ),
                },
                "topic": {
                    "type": "string",
                    "pattern": limits.TOPIC_PATTERN,
                    "description": "Devices subscribed to the topic (online now)",
                },
                "broadcast": {"const": True, "description": "Every device online now"},
                "body": {"type": "string", "description": "The body as UTF-8 text"},
                "body_base64": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "description": "The body as bytes (standard or URL-safe base64)",
                },
                "headers": _ref("Headers"),
                "ttl_s": {
                    "type": "integer",
                    "minimum": 0,
                    "description": (
                        "Keep an undelivered push this long (default from [push] "
                        "default_ttl_s, at most max_ttl_s); 0: only devices online now"
                    ),
                },
                "collapse_key": {
                    "type": "string",
                    "maxLength": limits.MAX_COLLAPSE_KEY_BYTES,
                    MAX_BYTES: limits.MAX_COLLAPSE_KEY_BYTES,
                    "pattern": limits.TEXT_PATTERN,
                    "description": "A newer push with this key replaces an undelivered older one",
                },
                "priority": {"enum": ["normal", "high"], "default": "normal"},
            },
        },
        "BatchRequest": {
            "type": "object",
            "required": ["messages"],
            "additionalProperties": False,
            "properties": {
                "messages": {
                    "type": "array",
                    "maxItems": config.max_batch,
                    "items": _ref("PushRequest"),
                }
            },
        },
        "AcceptResult": {
            "type": "object",
            "required": ["message_id", "status", "target"],
            "properties": {
                "message_id": {"type": "string"},
                "status": {"const": "accepted"},
                "target": {"enum": [k.value for k in TargetKind]},
                "queued": {
                    "type": "integer",
                    "description": "Devices it was queued for (device and user targets)",
                },
                "online": {"type": "integer", "description": "Of those, online now"},
                "expired": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Devices it expired for at once (ttl 0, offline)",
                },
            },
        },
        "BatchResult": {
            "type": "object",
            "required": ["results"],
            "properties": {
                "results": {
                    "type": "array",
                    "description": "One per message, in order: accepted, or why not",
                    "items": {"anyOf": [_ref("AcceptResult"), _ref("Error")]},
                }
            },
        },
        "MessageStatus": {
            "type": "object",
            "required": ["message_id", "target", "accepted_at_ms", "expires_at_ms"],
            "properties": {
                "message_id": {"type": "string"},
                "target": {"enum": [k.value for k in TargetKind]},
                "accepted_at_ms": {"type": "integer"},
                "expires_at_ms": {"type": "integer"},
                "status": {"enum": statuses, "description": "Overall (device and user targets)"},
                "devices": {
                    "type": "object",
                    "additionalProperties": {"enum": statuses},
                    "description": "Status per device (device and user targets)",
                },
                "delivered_count": {
                    "type": "integer",
                    "description": "Devices that acknowledged it (topic and broadcast)",
                },
            },
        },
        "RevokeResult": {
            "type": "object",
            "required": ["message_id", "revoked", "already_final"],
            "properties": {
                "message_id": {"type": "string"},
                "revoked": {"type": "array", "items": {"type": "string"}},
                "already_final": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Devices it was already delivered, expired or revoked for",
                },
            },
        },
        "Presence": presence,
        "UserDevices": {
            "type": "object",
            "required": ["user_id", "devices"],
            "properties": {
                "user_id": {"type": "string"},
                "devices": {"type": "array", "items": _ref("Presence")},
            },
        },
        "KickRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "reason": {
                    "type": "string",
                    "maxLength": limits.MAX_REASON_CHARS,
                    "pattern": limits.TEXT_PATTERN,
                },
            },
        },
        "KickResult": {
            "type": "object",
            "required": ["device_id", "kicked"],
            "properties": {"device_id": {"type": "string"}, "kicked": {"const": True}},
        },
        "RpcRequest": {
            "type": "object",
            "required": ["op"],
            "additionalProperties": False,
            "not": {"required": ["body", "body_base64"]},
            "properties": {
                "op": {"allOf": [_ref("Id")], "description": "The operation the device handles"},
                "body": {"type": "string"},
                "body_base64": {"type": "string", "contentEncoding": "base64"},
                "headers": _ref("Headers"),
                "timeout_ms": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": config.max_rpc_timeout_ms,
                    "default": min(api_limits.DEFAULT_RPC_TIMEOUT_MS, config.max_rpc_timeout_ms),
                },
            },
        },
        "RpcResult": {
            "type": "object",
            "required": ["status", "headers"],
            "properties": {
                "status": {"const": 0},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "body": {"type": "string", "description": "The answer, when it is UTF-8 text"},
                "body_base64": {"type": "string", "description": "The answer, otherwise"},
            },
        },
        "Receipt": {
            "type": "object",
            "required": ["message_id", "status", "at_ms"],
            "properties": {
                "message_id": {"type": "string"},
                "status": {"enum": statuses},
                "at_ms": {"type": "integer"},
                "device_id": {"type": "string"},
                "reason": {
                    "type": "string",
                    "description": "Why (expired, revoked, failed): ttl, collapsed, queue_full...",
                },
            },
        },
        "ReceiptPage": {
            "type": "object",
            "required": ["receipts", "cursor"],
            "properties": {
                "receipts": {"type": "array", "items": _ref("Receipt")},
                "cursor": {
                    "type": "string",
                    "description": "Pass as `after` to get the next receipts",
                },
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "description": "An error code name: " + ", ".join(error_codes),
                        },
                        "message": {"type": "string", "description": "What to do about it"},
                        "field": {
                            "type": "string",
                            "description": "JSON path of the field at fault",
                        },
                    },
                },
            },
        },
    }


_ERROR_RESPONSES = {
    "400": "Invalid request: bad JSON or a field (named in error.field) is wrong",
    "401": "No API key, or an unknown one (AUTH_REQUIRED, AUTH_INVALID)",
    "403": "The API key lacks the scope this route needs (FORBIDDEN)",
    "404": "Not found (NOT_FOUND)",
    "409": "A request with this Idempotency-Key is still running (CONFLICT)",
    "413": "The request body is larger than [api] max_body_bytes (BODY_TOO_LARGE)",
    "502": "The device answered with an error (its ErrorCode name)",
    "408": (
        "The request's headers or body did not arrive within [http] header_timeout_s / "
        "body_timeout_s (TIMEOUT); the connection is closed"
    ),
    "429": (
        "Too many connections from this address ([http] max_connections_per_ip; "
        "RATE_LIMITED); the connection is closed"
    ),
    "503": (
        "The push store (Redis) is unreachable, or the server is at [http] max_connections "
        "(UNAVAILABLE); retry after Retry-After"
    ),
    "504": "The device did not answer within timeout_ms (TIMEOUT)",
}


def openapi_document(config: ApiConfig | None = None) -> dict[str, Any]:
    """The whole document for a node with ``config`` (defaults when None)."""
    config = config or ApiConfig()
    message_id = _path_param("message_id", "A message id from an accept result")
    device_id = _path_param("device_id", "A device id")
    push_limits = (
        f"Bodies up to {config.max_body_bytes} bytes per request; at most "
        f"{config.max_batch} pushes per batch."
    )
    paths: dict[str, Schema] = {
        "/v1/push": {
            "post": _operation(
                "push",
                "push",
                "Send one push",
                "Queue a push for a device, several devices, a user's devices, a topic's "
                "subscribers or every device online. The answer comes once it is queued "
                "(202); delivery is reported by receipts and GET /v1/messages/{id}. " + push_limits,
                {"202": _answer("Accepted", "AcceptResult"), **_errors(409, 413)},
                parameters=[_IDEMPOTENCY_KEY],
                request_body=_body("PushRequest"),
            )
        },
        "/v1/push/batch": {
            "post": _operation(
                "pushBatch",
                "push",
                "Send many pushes in one request",
                "Each message is validated on its own: an invalid one gets an error in its "
                "slot of `results` and does not stop the others. " + push_limits,
                {"202": _answer("One result per message", "BatchResult"), **_errors(409, 413)},
                parameters=[_IDEMPOTENCY_KEY],
                request_body=_body("BatchRequest"),
            )
        },
        "/v1/messages/{message_id}": {
            "get": _operation(
                "messageStatus",
                "status",
                "Where a message stands",
                "Per-device statuses (device and user targets) or the delivered count "
                "(topics, broadcast). Kept for [push] status_retention_s past its expiry; "
                "a device or user push's, [push] final_status_retention_s (1 hour) after "
                "its last device reached a final status, if sooner. 404 after that.",
                {"200": _answer("The message's status", "MessageStatus"), **_errors(404)},
                parameters=[message_id],
                tag="status",
            )
        },
        "/v1/messages/{message_id}/revoke": {
            "post": _operation(
                "revokeMessage",
                "revoke",
                "Revoke a message not yet delivered",
                "Drops the message from the queue of every device that has not received "
                "it yet; each gets a `revoked` receipt.",
                {"200": _answer("What was revoked", "RevokeResult"), **_errors(404)},
                parameters=[message_id],
                tag="status",
            )
        },
        "/v1/devices/{device_id}": {
            "get": _operation(
                "devicePresence",
                "presence",
                "Is a device online, and where",
                "404 (with `online: false`) when the device is not connected to any node.",
                {"200": _answer("Online", "Presence"), **_errors(404)},
                parameters=[device_id],
                tag="devices",
            )
        },
        "/v1/users/{user_id}/devices": {
            "get": _operation(
                "userDevices",
                "presence",
                "A user's online devices",
                "Every device of the user connected to a live node (possibly none).",
                {"200": _answer("The user's online devices", "UserDevices"), **_errors()},
                parameters=[_path_param("user_id", "A user id")],
                tag="devices",
            )
        },
        "/v1/devices/{device_id}/kick": {
            "post": _operation(
                "kickDevice",
                "kick",
                "Disconnect a device",
                "The device's node closes its connection with GOAWAY KICKED and the reason; "
                "the SDK does not reconnect by itself after a kick.",
                {"200": _answer("Kicked", "KickResult"), **_errors(404, 413)},
                parameters=[device_id],
                request_body=_body("KickRequest", required=False),
                tag="devices",
            )
        },
        "/v1/devices/{device_id}/rpc": {
            "post": _operation(
                "callDevice",
                "rpc",
                "Call a method on a device and wait for its answer",
                "Sends a request with operation `op` to the device over its channel and "
                "waits up to `timeout_ms` (at most [api] max_rpc_timeout_ms) for the "
                "answer. 404 when the device is not online (or has no handler for `op`), "
                "504 on timeout, 502 for any other error the device answers.",
                {
                    "200": _answer("The device's answer", "RpcResult"),
                    **_errors(404, 413, 502, 504),
                },
                parameters=[device_id],
                request_body=_body("RpcRequest"),
                tag="devices",
            )
        },
        "/v1/receipts": {
            "get": _operation(
                "receipts",
                "status",
                "Read delivery receipts (long poll)",
                "Receipts after cursor `after` (empty: from now on; `0`: the oldest kept), "
                "waiting up to `wait_ms` for the first. Pass the returned `cursor` as "
                "`after` next time.",
                {"200": _answer("Receipts and the next cursor", "ReceiptPage"), **_errors()},
                parameters=[
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The cursor of the previous page; " + CURSOR_HELP,
                        "schema": {
                            "type": "string",
                            "pattern": RECEIPT_CURSOR_PATTERN,
                            "default": "",
                        },
                    },
                    {
                        "name": "count",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": api_limits.MAX_RECEIPT_COUNT,
                            "default": api_limits.DEFAULT_RECEIPT_COUNT,
                        },
                    },
                    {
                        "name": "wait_ms",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": api_limits.MAX_RECEIPT_WAIT_MS,
                            "default": 0,
                        },
                    },
                ],
                tag="status",
            )
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "tags": ["meta"],
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {"description": "The OpenAPI document", "content": {JSON: {}}}
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Channel push API",
            "version": "1",
            "description": (
                "Send pushes to devices, users, topics or everyone online; follow their "
                "delivery; look devices up; kick them; call methods on them. Authenticate "
                "with `Authorization: Bearer ck_<id>_<secret>` (make keys with "
                "`channel apikey new`). Every error is "
                '`{"error": {"code", "message", "field"}}`.'
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "tags": [
            {"name": "push", "description": "Sending pushes"},
            {"name": "status", "description": "Message statuses, revocation, receipts"},
            {"name": "devices", "description": "Presence, kick, device RPC"},
            {"name": "meta", "description": "About the API"},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key ck_<id>_<secret>; scopes: push, status, "
                    "revoke, presence, kick, rpc, * (all)",
                }
            },
            "schemas": _schemas(config),
            "parameters": {"IdempotencyKey": _IDEMPOTENCY_KEY_PARAMETER},
            "responses": {
                f"E{status}": _answer(description, "Error")
                for status, description in _ERROR_RESPONSES.items()
            },
        },
    }
