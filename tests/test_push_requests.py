"""Push request validation: JSON → PushRequest, or a ValidationError naming the field."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.push.model import Priority, PushRequest, Target, TargetKind
from channel.push.requests import (
    MAX_DEVICE_IDS,
    MAX_HEADERS,
    ValidationError,
    parse_device_call,
    parse_push_request,
    parse_reason,
)

LIMITS = {"default_ttl_s": 3600, "max_ttl_s": 86_400, "max_body_bytes": 1024}


def parse(obj: object, **kwargs: Any) -> PushRequest:
    return parse_push_request(obj, **{**LIMITS, **kwargs})


def refused(obj: object, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse(obj, **kwargs)
    return info.value


def test_minimal_device_push_takes_defaults() -> None:
    request = parse({"device_id": "d1", "body": "hi"})
    assert request == PushRequest(Target(TargetKind.DEVICE, ("d1",)), b"hi", ttl_s=3600)
    assert request.priority is Priority.NORMAL and request.collapse_key == ""


def test_every_field() -> None:
    request = parse(
        {
            "user_id": "u-7",
            "body_base64": base64.b64encode(b"\x00\xff").decode(),
            "headers": {"x-kind": "chat", "trace-id": "ab12"},
            "ttl_s": 0,
            "collapse_key": "inbox",
            "priority": "high",
        }
    )
    assert request.target == Target(TargetKind.USER, ("u-7",))
    assert request.body == b"\x00\xff"
    assert request.headers == (("x-kind", "chat"), ("trace-id", "ab12"))
    assert request.ttl_s == 0
    assert request.collapse_key == "inbox"
    assert request.priority is Priority.HIGH


@pytest.mark.parametrize(
    ("obj", "target"),
    [
        ({"device_ids": ["a", "b", "a"]}, Target(TargetKind.DEVICE, ("a", "b"))),
        ({"topic": "news.sport_1-x"}, Target(TargetKind.TOPIC, ("news.sport_1-x",))),
        ({"broadcast": True}, Target(TargetKind.BROADCAST)),
        ({"device_id": "设备-1"}, Target(TargetKind.DEVICE, ("设备-1",))),
    ],
)
def test_targets(obj: dict[str, object], target: Target) -> None:
    assert parse({**obj, "body": ""}).target == target


def test_url_safe_and_unpadded_base64() -> None:
    data = b"\xfb\xff\xfe"
    url_safe = base64.urlsafe_b64encode(data).decode()
    assert parse({"device_id": "d", "body_base64": url_safe}).body == data
    assert parse({"device_id": "d", "body_base64": "aGk"}).body == b"hi"


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        ({"body": "x"}, "", "needs a target"),
        ({"device_id": "a", "user_id": "u", "body": "x"}, "user_id", "only one target"),
        ({"device_id": "", "body": "x"}, "device_id", "empty"),
        ({"device_id": "a b", "body": "x"}, "device_id", "whitespace"),
        ({"device_id": "a\x00", "body": "x"}, "device_id", "control"),
        ({"device_id": "x" * 129, "body": "x"}, "device_id", "more than 128"),
        ({"device_id": "é" * 65, "body": "x"}, "device_id", "more than 128"),
        ({"device_id": 7, "body": "x"}, "device_id", "string"),
        ({"device_ids": [], "body": "x"}, "device_ids", "1..1000"),
        ({"device_ids": ["a", 3], "body": "x"}, "device_ids[1]", "string"),
        ({"device_ids": ["d"] * (MAX_DEVICE_IDS + 1), "body": "x"}, "device_ids", "1..1000"),
        ({"topic": "a/b", "body": "x"}, "topic", "topic name"),
        ({"broadcast": False, "body": "x"}, "broadcast", "must be true"),
        ({"device_id": "d"}, "body", "body_base64"),
        ({"device_id": "d", "body": "x", "body_base64": "eA=="}, "body_base64", "not both"),
        ({"device_id": "d", "body": b"x".hex() * 600}, "body", "longer than 1024"),
        ({"device_id": "d", "body": "\ud800"}, "body", "surrogate"),
        ({"device_id": "d", "body": 5}, "body", "string"),
        ({"device_id": "d", "body_base64": "a"}, "body_base64", "not valid base64"),
        ({"device_id": "d", "body_base64": "a b"}, "body_base64", "base64"),
        ({"device_id": "d", "body_base64": "A" * 1400}, "body_base64", "more than 1024"),
        ({"device_id": "d", "body": "", "ttl_s": -1}, "ttl_s", "0..86400"),
        ({"device_id": "d", "body": "", "ttl_s": 86_401}, "ttl_s", "0..86400"),
        ({"device_id": "d", "body": "", "ttl_s": 1.5}, "ttl_s", "whole number"),
        ({"device_id": "d", "body": "", "ttl_s": True}, "ttl_s", "whole number"),
        ({"device_id": "d", "body": "", "priority": "urgent"}, "priority", "normal"),
        ({"device_id": "d", "body": "", "collapse_key": "k" * 65}, "collapse_key", "64"),
        ({"device_id": "d", "body": "", "collapse_key": 3}, "collapse_key", "text"),
        ({"device_id": "d", "body": "", "headers": []}, "headers", "object"),
        ({"device_id": "d", "body": "", "headers": {"X-Up": "1"}}, "headers.X-Up", "lowercase"),
        ({"device_id": "d", "body": "", "headers": {":op": "a"}}, "headers.:op", "lowercase"),
        (
            {"device_id": "d", "body": "", "headers": {"priority": "high"}},
            "headers.priority",
            "reserved",
        ),
        (
            {"device_id": "d", "body": "", "headers": {"collapse-key": "a"}},
            "headers.collapse-key",
            "collapse_key",
        ),
        (
            {"device_id": "d", "body": "", "headers": {"x-channel-user-id": "u"}},
            "headers.x-channel-user-id",
            "reserved",
        ),
        ({"device_id": "d", "body": "", "headers": {"a": 1}}, "headers.a", "string"),
        ({"device_id": "d", "body": "", "headers": {"a": "x\r\ny"}}, "headers.a", "control"),
        ({"device_id": "d", "body": "", "headers": {"a": "x" * 4097}}, "headers.a", "4096"),
        (
            {
                "device_id": "d",
                "body": "",
                "headers": {f"h{i}": "v" for i in range(MAX_HEADERS + 1)},
            },
            "headers",
            "more than 32",
        ),
        (
            {"device_id": "d", "body": "", "headers": {f"h{i}": "v" * 3000 for i in range(3)}},
            "headers",
            "RFC 7541",
        ),
        ({"device_id": "d", "body": "", "colapse_key": "k"}, "colapse_key", "unknown field"),
        # null is a wrong type, not an absent field (the schema says object / string).
        ({"device_id": "d", "body": "", "headers": None}, "headers", "got null"),
        ({"device_id": "d", "body": None}, "body", "got null"),
        ({"device_id": "d", "body_base64": None}, "body_base64", "base64"),
        ({"device_id": "d", "body": None, "body_base64": "eA=="}, "body_base64", "not both"),
        ({"device_id": "a\u200bb", "body": ""}, "device_id", "invisible"),
        ({"device_id": "d", "body": "", "collapse_key": "a\x85b"}, "collapse_key", "control"),
        ([], "", "JSON object"),
    ],
)
def test_refusals_name_the_field(obj: object, field: str, words: str) -> None:
    error = refused(obj)
    assert error.field == field
    assert words in error.message


def test_batch_prefix_in_field_paths() -> None:
    with pytest.raises(ValidationError) as info:
        parse({"device_id": "a b", "body": ""}, where="messages[3].")
    assert info.value.field == "messages[3].device_id"
    with pytest.raises(ValidationError) as info:
        parse("nope", where="messages[0].")
    assert info.value.field == "messages[0]"
    with pytest.raises(ValidationError) as info:
        parse({"body": ""}, where="messages[1].")
    assert info.value.field == "messages[1]"


def test_device_call() -> None:
    call = parse_device_call(
        {"op": "app.refresh", "body": "{}", "headers": {"x-a": "1"}, "timeout_ms": 500},
        default_timeout_ms=10_000,
        max_timeout_ms=30_000,
        max_body_bytes=1024,
    )
    assert (call.op, call.body, call.headers, call.timeout_ms) == (
        "app.refresh",
        b"{}",
        (("x-a", "1"),),
        500,
    )
    plain = parse_device_call(
        {"op": "x"}, default_timeout_ms=10_000, max_timeout_ms=3_000, max_body_bytes=1
    )
    assert (plain.body, plain.timeout_ms) == (b"", 3_000)
    for obj, field in [
        ({}, "op"),
        ({"op": "a b"}, "op"),
        ({"op": "a", "timeout_ms": 0}, "timeout_ms"),
        ({"op": "a", "timeout_ms": 30_001}, "timeout_ms"),
        ({"op": "a", "extra": 1}, "extra"),
        ({"op": "a", "headers": None}, "headers"),
        ({"op": "a", "body": None}, "body"),
    ]:
        with pytest.raises(ValidationError) as info:
            parse_device_call(obj, default_timeout_ms=1, max_timeout_ms=30_000, max_body_bytes=1)
        assert info.value.field == field


def test_kick_reason() -> None:
    assert parse_reason(None) == ""
    assert parse_reason({"reason": "abuse"}) == "abuse"
    for obj in ({"reason": 3}, {"reason": "x" * 257}, {"why": "x"}, []):
        with pytest.raises(ValidationError):
            parse_reason(obj)


# ------------------------------------------------------------------ properties

_KEYS = st.sampled_from(
    [
        "device_id",
        "device_ids",
        "user_id",
        "topic",
        "broadcast",
        "body",
        "body_base64",
        "headers",
        "ttl_s",
        "collapse_key",
        "priority",
    ]
)
# Lone surrogates included: json.loads makes them from "\ud800" escapes.
_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=20) | st.sampled_from(
    ["d1", "high", "normal", "aGk=", "x-a", "\ud800", "", "a b"]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _TEXT
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS | _TEXT, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(_KEYS | _TEXT, _JSON, max_size=7) | _JSON)
def test_parser_only_ever_raises_validation_error(obj: object) -> None:
    try:
        request = parse(obj)
    except ValidationError as exc:
        assert isinstance(exc.field, str) and exc.message
        return
    # Whatever passed is a well-formed request.
    assert isinstance(request, PushRequest)
    assert isinstance(request.body, bytes) and len(request.body) <= LIMITS["max_body_bytes"]
    assert 0 <= request.ttl_s <= LIMITS["max_ttl_s"]
    for name, value in request.headers:
        assert isinstance(name, str) and isinstance(value, str)


_IDS = st.text("abcdefgh0123-_.:", min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    target=st.sampled_from(["device_id", "device_ids", "user_id", "topic", "broadcast"]),
    ids=st.lists(_IDS, min_size=1, max_size=5),
    body=st.binary(max_size=64),
    # Valid requests only: at most MAX_HEADERS headers (more is the rejection tested above).
    headers=st.dictionaries(
        st.text("abc-1", min_size=1, max_size=5), st.text(max_size=8), max_size=MAX_HEADERS
    ),
    ttl_s=st.integers(0, 86_400),
)
def test_valid_requests_survive_a_json_round_trip(
    target: str, ids: list[str], body: bytes, headers: dict[str, str], ttl_s: int
) -> None:
    headers = {k: v for k, v in headers.items() if not any(ord(c) < 32 or c == "\x7f" for c in v)}
    value: object = {
        "device_id": ids[0],
        "device_ids": ids,
        "user_id": ids[0],
        "topic": ids[0].replace(":", "."),
        "broadcast": True,
    }[target]
    obj = {
        target: value,
        "body_base64": base64.b64encode(body).decode(),
        "headers": headers,
        "ttl_s": ttl_s,
    }
    request = parse(json.loads(json.dumps(obj)))
    assert request.body == body
    assert request.headers == tuple(headers.items())
    assert request.ttl_s == ttl_s
    if target == "device_ids":
        assert request.target.ids == tuple(dict.fromkeys(ids))


_ID_TEXT = st.text(max_size=140) | st.sampled_from(
    ["d1", "a" * 128, "a" * 129, "", " d", "d\u200b"]
)
_BODY_TEXT = st.text(max_size=40) | st.sampled_from(["x" * 1024, "x" * 1025, "é" * 513, "\ud800"])


@settings(max_examples=600, deadline=None)
@given(
    device_id=_ID_TEXT | _SCALARS,
    body=_BODY_TEXT | _SCALARS,
    other=st.sampled_from(["body", "body_base64", "topic", "ttl_s"]),
    default_ttl_s=st.sampled_from([0, 3600, 86_400, 86_401, -1]),
    third=st.none()
    | st.tuples(
        st.sampled_from(["ttl_s", "priority", "collapse_key", "topic"]),
        st.sampled_from([0, 1, 86_400, 86_401, -1, True, 1.0, "60", None]),
    ),
)
def test_theparse_plain_device_push_shortcut_agrees_with_the_full_checks(
    device_id: object,
    body: object,
    other: str,
    default_ttl_s: int,
    third: tuple[str, object] | None,
) -> None:
    """``{"device_id", "body"}`` skips most field look-ups: whatever it accepts, the full
    path accepts as the same request, and what it turns away goes the full way."""
    from channel.push.requests import _parse_push_request, parse_plain_device_push

    limits = (default_ttl_s, LIMITS["max_ttl_s"], LIMITS["max_body_bytes"])
    obj: dict[str, object] = {"device_id": device_id, other: body}
    if third is not None:
        obj[third[0]] = third[1]
    fast = parse_plain_device_push(obj, *limits)
    try:
        full: PushRequest | None = _parse_push_request(obj, *limits, "")
    except ValidationError:
        full = None
    if fast is not None:
        assert fast == full
    if full is None:
        with pytest.raises(ValidationError):
            parse(obj, default_ttl_s=default_ttl_s)
    else:
        assert parse(obj, default_ttl_s=default_ttl_s) == full
