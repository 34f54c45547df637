"""µs per PUBLISH encode and per PUBACK decode: channel.mqtt against paho-mqtt's own packet code.

The two operations on the hot path of every push to an MQTT box: the gateway
encodes a QoS 1 PUBLISH (topic ``devices/<device id>/push``, a 200-byte JSON
payload, a new packet id each time) and parses the box's 4-byte PUBACK.

Side by side, interleaved in one process so the ratios hold on a noisy machine:

* ``channel.mqtt``: ``encode(Publish(...), version)`` (building the dataclass
  included), ``encode_publish(...)`` (the fields as arguments) and
  ``PreparedPublish.to_bytes(packet_id)`` (one message to many subscribers: the
  per-receiver cost); ``Parser.feed(puback_bytes)`` on a server's parser past
  CONNECT (fixed header, remaining length, direction and flag checks, body
  decode, the ``Puback``), also per PUBACK when 64 arrive in one read.
* paho-mqtt: ``Client._send_publish`` with ``_packet_queue`` replaced by a
  capture (paho builds the packet bytes there; the socket write is skipped), and
  ``paho.mqtt._packet.decode_puback(header, body, protocol)``, which gets the
  body only: paho reads the fixed header from the socket a byte at a time
  elsewhere, so its figure leaves that work out.
* the repo's hand-written MQTT 3.1.1 baseline (``stress/baselines/mqtt.py``):
  string concatenation with no checks, the floor.

Each sample times a batch of ``--batch`` operations with ``perf_counter_ns``;
the table gives the median µs per operation.

    python -m stress.mqtt_codec_speed [--samples 2000] [--batch 50]
        [--out stress/results/mqtt_codec_speed.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import _packet as paho_packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from channel.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    Connect,
    Parser,
    Properties,
    Puback,
    Publish,
    encode,
    encode_publish,
    prepare_publish,
)
from stress.baselines import mqtt as hand
from stress.machine import machine_info, machine_line

TOPIC = "devices/9f86d081884c7d65/push"
PAYLOAD = json.dumps(
    {
        "mid": "65f1c0de2a9b4c7e8d1f0a3b",
        "topic": "order.paid",
        "title": "Payment received",
        "body": "Table 12: 86.50 CNY paid by WeChat Pay",
        "data": {"order": "A-20261126-0042", "amount": "86.50", "currency": "CNY"},
        "ts": 1764000000000,
    },
    separators=(",", ":"),
).encode()
PUBACKS_PER_READ = 64

Op = Callable[[int], object]


class _NoSocket:
    """Stands in for paho's socket: ``_send_publish`` only checks one is set."""

    def close(self) -> None:
        pass


class _CapturingClient(paho.Client):
    """paho's client with its outgoing queue replaced by a capture."""

    def __init__(self, protocol: int) -> None:
        super().__init__(paho.CallbackAPIVersion.VERSION2, client_id="bench", protocol=protocol)
        self._sock = _NoSocket()  # type: ignore[assignment]
        self.captured = b""

    def _packet_queue(self, command: int, packet: Any, mid: int, qos: int, info: Any = None) -> Any:
        self.captured = packet
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS


def _publish_ops() -> dict[str, Op]:
    expiry = Properties(message_expiry_interval_s=3600)
    paho4, paho5 = _CapturingClient(paho.MQTTv311), _CapturingClient(paho.MQTTv5)
    paho_expiry = PahoProperties(PacketTypes.PUBLISH)
    paho_expiry.MessageExpiryInterval = 3600
    topic = TOPIC.encode()
    prepared = prepare_publish(TOPIC, PAYLOAD, 1, version=5)

    def pid(i: int) -> int:
        return i % 65535 + 1

    return {
        "channel.mqtt 3.1.1": lambda i: encode(Publish(TOPIC, PAYLOAD, 1, packet_id=pid(i)), 4),
        "channel.mqtt 5.0": lambda i: encode(Publish(TOPIC, PAYLOAD, 1, packet_id=pid(i)), 5),
        "channel.mqtt 5.0 + expiry": lambda i: encode(
            Publish(TOPIC, PAYLOAD, 1, packet_id=pid(i), properties=expiry), 5
        ),
        "channel.mqtt 3.1.1 encode_publish": lambda i: encode_publish(
            TOPIC, PAYLOAD, 1, pid(i), version=4
        ),
        "channel.mqtt 5.0 encode_publish": lambda i: encode_publish(
            TOPIC, PAYLOAD, 1, pid(i), version=5
        ),
        "channel.mqtt 5.0 prepared (fan-out)": lambda i: prepared.to_bytes(pid(i)),
        "paho-mqtt 3.1.1": lambda i: paho4._send_publish(pid(i), topic, PAYLOAD, 1),
        "paho-mqtt 5.0": lambda i: paho5._send_publish(pid(i), topic, PAYLOAD, 1),
        "paho-mqtt 5.0 + expiry": lambda i: paho5._send_publish(
            pid(i), topic, PAYLOAD, 1, properties=paho_expiry
        ),
        "hand-written 3.1.1 (no checks)": lambda i: hand.publish_qos1(TOPIC, pid(i), PAYLOAD),
    }


def _server_parser(version: int) -> Parser:
    parser = Parser()
    parser.feed(encode(Connect("bench"), version))
    return parser


def _puback_ops() -> dict[str, Op]:
    acks = [encode(Puback(i % 65535 + 1), MQTT_5) for i in range(PUBACKS_PER_READ)]
    batch = b"".join(acks)
    parsers = {v: _server_parser(v) for v in (MQTT_3_1_1, MQTT_5)}
    bodies = [ack[2:] for ack in acks]

    def ours(version: int) -> Op:
        parser = parsers[version]
        return lambda i: parser.feed(acks[i % PUBACKS_PER_READ])

    def ours_batched(i: int) -> object:
        # One read of 64 PUBACKs, counted as 1/64 of an operation by the runner.
        return parsers[MQTT_5].feed(batch)

    return {
        "channel.mqtt 3.1.1 (feed)": ours(MQTT_3_1_1),
        "channel.mqtt 5.0 (feed)": ours(MQTT_5),
        f"channel.mqtt 5.0 ({PUBACKS_PER_READ} per feed)": ours_batched,
        "paho-mqtt 3.1.1 (body only)": lambda i: paho_packet.decode_puback(
            0x40, bodies[i % PUBACKS_PER_READ], paho.MQTTv311
        ),
        "paho-mqtt 5.0 (body only)": lambda i: paho_packet.decode_puback(
            0x40, bodies[i % PUBACKS_PER_READ], paho.MQTTv5
        ),
        "hand-written 3.1.1 (read_packet)": lambda i: hand.read_packet(
            acks[i % PUBACKS_PER_READ], 0
        ),
    }


def _check() -> None:
    """The variants produce the same bytes, or the comparison means nothing."""
    paho4 = _CapturingClient(paho.MQTTv311)
    paho4._send_publish(7, TOPIC.encode(), PAYLOAD, 1)
    assert bytes(paho4.captured) == encode(Publish(TOPIC, PAYLOAD, 1, packet_id=7), 4)
    assert hand.publish_qos1(TOPIC, 7, PAYLOAD) == encode(
        Publish(TOPIC, PAYLOAD, 1, packet_id=7), 4
    )
    paho5 = _CapturingClient(paho.MQTTv5)
    paho5._send_publish(7, TOPIC.encode(), PAYLOAD, 1)
    assert bytes(paho5.captured) == encode(Publish(TOPIC, PAYLOAD, 1, packet_id=7), 5)
    assert paho_packet.decode_puback(0x40, b"\x00\x07", paho.MQTTv5).mid == 7


def _measure(ops: dict[str, Op], samples: int, batch: int, quiet: bool) -> dict[str, float]:
    clock = time.perf_counter_ns
    times: dict[str, list[float]] = {name: [] for name in ops}
    for op in ops.values():  # warm-up
        for i in range(200):
            op(i)
    gc.collect()
    gc.disable()
    try:
        for sample in range(samples):
            base = sample * batch
            for name, op in ops.items():
                t0 = clock()
                for i in range(base, base + batch):
                    op(i)
                per_op = (clock() - t0) / batch
                if "per feed" in name:
                    per_op /= PUBACKS_PER_READ
                times[name].append(per_op)
            if sample % 500 == 0 and not quiet:
                print(f"[mqtt_codec_speed] {sample}/{samples}", file=sys.stderr, flush=True)
    finally:
        gc.enable()
    return {name: statistics.median(values) / 1000 for name, values in times.items()}


def run(samples: int, batch: int, quiet: bool = False) -> dict[str, Any]:
    publish, puback = _publish_ops(), _puback_ops()
    _check()
    tables = {"publish_encode": _measure(publish, samples, batch, quiet)}
    tables["puback_decode"] = _measure(puback, samples, batch, quiet)
    rows = []
    for table, results in tables.items():
        reference = next(v for k, v in results.items() if k.startswith("paho-mqtt 3.1.1"))
        for name, us in results.items():
            rows.append(
                {"operation": table, "variant": name, "us_p50": round(us, 3),
                 "x_paho_311": round(us / reference, 3)}
            )  # fmt: skip
    return {
        "machine": machine_info(),
        "samples": samples,
        "batch": batch,
        "payload_bytes": len(PAYLOAD),
        "topic": TOPIC,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("stress/results/mqtt_codec_speed.json"))
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    result = run(args.samples, args.batch, args.quiet)
    print(f"machine: {machine_line()} | pid {os.getpid()}")
    print(
        f"PUBLISH QoS 1, topic {len(TOPIC)} B, payload {result['payload_bytes']} B; "
        f"median of {args.samples} samples of {args.batch} operations"
    )
    print(f"{'operation':<15} | {'variant':<36} | {'µs/op':>7} | ×paho 3.1.1")
    print("-" * 78)
    for row in result["rows"]:
        print(
            f"{row['operation']:<15} | {row['variant']:<36} | {row['us_p50']:>7.3f} | "
            f"{row['x_paho_311']:.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
