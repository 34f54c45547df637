"""The API's one error shape: ``{"error": {"code", "message", "field"?}}``.

Codes are the wire's ``ErrorCode`` names where one fits (``BAD_REQUEST``,
``AUTH_REQUIRED``, ``AUTH_INVALID``, ``FORBIDDEN``, ``NOT_FOUND``,
``BODY_TOO_LARGE``, ``TIMEOUT``, ``UNAVAILABLE``, ``INTERNAL_ERROR`` ...), so a
backend sees the same vocabulary from the HTTP API, the Redis API and a
device; ``METHOD_NOT_ALLOWED`` and ``CONFLICT`` are the HTTP-only additions.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from channel import fastjson

#: Every ``error.code`` the HTTP API itself produces (device RPC errors add the
#: device's own ``ErrorCode`` name).
API_ERROR_CODES = (
    "BAD_REQUEST",
    "AUTH_REQUIRED",
    "AUTH_INVALID",
    "FORBIDDEN",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "CONFLICT",
    "BODY_TOO_LARGE",
    "TIMEOUT",
    "RATE_LIMITED",
    "INTERNAL_ERROR",
    "UNAVAILABLE",
)


def json_response(
    status: int, body: object, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=fastjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def error_json(code: str, message: str, field: str | None = None) -> dict[str, object]:
    error: dict[str, object] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


class ApiError(Exception):
    """Raised by a handler; the error middleware answers with its JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = extra
        self.headers = headers
        #: Close the connection after the answer (the request's body was not read).
        self.close = close

    def response(self) -> web.Response:
        body = error_json(self.code, self.message, self.field)
        if self.extra:
            body.update(self.extra)
        response = json_response(self.status, body, self.headers)
        if self.close:
            response.force_close()
        return response


def bad_request(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "BAD_REQUEST", message, field)


def not_found(message: str, **extra: object) -> ApiError:
    return ApiError(404, "NOT_FOUND", message, extra=extra or None)
