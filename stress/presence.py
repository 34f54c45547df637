"""Presence in Redis: bytes per online device, ops/s, and what the rest of a push costs.

A real ``redis-server`` (``tests.redis_servers.RedisServer``, a free port, no
persistence) and the gateway's own Redis stores (``channel.push.redis``,
``redis_backend(config)``), driven from this process:

1. **Memory.** ``--devices`` (default 1,000,000) online devices written with
   ``presence.set_online`` in batches of ``--batch`` (1,000; one pipeline per
   batch, as a node's presence flush does), spread over ``--nodes`` node leases,
   with ``presence_buckets`` = devices / ``--per-bucket`` (64). Device ids are 22
   characters of base32, user ids 12 digits, 1.2 devices per user. Bytes per
   device = ``INFO memory`` ``used_memory`` after − before, ÷ devices; the same
   split by key kind (presence buckets ``{p}:p:{b}``, user index ``{p}:u:{b}``)
   from ``MEMORY USAGE`` of every key, with their ``OBJECT ENCODING`` and bucket
   fill.
2. **Speed.** ``set_online`` pipelined vs. one device per call (the baseline,
   ``--single`` devices), ``lookup`` pipelined vs. single, ``set_offline``
   pipelined: operations/s (wall), per Redis CPU-second (``/proc``), and the
   Redis commands each operation costs (``INFO commandstats``).
3. **The rest of a push.** Bytes per device of the user device directory
   (``directory.remember`` for the same devices: what a push to a user's offline
   devices needs), of a queued offline push (``queue.enqueue``,
   one per device and ``--queue-depth`` per device), of a message status
   (``receipts.create``) and of an inbox stream entry (``router.send``).
4. **Write load at fleet scale.** Presence writes/s for ``--fleet-devices``
   (300M) from the stated churn assumptions: our design writes nothing per
   heartbeat; connects and disconnects write, and each node renews one lease.

    python -m stress.presence [--devices 1000000] [--out stress/results/presence.json]

See ``stress/README.md`` and ``docs/sizing.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as _dt
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from channel.config import PushConfig
from channel.push.model import (
    MessageStatus,
    Presence,
    PushMessage,
    PushStatus,
    Receipt,
    TargetKind,
    new_message_id,
)
from channel.push.redis.presence import b36
from stress.machine import machine_info, machine_line
from stress.push import precise_cpu_s
from stress.report import fmt as _f
from stress.report import table as _table

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "presence.json"
PREFIX = "ch"
#: A push body as a backend sends it (~100 bytes of JSON).
PUSH_BODY = json.dumps(
    {
        "kind": "bill.reminder",
        "title": "Your credit card bill is due",
        "amount": "1,280.00",
        "due": "2026-12-05",
        "id": "b-20261126-000042",
    },
    separators=(",", ":"),
).encode()


def log(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"[presence] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- identities


def device_id(i: int) -> str:
    """22 characters of base32 (110 bits), like an install id a device keeps."""
    digest = hashlib.blake2b(b"device-%d" % i, digest_size=14).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:22]


def user_id(i: int) -> str:
    """12 digits; devices i map to users i*5//6: 1.2 devices per user on average."""
    return f"{208800000000 + i * 5 // 6:012d}"


def presences(start: int, stop: int, nodes: Sequence[int], since_s: int) -> list[Presence]:
    return [
        Presence(device_id(i), user_id(i), nodes[i % len(nodes)], since_s)
        for i in range(start, stop)
    ]


# --------------------------------------------------------------------------- redis inspection


class Inspector:
    """Synchronous look at the server: memory, CPU, command counts, keys."""

    def __init__(self, url: str, pid: int) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=60)
        self.pid = pid

    def used_memory(self) -> dict[str, int]:
        info = self.client.info("memory")
        return {
            "used_memory": int(info["used_memory"]),
            "used_memory_dataset": int(info.get("used_memory_dataset", 0)),
            "used_memory_rss": int(info["used_memory_rss"]),
        }

    def commands(self) -> Counter[str]:
        stats = self.client.info("commandstats")
        return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})

    def cpu_s(self) -> float:
        return precise_cpu_s(self.pid)

    def keys_by_kind(self, prefix: str) -> dict[str, list[bytes]]:
        """Keys under ``prefix:``, grouped by the kind letter after it (p, u, q, s, in...)."""
        kinds: dict[str, list[bytes]] = {}
        for key in self.client.scan_iter(match=f"{prefix}:*", count=10_000):
            kind = key.decode().split(":", 2)[1]
            kinds.setdefault(kind, []).append(key)
        return kinds

    def key_stats(self, keys: Sequence[bytes], *, lengths: str = "") -> dict[str, Any]:
        """Sum of ``MEMORY USAGE`` (exact: ``SAMPLES 0``), encodings, entries per key."""
        total = 0
        encodings: Counter[str] = Counter()
        sizes: list[int] = []
        for start in range(0, len(keys), 2_000):
            chunk = keys[start : start + 2_000]
            pipe = self.client.pipeline(transaction=False)
            for key in chunk:
                pipe.memory_usage(key, samples=0)
                pipe.object("encoding", key)
                if lengths:
                    pipe.execute_command(lengths, key)
            replies = pipe.execute()
            step = 3 if lengths else 2
            for j in range(len(chunk)):
                total += int(replies[j * step] or 0)
                encoding = replies[j * step + 1]
                encodings[encoding.decode() if isinstance(encoding, bytes) else str(encoding)] += 1
                if lengths:
                    sizes.append(int(replies[j * step + 2]))
        out: dict[str, Any] = {
            "keys": len(keys),
            "memory_usage_bytes": total,
            "encodings": dict(encodings),
        }
        if sizes:
            sizes.sort()
            out["entries"] = sum(sizes)
            out["entries_per_key"] = {
                "min": sizes[0],
                "mean": sum(sizes) / len(sizes),
                "max": sizes[-1],
            }
        return out

    def config(self, name: str) -> str:
        value = self.client.config_get(name)
        return str(value.get(name, ""))

    def close(self) -> None:
        self.client.close()


class Phase:
    """Wall time, Redis CPU, this process's CPU and Redis commands over a block."""

    def __init__(self, inspector: Inspector) -> None:
        self.inspector = inspector

    def __enter__(self) -> Phase:
        self.commands0 = self.inspector.commands()
        self.redis0 = self.inspector.cpu_s()
        self.client0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self.t0
        self.client_cpu_s = time.process_time() - self.client0
        self.redis_cpu_s = self.inspector.cpu_s() - self.redis0
        after = self.inspector.commands()
        after.subtract(self.commands0)
        self.commands = {k: v for k, v in after.items() if v > 0 and k != "info"}

    def figures(self, operations: int, what: str) -> dict[str, Any]:
        commands = sum(self.commands.values())
        return {
            "operations": operations,
            "what": what,
            "wall_s": self.wall_s,
            "per_s": operations / self.wall_s if self.wall_s else None,
            "redis_cpu_s": self.redis_cpu_s,
            "per_redis_cpu_s": operations / self.redis_cpu_s if self.redis_cpu_s > 0 else None,
            "client_cpu_s": self.client_cpu_s,
            "redis_commands": self.commands,
            "redis_commands_per_operation": commands / operations if operations else None,
        }


# --------------------------------------------------------------------------- phases


async def write_online(
    presence: Any, start: int, stop: int, batch: int, nodes: Sequence[int], quiet: bool
) -> None:
    since = int(time.time())
    last_log = time.monotonic()
    for first in range(start, stop, batch):
        await presence.set_online(presences(first, min(first + batch, stop), nodes, since))
        if time.monotonic() - last_log > 5:
            last_log = time.monotonic()
            log(quiet, f"  {first + batch - start:,} of {stop - start:,} written")


async def measure(args: argparse.Namespace, url: str, pid: int, doc: dict[str, Any]) -> None:
    from channel.push.redis import redis_backend

    quiet = args.quiet
    n = args.devices
    buckets = args.buckets or max(1, n // args.per_bucket)
    config = PushConfig(backend="redis", redis_url=url, key_prefix=PREFIX, presence_buckets=buckets)
    inspector = Inspector(url, pid)
    backend = await redis_backend(config)
    try:
        presence = backend.presence
        doc["redis"] = {
            "version": inspector.client.info("server")["redis_version"],
            "hash_max_listpack_entries": inspector.config("hash-max-listpack-entries"),
            "hash_max_listpack_value": inspector.config("hash-max-listpack-value"),
            "maxmemory_policy": inspector.config("maxmemory-policy"),
        }
        doc["layout"] = {
            "devices": n,
            "presence_buckets": buckets,
            "devices_per_bucket": n / buckets,
            "nodes": args.nodes,
            "users": user_id_count(n),
            "device_id_example": device_id(0),
            "user_id_example": user_id(0),
        }
        nodes = [await presence.join(f"bench-node-{i}", 3_600_000) for i in range(args.nodes)]
        rng = random.Random(7)

        # 1. memory at N online devices
        before = inspector.used_memory()
        log(quiet, f"writing {n:,} online devices into {buckets:,} buckets ...")
        with Phase(inspector) as phase:
            await write_online(presence, 0, n, args.batch, nodes, quiet)
        doc["set_online_pipelined"] = phase.figures(n, f"devices, batches of {args.batch}")
        after = inspector.used_memory()
        delta = {k: after[k] - before[k] for k in after}
        kinds = inspector.keys_by_kind(PREFIX)
        per_kind = {
            "presence": inspector.key_stats(kinds.get("p", []), lengths="HLEN"),
            "users": inspector.key_stats(kinds.get("u", []), lengths="HLEN"),
        }
        doc["memory"] = {
            "before": before,
            "after": after,
            "delta": delta,
            "bytes_per_device": delta["used_memory"] / n,
            "dataset_bytes_per_device": delta["used_memory_dataset"] / n,
            "rss_bytes_per_device": delta["used_memory_rss"] / n,
            "by_kind": per_kind,
            "presence_bytes_per_device": per_kind["presence"]["memory_usage_bytes"] / n,
            "users_bytes_per_device": per_kind["users"]["memory_usage_bytes"] / n,
        }
        log(
            quiet,
            f"{delta['used_memory'] / n:.1f} B per device (used_memory); presence "
            f"{per_kind['presence']['encodings']}, users {per_kind['users']['encodings']}",
        )

        # 2. speed: pipelined vs single, lookups, offline
        single = min(args.single, n)
        with Phase(inspector) as phase:
            since = int(time.time())
            for p in presences(n, n + single, nodes, since):
                await presence.set_online([p])
        doc["set_online_single"] = phase.figures(single, "devices, one call each")

        ids = [device_id(rng.randrange(n)) for _ in range(args.lookups)]
        with Phase(inspector) as phase:
            found = distinct = 0
            for first in range(0, len(ids), args.batch):
                chunk = ids[first : first + args.batch]
                distinct += len(set(chunk))  # a lookup answers each id once
                found += len(await presence.lookup(chunk))
        doc["lookup_pipelined"] = phase.figures(len(ids), f"lookups, batches of {args.batch}")
        doc["lookup_pipelined"]["found"] = found
        doc["lookup_pipelined"]["distinct_per_batch"] = distinct
        with Phase(inspector) as phase:
            found = 0
            for device in ids[:single]:
                found += len(await presence.lookup([device]))
        doc["lookup_single"] = phase.figures(single, "lookups, one call each")
        doc["lookup_single"]["found"] = found

        offline = min(args.offline, n)
        since = int(time.time())
        memory0 = inspector.used_memory()["used_memory"]
        with Phase(inspector) as phase:
            for first in range(0, offline, args.batch):
                await presence.set_offline(
                    presences(first, min(first + args.batch, offline), nodes, since)
                )
        doc["set_offline_pipelined"] = phase.figures(offline, f"devices, batches of {args.batch}")
        freed = memory0 - inspector.used_memory()["used_memory"]
        doc["set_offline_pipelined"]["freed_bytes_per_device"] = (
            freed / offline if offline else None
        )
        log(
            quiet,
            "set_online {:,.0f}/s pipelined vs {:,.0f}/s single; lookup {:,.0f}/s; "
            "set_offline {:,.0f}/s".format(
                doc["set_online_pipelined"]["per_s"] or 0,
                doc["set_online_single"]["per_s"] or 0,
                doc["lookup_pipelined"]["per_s"] or 0,
                doc["set_offline_pipelined"]["per_s"] or 0,
            ),
        )

        # 3. the device directory, offline queue, message statuses, inbox entries
        doc["directory"] = await measure_directory(args, backend, inspector, nodes)
        doc["queue"] = await measure_queue(args, backend, inspector)
        doc["statuses"] = await measure_statuses(args, backend, inspector)
        doc["inbox"] = await measure_inbox(args, backend, inspector, nodes[0])
        doc["receipt_stream"] = await measure_receipt_stream(args, backend, inspector)
        if args.layout_devices:
            log(quiet, f"other presence encodings, {args.layout_devices:,} devices each ...")
            doc["layouts"] = measure_layouts(args, inspector)
    finally:
        await backend.close()
        inspector.close()


#: Presence encodings compared by ``measure_layouts``: (what, presence field, presence
#: value, user-index field or None). Fields get the device id ``d`` and user id ``u``
#: (``h8`` = an 8-byte blake2b digest), values the node number, since (base 36) and user.
LAYOUTS: tuple[tuple[str, str, str, str | None], ...] = (
    ("field device id, value node:since:user; index user+0x1f+device", "d", "nsu", "u|d"),
    ("field h8(device), value node:since:user; index h8(user)+device", "h8", "nsu", "h8u+d"),
    ("field h8(device), value node:since; index h8(user)+device", "h8", "ns", "h8u+d"),
    ("field h8(device), value node; index h8(user)+device", "h8", "n", "h8u+d"),
    ("field h8(device), value node:since:user; no user index", "h8", "nsu", None),
)


def _h8(ident: str) -> bytes:
    return hashlib.blake2b(ident.encode(), digest_size=8).digest()


def measure_layouts(args: argparse.Namespace, inspector: Inspector) -> list[dict[str, Any]]:
    """used_memory per device of presence encodings, written with raw HSETs into the
    same bucket layout (buckets = devices / --per-bucket) on an emptied Redis."""
    import zlib

    n = args.layout_devices
    buckets = max(1, n // args.per_bucket)
    since = b36(int(time.time()))
    client = inspector.client
    out = []
    for name, field_kind, value_kind, index_kind in LAYOUTS:
        client.flushall()
        before = inspector.used_memory()["used_memory"]
        for first in range(0, n, 1_000):
            pipe = client.pipeline(transaction=False)
            for i in range(first, min(first + 1_000, n)):
                device, user = device_id(i), user_id(i)
                node = 1 + i % args.nodes
                value = {"nsu": f"{node}:{since}:{user}", "ns": f"{node}:{since}", "n": node}[
                    value_kind
                ]
                field: str | bytes = _h8(device) if field_kind == "h8" else device
                pipe.hset(f"x:p:{{{zlib.crc32(device.encode()) % buckets}}}", field, value)
                if index_kind is not None:
                    index_field: str | bytes = (
                        _h8(user) + device.encode()
                        if index_kind == "h8u+d"
                        else user + "\x1f" + device
                    )
                    pipe.hset(f"x:u:{{{zlib.crc32(user.encode()) % buckets}}}", index_field, node)
            pipe.execute()
        used = inspector.used_memory()["used_memory"] - before
        out.append({"layout": name, "devices": n, "bytes_per_device": used / n})
    client.flushall()
    return out


def user_id_count(n: int) -> int:
    return (n - 1) * 5 // 6 + 1 if n else 0


def message(i: int, ttl_s: int = 86_400) -> PushMessage:
    now = int(time.time() * 1000)
    return PushMessage(
        message_id=new_message_id(),
        body=PUSH_BODY,
        headers=(("x-kind", "bill"),),
        expires_at_ms=now + ttl_s * 1000,
        accepted_at_ms=now,
    )


async def measure_directory(
    args: argparse.Namespace, backend: Any, inspector: Inspector, nodes: Sequence[int]
) -> dict[str, Any]:
    """used_memory per device of the user device directory (``directory.remember``), for
    the same devices and users as presence: what user pushes to offline devices cost."""
    n = args.devices
    memory0 = inspector.used_memory()["used_memory"]
    since = int(time.time())
    with Phase(inspector) as phase:
        for first in range(0, n, args.batch):
            await backend.directory.remember(
                presences(first, min(first + args.batch, n), nodes, since)
            )
    used = inspector.used_memory()["used_memory"] - memory0
    stats = inspector.key_stats(inspector.keys_by_kind(PREFIX).get("ud", []), lengths="HLEN")
    return {
        "devices": n,
        "bytes_per_device": used / n,
        "memory_usage_bytes_per_device": stats["memory_usage_bytes"] / n,
        "keys": stats,
        "remember": phase.figures(n, f"devices, batches of {args.batch}"),
    }


async def measure_queue(
    args: argparse.Namespace, backend: Any, inspector: Inspector
) -> dict[str, Any]:
    """used_memory per queued push: one each for many devices, then a deeper queue."""
    out: dict[str, Any] = {"body_bytes": len(PUSH_BODY), "packed_bytes": len(message(0).pack())}
    offset = 10_000_000  # devices that are not the online ones
    for label, devices, depth in (
        ("one_per_device", args.queue_devices, 1),
        ("deep", max(1, args.queue_devices // args.queue_depth), args.queue_depth),
    ):
        memory0 = inspector.used_memory()["used_memory"]
        keys0 = set(inspector.keys_by_kind(PREFIX).get("q", []))
        with Phase(inspector) as phase:
            for _ in range(depth):
                items = [(device_id(offset + d), message(d)) for d in range(devices)]
                for first in range(0, len(items), 1_000):
                    await backend.queue.enqueue(items[first : first + 1_000], 100)
        pushes = devices * depth
        used = inspector.used_memory()["used_memory"] - memory0
        new_keys = [k for k in inspector.keys_by_kind(PREFIX).get("q", []) if k not in keys0]
        stats = inspector.key_stats(new_keys, lengths="HLEN")
        out[label] = {
            "devices": devices,
            "depth": depth,
            "pushes": pushes,
            "bytes_per_push": used / pushes,
            "memory_usage_bytes_per_push": stats["memory_usage_bytes"] / pushes,
            "keys": stats,
            "enqueue": phase.figures(pushes, "pushes enqueued, batches of 1000"),
        }
        offset += devices
    return out


async def measure_statuses(
    args: argparse.Namespace, backend: Any, inspector: Inspector
) -> dict[str, Any]:
    """Bytes per message status of a one-device push (``receipts.create``): the growth of
    ``used_memory``, and ``MEMORY USAGE`` of the new keys. The first also charges the
    statuses with any resize of Redis's main and expires dictionaries that they caused
    (a step, not a per-key cost), the second leaves out the expires-dictionary entry
    every status has; the truth is between them."""
    count = args.queue_devices
    now = int(time.time() * 1000)
    statuses = [
        MessageStatus(
            new_message_id(),
            TargetKind.DEVICE,
            now,
            now + 86_400_000,
            {device_id(20_000_000 + i): PushStatus.ACCEPTED},
        )
        for i in range(count)
    ]
    keys0 = set(inspector.keys_by_kind(PREFIX).get("s", []))
    memory0 = inspector.used_memory()["used_memory"]
    with Phase(inspector) as phase:
        for first in range(0, count, 1_000):
            await backend.receipts.create(statuses[first : first + 1_000], 86_400)
    used = inspector.used_memory()["used_memory"] - memory0
    new_keys = [k for k in inspector.keys_by_kind(PREFIX).get("s", []) if k not in keys0]
    stats = inspector.key_stats(new_keys)
    return {
        "messages": count,
        "bytes_per_status": used / count if count else None,
        "memory_usage_bytes_per_status": (
            stats["memory_usage_bytes"] / len(new_keys) if new_keys else None
        ),
        "create": phase.figures(count, "statuses, batches of 1000"),
    }


async def measure_inbox(
    args: argparse.Namespace, backend: Any, inspector: Inspector, node_no: int
) -> dict[str, Any]:
    """Bytes per envelope in a node's inbox stream, batches of 100 (unread, untrimmed)."""
    from channel.push import envelopes as env

    count = min(args.queue_devices, 9_000)  # the inbox keeps 10,000 entries at most
    per_entry = 100
    memory0 = inspector.used_memory()["used_memory"]
    sent = 0
    with Phase(inspector) as phase:
        while sent < count:
            batch = [
                env.device_push(device_id(30_000_000 + sent + j), message(j))
                for j in range(per_entry)
            ]
            await backend.router.send(node_no, batch)
            sent += per_entry
    used = inspector.used_memory()["used_memory"] - memory0
    return {
        "envelopes": sent,
        "per_entry": per_entry,
        "envelope_bytes": len(env.device_push(device_id(0), message(0))),
        "bytes_per_envelope": used / sent if sent else None,
        "send": phase.figures(sent // per_entry, f"stream entries of {per_entry} envelopes"),
    }


async def measure_receipt_stream(
    args: argparse.Namespace, backend: Any, inspector: Inspector
) -> dict[str, Any]:
    """Bytes per delivery receipt in the receipt stream, entries of 100 (a busy node's
    flush): what ``[push] receipt_stream_maxlen`` receipts cost Redis."""
    count = min(args.queue_devices, 100_000)
    per_entry = 100
    at = int(time.time() * 1000)
    stream = backend.receipts._stream
    memory0 = inspector.used_memory()["used_memory"]
    with Phase(inspector) as phase:
        for first in range(0, count, per_entry):
            await backend.receipts.record(
                [
                    Receipt(new_message_id(), PushStatus.DELIVERED, device_id(first + j), at)
                    for j in range(per_entry)
                ]
            )
    used = inspector.used_memory()["used_memory"] - memory0
    usage = int(inspector.client.memory_usage(stream, samples=0) or 0)
    return {
        "receipts": count,
        "per_entry": per_entry,
        "bytes_per_receipt": used / count if count else None,
        "memory_usage_bytes_per_receipt": usage / count if count else None,
        "record": phase.figures(count // per_entry, f"entries of {per_entry} receipts"),
    }


# --------------------------------------------------------------------------- fleet arithmetic


def fleet(args: argparse.Namespace, doc: dict[str, Any]) -> dict[str, Any]:
    """Presence write load and memory at ``--fleet-devices``, from the stated assumptions."""
    devices = args.fleet_devices
    session_s = args.session_minutes * 60
    connects_per_s = devices / session_s
    online, offline = doc["set_online_pipelined"], doc["set_offline_pipelined"]
    nodes = devices / args.devices_per_node
    lease_period_s = args.lease_ms / 3000  # NodeDelivery renews at a third of the lease
    redis_cpu = 0.0
    if online["per_redis_cpu_s"] and offline["per_redis_cpu_s"]:
        redis_cpu = (
            connects_per_s / online["per_redis_cpu_s"] + connects_per_s / offline["per_redis_cpu_s"]
        )
    return {
        "assumptions": {
            "fleet_devices": devices,
            "mean_connection_minutes": args.session_minutes,
            "devices_per_gateway_node": args.devices_per_node,
            "lease_ms": args.lease_ms,
            "heartbeat_writes": "none: presence lives as long as its node's lease",
        },
        "connects_per_s": connects_per_s,
        "disconnects_per_s": connects_per_s,
        # set_online: HSET presence + HSET user index; set_offline: two compare-and-delete
        # scripts (EVALSHA, each an HGET and an HDEL inside Redis).
        "hash_field_writes_per_s": 4 * connects_per_s,
        "commands_sent_per_s": 4 * connects_per_s,
        "redis_commands_incl_lua_per_s": connects_per_s
        * (
            (online["redis_commands_per_operation"] or 0)
            + (offline["redis_commands_per_operation"] or 0)
        ),
        "redis_cpu_cores_for_churn": redis_cpu,
        "gateway_nodes": nodes,
        "lease_renewals_per_s": nodes / lease_period_s,
        "heartbeat_writes_per_s": 0,
        "presence_memory_bytes": doc["memory"]["bytes_per_device"] * devices,
    }


# --------------------------------------------------------------------------- run / report


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.redis_servers import RedisServer

    doc: dict[str, Any] = {
        "tool": "stress.presence",
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
    }
    directory = Path(tempfile.mkdtemp(prefix="channel-bench-presence-"))
    server = RedisServer(directory, None, *args.redis_arg)
    server.start()
    try:
        assert server.proc is not None
        log(args.quiet, f"redis-server on port {server.port}")
        asyncio.run(measure(args, server.url, server.proc.pid, doc))
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    doc["fleet"] = fleet(args, doc)
    doc["ratios"] = {
        "set_online_pipelined_vs_single": _ratio(
            doc["set_online_pipelined"]["per_s"], doc["set_online_single"]["per_s"]
        ),
        "lookup_pipelined_vs_single": _ratio(
            doc["lookup_pipelined"]["per_s"], doc["lookup_single"]["per_s"]
        ),
    }
    return doc


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def render(doc: dict[str, Any]) -> str:
    mem = doc["memory"]
    layout = doc["layout"]
    pk, uk = mem["by_kind"]["presence"], mem["by_kind"]["users"]
    rows = [
        [f"memory at {layout['devices']:,} online devices", "bytes", "per device"],
        [
            "used_memory after - before",
            f"{mem['delta']['used_memory']:,}",
            _f(mem["bytes_per_device"], ".1f"),
        ],
        [
            f"  presence buckets: {pk['keys']:,} keys {pk['encodings']}",
            f"{pk['memory_usage_bytes']:,}",
            _f(mem["presence_bytes_per_device"], ".1f"),
        ],
        [
            f"  user index: {uk['keys']:,} keys {uk['encodings']}",
            f"{uk['memory_usage_bytes']:,}",
            _f(mem["users_bytes_per_device"], ".1f"),
        ],
        [
            "used_memory_rss after - before",
            f"{mem['delta']['used_memory_rss']:,}",
            _f(mem["rss_bytes_per_device"], ".1f"),
        ],
    ]
    out = [_table(rows)]
    out.append(
        f"buckets: {layout['presence_buckets']:,}, devices per bucket: mean "
        f"{pk['entries_per_key']['mean']:.1f}, max {pk['entries_per_key']['max']} "
        f"(listpack up to hash-max-listpack-entries = {doc['redis']['hash_max_listpack_entries']})"
    )
    rows = [["operation", "ops/s (wall)", "per Redis CPU-s", "Redis cmds/op", "client CPU-s"]]
    for key, name in (
        ("set_online_pipelined", "set_online, pipelined batches"),
        ("set_online_single", "set_online, one device per call (baseline)"),
        ("lookup_pipelined", "lookup, pipelined batches"),
        ("lookup_single", "lookup, one device per call"),
        ("set_offline_pipelined", "set_offline, pipelined batches"),
    ):
        f = doc[key]
        rows.append(
            [
                name,
                _f(f["per_s"], ",.0f"),
                _f(f["per_redis_cpu_s"], ",.0f"),
                _f(f["redis_commands_per_operation"], ".2f"),
                _f(f["client_cpu_s"], ".1f"),
            ]
        )
    out.append(_table(rows))
    q = doc["queue"]
    rows = [["the rest of a push", "bytes each (used_memory)", "MEMORY USAGE each"]]
    rows.append(
        [
            f"queued push, 1 per device ({q['body_bytes']} B body, packed {q['packed_bytes']} B)",
            _f(q["one_per_device"]["bytes_per_push"], ".0f"),
            _f(q["one_per_device"]["memory_usage_bytes_per_push"], ".0f"),
        ]
    )
    rows.append(
        [
            f"queued push, {q['deep']['depth']} per device",
            _f(q["deep"]["bytes_per_push"], ".0f"),
            _f(q["deep"]["memory_usage_bytes_per_push"], ".0f"),
        ]
    )
    d = doc["directory"]
    rows.append(
        [
            f"user device directory entry ({d['keys']['encodings']})",
            _f(d["bytes_per_device"], ".1f"),
            _f(d["memory_usage_bytes_per_device"], ".1f"),
        ]
    )
    rows.append(
        [
            "message status (one device)",
            _f(doc["statuses"]["bytes_per_status"], ".0f"),
            _f(doc["statuses"]["memory_usage_bytes_per_status"], ".0f"),
        ]
    )
    rows.append(
        [
            f"inbox envelope (entries of {doc['inbox']['per_entry']})",
            _f(doc["inbox"]["bytes_per_envelope"], ".0f"),
            "-",
        ]
    )
    r = doc["receipt_stream"]
    rows.append(
        [
            f"receipt in the receipt stream (entries of {r['per_entry']})",
            _f(r["bytes_per_receipt"], ".0f"),
            _f(r["memory_usage_bytes_per_receipt"], ".0f"),
        ]
    )
    out.append(_table(rows))
    if doc.get("layouts"):
        rows = [["presence encoding (raw HSETs, same buckets)", "bytes per device"]]
        rows += [[x["layout"], _f(x["bytes_per_device"], ".1f")] for x in doc["layouts"]]
        out.append(_table(rows))
    fl = doc["fleet"]
    a = fl["assumptions"]
    out.append(
        f"at {a['fleet_devices']:,} devices, mean connection {a['mean_connection_minutes']} min, "
        f"{a['devices_per_gateway_node']:,} devices per node: {fl['connects_per_s']:,.0f} "
        f"connects/s + as many disconnects -> {fl['commands_sent_per_s']:,.0f} commands/s "
        f"(hash-field writes), {fl['redis_cpu_cores_for_churn']:.1f} Redis cores busy at the "
        f"measured per-CPU-s rates; {fl['lease_renewals_per_s']:,.0f} lease renewals/s; "
        f"0 writes per heartbeat; presence {fl['presence_memory_bytes'] / 2**30:,.1f} GiB"
    )
    return "\n\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stress.presence",
        description="Presence in a real Redis: bytes per online device at 1M devices, "
        "set_online/lookup/set_offline per second (pipelined vs one per call), bytes of a "
        "queued push, a message status and an inbox entry, and the write load at 300M devices.",
    )
    p.add_argument("--devices", type=int, default=1_000_000, help="online devices (1000000)")
    p.add_argument("--per-bucket", type=int, default=64, help="devices per presence bucket (64)")
    p.add_argument("--buckets", type=int, default=0, help="presence_buckets (devices/64)")
    p.add_argument("--batch", type=int, default=1_000, help="devices per pipelined call (1000)")
    p.add_argument("--nodes", type=int, default=8, help="node leases the devices spread over (8)")
    p.add_argument("--single", type=int, default=20_000, help="one-per-call baseline ops (20000)")
    p.add_argument("--lookups", type=int, default=200_000, help="pipelined lookups (200000)")
    p.add_argument("--offline", type=int, default=200_000, help="devices set offline (200000)")
    p.add_argument("--queue-devices", type=int, default=10_000, help="queued-push devices (10000)")
    p.add_argument("--queue-depth", type=int, default=10, help="pushes per device, deep queue (10)")
    p.add_argument(
        "--layout-devices",
        type=int,
        default=200_000,
        help="devices per alternative presence encoding compared (200000; 0 = skip)",
    )
    g = p.add_argument_group("fleet arithmetic (assumptions, stated in the output)")
    g.add_argument("--fleet-devices", type=int, default=300_000_000)
    g.add_argument(
        "--session-minutes",
        type=float,
        default=30.0,
        help="mean connection length: each device connects and disconnects once per this (30)",
    )
    g.add_argument("--devices-per-node", type=int, default=100_000)
    g.add_argument("--lease-ms", type=int, default=6_000, help="[push] lease_ms (6000)")
    p.add_argument(
        "--redis-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra redis-server argument, repeatable: --redis-arg=--hash-max-listpack-value "
        "--redis-arg=512",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.devices < 1 or args.batch < 1:
        p.error("--devices and --batch must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run(args)
    print(f"machine: {machine_line()}")
    print(f"redis {doc['redis']['version']}, loopback, one client process (redis-py + hiredis)")
    print(render(doc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
