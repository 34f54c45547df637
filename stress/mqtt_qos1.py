"""QoS 1 to a box across reconnects and ``kill -9`` of its node: nothing lost, no duplicate
the box cannot recognise.

Two ``channel serve`` nodes (A, B) share a throwaway ``redis-server`` (the Redis push
backend). A box holds a persistent session (MQTT 5 session expiry, or 3.1.1 clean
session 0) subscribed to ``feed/#`` at QoS 1; a publisher on B publishes N QoS 1
messages (payload: a sequence number) at a steady rate and counts those B PUBACKed
(accepted: queued in Redis). Meanwhile the box:

1. at 1/4 of the messages, cuts its connection to A (no DISCONNECT) holding back the
   PUBACK of what it has in flight, and reconnects to B;
2. at 2/4, the same from B back to A;
3. at 3/4, holds back its PUBACKs and A is killed with SIGKILL; the box reconnects to B.

Every message the publisher had PUBACKed must reach the box (lost = accepted - unique
received). A message may come twice only if the box had not acknowledged the first copy
and the second has the same packet id (ids of queued messages are stable on every node,
``channel/mqtt/flow.py``): that is a duplicate the box recognises. Any other second copy
is counted as a duplicate the application would see.

    python -m stress.mqtt_qos1 --messages 10000 --engine native --version 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from channel.mqtt import (
    MQTT_3_1_1,
    MQTT_5,
    Connect,
    Properties,
    Puback,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    Subscription,
)
from stress.gateway_proc import GatewayProcess
from stress.machine import machine_info, machine_line
from stress.report import table
from tests.mqtt_harness import RawBox
from tests.redis_servers import RedisServer

BOX = "qos1-box"
PUBLISHER = "qos1-publisher"
#: A reconnect that does not get its CONNACK in this long fails the run.
STEP_TIMEOUT_S = 60.0


@dataclass
class Tally:
    """What the box saw: per sequence number, each copy's (packet id, acknowledged by
    the box, number of the connection it came on)."""

    copies: dict[int, list[tuple[int, bool, int]]] = field(default_factory=dict)
    deliveries: int = 0

    def unique(self) -> int:
        return len(self.copies)

    def duplicates(self) -> dict[str, int]:
        """Second copies: ``in_flight`` (the box had not acknowledged the first; MQTT's own
        redelivery), ``acked`` (it had, but the PUBACK died with the connection or the
        node before the queue heard of it: at least once), both on a later connection
        under the first copy's packet id, which a box recognises; ``unrecognised``:
        anything else (another packet id, or twice on one connection)."""
        counts = {"in_flight": 0, "acked": 0, "unrecognised": 0}
        for copies in self.copies.values():
            for (first_id, first_acked, first_conn), (again_id, _, again_conn) in pairwise(copies):
                if first_id != again_id or first_conn == again_conn:
                    counts["unrecognised"] += 1
                else:
                    counts["acked" if first_acked else "in_flight"] += 1
        return counts


class Box:
    """The subscribing box: one connection at a time, PUBACKs held back on demand."""

    def __init__(self, version: int, tally: Tally) -> None:
        self.version = version
        self.tally = tally
        self.raw: RawBox | None = None
        self.hold = False
        self.reader: asyncio.Task[None] | None = None
        self.connections = 0

    async def connect(self, node: GatewayProcess, first: bool) -> None:
        props = Properties(session_expiry_interval_s=3600) if self.version == MQTT_5 else None
        packet = Connect(BOX, clean_start=first, username=BOX,
                         password=node.token(BOX),
                         properties=props or Properties())  # fmt: skip
        if self.version == MQTT_3_1_1:  # clean session 0: persistent (a fresh Redis: new)
            packet = Connect(BOX, clean_start=False, username=BOX, password=packet.password)
        raw, connack = await RawBox.connect(node.info["mqtt_port"], packet, self.version,
                                            ca=node.ca_cert)  # fmt: skip
        if connack is None or connack.reason_code != ReasonCode.SUCCESS:
            raise RuntimeError(f"box CONNECT refused: {connack}")
        if first:
            await raw.send(Subscribe(1, (Subscription("feed/#", 1),)))
            suback = await raw.expect(Suback)
            assert suback.reason_codes[0] == 1, suback
        elif not connack.session_present:
            raise RuntimeError("the session was not present after a reconnect")
        self.raw, self.hold = raw, False
        self.connections += 1
        self.reader = asyncio.get_running_loop().create_task(self._read(raw, self.connections))

    async def _read(self, raw: RawBox, conn_no: int) -> None:
        try:
            while True:
                packet = await raw.recv(timeout_s=3600)
                if not isinstance(packet, Publish):
                    continue
                seq = int(packet.payload)
                acked = not self.hold
                self.tally.copies.setdefault(seq, []).append((packet.packet_id, acked, conn_no))
                self.tally.deliveries += 1
                if acked:
                    await raw.send(Puback(packet.packet_id))
        except (EOFError, ConnectionError, OSError):
            return

    async def cut(self) -> None:
        """Drop the connection without DISCONNECT (what is in flight stays unacknowledged)."""
        assert self.raw is not None and self.reader is not None
        self.raw.abort()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)

    async def lost_node(self) -> None:
        """Wait for the server side to vanish (its node was killed)."""
        assert self.reader is not None
        await asyncio.wait_for(self.reader, STEP_TIMEOUT_S)


class Publisher:
    def __init__(self, node: GatewayProcess, version: int, window: int) -> None:
        self.node = node
        self.version = version
        self.window = asyncio.Semaphore(window)
        self.waiting: dict[int, int] = {}  # packet id -> seq
        self.accepted: set[int] = set()
        self.refused = 0
        self.raw: RawBox | None = None

    async def connect(self) -> None:
        node = self.node
        packet = Connect(PUBLISHER, clean_start=True, username=PUBLISHER,
                         password=node.token(PUBLISHER))  # fmt: skip
        self.raw, connack = await RawBox.connect(node.info["mqtt_port"], packet, self.version,
                                                 ca=node.ca_cert)  # fmt: skip
        assert connack is not None and connack.reason_code == ReasonCode.SUCCESS, connack

    async def run(self, messages: int, rate_per_s: float) -> None:
        assert self.raw is not None
        acks = asyncio.get_running_loop().create_task(self._acks(messages))
        start = time.monotonic()
        for seq in range(messages):
            await self.window.acquire()
            packet_id = seq % 65535 + 1
            self.waiting[packet_id] = seq
            await self.raw.send(Publish("feed/x", str(seq).encode(), 1, packet_id=packet_id))
            ahead_s = start + (seq + 1) / rate_per_s - time.monotonic()
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)
        await acks

    async def _acks(self, messages: int) -> None:
        assert self.raw is not None
        while len(self.accepted) + self.refused < messages:
            packet = await self.raw.recv(timeout_s=STEP_TIMEOUT_S)
            if isinstance(packet, Puback):
                seq = self.waiting.pop(packet.packet_id)
                if packet.reason_code in (ReasonCode.SUCCESS, ReasonCode.NO_MATCHING_SUBSCRIBERS):
                    self.accepted.add(seq)
                else:
                    self.refused += 1
                self.window.release()


def _node(state_dir: Path, redis_url: str, engine: str, messages: int, name: str) -> Any:
    settings = {
        "server": {"engine": engine},
        "push": {"backend": "redis", "redis_url": redis_url, "key_prefix": "q1",
                 "lease_ms": 2000, "queue_cap": messages + 1000,
                 "request_stream": "q1:push", "receipt_stream": "q1:receipts"},
        "mqtt": {"subscribe_allow": ["#"], "publish_allow": ["#"], "uplink_topics": []},
    }  # fmt: skip
    return GatewayProcess(state_dir=state_dir, settings=settings, name=name).start()


async def _when(tally: Tally, count: int) -> None:
    while tally.unique() < count:
        await asyncio.sleep(0.005)


async def _hold_one(box: Box, tally: Tally) -> None:
    """Hold back PUBACKs until at least one copy arrived unacknowledged (bounded)."""
    box.hold = True
    seen = tally.deliveries
    deadline = time.monotonic() + 2.0
    while tally.deliveries == seen and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="channel-qos1-"))
    redis = RedisServer(work / "redis")
    redis.start()
    version = MQTT_5 if args.version == "5" else MQTT_3_1_1
    a = _node(work / "state", redis.url, args.engine, args.messages, "node-a")
    b = _node(work / "state", redis.url, args.engine, args.messages, "node-b")
    tally = Tally()
    box = Box(version, tally)
    steps: list[str] = []
    started = time.monotonic()
    try:
        await box.connect(a, first=True)
        publisher = Publisher(b, version, args.window)
        await publisher.connect()
        publishing = asyncio.get_running_loop().create_task(publisher.run(args.messages, args.rate))
        quarter = args.messages // 4
        await _when(tally, quarter)
        await _hold_one(box, tally)
        await box.cut()
        await box.connect(b, first=False)
        steps.append(f"{tally.unique()}: cut A, reconnected to B")
        await _when(tally, 2 * quarter)
        await _hold_one(box, tally)
        await box.cut()
        await box.connect(a, first=False)
        steps.append(f"{tally.unique()}: cut B, reconnected to A")
        await _when(tally, 3 * quarter)
        await _hold_one(box, tally)
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(a.proc.wait, 10)
        await box.lost_node()
        await box.connect(b, first=False)
        steps.append(f"{tally.unique()}: kill -9 A, reconnected to B")
        await asyncio.wait_for(publishing, args.messages / args.rate + STEP_TIMEOUT_S)
        deadline = time.monotonic() + args.settle_s
        while not publisher.accepted <= tally.copies.keys() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        elapsed_s = time.monotonic() - started
    finally:
        for node in (a, b):
            node.cleanup()
        redis.stop()
    duplicates = tally.duplicates()
    lost = sorted(publisher.accepted - tally.copies.keys())
    complete = len(publisher.accepted) == args.messages
    return {
        "machine": machine_info(),
        "engine": args.engine,
        "mqtt_version": args.version,
        "messages": args.messages,
        "rate_per_s": args.rate,
        "accepted": len(publisher.accepted),
        "refused": publisher.refused,
        "received_unique": tally.unique(),
        "deliveries": tally.deliveries,
        "lost": len(lost),
        "lost_first": lost[:20],
        "duplicates_in_flight": duplicates["in_flight"],
        "duplicates_acked": duplicates["acked"],
        "duplicates_unrecognised": duplicates["unrecognised"],
        "steps": steps,
        "duplicated": {str(k): v for k, v in tally.copies.items() if len(v) > 1},
        "seconds": round(elapsed_s, 1),
        "passed": complete and not lost and not duplicates["unrecognised"],
    }


def render(doc: dict[str, Any]) -> str:
    rows = [
        ["engine", "MQTT", "accepted", "received", "deliveries", "lost", "dup in-flight",
         "dup acked", "dup unrecognised", "s"],
        [doc["engine"], doc["mqtt_version"], str(doc["accepted"]), str(doc["received_unique"]),
         str(doc["deliveries"]), str(doc["lost"]), str(doc["duplicates_in_flight"]),
         str(doc["duplicates_acked"]), str(doc["duplicates_unrecognised"]),
         str(doc["seconds"])],
    ]  # fmt: skip
    lines = [machine_line(), *doc["steps"], table(rows)]
    lines.append("PASS" if doc["passed"] else "FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=400.0, help="publishes per second")
    parser.add_argument("--window", type=int, default=100, help="publishes awaiting PUBACK")
    parser.add_argument("--engine", choices=["native", "python"], default="native")
    parser.add_argument("--version", choices=["3.1.1", "5"], default="5")
    parser.add_argument("--settle-s", type=float, default=60.0,
                        help="how long to wait for the last messages after publishing")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    doc = asyncio.run(run(args))
    print(render(doc))
    path = args.json or Path(
        f"stress/results/mqtt_qos1_{args.engine}_{args.version.replace('.', '')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
