"""Python per QoS 1 push to an MQTT box, in process: the PUBLISH out and its PUBACK back.

``python -m stress.mqtt_push_path [--boxes 2000] [--rounds 15]``

``--boxes`` open MQTT connections (``MqttConnection``, 3.1.1 and 5.0 in turn) on a
stand-in node: each round pushes one message to every box (``push`` and ``flush``, as
the inbox writes a delivery batch) and then has every push acknowledged. Two paths:

* the native engine holds the pushes (``hold_pushes``, the default since 2026-12-07):
  a push is the ``MQTT_PUSH`` command tuple, and the ACKs come back as the engine's
  ``MQTT_ACKS`` lists, looked up and handed to ``acks_many`` as ``NativeEngine`` does;
* Python holds them (``Outbound``, the Python engine's path, and the native engine's
  before): the transport appends the ``MQTT_WRITE`` tuple, and every PUBLISH is
  answered with its PUBACK as the engine handed it up (``pubacks_received``).

Beside them, the floor: an MMTP push on the native engine is one command tuple
(``NativeMmtpSession.push``) and its ACK an entry of the engine's ACKS lists.

Figures are this thread's CPU time (``time.thread_time``) per push, the lowest round of
each step; the collector is tuned as the gateway tunes it. For counts other machines
reproduce exactly, run it under ``valgrind --tool=cachegrind --cache-sim=no`` for two
values of ``--rounds``: the difference over the pushes in between is per push.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from channel.config import MqttConfig, load_config
from channel.gateway.run import tune_gc
from channel.mqtt.auth import MqttIdentity
from channel.mqtt.connection import MqttConnection
from channel.mqtt.metrics import MqttMetrics
from channel.push.model import new_message_ids, now_ms
from channel.rpc.model import DeviceContext
from channel.sessions import Session
from channel.sessions.registry import SessionRegistry
from stress.machine import machine_info, machine_line
from stress.report import write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "mqtt_push_path.json"
BODY = b'{"kind": "order", "order_id": "A-10432", "status": "ready", "eta_s": 120, "x": 1}'


class _Node:
    """What a connection asks of its node on the push path (``MqttNode``)."""

    def __init__(self) -> None:
        self.config = MqttConfig()
        self.registry = SessionRegistry()
        self.metrics = MqttMetrics()

    def push_topic(self, device_id: str) -> str:
        return f"devices/{device_id}/push"


class _Transport:
    """``NativeMqttTransport`` writing into a command list (holding pushes, or not)."""

    peer_ip = "127.0.0.1"
    client_cert_cn = None
    tls = False

    def __init__(self, conn: int, commands: list[tuple[Any, ...]], held: bool) -> None:
        self.conn = conn
        self.commands = commands
        self.held = held

    def write(self, data: bytes) -> None:
        self.commands.append(("MQTT_WRITE", self.conn, data))

    def push_holder(self) -> _Transport | None:
        return self if self.held else None

    def hold_pushes(self, *setup: Any) -> None:
        self.commands.append(("MQTT_PUSHES", self.conn, *setup))

    def push(self, message_id: str, headers: Any, body: bytes, tracked: bool) -> None:
        self.commands.append(("MQTT_PUSH", self.conn, message_id.encode(), headers, body, tracked))

    def write_held(self, data: bytes) -> None:
        self.commands.append(("MQTT_HELD", self.conn, data))


def _open_boxes(
    count: int, version: int, commands: list[tuple[Any, ...]], held: bool
) -> list[MqttConnection]:
    node = _Node()
    boxes = []
    for n in range(count):
        box = MqttConnection(node, _Transport(n, commands, held))  # type: ignore[arg-type]
        box._state = 2  # open: CONNACK sent (``connection._OPEN``)
        box.version = version
        device = DeviceContext(f"bench-{n:06d}", "", "bench", "", "")
        box.identity = MqttIdentity(device, device.device_id, 0)
        box.hold_pushes()  # as the session opens (a no-op unless ``held``)
        boxes.append(box)
    commands.clear()
    return boxes


def _packet_id(data: bytes) -> int:
    """The packet id of a QoS 1 PUBLISH (remaining length under 16 KiB)."""
    at = 2 if data[1] < 0x80 else 3
    topic_end = at + 2 + int.from_bytes(data[at : at + 2], "big")
    return int.from_bytes(data[topic_end : topic_end + 2], "big")


def measure_mqtt(boxes_n: int, rounds: int, version: int, held: bool) -> dict[str, float]:
    if held:
        return measure_mqtt_held(boxes_n, rounds, version)
    commands: list[tuple[Any, ...]] = []
    boxes = _open_boxes(boxes_n, version, commands, False)
    registry = boxes[0]._node.registry
    best = {"push": float("inf"), "puback": float("inf")}
    for _ in range(rounds):
        ids = new_message_ids(now_ms(), boxes_n)
        commands.clear()
        started = time.thread_time()
        for box, message_id in zip(boxes, ids, strict=True):
            box.push(message_id, BODY, (), True)
            box.flush()
        pushed = time.thread_time()
        pubacks = [[_packet_id(command[2])] for command in commands]
        answered = time.thread_time()
        sessions: list[Session | None] = []
        acked: list[str] = []
        for box, packet_ids in zip(boxes, pubacks, strict=True):
            box.pubacks_received(packet_ids, sessions, acked)
        registry.acks_many(sessions, acked)
        done = time.thread_time()
        assert len(acked) == boxes_n, "every push acknowledged"
        best["push"] = min(best["push"], (pushed - started) / boxes_n * 1e6)
        best["puback"] = min(best["puback"], (done - answered) / boxes_n * 1e6)
    return best


def measure_mqtt_held(boxes_n: int, rounds: int, version: int) -> dict[str, float]:
    """The native engine holds the pushes: what Python does per push and per ACK."""
    commands: list[tuple[Any, ...]] = []
    boxes = _open_boxes(boxes_n, version, commands, True)
    registry = boxes[0]._node.registry
    handlers = dict(enumerate(boxes))
    best = {"push": float("inf"), "puback": float("inf")}
    for _ in range(rounds):
        ids = new_message_ids(now_ms(), boxes_n)
        commands.clear()
        started = time.thread_time()
        for box, message_id in zip(boxes, ids, strict=True):
            box.push(message_id, BODY, (), True)
            box.flush()
        pushed = time.thread_time()
        assert len(commands) == boxes_n and commands[0][0] == "MQTT_PUSH"
        conns = [command[1] for command in commands]
        acked = [command[2].decode() for command in commands]
        answered = time.thread_time()
        # ``NativeEngine._mqtt_acks``.
        get = handlers.get
        sessions: list[Session | None] = [get(conn) for conn in conns]
        registry.acks_many(sessions, acked)
        boxes[0]._node.metrics.packets_in[4] += len(acked)
        done = time.thread_time()
        best["push"] = min(best["push"], (pushed - started) / boxes_n * 1e6)
        best["puback"] = min(best["puback"], (done - answered) / boxes_n * 1e6)
    return best


def measure_mmtp_floor(sessions_n: int, rounds: int) -> dict[str, float]:
    """What the native engine's MMTP session does per push and ACK in Python."""
    commands: list[tuple[Any, ...]] = []
    best = {"push": float("inf"), "puback": float("inf")}
    for _ in range(rounds):
        ids = new_message_ids(now_ms(), sessions_n)
        commands.clear()
        started = time.thread_time()
        for conn, message_id in enumerate(ids):
            commands.append(("PUSH", conn, message_id.encode(), (), BODY, True))
        pushed = time.thread_time()
        conns = list(range(sessions_n))
        answered = time.thread_time()
        acked = [(conn, message_id) for conn, message_id in zip(conns, ids, strict=True)]
        done = time.thread_time()
        assert len(acked) == sessions_n
        best["push"] = min(best["push"], (pushed - started) / sessions_n * 1e6)
        best["puback"] = min(best["puback"], (done - answered) / sessions_n * 1e6)
    return best


def table(doc: dict[str, Any]) -> str:
    lines = ["| path | µs per push out | µs per ack in | total |", "|---|---:|---:|---:|"]
    for name, row in doc["results"].items():
        total = row["push"] + row["puback"]
        lines.append(f"| {name} | {row['push']:.2f} | {row['puback']:.2f} | {total:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stress.mqtt_push_path", description=__doc__)
    p.add_argument("--boxes", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quiet", action="store_true", help="no effect: it prints no progress")
    p.add_argument(
        "--python-holds",
        action="store_true",
        help="the Python engine's path (Outbound, PUBACKs parsed in Python)",
    )
    args = p.parse_args(argv)
    print(f"machine: {machine_line()}")
    tune_gc(load_config(None, environ={}).server.gc_gen0_threshold)  # as the gateway does
    held = not args.python_holds
    path = "engine holds pushes" if held else "Python holds pushes"
    results = {
        f"MQTT 3.1.1 (QoS 1), {path}": measure_mqtt(args.boxes, args.rounds, 4, held),
        f"MQTT 5.0 (QoS 1, message-id property), {path}": measure_mqtt(
            args.boxes, args.rounds, 5, held
        ),
        "MMTP on the native engine (floor)": measure_mmtp_floor(args.boxes, args.rounds),
    }
    doc: dict[str, Any] = {"boxes": args.boxes, "rounds": args.rounds, "results": results}
    doc["machine"] = machine_info()
    print(table(doc))
    write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
