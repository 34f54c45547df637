"""HTTP/1.1 + JSON baseline (hand-serialised, hand-parsed; keep-alive connections).

* request  -> ``POST /rpc/<op> HTTP/1.1`` + identity headers + app headers + JSON body
* response -> ``HTTP/1.1 200 OK`` + content-type/length, date, server, app headers + JSON body
  (a non-zero app status travels as ``x-status``)
* push     -> long-poll: the push is the response to the pending ``GET /v1/push/poll``, and the
  device immediately re-arms the poll with a new GET (carrying ``x-ack: <message id>``). The
  push therefore costs that response *plus* the re-poll request. The very first poll request is
  part of ``setup_bytes``. (HTTP/1.1 has no multiplexing, so the long-poll lives on its own
  keep-alive connection; its TCP/TLS handshakes are not counted, as for every other protocol.)

Bodies are gzip'd (level 6, ``Content-Encoding: gzip``) only when that makes them smaller, the
same policy as the HTTP/2 baseline.
"""

from __future__ import annotations

import gzip
import json
from urllib.parse import quote, unquote

from .common import (
    IdentitySource,
    Msg,
    SessionClock,
    SessionIdentity,
    app_headers,
    app_headers_dict,
    body_bytes,
    check,
    check_app_headers,
    check_body,
    gzip_if_smaller,
    merge_headers,
)

_SERVER = "nginx"
POLL_PATH = "/v1/push/poll"

Headers = list[tuple[str, str]]


def _title(name: str) -> str:
    return "-".join(p[:1].upper() + p[1:] for p in name.split("-"))


def _head(start_line: str, headers: Headers) -> bytes:
    lines = [start_line]
    lines.extend(f"{_title(k)}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _parse_one(data: bytes, pos: int) -> tuple[str, Headers, bytes, int]:
    """Parse one HTTP/1.1 message at ``pos``: (start line, lower-cased headers, body, end)."""
    end = data.index(b"\r\n\r\n", pos)
    lines = data[pos:end].decode().split("\r\n")
    headers: Headers = []
    length = 0
    encoding = ""
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        check(bool(sep), f"http1: bad header line {line!r}")
        name = name.strip().lower()
        value = value.strip()
        if name == "content-length":
            length = int(value)
        elif name == "content-encoding":
            encoding = value
        headers.append((name, value))
    start = end + 4
    body = data[start : start + length]
    check(len(body) == length, "http1: truncated body")
    if encoding == "gzip":
        body = gzip.decompress(body)
    return lines[0], headers, body, start + length


def _get(headers: Headers, name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


class Http1Session:
    def __init__(self, ident: SessionIdentity) -> None:
        self.ident = ident
        self.clock = SessionClock()
        self._setup = len(self._poll_request(None))

    # -- builders
    def _common_request_headers(self) -> Headers:
        return [("host", self.ident.host), *self.ident.http_headers()]

    def _poll_request(self, ack: str | None) -> bytes:
        headers = self._common_request_headers()
        headers += [("accept", "application/json"), ("accept-encoding", "gzip")]
        if ack is not None:
            headers.append(("x-ack", ack))
        return _head(f"GET {POLL_PATH} HTTP/1.1", headers)

    def _body_headers(self, body: bytes, gz: bool) -> Headers:
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        if gz:
            headers.append(("content-encoding", "gzip"))
        return headers

    def setup_bytes(self) -> int:
        return self._setup

    def encode(self, msg: Msg) -> bytes:
        kind = msg["kind"]
        body, gz = gzip_if_smaller(body_bytes(msg))
        if kind == "request":
            headers = self._common_request_headers()
            headers += self._body_headers(body, gz)
            headers += [("accept", "application/json"), ("accept-encoding", "gzip")]
            headers = merge_headers(headers, app_headers(msg))
            path = "/rpc/" + quote(msg["op"], safe="._-~")
            return _head(f"POST {path} HTTP/1.1", headers) + body
        headers = self._body_headers(body, gz)
        headers += [("date", self.clock.date_for(msg)), ("server", _SERVER)]
        if kind == "response":
            if msg.get("status", 0):
                headers.append(("x-status", str(msg["status"])))
            headers = merge_headers(headers, app_headers(msg))
            return _head("HTTP/1.1 200 OK", headers) + body
        if kind == "push":
            headers += [("x-message-id", msg["message_id"]), ("x-topic", msg["topic"])]
            headers = merge_headers(headers, app_headers(msg))
            return _head("HTTP/1.1 200 OK", headers) + body + self._poll_request(msg["message_id"])
        raise ValueError(f"unknown message kind {kind!r}")

    def decode(self, data: bytes, msg: Msg) -> None:
        kind = msg["kind"]
        start, headers, body, end = _parse_one(data, 0)
        check_body(json.loads(body), msg, "http1")
        check_app_headers(headers, msg, "http1")
        if kind == "request":
            method, target, version = start.split(" ")
            check(method == "POST" and version == "HTTP/1.1", "http1: bad request line")
            check(unquote(target.removeprefix("/rpc/")) == msg["op"], "http1: op mismatch")
            expected = app_headers_dict(msg).get("authorization", self.ident.authorization)
            check(_get(headers, "authorization") == expected, "http1: auth")
        else:
            check(start == "HTTP/1.1 200 OK", "http1: bad status line")
        if kind == "response":
            check(int(_get(headers, "x-status") or 0) == msg.get("status", 0), "http1: status")
        if kind == "push":
            check(_get(headers, "x-message-id") == msg["message_id"], "http1: message id")
            check(_get(headers, "x-topic") == msg["topic"], "http1: topic")
            poll, poll_headers, _, end = _parse_one(data, end)
            check(poll == f"GET {POLL_PATH} HTTP/1.1", "http1: bad re-poll")
            check(_get(poll_headers, "x-ack") == msg["message_id"], "http1: poll ack")
        check(end == len(data), "http1: trailing bytes")


class Http1Codec:
    name = "http1-json"

    def __init__(self) -> None:
        self._ids = IdentitySource()

    def new_session(self) -> Http1Session:
        return Http1Session(self._ids.next())
