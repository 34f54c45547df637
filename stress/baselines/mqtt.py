"""MQTT 3.1.1 baseline (hand-encoded packets, decoded back).

* setup: CONNECT (client id = username = device id, password = token, clean session,
  keep-alive 60 s) + CONNACK, then SUBSCRIBE to ``rpc/resp/<device-id>`` and
  ``push/<device-id>`` (QoS 1) + SUBACK: a clean-session client has to subscribe on every
  connect.
* request:  PUBLISH QoS 1 to ``rpc/req/<op>``, payload ``{"id":..,"headers":{..},"body":..}``
* response: PUBLISH QoS 1 to ``rpc/resp/<device-id>``,
  payload ``{"id":..,"status":..,"headers":{..},"body":..}``
* push:     PUBLISH QoS 1 to ``push/<device-id>``,
  payload ``{"mid":..,"topic":..,"headers":{..},"body":..}``

Every message is QoS 1, so its cost includes the 4-byte PUBACK that the receiver returns.
"""

from __future__ import annotations

import json
import struct

from .common import (
    Counter16,
    IdentitySource,
    Msg,
    RequestTracker,
    SessionIdentity,
    app_headers_dict,
    check,
    check_body,
    json_compact,
)

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
MAX_REMAINING_LENGTH = 268_435_455
KEEP_ALIVE_S = 60


def encode_remaining_length(n: int) -> bytes:
    """MQTT "Remaining Length": base-128 varint, 1..4 bytes."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length out of range: {n}")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_remaining_length(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a Remaining Length at ``pos``: (value, position after it)."""
    value, mult = 0, 1
    for i in range(4):
        if pos + i >= len(data):
            raise ValueError("truncated remaining length")
        byte = data[pos + i]
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, pos + i + 1
        mult *= 128
    raise ValueError("malformed remaining length (more than 4 bytes)")


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def _read_str(data: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">H", data, pos)
    return data[pos + 2 : pos + 2 + n].decode(), pos + 2 + n


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([ptype << 4 | flags]) + encode_remaining_length(len(body)) + body


def read_packet(data: bytes, pos: int) -> tuple[int, int, bytes, int]:
    """(type, flags, body, end) of the packet at ``pos``."""
    first = data[pos]
    length, start = decode_remaining_length(data, pos + 1)
    body = data[start : start + length]
    check(len(body) == length, "mqtt: truncated packet")
    return first >> 4, first & 0x0F, body, start + length


def publish_qos1(topic: str, packet_id: int, payload: bytes) -> bytes:
    return packet(PUBLISH, 0b0010, _str(topic) + struct.pack(">H", packet_id) + payload)


def puback(packet_id: int) -> bytes:
    return packet(PUBACK, 0, struct.pack(">H", packet_id))


def connect(client_id: str, username: str, password: str) -> bytes:
    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    var = _str("MQTT") + bytes([4, flags]) + struct.pack(">H", KEEP_ALIVE_S)
    return packet(CONNECT, 0, var + _str(client_id) + _str(username) + _str(password))


class MqttSession:
    def __init__(self, ident: SessionIdentity) -> None:
        self.ident = ident
        self.tracker = RequestTracker()
        self.up_ids = Counter16()  # client -> broker packet ids
        self.down_ids = Counter16()  # broker -> client packet ids
        self._next_rid = 0
        self.resp_topic = f"rpc/resp/{ident.device_id}"
        self.push_topic = f"push/{ident.device_id}"
        conn = connect(ident.device_id, ident.device_id, ident.token)
        connack = packet(CONNACK, 0, b"\x00\x00")
        sub_id = self.up_ids.next()
        filters = b"".join(_str(t) + b"\x01" for t in (self.resp_topic, self.push_topic))
        sub = packet(SUBSCRIBE, 0b0010, struct.pack(">H", sub_id) + filters)
        suback = packet(SUBACK, 0, struct.pack(">H", sub_id) + b"\x01\x01")
        self._check_setup(conn, sub)
        self._setup = len(conn) + len(connack) + len(sub) + len(suback)

    def _check_setup(self, conn: bytes, sub: bytes) -> None:
        ptype, _, body, _ = read_packet(conn, 0)
        check(ptype == CONNECT, "mqtt: CONNECT")
        name, pos = _read_str(body, 0)
        check(name == "MQTT" and body[pos] == 4, "mqtt: protocol level")
        client_id, pos = _read_str(body, pos + 4)
        user, pos = _read_str(body, pos)
        password, pos = _read_str(body, pos)
        check(
            (client_id, user, password) == (self.ident.device_id,) * 2 + (self.ident.token,),
            "mqtt: CONNECT payload",
        )
        check(read_packet(sub, 0)[0] == SUBSCRIBE, "mqtt: SUBSCRIBE")

    def setup_bytes(self) -> int:
        return self._setup

    def encode(self, msg: Msg) -> bytes:
        kind = msg["kind"]
        headers = app_headers_dict(msg)
        if kind == "request":
            self._next_rid += 1
            rid = self._next_rid
            self.tracker.opened(msg["op"], rid)
            topic = "rpc/req/" + msg["op"]
            env = {"id": rid, "headers": headers, "body": msg.get("body")}
            pid = self.up_ids.next()
        elif kind == "response":
            rid_or_none = self.tracker.answer(msg["op"])
            if rid_or_none is None:  # response without a request in the corpus
                self.tracker.orphans += 1
                self._next_rid += 1
                rid_or_none = self._next_rid
                self.tracker.opened(msg["op"], rid_or_none)
                self.tracker.answer(msg["op"])
            topic = self.resp_topic
            env = {
                "id": rid_or_none,
                "status": msg.get("status", 0),
                "headers": headers,
                "body": msg.get("body"),
            }
            pid = self.down_ids.next()
        elif kind == "push":
            topic = self.push_topic
            env = {
                "mid": msg["message_id"],
                "topic": msg["topic"],
                "headers": headers,
                "body": msg.get("body"),
            }
            pid = self.down_ids.next()
        else:
            raise ValueError(f"unknown message kind {kind!r}")
        return publish_qos1(topic, pid, json_compact(env)) + puback(pid)

    def decode(self, data: bytes, msg: Msg) -> None:
        kind = msg["kind"]
        ptype, flags, body, end = read_packet(data, 0)
        check(ptype == PUBLISH and (flags >> 1) & 3 == 1, "mqtt: not a QoS 1 PUBLISH")
        topic, pos = _read_str(body, 0)
        (pid,) = struct.unpack_from(">H", body, pos)
        env = json.loads(body[pos + 2 :])
        ack_type, _, ack_body, end = read_packet(data, end)
        check(ack_type == PUBACK and ack_body == struct.pack(">H", pid), "mqtt: PUBACK")
        check(end == len(data), "mqtt: trailing bytes")
        check_body(env["body"], msg, "mqtt")
        check(env["headers"] == app_headers_dict(msg), "mqtt: headers")
        if kind == "request":
            check(topic == "rpc/req/" + msg["op"], "mqtt: op mismatch")
        elif kind == "response":
            check(topic == self.resp_topic, "mqtt: response topic")
            check(self.tracker.op_of(env["id"]) == msg["op"], "mqtt: response id/op mismatch")
            check(env["status"] == msg.get("status", 0), "mqtt: status")
        else:
            check(topic == self.push_topic, "mqtt: push topic")
            check(env["mid"] == msg["message_id"] and env["topic"] == msg["topic"], "mqtt: push")


class MqttCodec:
    name = "mqtt311-json"

    def __init__(self) -> None:
        self._ids = IdentitySource()

    def new_session(self) -> MqttSession:
        return MqttSession(self._ids.next())
