"""The OpenAPI document's string patterns accept exactly what the server accepts.

Every schema in ``/openapi.json`` that carries a ``pattern`` is listed in ``CHECKS``
with the server's own check of a value in that place (the request parsers and the
handlers' checks, not a copy of them). Each is walked over code points from every
Unicode plane and over edge cases (empty, too long, reserved names), and the
document (evaluated by ``jsonschema``, as a client would) must agree with the
server on every one. A pattern added to the document without a check here fails
``test_every_pattern_in_the_document_is_walked``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import pytest

from channel.api.limits import check_idempotency_key
from channel.api.openapi import openapi_document
from channel.push.cursors import is_receipt_cursor
from channel.push.requests import (
    ValidationError,
    check_headers,
    check_name,
    parse_push_request,
    parse_reason,
)

DOCUMENT = openapi_document()
LIMITS: dict[str, Any] = {"default_ttl_s": 60, "max_ttl_s": 86_400, "max_body_bytes": 1024}


def _accepts(check: Callable[[], object]) -> bool:
    try:
        check()
    except (ValidationError, ValueError):
        return False
    return True


def _push(**fields: object) -> Callable[[], object]:
    return lambda: parse_push_request({"device_id": "d", "body": "", **fields}, **LIMITS)


#: JSON pointer of a schema with a ``pattern`` → does the server accept this value there?
CHECKS: dict[str, Callable[[str], bool]] = {
    "/components/schemas/Id": lambda v: _accepts(lambda: check_name("id", v)),
    "/components/schemas/PushRequest/properties/topic": lambda v: _accepts(
        lambda: parse_push_request({"topic": v, "body": ""}, **LIMITS)
    ),
    "/components/schemas/PushRequest/properties/collapse_key": lambda v: _accepts(
        _push(collapse_key=v)
    ),
    "/components/schemas/Headers/propertyNames": lambda v: _accepts(
        lambda: check_headers("headers", {v: "x"})
    ),
    "/components/schemas/Headers/additionalProperties": lambda v: _accepts(
        lambda: check_headers("headers", {"h": v})
    ),
    "/components/schemas/KickRequest/properties/reason": lambda v: _accepts(
        lambda: parse_reason({"reason": v})
    ),
    "/components/parameters/IdempotencyKey/schema": check_idempotency_key,
    "/paths/~1v1~1receipts/get/parameters/0/schema": is_receipt_cursor,
}


def _patterned(node: object, pointer: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield pointer
        for key, value in node.items():
            yield from _patterned(value, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _patterned(value, f"{pointer}/{index}")


def _validator(pointer: str) -> jsonschema.Draft202012Validator:
    root = {"components": DOCUMENT["components"], "$ref": "#" + pointer}
    if pointer.startswith("/paths/"):
        root["paths"] = DOCUMENT["paths"]
    return jsonschema.Draft202012Validator(root)


def _code_points() -> Iterator[int]:
    """Every code point below U+3400 (controls, spaces, format characters all live there)
    and around the surrogates and specials, then a stride through every plane."""
    yield from range(0x3400)
    yield from range(0xD7F0, 0xE010)
    yield from range(0xFDD0, 0x10000)
    yield from range(0x3400, 0x110000, 499)
    yield from (0x1F600, 0xE0001, 0xF0000, 0x10FFFF)


def _samples(pointer: str) -> Iterator[str]:
    for point in _code_points():
        char = chr(point)
        yield char
        yield "a" + char + "1"
    yield from ("", "a", "a b", "a\tb", "x" * 64, "x" * 65, "x" * 128, "x" * 129, "x" * 256)
    yield from ("é" * 32, "é" * 64, "é" * 65, "€" * 43, "\U0001f600" * 32, "\U0001f600" * 33)
    yield from ("priority", "collapse-key", "x-channel-user-id", "x-channel", "x-channel-")
    yield from ("0", "$", "0-0", "1-2#3", "1-", "abc", "9" * 19, "9" * 20, "1-2-3", "1#")
    # A final newline: Python's re.search lets ``$`` match before it.
    yield from ("a\n", "1\n", "abc\n", "1-2\n", "\n", "a\nb")


def test_every_pattern_in_the_document_is_walked() -> None:
    found = set(_patterned(DOCUMENT))
    # Operations refer to the Idempotency-Key parameter, never copy it.
    assert found == set(CHECKS), "walk every pattern: add the server's check to CHECKS"


def _schema(pointer: str) -> dict[str, Any]:
    node: Any = DOCUMENT
    for part in pointer.strip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    assert isinstance(node, dict)
    return node


@pytest.mark.parametrize("pointer", sorted(CHECKS))
def test_the_document_and_the_server_agree(pointer: str) -> None:
    validator = _validator(pointer)
    # JSON Schema counts characters; where the server counts UTF-8 bytes the document
    # says so in x-max-utf8-bytes, which a client checks as the server does.
    max_bytes = _schema(pointer).get("x-max-utf8-bytes", float("inf"))

    def document_accepts(value: str) -> bool:
        size = len(value.encode("utf-8", "surrogatepass"))
        return validator.is_valid(value) and size <= max_bytes

    server_accepts = CHECKS[pointer]
    disagree = [
        (value, document)
        for value in _samples(pointer)
        if (document := document_accepts(value)) != server_accepts(value)
    ]
    assert not disagree, [
        f"{value[:20]!r}: document {'accepts' if ok else 'refuses'}, server does not"
        for value, ok in disagree[:10]
    ]
