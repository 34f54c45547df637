"""HTTP/2 baseline: the real ``h2`` state machines (client + server per connection), HPACK with
its dynamic table kept for the whole connection, gzip'd JSON bodies.

* setup: client preface + SETTINGS (16 MiB initial stream window) + connection WINDOW_UPDATE,
  server SETTINGS + WINDOW_UPDATE, both SETTINGS ACKs, and the long-lived push stream
  (``GET /v1/push/stream`` HEADERS + the server's ``:status 200`` HEADERS).
* request: new stream, HEADERS (``:method POST``, ``:path /rpc/<op>``, ``:scheme https``,
  ``:authority``, identity headers, content-type, accept, accept-encoding, app headers) + DATA.
* response: HEADERS (``:status 200``, content-type, date, server, app headers, ``x-status``
  when the app status is non-zero) + DATA on the request's stream.
* push: one gRPC-style message on the push stream: DATA frame(s) carrying a 5-byte prefix
  (1 byte "compressed" flag + 4 byte big-endian length) and the gzip'd-if-smaller JSON envelope
  ``{"mid":..,"topic":..,"headers":{..},"body":..}``.

Bodies are gzip'd (level 6, ``content-encoding: gzip``) only when that makes them smaller.
``authorization`` is added to the HPACK dynamic table like OkHttp and Chromium do (h2's default
marks it never-indexed, Firefox/nghttp2 style, which would resend the ~180 byte token on every
request); pass ``index_authorization=False`` for h2's default behaviour.

WINDOW_UPDATE frames the receiver emits while acknowledging data are delivered to the sender
(so long sessions never stall) but are not counted in the message's cost.
"""

from __future__ import annotations

import gzip
import json
import struct
from typing import Any
from urllib.parse import quote, unquote

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, ResponseReceived
from h2.settings import SettingCodes, Settings

from .common import (
    IdentitySource,
    Msg,
    RequestTracker,
    SessionClock,
    SessionIdentity,
    app_headers,
    app_headers_dict,
    body_bytes,
    check,
    check_app_headers,
    check_body,
    gzip_if_smaller,
    json_compact,
    merge_headers,
)

WINDOW = 16 * 1024 * 1024  # what OkHttp advertises
_DEFAULT_WINDOW = 65_535
_SERVER = "nginx"
PUSH_PATH = "/v1/push/stream"
PUSH_CONTENT_TYPE = "application/x-push-stream"

Hdrs = list[tuple[bytes, bytes]]


def _b(headers: list[tuple[str, str]]) -> Hdrs:
    return [(k.encode(), v.encode()) for k, v in headers]


def _s(headers: Any) -> list[tuple[str, str]]:
    return [(bytes(k).decode(), bytes(v).decode()) for k, v in headers]


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _connection(client_side: bool, normalize: bool) -> H2Connection:
    conn = H2Connection(
        H2Configuration(client_side=client_side, normalize_outbound_headers=normalize)
    )
    # Replace (rather than update) the local settings before the preface so the very first
    # SETTINGS frame carries them; updating would queue a second SETTINGS frame.
    conn.local_settings = Settings(
        client=client_side,
        initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
            SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: 65_536,
        },
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(WINDOW - _DEFAULT_WINDOW)
    return conn


class Http2Session:
    def __init__(self, ident: SessionIdentity, index_authorization: bool = True) -> None:
        self.ident = ident
        self.clock = SessionClock()
        self.tracker = RequestTracker()
        # With normalisation off h2 keeps our (already lower-case, trimmed) headers as given and
        # does not force ``authorization`` to never-indexed; validation stays on.
        self.client = _connection(True, normalize=not index_authorization)
        self.server = _connection(False, normalize=True)
        self._push_buf = bytearray()
        self._stream_op: dict[int, str] = {}  # client side: which op each stream asked for

        c = self.client.data_to_send()
        s = self.server.data_to_send()
        self.server.receive_data(c)
        s += self.server.data_to_send()  # SETTINGS ACK
        self.client.receive_data(s)
        c2 = self.client.data_to_send()  # SETTINGS ACK
        self.server.receive_data(c2)
        setup = len(c) + len(s) + len(c2)

        # The long-lived push stream.
        self.push_stream = self.client.get_next_available_stream_id()
        headers = self._request_pseudo("GET", PUSH_PATH) + _b(
            [*self.ident.http_headers(), ("accept", PUSH_CONTENT_TYPE), ("accept-encoding", "gzip")]
        )
        self.client.send_headers(self.push_stream, headers, end_stream=True)
        c3 = self.client.data_to_send()
        events = self.server.receive_data(c3)
        check(any(isinstance(e, RequestReceived) for e in events), "h2: push stream not opened")
        self.server.send_headers(
            self.push_stream,
            _b([(":status", "200"), ("content-type", PUSH_CONTENT_TYPE), ("server", _SERVER)]),
        )
        s3 = self.server.data_to_send()
        events = self.client.receive_data(s3)
        check(any(isinstance(e, ResponseReceived) for e in events), "h2: push stream refused")
        self._setup = setup + len(c3) + len(s3)

    def _request_pseudo(self, method: str, path: str) -> Hdrs:
        return _b(
            [
                (":method", method),
                (":path", path),
                (":scheme", "https"),
                (":authority", self.ident.host),
            ]
        )

    def setup_bytes(self) -> int:
        return self._setup

    @staticmethod
    def _send_body(conn: H2Connection, stream_id: int, data: bytes, end_stream: bool) -> None:
        step = conn.max_outbound_frame_size
        for i in range(0, len(data), step):
            last = i + step >= len(data)
            conn.send_data(stream_id, data[i : i + step], end_stream=end_stream and last)
        if not data and end_stream:
            conn.end_stream(stream_id)

    def _send_request(self, msg: Msg) -> tuple[int, bytes]:
        body, gz = gzip_if_smaller(body_bytes(msg))
        sid = self.client.get_next_available_stream_id()
        headers = self._request_pseudo("POST", "/rpc/" + quote(msg["op"], safe="._-~"))
        extra = [*self.ident.http_headers(), ("content-type", "application/json")]
        if gz:
            extra.append(("content-encoding", "gzip"))
        extra += [("accept", "application/json"), ("accept-encoding", "gzip")]
        extra = merge_headers(extra, app_headers(msg))
        self.client.send_headers(sid, headers + _b(extra))
        self._send_body(self.client, sid, body, end_stream=True)
        self.tracker.opened(msg["op"], sid)
        self._stream_op[sid] = msg["op"]
        return sid, self.client.data_to_send()

    def encode(self, msg: Msg) -> bytes:
        kind = msg["kind"]
        if kind == "request":
            return self._send_request(msg)[1]
        if kind == "response":
            sid = self.tracker.answer(msg["op"])
            if sid is None:  # corpus response without a request: open one, uncounted
                self.tracker.orphans += 1
                sid, data = self._send_request({**msg, "kind": "request"})
                self.decode(data, {**msg, "kind": "request"})
                sid = self.tracker.answer(msg["op"])
                assert sid is not None
            body, gz = gzip_if_smaller(body_bytes(msg))
            headers = [
                (":status", "200"),
                ("content-type", "application/json"),
                ("date", self.clock.date_for(msg)),
                ("server", _SERVER),
            ]
            if gz:
                headers.append(("content-encoding", "gzip"))
            if msg.get("status", 0):
                headers.append(("x-status", str(msg["status"])))
            headers = merge_headers(headers, app_headers(msg))
            self.server.send_headers(sid, _b(headers))
            self._send_body(self.server, sid, body, end_stream=True)
            return self.server.data_to_send()
        if kind == "push":
            envelope = {
                "mid": msg["message_id"],
                "topic": msg["topic"],
                "headers": app_headers_dict(msg),
                "body": msg.get("body"),
            }
            payload, gz = gzip_if_smaller(json_compact(envelope))
            framed = struct.pack(">BI", int(gz), len(payload)) + payload
            self._send_body(self.server, self.push_stream, framed, end_stream=False)
            return self.server.data_to_send()
        raise ValueError(f"unknown message kind {kind!r}")

    def decode(self, data: bytes, msg: Msg) -> None:
        kind = msg["kind"]
        receiver, sender = (
            (self.server, self.client) if kind == "request" else (self.client, self.server)
        )
        headers: list[tuple[str, str]] = []
        body = bytearray()
        stream_id: int | None = None
        for ev in receiver.receive_data(data):
            if isinstance(ev, (RequestReceived, ResponseReceived)):
                headers = _s(ev.headers)
                stream_id = ev.stream_id
            elif isinstance(ev, DataReceived):
                body += ev.data
                if ev.stream_id is not None:
                    receiver.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        # Flow control bookkeeping (WINDOW_UPDATE): delivered, not counted.
        back = receiver.data_to_send()
        if back:
            sender.receive_data(back)

        if kind == "push":
            self._push_buf += body
            check(len(self._push_buf) >= 5, "h2: short push frame")
            flag, length = struct.unpack_from(">BI", self._push_buf)
            payload = bytes(self._push_buf[5 : 5 + length])
            check(len(payload) == length, "h2: truncated push")
            del self._push_buf[: 5 + length]
            envelope = json.loads(gzip.decompress(payload) if flag else payload)
            check(envelope["mid"] == msg["message_id"], "h2: push message id")
            check(envelope["topic"] == msg["topic"], "h2: push topic")
            check(envelope["headers"] == app_headers_dict(msg), "h2: push headers")
            check_body(envelope["body"], msg, "h2")
            return
        raw = bytes(body)
        if _get(headers, "content-encoding") == "gzip":
            raw = gzip.decompress(raw)
        check_body(json.loads(raw), msg, "h2")
        check_app_headers(headers, msg, "h2")
        if kind == "request":
            path = _get(headers, ":path") or ""
            check(unquote(path.removeprefix("/rpc/")) == msg["op"], "h2: op mismatch")
            expected = app_headers_dict(msg).get("authorization", self.ident.authorization)
            check(_get(headers, "authorization") == expected, "h2: auth")
        else:
            check(stream_id is not None, "h2: response without HEADERS")
            check(self._stream_op.pop(stream_id or 0, None) == msg["op"], "h2: op mismatch")
            check(_get(headers, ":status") == "200", "h2: status line")
            check(int(_get(headers, "x-status") or 0) == msg.get("status", 0), "h2: status")


class Http2Codec:
    def __init__(self, index_authorization: bool = True) -> None:
        self.index_authorization = index_authorization
        self.name = "http2-hpack-gzip" + ("" if index_authorization else "-noidx-auth")
        self._ids = IdentitySource()

    def new_session(self) -> Http2Session:
        return Http2Session(self._ids.next(), self.index_authorization)
