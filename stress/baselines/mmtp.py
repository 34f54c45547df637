"""MMTP as a wire-size codec: the real ``channel.wire.Connection`` on both ends.

Setup is HELLO (app identity and a Channel device token's bytes, once per
connection; the device id is left to the token, as the SDK does, spec 7.2) plus
HELLO_ACK (session id, a 64-byte resume ticket, limits). Requests carry the app
headers and the ``:op``; responses a varint status; pushes a 12-byte message
id, and their cost includes the client's ACK frame (as MQTT's includes
PUBACK).
"""

from __future__ import annotations

import os
from pathlib import Path

from channel.default_dictionary import load_default_dictionary
from channel.default_presets import register_default_presets
from channel.wire import (
    BodyCodec,
    Connection,
    Dictionary,
    DictionaryStore,
    Hello,
    PushReceived,
    RequestReceived,
    ResponseReceived,
    Role,
)
from channel.wire.frames import FrameType, encode_frame
from channel.wire.presets import Preset, register_preset
from channel.wire.varint import encode_varint
from stress.baselines.common import (
    IdentitySource,
    Msg,
    RequestTracker,
    app_headers,
    body_bytes,
    check,
)

APP_PRESET_ID = 2  # channel/presets/wallet-demo-2.json, built from the training split
GENERIC_PRESET_ID = 1
#: Header values that look like a device's clock: ms, or s (x 1000).
_MS_RANGE = (10**12, 10**13)
_S_RANGE = (10**9, 10**10)
#: Fallback clock at connect when a session carries no timestamp header.
_DEFAULT_CLOCK_MS = 1_707_554_000_000


class MmtpSession:
    def __init__(
        self,
        identity_source: IdentitySource,
        dictionary: Dictionary | None,
        preset: int,
        clock_ms: int,
    ):
        identity = identity_source.next()
        held = (dictionary,) if dictionary else ()
        self.client = Connection(Role.CLIENT, body_codec=BodyCodec(DictionaryStore(held)))
        self.server = Connection(Role.SERVER, body_codec=BodyCodec(DictionaryStore(held)))
        self.client.send_hello(
            Hello(
                # As the SDK sends it: the token names the device (spec 7.2).
                app_id=identity.app_id,
                token=identity.device_token,
                dictionaries=tuple(d.dict_id for d in held),
                preset_id=preset,
                app_version=identity.app_version,
                platform=identity.platform,
                client_time_ms=clock_ms,
            )
        )
        hello = self.client.data_to_send()
        self.server.receive_data(hello)
        self.server.accept(
            session_id=os.urandom(16),
            resume_ticket=os.urandom(64),
            heartbeat_s=240,
            server_time_ms=clock_ms,
        )
        hello_ack = self.server.data_to_send()
        self.client.receive_data(hello_ack)
        self._setup = len(hello) + len(hello_ack)
        self._tracker = RequestTracker()
        self._push_len = 0

    def setup_bytes(self) -> int:
        return self._setup

    def encode(self, msg: Msg) -> bytes:
        kind = msg["kind"]
        body = body_bytes(msg)
        headers = app_headers(msg)
        if kind == "request":
            stream_id = self.client.send_request(msg["op"], body, headers)
            self._tracker.opened(msg["op"], stream_id)
            return self.client.data_to_send()
        if kind == "response":
            stream_id = self._tracker.answer(msg["op"])
            if stream_id is None:
                raise AssertionError("mmtp: response without request")
            self.server.send_response(stream_id, body, headers, status=int(msg.get("status", 0)))
            return self.server.data_to_send()
        message_id = bytes.fromhex(msg["message_id"])
        self.server.send_push(message_id, body, headers)
        push = self.server.data_to_send()
        self._push_len = len(push)
        # The client's ACK is part of the push's cost; its bytes are fully
        # determined by the delivery id, and decode() checks the real one matches.
        return push + _expected_ack(self.server)

    def decode(self, data: bytes, msg: Msg) -> None:
        kind = msg["kind"]
        if kind == "request":
            events = self.server.receive_data(data)
            check(len(events) == 1 and isinstance(events[0], RequestReceived), "mmtp: request")
            event = events[0]
            assert isinstance(event, RequestReceived)
            check(event.op == msg["op"] and event.body == body_bytes(msg), "mmtp: request body")
            # Typed headers (ids, timestamps) decode after the HPACK-coded ones.
            check(sorted(event.headers) == sorted(app_headers(msg)), "mmtp: request headers")
            return
        if kind == "response":
            events = self.client.receive_data(data)
            check(len(events) == 1 and isinstance(events[0], ResponseReceived), "mmtp: response")
            response = events[0]
            assert isinstance(response, ResponseReceived)
            check(response.body == body_bytes(msg), "mmtp: response body")
            return
        push, ack = data[: self._push_len], data[self._push_len :]
        events = self.client.receive_data(push)
        check(len(events) == 1 and isinstance(events[0], PushReceived), "mmtp: push")
        received = events[0]
        assert isinstance(received, PushReceived)
        check(received.body == body_bytes(msg), "mmtp: push body")
        self.client.send_ack(received.delivery_id)
        sent_ack = self.client.data_to_send()
        check(sent_ack == ack, "mmtp: ACK bytes differ from the ones counted")
        self.server.receive_data(sent_ack)


def _expected_ack(server: Connection) -> bytes:
    """The exact ACK frame a client sends for the server's latest delivery."""
    latest = max(server.unacked_deliveries)
    return encode_frame(FrameType.ACK, 0, encode_varint(latest))


class MmtpCodec:
    def __init__(self, dictionary: Dictionary | None, preset: int) -> None:
        self._dictionary = dictionary
        self._preset = preset
        self._identities = IdentitySource()
        self._clock_ms = _DEFAULT_CLOCK_MS
        suffix = f"dict {dictionary.dict_id}" if dictionary else "no dict"
        self.name = f"MMTP (preset {preset}, {suffix})"

    def prepare_session(self, messages: list[Msg]) -> None:
        """Both clocks at connect = the session's first timestamp (the device's now):
        the first header value that reads as Unix ms (or s), whatever its name."""
        for msg in messages:
            for _name, value in msg.get("headers", ()):
                if not (isinstance(value, str) and value.isdigit()):
                    continue
                number = int(value)
                if _MS_RANGE[0] <= number < _MS_RANGE[1]:
                    self._clock_ms = number
                    return
                if _S_RANGE[0] <= number < _S_RANGE[1]:
                    self._clock_ms = number * 1000
                    return

    def new_session(self) -> MmtpSession:
        return MmtpSession(self._identities, self._dictionary, self._preset, self._clock_ms)


def mmtp_codecs(
    dictionary_path: str | Path | None, preset_path: str | Path | None = None
) -> list[MmtpCodec]:
    """The MMTP rows of ``stress.wire_size``: app preset + dictionary (what a deployment
    runs), generic preset + dictionary, and bare MMTP (no preset, no dictionary).

    ``None`` uses the packaged default dictionary; ``"none"`` none at all.
    ``preset_path`` is the app's preset file (``channel preset build``); None: the
    packaged wallet demo preset (2).
    """
    register_default_presets()
    app_preset = APP_PRESET_ID
    if preset_path is not None:
        preset = Preset.from_json(Path(preset_path).read_text(encoding="utf-8"))
        register_preset(preset)
        app_preset = preset.preset_id
    if dictionary_path is None:
        dictionary: Dictionary | None = load_default_dictionary()
    elif str(dictionary_path) == "none":
        dictionary = None
    else:
        dictionary = Dictionary.from_file_bytes(Path(dictionary_path).read_bytes())
    return [
        MmtpCodec(dictionary, app_preset),
        MmtpCodec(dictionary, GENERIC_PRESET_ID),
        MmtpCodec(None, 0),
    ]
