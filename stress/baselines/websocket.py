"""WebSocket + JSON baseline (real ``wsproto`` client and server per connection).

* setup: the HTTP/1.1 upgrade request (identity sent once, in its headers) + the 101 response.
* every message is one text frame holding a JSON envelope:
  request ``{"id":..,"op":..,"headers":{..},"body":..}``,
  response ``{"id":..,"status":..,"headers":{..},"body":..}``,
  push ``{"mid":..,"topic":..,"headers":{..},"body":..}``.
  Client->server frames are masked (+4 bytes), as RFC 6455 requires.
* ``deflate=True``: permessage-deflate negotiated in the handshake, with context takeover (one
  zlib context per direction for the whole connection, 32 KiB windows, level 6: wsproto's
  defaults).
"""

from __future__ import annotations

import json

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate

from .common import (
    IdentitySource,
    Msg,
    RequestTracker,
    SessionIdentity,
    app_headers_dict,
    check,
    check_body,
    json_compact,
)

WS_PATH = "/v1/ws"


class WebSocketSession:
    def __init__(self, ident: SessionIdentity, deflate: bool) -> None:
        self.ident = ident
        self.tracker = RequestTracker()
        self._next_id = 0
        self.client = WSConnection(ConnectionType.CLIENT)
        self.server = WSConnection(ConnectionType.SERVER)
        client_ext: list[Extension] = [PerMessageDeflate()] if deflate else []
        server_ext: list[Extension] = [PerMessageDeflate()] if deflate else []
        extra = [(k.encode(), v.encode()) for k, v in ident.http_headers()]
        req = self.client.send(
            Request(host=ident.host, target=WS_PATH, extensions=client_ext, extra_headers=extra)
        )
        self.server.receive_data(req)
        got = list(self.server.events())
        check(len(got) == 1 and isinstance(got[0], Request), "ws: no upgrade request")
        resp = self.server.send(AcceptConnection(extensions=server_ext))
        self.client.receive_data(resp)
        accepted = [e for e in self.client.events() if isinstance(e, AcceptConnection)]
        check(len(accepted) == 1, "ws: upgrade not accepted")
        if deflate:
            check(len(accepted[0].extensions) == 1, "ws: permessage-deflate not negotiated")
        self._setup = len(req) + len(resp)

    def setup_bytes(self) -> int:
        return self._setup

    def encode(self, msg: Msg) -> bytes:
        kind = msg["kind"]
        headers = app_headers_dict(msg)
        if kind == "request":
            self._next_id += 1
            rid = self._next_id
            self.tracker.opened(msg["op"], rid)
            env = {"id": rid, "op": msg["op"], "headers": headers, "body": msg.get("body")}
            sender = self.client
        elif kind == "response":
            rid_or_none = self.tracker.answer(msg["op"])
            if rid_or_none is None:  # response without a request in the corpus
                self.tracker.orphans += 1
                self._next_id += 1
                rid_or_none = self._next_id
                self.tracker.opened(msg["op"], rid_or_none)
                self.tracker.answer(msg["op"])
            env = {
                "id": rid_or_none,
                "status": msg.get("status", 0),
                "headers": headers,
                "body": msg.get("body"),
            }
            sender = self.server
        elif kind == "push":
            env = {
                "mid": msg["message_id"],
                "topic": msg["topic"],
                "headers": headers,
                "body": msg.get("body"),
            }
            sender = self.server
        else:
            raise ValueError(f"unknown message kind {kind!r}")
        return sender.send(TextMessage(data=json_compact(env).decode()))

    def decode(self, data: bytes, msg: Msg) -> None:
        kind = msg["kind"]
        receiver = self.server if kind == "request" else self.client
        receiver.receive_data(data)
        parts: list[str] = []
        done = False
        for ev in receiver.events():
            check(isinstance(ev, TextMessage), f"ws: unexpected event {ev!r}")
            assert isinstance(ev, TextMessage)
            parts.append(ev.data)
            done = ev.message_finished
        check(done, "ws: message not finished")
        env = json.loads("".join(parts))
        check_body(env["body"], msg, "ws")
        check(env["headers"] == app_headers_dict(msg), "ws: headers")
        if kind == "request":
            check(env["op"] == msg["op"], "ws: op mismatch")
        elif kind == "response":
            check(self.tracker.op_of(env["id"]) == msg["op"], "ws: response id/op mismatch")
            check(env["status"] == msg.get("status", 0), "ws: status")
        else:
            check(env["mid"] == msg["message_id"] and env["topic"] == msg["topic"], "ws: push")


class WebSocketCodec:
    def __init__(self, deflate: bool = False) -> None:
        self.deflate = deflate
        self.name = "ws-deflate-json" if deflate else "ws-json"
        self._ids = IdentitySource()

    def new_session(self) -> WebSocketSession:
        return WebSocketSession(self._ids.next(), self.deflate)
