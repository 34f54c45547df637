"""JSON forms of events, shared by the test-vector generator and its tests.

Bytes become ``{"hex": ...}`` (plus ``"utf8"`` when they are valid UTF-8, for
readers), so a vector file says exactly what a decoder must produce.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

from channel.wire.events import Event
from channel.wire.hello import Hello, HelloAck


def bytes_to_json(raw: bytes) -> dict[str, str]:
    out = {"hex": raw.hex()}
    with contextlib.suppress(UnicodeDecodeError):
        out["utf8"] = raw.decode("utf-8")
    return out


def _value(value: Any) -> Any:
    if isinstance(value, bytes):
        return bytes_to_json(value)
    if isinstance(value, Hello | HelloAck):
        return {f.name: _value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_value(item) for item in value]
    return value


def event_to_json(event: Event) -> dict[str, Any]:
    """``{"event": "RequestReceived", "stream_id": 1, ...}`` for any event."""
    out: dict[str, Any] = {"event": type(event).__name__}
    for f in dataclasses.fields(event):  # type: ignore[arg-type]
        value = getattr(event, f.name)
        if f.name == "dictionary":
            out["dictionary"] = {"dict_id": value.dict_id, "sha256": value.sha256}
        else:
            out[f.name] = _value(value)
    return out


def json_to_bytes(value: dict[str, str] | str) -> bytes:
    """Inverse of ``bytes_to_json``; a plain string means UTF-8 text."""
    if isinstance(value, str):
        return value.encode()
    if "hex" in value:
        return bytes.fromhex(value["hex"])
    return value["utf8"].encode()


@dataclasses.dataclass
class ScriptStep:
    """One action of a conversation vector and what it produced."""

    actor: str
    action: str
    args: dict[str, Any]
    sent: bytes
    events: list[dict[str, Any]]


def _headers(raw: list[list[str]] | None) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in (raw or []))


def perform(
    connection: Any, action: str, args: dict[str, Any], dictionaries: dict[int, Any]
) -> Any:
    """Carry out one scripted ``action`` on a ``Connection``; return its result."""
    from channel.wire.errors import ErrorCode

    if action == "send_hello":
        fields = dict(args)
        pipeline = fields.pop("pipeline_dictionary", 0)
        for key in ("token", "resume_ticket"):
            if key in fields:
                fields[key] = json_to_bytes(fields[key])
        if "dictionaries" in fields:
            fields["dictionaries"] = tuple(fields["dictionaries"])
        return connection.send_hello(Hello(**fields), pipeline_dictionary=pipeline)
    if action == "accept":
        fields = dict(args)
        for key in ("session_id", "resume_ticket"):
            if key in fields:
                fields[key] = json_to_bytes(fields[key])
        return connection.accept(**fields)
    if action == "reject":
        return connection.reject(ErrorCode[args["code"]], args.get("message", ""))
    if action == "send_request":
        return connection.send_request(
            args["op"], json_to_bytes(args.get("body", "")), _headers(args.get("headers"))
        )
    if action == "send_response":
        return connection.send_response(
            args["stream_id"],
            json_to_bytes(args.get("body", "")),
            _headers(args.get("headers")),
            status=args.get("status", 0),
        )
    if action == "send_error":
        return connection.send_error(
            args["stream_id"],
            ErrorCode[args["code"]],
            args.get("message", ""),
            args.get("retry_after_ms", 0),
        )
    if action == "send_push":
        return connection.send_push(
            json_to_bytes(args["message_id"]),
            json_to_bytes(args.get("body", "")),
            _headers(args.get("headers")),
        )
    if action == "send_prepared_push":
        prepared = connection.prepare_push(
            json_to_bytes(args["message_id"]),
            json_to_bytes(args.get("body", "")),
            _headers(args.get("headers")),
        )
        return connection.send_prepared_push(prepared)
    if action == "send_ack":
        return connection.send_ack(*args["delivery_ids"])
    if action == "send_ping":
        return connection.send_ping(json_to_bytes(args.get("payload", "")))
    if action == "send_settings":
        return connection.send_settings([tuple(pair) for pair in args["settings"]])
    if action == "send_goaway":
        return connection.send_goaway(
            ErrorCode[args.get("code", "NO_ERROR")],
            reconnect_after_ms=args.get("reconnect_after_ms", 0),
            alternate_endpoint=args.get("alternate_endpoint", ""),
            message=args.get("message", ""),
        )
    if action == "send_cancel":
        return connection.send_cancel(args["stream_id"])
    if action == "send_dictionary":
        return connection.send_dictionary(dictionaries[args["dict_id"]])
    if action == "send_dictionary_chunk":
        return connection.send_dictionary_chunk(
            dictionaries[args["dict_id"]], args["offset"], args.get("max_chunk_bytes")
        )
    raise ValueError(f"unknown scripted action {action!r}")
