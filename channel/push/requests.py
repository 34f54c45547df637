"""Push requests as JSON → ``PushRequest``, validated field by field.

Shared by the HTTP API (``POST /v1/push``, ``/v1/push/batch``) and the Redis
stream API, so nothing here knows about HTTP. Every refusal is one
``ValidationError`` naming the field at fault as a JSON path (``ttl_s``,
``headers.x-trace``, ``messages[3].device_id``) and saying what would be
accepted; the parser never raises anything else, whatever JSON it is given.

A push request::

    {"device_id": "d-42",               # exactly one target: device_id,
                                        #   device_ids (1..1000), user_id,
                                        #   topic, or "broadcast": true
     "body": "hello",                   # or "body_base64": "aGVsbG8="
     "headers": {"x-kind": "chat"},     # optional, str -> str
     "ttl_s": 3600,                     # optional, 0 = only devices online now
     "collapse_key": "inbox",           # optional, newer replaces older queued
     "priority": "high"}                # optional, "normal" (default) or "high"

The checks are plain code over the decoded JSON (no schema library): a batch of
a thousand requests is parsed in about a millisecond.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from channel.push.model import Priority, PushRequest, Target, TargetKind
from channel.security.tokens import MAX_ID_BYTES, check_id

#: Most devices one request may name in ``device_ids``.
MAX_DEVICE_IDS = 1_000
MAX_HEADERS = 32
MAX_HEADER_NAME_BYTES = 64
MAX_HEADER_VALUE_BYTES = 4_096
#: RFC 7541 size (name + value + 32 per field) of a push's headers, collapse
#: key and priority included: half of a device's default ``max_header_list_size``.
MAX_HEADER_LIST_SIZE = 8_192
MAX_COLLAPSE_KEY_BYTES = 64
MAX_REASON_CHARS = 256

#: Headers a push may not set itself: they carry the request's own fields
#: (``collapse_key``, ``priority``). ``x-channel-*`` names are reserved for
#: identity the gateway vouches for, as on the RPC path.
RESERVED_HEADERS = frozenset({"collapse-key", "priority"})
RESERVED_HEADER_PREFIX = "x-channel-"

_TARGET_FIELDS = ("device_id", "device_ids", "user_id", "topic", "broadcast")
_OTHER_TARGETS = frozenset(_TARGET_FIELDS[1:])
_DEVICE = "a device id"
_PUSH_FIELDS = frozenset(
    (*_TARGET_FIELDS, "body", "body_base64", "headers", "ttl_s", "collapse_key", "priority")
)
_CALL_FIELDS = frozenset(("op", "body", "body_base64", "headers", "timeout_ms"))
# The character rules below are the OpenAPI document's patterns too (channel/api/openapi.py;
# tests/test_openapi_patterns.py walks them against these checks). Each is written so
# Python's re and ECMA-262 read it alike: it ends with ``$(?!\n)``, the end of the text
# in both (Python's ``$`` alone also matches before a final newline, so a schema check
# with ``re.search`` would pass "abc\n"). Lone surrogates (possible in JSON text) are
# refused everywhere: they have no UTF-8 form.
#: Ids (device, user, message ids, operation names): no control characters (C0, DEL, C1),
#: whitespace or separators, and none of the invisible format characters that make two
#: ids look the same (soft hyphen, zero-width and bidi marks, BOM).
ID_PATTERN = (
    r"^[^\x00-\x20\x7f-\xa0\xad\u1680\u180e\u2000-\u200f\u2028-\u202f"
    r"\u205f-\u206f\u3000\ud800-\udfff\ufeff\ufff9-\ufffb]+$(?!\n)"
)
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,128}$(?!\n)"
#: Lowercase names; ``collapse-key``, ``priority`` and ``x-channel-*`` are reserved.
HEADER_NAME_PATTERN = r"^(?!x-channel-|collapse-key$|priority$)[a-z0-9-]+$(?!\n)"
#: Control characters other than tab: HTTP header values may not carry them,
#: and devices commonly hand push headers on to HTTP-shaped code.
HEADER_VALUE_PATTERN = r"^[^\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]*$(?!\n)"
#: Short texts (collapse keys, kick reasons): no control characters at all.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\ud800-\udfff]*$(?!\n)"

_ID = re.compile(ID_PATTERN)
_HEADER_NAME = re.compile(r"[a-z0-9-]+")
_TOPIC = re.compile(TOPIC_PATTERN)
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_HEADER_VALUE = re.compile(HEADER_VALUE_PATTERN)
_TEXT = re.compile(TEXT_PATTERN)
_PRIORITIES = {"normal": Priority.NORMAL, "high": Priority.HIGH}


class ValidationError(ValueError):
    """A request field is wrong: ``field`` is its JSON path, ``message`` what to do."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class DeviceCall:
    """A validated backend → device call (``POST /v1/devices/{id}/rpc``)."""

    op: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    timeout_ms: int


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _shown(name: object) -> str:
    """A field name safe to put in a message: bounded, printable."""
    text = name if isinstance(name, str) else repr(name)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 64 else text[:61] + "..."


def check_name(field: str, value: object, what: str = "an id") -> str:
    """A device, user or message id: 1..128 UTF-8 bytes of ``ID_PATTERN``."""
    if not isinstance(value, str):
        raise ValidationError(field, f"must be a string ({what}), got {_describe(value)}")
    if not _ID.fullmatch(value):
        if not value:
            raise ValidationError(field, "must not be empty")
        raise ValidationError(
            field,
            f"must be {what} without whitespace, control or invisible format characters",
        )
    # ASCII ids (the usual case) skip the encoding round trip; surrogates are gone.
    if not (value.isascii() and len(value) <= MAX_ID_BYTES):
        try:
            check_id(field, value)
        except ValueError as exc:
            raise ValidationError(field, str(exc).removeprefix(field + " ")) from None
    return value


def _check_topic(field: str, value: object) -> str:
    if not isinstance(value, str) or not _TOPIC.fullmatch(value):
        raise ValidationError(field, "must be a topic name: 1..128 characters of A-Z a-z 0-9 . _ -")
    return value


def _target(obj: dict[str, object], where: str) -> Target:
    # One device and no other target (the usual request): no search over every field.
    if "device_id" in obj and not _OTHER_TARGETS & obj.keys():
        return Target(
            TargetKind.DEVICE, (check_name(where + "device_id", obj["device_id"], _DEVICE),)
        )
    present = [name for name in _TARGET_FIELDS if name in obj]
    if len(present) != 1:
        choices = "device_id, device_ids, user_id, topic or broadcast"
        if not present:
            raise ValidationError(where.rstrip(".") or "", f"needs a target: one of {choices}")
        raise ValidationError(
            where + present[1], f"only one target per request ({present[0]} is set too)"
        )
    name = present[0]
    value = obj[name]
    field = where + name
    if name == "device_id":
        return Target(TargetKind.DEVICE, (check_name(field, value, "a device id"),))
    if name == "user_id":
        return Target(TargetKind.USER, (check_name(field, value, "a user id"),))
    if name == "topic":
        return Target(TargetKind.TOPIC, (_check_topic(field, value),))
    if name == "broadcast":
        if value is not True:
            raise ValidationError(field, "must be true (omit it to target something else)")
        return Target(TargetKind.BROADCAST)
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_DEVICE_IDS:
        raise ValidationError(field, f"must be an array of 1..{MAX_DEVICE_IDS} device ids")
    ids = [check_name(f"{field}[{i}]", item, "a device id") for i, item in enumerate(value)]
    return Target(TargetKind.DEVICE, tuple(dict.fromkeys(ids)))


def _body(obj: dict[str, object], where: str, max_body_bytes: int, *, required: bool) -> bytes:
    # Presence, not truthiness or None: ``"body": null`` is a wrong type, not an absence.
    has_text, has_encoded = "body" in obj, "body_base64" in obj
    text, encoded = obj.get("body"), obj.get("body_base64")
    if has_text and has_encoded:
        raise ValidationError(where + "body_base64", "give body or body_base64, not both")
    if has_text:
        field = where + "body"
        if not isinstance(text, str):
            raise ValidationError(
                field,
                f"must be a string (UTF-8 text; use body_base64 for bytes), got {_describe(text)}",
            )
        if len(text) > max_body_bytes:
            raise ValidationError(field, f"is longer than {max_body_bytes} bytes")
        try:
            body = text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(field, "is not valid Unicode text (lone surrogate)") from None
    elif has_encoded:
        field = where + "body_base64"
        if not isinstance(encoded, str) or not _BASE64.fullmatch(encoded):
            raise ValidationError(field, "must be a base64 string (standard or URL-safe)")
        if len(encoded) > (max_body_bytes + 2) // 3 * 4:
            raise ValidationError(field, f"decodes to more than {max_body_bytes} bytes")
        try:
            body = base64.b64decode(
                encoded.replace("-", "+").replace("_", "/") + "=" * (-len(encoded) % 4),
                validate=True,
            )
        except (binascii.Error, ValueError):
            raise ValidationError(field, "is not valid base64") from None
    elif required:
        raise ValidationError(where + "body", "needs body (text) or body_base64 (bytes)")
    else:
        return b""
    if len(body) > max_body_bytes:
        raise ValidationError(field, f"is {len(body)} bytes, more than {max_body_bytes}")
    return body


def check_headers(field: str, value: object, *, extra_size: int = 0) -> tuple[tuple[str, str], ...]:
    """Application headers: an object of lowercase names ``[a-z0-9-]`` → text values."""
    if not isinstance(value, dict):
        raise ValidationError(
            field, f"must be an object of header names to strings, got {_describe(value)}"
        )
    if len(value) > MAX_HEADERS:
        raise ValidationError(field, f"has {len(value)} headers, more than {MAX_HEADERS}")
    out: list[tuple[str, str]] = []
    size = extra_size
    for name, text in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValidationError(
                f"{field}.{_shown(name)}", "header names are lowercase a-z, 0-9 and '-'"
            )
        where = f"{field}.{name}"
        if len(name) > MAX_HEADER_NAME_BYTES:
            raise ValidationError(where, f"header name is longer than {MAX_HEADER_NAME_BYTES}")
        if name in RESERVED_HEADERS:
            raise ValidationError(
                where, f"is reserved: use the request field {name.replace('-', '_')}"
            )
        if name.startswith(RESERVED_HEADER_PREFIX):
            raise ValidationError(where, "x-channel-* headers are reserved for the gateway")
        if not isinstance(text, str):
            raise ValidationError(where, f"must be a string, got {_describe(text)}")
        if not _HEADER_VALUE.fullmatch(text):
            raise ValidationError(
                where, "must not contain control characters (tab aside) or lone surrogates"
            )
        length = len(text.encode("utf-8"))
        if length > MAX_HEADER_VALUE_BYTES:
            raise ValidationError(where, f"is longer than {MAX_HEADER_VALUE_BYTES} bytes")
        size += len(name) + length + 32
        out.append((name, text))
    if size > MAX_HEADER_LIST_SIZE:
        raise ValidationError(
            field,
            f"headers add up to {size} bytes (RFC 7541 size), more than {MAX_HEADER_LIST_SIZE}",
        )
    return tuple(out)


def _unknown(obj: dict[str, object], known: frozenset[str], where: str) -> None:
    for name in obj:
        if name not in known:
            raise ValidationError(
                where + _shown(name), f"unknown field (known: {', '.join(sorted(known))})"
            )


def parse_push_request(
    obj: object,
    *,
    default_ttl_s: int,
    max_ttl_s: int,
    max_body_bytes: int,
    where: str = "",
) -> PushRequest:
    """Validate one decoded JSON push request; ``where`` prefixes field paths
    (``"messages[3]."`` for a batch item)."""
    if type(obj) is dict and 2 <= len(obj) <= 3:
        plain = parse_plain_device_push(obj, default_ttl_s, max_ttl_s, max_body_bytes)
        if plain is not None:
            return plain
    return _parse_push_request(obj, default_ttl_s, max_ttl_s, max_body_bytes, where)


def _parse_push_request(
    obj: object, default_ttl_s: int, max_ttl_s: int, max_body_bytes: int, where: str
) -> PushRequest:
    """Every field checked, each refusal naming it."""
    if not isinstance(obj, dict):
        raise ValidationError(
            where.rstrip("."), f"a push request must be a JSON object, got {_describe(obj)}"
        )
    if not obj.keys() <= _PUSH_FIELDS:
        _unknown(obj, _PUSH_FIELDS, where)
    target = _target(obj, where)
    body = _body(obj, where, max_body_bytes, required=True)

    ttl_s = obj.get("ttl_s", default_ttl_s)
    if type(ttl_s) is not int or not 0 <= ttl_s <= max_ttl_s:
        raise ValidationError(
            where + "ttl_s",
            f"must be a whole number of seconds 0..{max_ttl_s} (0: only devices online now)",
        )

    collapse_key = _check_collapse_key(where + "collapse_key", obj.get("collapse_key", ""))

    priority_text = obj.get("priority", "normal")
    priority = _PRIORITIES.get(priority_text) if isinstance(priority_text, str) else None
    if priority is None:
        raise ValidationError(where + "priority", 'must be "normal" or "high"')

    headers: tuple[tuple[str, str], ...] = ()
    if "headers" in obj:
        raw_headers = obj["headers"]
        # collapse-key and priority travel as headers too (PushMessage.wire_headers).
        extra = (len(collapse_key) + 44 if collapse_key else 0) + (
            44 if priority is Priority.HIGH else 0
        )
        headers = check_headers(where + "headers", raw_headers, extra_size=extra)

    return PushRequest(
        target=target,
        body=body,
        headers=headers,
        ttl_s=ttl_s,
        collapse_key=collapse_key,
        priority=priority,
    )


def parse_plain_device_push(
    obj: dict[str, object], default_ttl_s: int, max_ttl_s: int, max_body_bytes: int
) -> PushRequest | None:
    """``{"device_id": ..., "body": "..."}``, ``ttl_s`` optional, with an ASCII id and
    text that passes every check, or None: anything else (an error included) takes the
    full path, which names the field at fault. Most pushes look like this; the full
    path's dozen field look-ups were a tenth of the gateway's Python time per push."""
    device_id, text = obj.get("device_id"), obj.get("body")
    ttl_s = obj.get("ttl_s", default_ttl_s) if len(obj) == 3 else default_ttl_s
    if (
        (len(obj) == 3 and "ttl_s" not in obj)
        or type(ttl_s) is not int
        or type(device_id) is not str
        or type(text) is not str
        or not device_id.isascii()
        or not 0 < len(device_id) <= MAX_ID_BYTES
        or not _ID.fullmatch(device_id)
        or len(text) > max_body_bytes
        or not 0 <= ttl_s <= max_ttl_s
    ):
        return None
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if len(body) > max_body_bytes:
        return None
    return PushRequest(Target(TargetKind.DEVICE, (device_id,)), body, (), ttl_s)


def _check_collapse_key(field: str, value: object) -> str:
    if value == "":
        return ""
    if (
        not isinstance(value, str)
        or not _TEXT.fullmatch(value)
        or len(value.encode("utf-8")) > MAX_COLLAPSE_KEY_BYTES
    ):
        raise ValidationError(
            field,
            f"must be text without control characters, at most {MAX_COLLAPSE_KEY_BYTES} "
            "UTF-8 bytes",
        )
    return value


def parse_device_call(
    obj: object, *, default_timeout_ms: int, max_timeout_ms: int, max_body_bytes: int
) -> DeviceCall:
    """Validate ``{"op", "body" | "body_base64", "headers", "timeout_ms"}``."""
    if not isinstance(obj, dict):
        raise ValidationError("", f"the request must be a JSON object, got {_describe(obj)}")
    if not obj.keys() <= _CALL_FIELDS:
        _unknown(obj, _CALL_FIELDS, "")
    op = obj.get("op")
    if not isinstance(op, str) or not op:
        raise ValidationError("op", "needs the operation name the device handles (a string)")
    check_name("op", op, "an operation name")
    body = _body(obj, "", max_body_bytes, required=False)
    headers = check_headers("headers", obj["headers"]) if "headers" in obj else ()
    timeout_ms = obj.get("timeout_ms", min(default_timeout_ms, max_timeout_ms))
    if type(timeout_ms) is not int or not 1 <= timeout_ms <= max_timeout_ms:
        raise ValidationError("timeout_ms", f"must be a whole number 1..{max_timeout_ms}")
    return DeviceCall(op, body, headers, timeout_ms)


def parse_reason(obj: object) -> str:
    """The optional ``{"reason": "..."}`` of a kick."""
    if obj is None:
        return ""
    if not isinstance(obj, dict):
        raise ValidationError("", f"the request must be a JSON object, got {_describe(obj)}")
    _unknown(obj, frozenset(("reason",)), "")
    reason = obj.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS or not _TEXT.fullmatch(reason):
        raise ValidationError(
            "reason",
            f"must be text without control characters, at most {MAX_REASON_CHARS} characters",
        )
    return reason
