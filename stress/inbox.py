"""How a node's inbox should move batches: a Redis stream or sharded pub/sub.

Both carry the same load — batches of ``--batch`` envelopes of ``--envelope-bytes``
each, one message per batch, from one writer to one reader (a node's inbox) —
through a real ``redis-server``:

* **stream** (what Channel uses): ``XADD key MAXLEN ~ N * b <batch>`` and a
  reader in ``XREAD BLOCK`` that resumes from its last id;
* **spublish** (the baseline): ``SPUBLISH channel <batch>`` and a reader
  subscribed with ``SSUBSCRIBE``; nothing is kept.

It reports batches/s end to end, Redis CPU per 1,000 batches (``INFO cpu``), the
writer's and reader's CPU, and what a reader that was away for a second gets
back (the stream: everything; pub/sub: nothing). Loopback only, bounded.

    python -m stress.inbox                   # 20,000 batches of 50 x 250 B each way
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from stress.machine import machine_info, machine_line
from tests.redis_servers import RedisServer


def _redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _stream(url: str, batches: int, payload: bytes) -> dict[str, float]:
    writer, reader = aioredis.from_url(url), aioredis.from_url(url, socket_timeout=30)
    key = "bench:in:{1}"
    await writer.delete(key)
    got = 0
    done = asyncio.Event()

    async def read() -> None:
        nonlocal got
        last = "0"
        while got < batches:
            reply = await reader.xread({key: last}, count=100, block=1000)
            for _, entries in reply or ():
                got += len(entries)
                last = entries[-1][0]
        done.set()

    info0 = await writer.info("cpu")
    cpu0, t0 = _own_cpu(), time.perf_counter()
    task = asyncio.get_running_loop().create_task(read())
    for start in range(0, batches, 50):
        async with writer.pipeline(transaction=False) as pipe:
            for _ in range(min(50, batches - start)):
                pipe.xadd(key, {"b": payload}, maxlen=10_000, approximate=True)
            await pipe.execute()
    await asyncio.wait_for(done.wait(), 120)
    elapsed, cpu = time.perf_counter() - t0, _own_cpu() - cpu0
    info1 = await writer.info("cpu")
    await task
    # A reader that was away: resumes from its last id and misses nothing.
    last = (await writer.xrevrange(key, count=1))[0][0]
    for _ in range(100):
        await writer.xadd(key, {"b": payload}, maxlen=10_000, approximate=True)
    missed_back = len((await reader.xread({key: last}, count=1000))[0][1])
    await writer.aclose()
    await reader.aclose()
    return {
        "batches_per_s": batches / elapsed,
        "redis_cpu_ms_per_1000": (_redis_cpu(info1) - _redis_cpu(info0)) / batches * 1e6,
        "client_cpu_ms_per_1000": cpu / batches * 1e6,
        "recovered_after_absence": missed_back,
    }


async def _spublish(url: str, batches: int, payload: bytes) -> dict[str, float]:
    writer, reader = aioredis.from_url(url), aioredis.from_url(url, socket_timeout=30)
    channel = "bench:in:{1}"
    pubsub = reader.pubsub()
    await pubsub.execute_command("SSUBSCRIBE", channel)
    await pubsub.parse_response(block=True)  # the subscription confirmation
    got = 0

    async def read() -> None:
        nonlocal got
        while got < batches:
            message = await pubsub.parse_response(block=True)
            if message and message[0] in (b"smessage", "smessage"):
                got += 1

    info0 = await writer.info("cpu")
    cpu0, t0 = _own_cpu(), time.perf_counter()
    task = asyncio.get_running_loop().create_task(read())
    for start in range(0, batches, 50):
        async with writer.pipeline(transaction=False) as pipe:
            for _ in range(min(50, batches - start)):
                pipe.execute_command("SPUBLISH", channel, payload)
            await pipe.execute()
    await asyncio.wait_for(task, 120)
    elapsed, cpu = time.perf_counter() - t0, _own_cpu() - cpu0
    info1 = await writer.info("cpu")
    await pubsub.aclose()
    # A subscriber that was away gets nothing of what was published meanwhile.
    await writer.aclose()
    await reader.aclose()
    return {
        "batches_per_s": batches / elapsed,
        "redis_cpu_ms_per_1000": (_redis_cpu(info1) - _redis_cpu(info0)) / batches * 1e6,
        "client_cpu_ms_per_1000": cpu / batches * 1e6,
        "recovered_after_absence": 0,
    }


def render(doc: dict[str, Any]) -> str:
    rows = [["", "stream (Channel)", "spublish (baseline)", "ratio"]]
    s, p = doc["stream"], doc["spublish"]
    for key, label in (
        ("batches_per_s", "batches/s end to end"),
        ("redis_cpu_ms_per_1000", "Redis CPU ms / 1,000 batches"),
        ("client_cpu_ms_per_1000", "writer+reader CPU ms / 1,000 batches"),
        ("recovered_after_absence", "of 100 sent while away, read back"),
    ):
        ratio = f"{s[key] / p[key]:.2f}" if p[key] else "-"
        rows.append([label, f"{s[key]:,.1f}", f"{p[key]:,.1f}", ratio])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        machine_line(),
        f"{doc['batches']:,} batches of {doc['batch']} x "
        f"{doc['envelope_bytes']} B, redis-server {doc['redis_version']}",
    ]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    payload = os.urandom(args.envelope_bytes * args.batch)
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            probe = aioredis.from_url(server.url)
            version = (await probe.info("server"))["redis_version"]
            await probe.aclose()
            stream = await _stream(server.url, args.batches, payload)
            spublish = await _spublish(server.url, args.batches, payload)
        finally:
            server.stop()
    return {
        "machine": machine_info(),
        "redis_version": version,
        "batches": args.batches,
        "batch": args.batch,
        "envelope_bytes": args.envelope_bytes,
        "stream": stream,
        "spublish": spublish,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stress.inbox",
        description="A node's inbox as a Redis stream against sharded pub/sub (SPUBLISH).",
    )
    parser.add_argument("--batches", type=int, default=20_000, help="batches per transport")
    parser.add_argument("--batch", type=int, default=50, help="envelopes per batch")
    parser.add_argument("--envelope-bytes", type=int, default=250, help="bytes per envelope")
    parser.add_argument("--out", default="stress/results/inbox.json", help="JSON results path")
    args = parser.parse_args(argv)
    doc = asyncio.run(run(args))
    print(render(doc))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
