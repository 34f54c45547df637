"""Python per acked unicast push, in process: every step the gateway's Python thread takes.

``python -m stress.push_path [--devices 10000] [--batch 200] [--batches 50] [--rounds 10]
[--backend memory|redis]``

One process, the memory backend (or ``--backend redis``: the Redis stores on a
throwaway ``redis-server``, the node reading its own inbox stream), ``--devices``
devices on this node and batches of
``--batch`` pushes of ``stress.push``'s body, each to a random device, as
``POST /v1/push/batch`` carries them. Per batch, timed one step at a time:

- ``parse``: the request's JSON decoded and every push checked (``parse_batch``);
- ``accept``: ``PushService.accept`` (ids, statuses, queue, presence, inbox);
- ``answer``: the 202's JSON;
- ``inbox``: the node's inbox batch written to the devices' sessions;
- ``acks``: every push acknowledged (``acks_many``, as the engine's ACKS event);
- ``flush``: the ACKs' queue removals and receipts written to the stores.

The sessions stand in for the engine's (``push`` appends the command tuple
``NativeMmtpSession.push`` builds; nothing is written anywhere): no TLS, MMTP, HTTP
or engine, only the Python between a request and its ACKs, which the gateway's
Python thread spends per push on top of aiohttp and the engine. Figures are this
thread's CPU time (``time.thread_time``: time the machine gave to other work does
not count, nor does Redis's own work) per push, the lowest round of each step; the
collector is tuned as the gateway tunes it. A push for a device on this node is
written by ``accept`` itself (no inbox round trip), so ``inbox`` is about 0 there.
For a figure other machines reproduce exactly, count instructions:
``valgrind --tool=cachegrind --cache-sim=no python -m stress.push_path --rounds N``
for two values of N; the difference over the pushes in between is per push.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from channel import fastjson
from channel.api.app import batch_answer, parse_batch
from channel.api.limits import MAX_PUSH_BODY_BYTES
from channel.config import load_config
from channel.gateway.run import tune_gc
from channel.push.delivery import NodeDelivery, _Outstanding
from channel.push.memory import MemoryRouter, memory_backend
from channel.push.model import Presence
from channel.push.service import PushService
from channel.push.stores import PushBackend
from channel.sessions.registry import SessionRegistry
from stress.machine import machine_info, machine_line
from stress.report import write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "push_path.json"
STEPS = ("parse", "accept", "answer", "inbox", "acks", "flush")
TTL_S = 3600


class _Device:
    __slots__ = ("device_id", "user_id")

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.user_id = "u"


class StandInSession:
    """What the delivery code touches of a session; ``push`` costs what the native
    session's does (a command tuple appended for the engine)."""

    fanout_engine = None
    flush_group = None

    def __init__(self, device_id: str, conn: int, commands: list[tuple[Any, ...]]) -> None:
        self.device_id = device_id
        self.device = _Device(device_id)
        self.closed = False
        self.conn = conn
        self._commands = commands

    def push(self, message_id: str, body: bytes, headers: Any, tracked: bool) -> str | None:
        self._commands.append(("PUSH", self.conn, message_id.encode(), headers, body, tracked))
        return None

    def flush(self) -> None:
        pass


def _requests(devices: int, batch: int, batches: int, seed: int) -> list[bytes]:
    """Request bodies as ``stress.push`` posts them."""
    rng = random.Random(seed)
    bodies = []
    for b in range(batches):
        items = [
            {
                "device_id": f"dev-{rng.randrange(devices):06d}",
                "ttl_s": TTL_S,
                "body": json.dumps(
                    {
                        "seq": b * batch + i,
                        "t": time.monotonic(),
                        "kind": "order.shipped",
                        "text": "Your parcel is on its way",
                    },
                    separators=(",", ":"),
                ),
            }
            for i in range(batch)
        ]
        bodies.append(fastjson.dumps({"messages": items}))
    return bodies


async def measure(
    devices: int, batch: int, batches: int, rounds: int, redis_url: str = ""
) -> dict[str, Any]:
    """Per push and step; on the Redis stores at ``redis_url`` if given."""
    # Buckets as stress.compare sizes them for its Redis gateway.
    overrides = (
        {
            "push": {
                "backend": "redis",
                "redis_url": redis_url,
                "presence_buckets": max(16, devices // 64),
            }
        }
        if redis_url
        else None
    )
    config = load_config(None, environ={}, overrides=overrides)
    backend: PushBackend
    if redis_url:
        from channel.push.redis import redis_backend

        backend = await redis_backend(config.push)
    else:
        backend = memory_backend()
    try:
        return await _measure(config, backend, devices, batch, batches, rounds)
    finally:
        await backend.close()


async def _measure(
    config: Any, backend: PushBackend, devices: int, batch: int, batches: int, rounds: int
) -> dict[str, Any]:
    registry = SessionRegistry()
    delivery = NodeDelivery(registry, backend, config, "bench")
    node_no = delivery.node_no = await backend.presence.join("bench", 600_000)
    ids = [f"dev-{i:06d}" for i in range(devices)]
    await backend.presence.set_online([Presence(d, "u", node_no, 0) for d in ids])
    commands: list[tuple[Any, ...]] = []
    by_conn: dict[int, StandInSession] = {}
    for conn, device_id in enumerate(ids):
        session = StandInSession(device_id, conn, commands)
        by_conn[conn] = session
        registry.by_device[device_id] = session  # type: ignore[assignment]
        delivery._state[session] = _Outstanding(device_id=device_id)  # type: ignore[index]
    router = backend.router
    if isinstance(router, MemoryRouter):
        inbox: asyncio.Queue[list[Any]] = asyncio.Queue()
        router._inboxes[node_no] = inbox
        stream = first = None
    else:
        # The node's inbox stream, read as the node reads it (one entry per batch here).
        ready = asyncio.Event()
        stream = router.inbox(node_no, ready)
        first = asyncio.ensure_future(anext(stream))
        await ready.wait()
    service = PushService(registry, backend, delivery, config)
    push = config.push
    body_bytes = min(MAX_PUSH_BODY_BYTES, config.api.max_body_bytes)
    bodies = _requests(devices, batch, batches, seed=1)
    clock = time.thread_time
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        spent = dict.fromkeys(STEPS, 0.0)
        pushes = 0
        for raw in bodies:
            t0 = clock()
            obj = fastjson.loads(raw)
            assert isinstance(obj, dict)
            valid, slots = parse_batch(obj["messages"], TTL_S, push.max_ttl_s, body_bytes)
            t1 = clock()
            accepted = await service.accept(valid)
            t2 = clock()
            batch_answer(slots, accepted)
            t3 = clock()
            routed: list[Any] = []
            if stream is None:
                while not inbox.empty():
                    routed.extend(inbox.get_nowait())
            elif not commands:  # routed through the inbox stream, not written by accept
                routed = await (first if first is not None else anext(stream))
                first = None
            await delivery._handle_batch(routed)
            t4 = clock()
            written, commands[:] = commands[:], []
            sessions = [by_conn[c[1]] for c in written]
            message_ids = [c[2].decode() for c in written]
            t5 = clock()
            delivery.acks_many(sessions, message_ids)  # type: ignore[arg-type]
            t6 = clock()
            await delivery._write_pending(backend)
            t7 = clock()
            for step, seconds in zip(
                STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t6 - t5, t7 - t6), strict=True
            ):
                spent[step] += seconds
            pushes += len(valid)
            if len(written) != len(valid):
                raise RuntimeError(f"{len(valid)} pushes accepted, {len(written)} written")
        per_round.append({step: 1e6 * s / pushes for step, s in spent.items()})
    best = {step: min(r[step] for r in per_round) for step in STEPS}
    if first is not None:
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
    if stream is not None:
        await stream.aclose()  # type: ignore[attr-defined]
    return {
        "backend": backend.name,
        "devices": devices,
        "batch": batch,
        "batches": batches,
        "rounds": rounds,
        "us_per_push": {**best, "total": sum(best.values())},
        "rounds_us_per_push": per_round,
    }


def table(doc: dict[str, Any]) -> str:
    figures = doc["us_per_push"]
    lines = [f"{'step':8s} {'us/push':>8s}"]
    lines += [f"{step:8s} {figures[step]:8.2f}" for step in (*STEPS, "total")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stress.push_path", description=__doc__.split("\n")[0]
    )
    p.add_argument("--devices", type=int, default=10_000, help="devices on the node (10,000)")
    p.add_argument("--batch", type=int, default=200, help="pushes per API request (200)")
    p.add_argument("--batches", type=int, default=50, help="requests per round (50)")
    p.add_argument("--rounds", type=int, default=10, help="rounds; the lowest of each step counts")
    p.add_argument(
        "--backend",
        choices=("memory", "redis"),
        default="memory",
        help="memory, or the Redis stores on a throwaway redis-server (memory)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result")
    p.add_argument("--quiet", action="store_true", help="no effect: it prints no progress")
    args = p.parse_args(argv)
    print(f"machine: {machine_line()}")
    tune_gc(load_config(None, environ={}).server.gc_gen0_threshold)
    if args.backend == "redis":
        from stress.push import Redis

        with tempfile.TemporaryDirectory(prefix="push-path-") as workdir:
            redis = Redis(Path(workdir) / "redis")
            try:
                doc = asyncio.run(
                    measure(args.devices, args.batch, args.batches, args.rounds, redis.url)
                )
            finally:
                redis.stop()
    else:
        doc = asyncio.run(measure(args.devices, args.batch, args.batches, args.rounds))
    doc["machine"] = machine_info()
    doc["when"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    print(table(doc))
    write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
