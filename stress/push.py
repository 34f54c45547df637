"""Pushes through the gateway: unicast rate and latency (Redis vs. memory), broadcast fan-out.

**Unicast.** One gateway process (or ``--nodes`` of them sharing a real
``redis-server``), D devices connected over TLS from client processes, and a
load-generator process posting ``POST /v1/push/batch`` with B pushes per request,
each to a random device. Modes: open loop at ``--rate`` pushes/s (``rate``),
closed loop with ``--concurrency`` requests in flight (``max``: as fast as the
gateway answers), and open loop at half of what ``max`` reached (``half``: the
latency of a node that is not saturated). The body of each push is ~85 bytes of
JSON carrying its sequence number and the generator's ``time.monotonic()`` just
before the POST (``CLOCK_MONOTONIC`` is system-wide on Linux: comparable across
processes). Devices acknowledge every push at once (one ACK frame per read, as
the SDK does) and record when the ACK was written: latency = POST sent → ACK
written. Reported: acked pushes/s, p50/p99/max latency, pushes lost (accepted,
never delivered within ``--drain-s``), duplicates, and the CPU-seconds of every
process per 1,000 pushes. The same pushes with ``[push] backend = "memory"`` (no
Redis) run in the same invocation: the table shows Redis ÷ memory. ``--backends
memory,redis,cluster`` adds a Redis Cluster of three masters (its CPU summed over
them). The JSON has Redis's commands and microseconds per push, by command.

**Broadcast fan-out.** N devices (default 10,000; 2,500 per client process,
the open-file limit is 20,000 per process) on one gateway; M broadcasts in
one batch request, then as M separate requests, then single broadcasts, each
repeated until ``--min-deliveries`` were timed. Measured: time until every
device has every message, and deliveries per second of the gateway process's
own CPU (every thread's ``se.sum_exec_runtime`` from ``/proc``), from the POST
until every device had every message, and until the gateway was quiet again
(all ACKs in; its idle CPU over the wait subtracted). The baseline is the same
fan-out to 200 devices. Each runs with devices that ACK at once and, by
default, with ACKs coalesced over 1 s (``--ack-delays-ms``): what the ACKs cost.
By default the gateway runs on the first CPU and the clients on the others, so
its CPU-seconds are its own work.

    python -m stress.push [--devices 2000] [--rate 30000] [--seconds 10] [--nodes 2]
                          [--fanout-devices 10000] [--broadcasts 20] [--profile DIR]
                          [--out stress/results/push.json]

See ``stress/README.md``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import datetime as _dt
import json
import math
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import uvloop

from channel.default_presets import register_default_presets
from channel.security.tls import client_ssl_context
from channel.wire import (
    ConnectionErrorReceived,
    HelloAccepted,
    PushReceived,
)
from stress.gateway_proc import (
    GatewayProcess,
    MmtpDevice,
    TokenMinter,
    close_worker_processes,
    connect_link,
    cpu_s,
    device_hello,
    raise_nofile_limit,
    wait_connections,
)
from stress.machine import machine_info, machine_line
from stress.report import fmt as _f
from stress.report import table as _table

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "push.json"
REPLY_TIMEOUT_S = 600.0
#: Devices per client process (the open-file hard limit is 20,000 per process).
PER_CLIENT = 2_500
#: Sequence numbers of consecutive phases never overlap.
SEQ_STRIDE = 1_000_000_000


def log(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"[push] {text}", file=sys.stderr, flush=True)


def precise_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` to the microsecond (``se.sum_exec_runtime``
    in ``/proc/<pid>/task/*/sched``); ``/proc/<pid>/stat`` counts 10 ms ticks, too coarse
    for a fan-out that takes 50 ms. Falls back to the ticks where ``sched`` is missing."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return cpu_s(pid)
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/sched", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("se.sum_exec_runtime"):
                        total += float(line.rsplit(":", 1)[1]) / 1000
                        break
                else:
                    return cpu_s(pid)
        except OSError:
            continue  # the thread ended
    return total


def split(total: int, parts: int) -> list[int]:
    return [total * (i + 1) // parts - total * i // parts for i in range(parts)]


def device_ids(n: int) -> list[str]:
    return [f"bench-{i:06d}" for i in range(n)]


# --------------------------------------------------------------------------- devices


class Sink:
    """What one client process's devices received: unicast records and fan-out counts."""

    def __init__(self) -> None:
        self.seqs = array.array("q")
        self.sent = array.array("d")
        self.acked = array.array("d")
        self.fanout_count: Counter[int] = Counter()
        self.fanout_first: dict[int, float] = {}
        self.fanout_last: dict[int, float] = {}
        self.bad_bodies = 0
        self.waiter: tuple[int, Sequence[int], asyncio.Future[None]] | None = None
        #: Kept across resets (``DeviceClient.ack_delay``).
        self.ack_delay_s = getattr(self, "ack_delay_s", 0.0)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def record(self, bodies: list[bytes], acked_at: float) -> None:
        loads = json.loads
        for body in bodies:
            try:
                obj = loads(body)
                if "b" in obj:
                    k = obj["b"]
                    self.fanout_count[k] += 1
                    self.fanout_first.setdefault(k, acked_at)
                    self.fanout_last[k] = acked_at
                else:
                    self.seqs.append(obj["seq"])
                    self.sent.append(obj["t"])
                    self.acked.append(acked_at)
            except (ValueError, KeyError, TypeError):
                self.bad_bodies += 1
        waiter = self.waiter
        if waiter is not None and not waiter[2].done() and self.fanout_done(waiter[0], waiter[1]):
            waiter[2].set_result(None)

    def fanout_done(self, per_message: int, ks: Sequence[int]) -> bool:
        count = self.fanout_count
        return all(count[k] >= per_message for k in ks)


class PushDevice(MmtpDevice):
    """A bare device that acknowledges every push: at once (one ACK frame per read, as
    the SDK does), or ``sink.ack_delay_s`` later, coalescing what arrived meanwhile."""

    def __init__(self, context: Any, hello: Any, sink: Sink) -> None:
        super().__init__(context, hello)
        self.sink = sink
        self._unacked: list[int] = []

    def app_data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except Exception as exc:
            self._fail(exc)
            return
        ids: list[int] = []
        bodies: list[bytes] = []
        for event in events:
            if type(event) is PushReceived:
                ids.append(event.delivery_id)
                bodies.append(event.body)
            elif isinstance(event, HelloAccepted):
                if not self.ack.done():
                    self.ack.set_result(event.ack)
            elif isinstance(event, ConnectionErrorReceived):
                self.link_failed(ConnectionError(f"gateway error {event.code}: {event.message}"))
        if ids:
            if self.sink.ack_delay_s > 0:
                if not self._unacked:
                    asyncio.get_running_loop().call_later(self.sink.ack_delay_s, self._send_acks)
                self._unacked.extend(ids)
            else:
                self.conn.send_ack(*ids)
        reply = self.conn.data_to_send()  # ACK, PONG, SETTINGS ACK
        if reply and self.ssl is not None:
            self.ssl.write(reply)
            self._flush()  # the ACK is on the socket when its time is taken
        if bodies:
            self.sink.record(bodies, time.monotonic())

    def _send_acks(self) -> None:
        ids, self._unacked = self._unacked, []
        if ids and self.transport is not None and not self.conn.closed:
            self.conn.send_ack(*ids)
            self.send_app(self.conn.data_to_send())


class DeviceClient:
    """One client process: its devices, connected to gateway ports, counting pushes."""

    def __init__(self, index: int, ca_cert: str, ids: Sequence[str], timeout_s: float) -> None:
        register_default_presets()
        self.index = index
        self.source_ip = f"127.0.0.{2 + index}"
        self.context = client_ssl_context(Path(ca_cert))
        self.ids = list(ids)
        self.timeout_s = timeout_s
        self.sink = Sink()
        self.links: list[PushDevice] = []
        self.tokens: dict[str, bytes] = {}
        self.ports: list[int] = []

    def targets(self, ports: Sequence[int], token_key: str) -> dict[str, Any]:
        """Device j connects to ``ports[j % len(ports)]``; tokens minted here, untimed."""
        minter = TokenMinter(token_key)
        self.ports = list(ports)
        self.tokens = {d: minter.token(d, ttl_s=86_400) for d in self.ids}
        return {"devices": len(self.ids)}

    async def connect(self, limit: int = 0, inflight: int = 64) -> dict[str, Any]:
        """Connect the first ``limit`` devices (0: all) of this process."""
        chosen = self.ids[:limit] if limit else self.ids
        gate = asyncio.Semaphore(inflight)
        failures: Counter[str] = Counter()
        started = time.perf_counter()

        async def one(j: int, device_id: str) -> None:
            link = PushDevice(
                self.context, device_hello(device_id, token=self.tokens[device_id]), self.sink
            )
            async with gate:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        await connect_link(link, self.ports[j % len(self.ports)], self.source_ip)
                        await link.ack
                except Exception as exc:
                    failures[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                    link.abort()
                    return
            self.links.append(link)

        offset = self.ids.index(chosen[0]) if chosen else 0
        await asyncio.gather(*(one(offset + j, d) for j, d in enumerate(chosen)))
        return {
            "ok": len(self.links),
            "failed": sum(failures.values()),
            "failures": dict(failures.most_common(3)),
            "seconds": time.perf_counter() - started,
        }

    async def ack_delay(self, ms: float) -> dict[str, Any]:
        self.sink.ack_delay_s = ms / 1000
        return {}

    async def reset(self) -> dict[str, Any]:
        self.sink.reset()
        return {"held": self.held()}

    def held(self) -> int:
        return sum(1 for link in self.links if link.transport is not None)

    async def count(self) -> dict[str, Any]:
        return {"received": len(self.sink.seqs), "held": self.held()}

    async def report(self) -> dict[str, Any]:
        """Every unicast push received since the last reset (as raw arrays)."""
        sink = self.sink
        return {
            "seqs": sink.seqs.tobytes(),
            "sent": sink.sent.tobytes(),
            "acked": sink.acked.tobytes(),
            "bad_bodies": sink.bad_bodies,
            "held": self.held(),
        }

    async def wait_fanout(self, ks: Sequence[int], timeout_s: float) -> dict[str, Any]:
        """Wait until every held device has every broadcast in ``ks``."""
        sink = self.sink
        held = self.held()
        if not sink.fanout_done(held, ks):
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            sink.waiter = (held, ks, future)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout_s)
            sink.waiter = None
        return {
            "held": held,
            "counts": {k: sink.fanout_count[k] for k in ks},
            "first": {k: sink.fanout_first.get(k) for k in ks},
            "last": {k: sink.fanout_last.get(k) for k in ks},
            "complete": sink.fanout_done(held, ks),
        }

    async def close_all(self) -> dict[str, Any]:
        links, self.links = self.links, []
        for link in links:
            link.close()
        if links:
            await asyncio.wait([asyncio.ensure_future(link.closed) for link in links], timeout=30)
        return {"closed": len(links)}


# --------------------------------------------------------------------------- load generator


class LoadGenerator:
    """Posts push batches to the gateways' HTTP APIs (round robin over ``api_urls``)."""

    def __init__(self) -> None:
        self.session: Any = None
        self.urls: list[str] = []
        self.headers: dict[str, str] = {}

    async def setup(self, api_urls: Sequence[str], key: str, connections: int) -> dict[str, Any]:
        import aiohttp

        if self.session is not None:
            await self.session.close()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        self.urls = [u.rstrip("/") + "/v1/push/batch" for u in api_urls]
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        return {"urls": self.urls}

    async def unicast(
        self,
        *,
        start_at: float,
        seconds: float,
        rate: float,
        batch: int,
        concurrency: int,
        devices: int,
        seq0: int,
        ttl_s: int,
    ) -> dict[str, Any]:
        """Open loop at ``rate`` pushes/s (0: closed loop, ``concurrency`` requests in
        flight) from ``start_at`` for ``seconds``; returns what was accepted."""
        ids = device_ids(devices)
        rng = random.Random(seq0)
        accepted = array.array("q")
        requests: list[tuple[float, int, float]] = []  # (sent at, pushes, response s)
        errors: Counter[str] = Counter()
        lateness: list[float] = []
        end = start_at + seconds
        next_seq = seq0
        counter = 0

        def take() -> tuple[int, str, int]:
            nonlocal next_seq, counter
            seq, next_seq = next_seq, next_seq + batch
            counter += 1
            return seq, self.urls[counter % len(self.urls)], seq

        async def post(seq: int, url: str) -> None:
            picks = [ids[rng.randrange(devices)] for _ in range(batch)]
            sent_at = time.monotonic()
            # Built by hand: json.dumps of a 200-push batch costs the generator ~1 ms.
            items = [
                f'{{"device_id":"{picks[i]}","ttl_s":{ttl_s},"body":"{{\\"seq\\":{seq + i},'
                f'\\"t\\":{sent_at:.6f},\\"kind\\":\\"order.shipped\\",'
                f'\\"text\\":\\"Your parcel is on its way\\"}}"}}'
                for i in range(batch)
            ]
            payload = ('{"messages":[' + ",".join(items) + "]}").encode()
            try:
                async with self.session.post(url, data=payload, headers=self.headers) as resp:
                    text = await resp.read()
                    status = resp.status
            except Exception as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += batch
                return
            took = time.monotonic() - sent_at
            if status != 202:
                errors[f"HTTP {status}: {text[:80]!r}"] += batch
                return
            results = json.loads(text)["results"]
            for i, item in enumerate(results):
                if "message_id" in item:
                    accepted.append(seq + i)
                else:
                    errors[f"rejected: {str(item)[:80]}"] += 1
            requests.append((sent_at, batch, took))

        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        cpu0 = time.process_time()
        pending: set[asyncio.Task[None]] = set()
        if rate > 0:
            gate = asyncio.Semaphore(concurrency)
            interval = batch / rate
            k = 0
            while True:
                due = start_at + k * interval
                if due >= end:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()  # all slots busy: the generator falls behind
                lateness.append(time.monotonic() - due)
                seq, url, _ = take()
                task = asyncio.ensure_future(post(seq, url))
                task.add_done_callback(lambda _t: gate.release())
                pending.add(task)
                task.add_done_callback(pending.discard)
                k += 1
        else:

            async def worker() -> None:
                while time.monotonic() < end:
                    seq, url, _ = take()
                    await post(seq, url)

            pending = {asyncio.ensure_future(worker()) for _ in range(concurrency)}
        if pending:
            await asyncio.wait(pending, timeout=120)
        lateness.sort()
        return {
            "accepted": accepted.tobytes(),
            "requests": requests,
            "errors": dict(errors.most_common(5)),
            "error_count": sum(errors.values()),
            "posted": next_seq - seq0,
            "late_p50_ms": lateness[len(lateness) // 2] * 1000 if lateness else None,
            "late_max_ms": lateness[-1] * 1000 if lateness else None,
            "generator_cpu_s": time.process_time() - cpu0,
        }

    async def close(self) -> dict[str, Any]:
        if self.session is not None:
            await self.session.close()
        return {}


# --------------------------------------------------------------------------- worker processes


def worker_main(pipe: Pipe, kind: str, args: dict[str, Any], cpus: list[int] | None) -> None:
    """A client or generator process: serve the parent's commands until "exit"."""
    raise_nofile_limit()
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)

    async def serve() -> None:
        target: Any = DeviceClient(**args) if kind == "devices" else LoadGenerator()
        loop = asyncio.get_running_loop()
        pipe.send({"ready": True, "pid": os.getpid()})
        while True:
            command, params = await loop.run_in_executor(None, pipe.recv)
            if command == "exit":
                closer = getattr(target, "close_all", None) or target.close
                with contextlib.suppress(Exception):
                    await closer()
                pipe.send({"bye": True})
                return
            try:
                method = getattr(target, command)
                reply = method(**params)
                if asyncio.iscoroutine(reply):
                    reply = await reply
            except Exception as exc:  # reported to the parent, which stops the run
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            pipe.send(reply)

    uvloop.run(serve())


class Workers:
    """The parent's handle on a set of worker processes of one kind."""

    def __init__(
        self, kind: str, per_process_args: Sequence[dict[str, Any]], cpus: list[int] | None
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i, args in enumerate(per_process_args):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(child_end, kind, args, cpus),
                name=f"bench-{kind}-{i}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(proc)
        self.pids = [reply["pid"] for reply in self.replies(timeout_s=120)]

    def replies(self, timeout_s: float = REPLY_TIMEOUT_S) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout_s
        for i, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"worker {i} did not answer within {timeout_s} s")
            try:
                reply = pipe.recv()
            except EOFError:
                raise RuntimeError(f"worker {i} exited (see its traceback above)") from None
            if "error" in reply:
                raise RuntimeError(f"worker {i}: {reply['error']}")
            out.append(reply)
        return out

    def send(self, command: str, **params: Any) -> None:
        for pipe in self.pipes:
            pipe.send((command, params))

    def command(self, command: str, **params: Any) -> list[dict[str, Any]]:
        self.send(command, **params)
        return self.replies()

    def close(self) -> None:
        close_worker_processes(self.pipes, self.procs, "exit", 30)


def device_pool(n: int, ca_cert: Path, timeout_s: float, cpus: list[int] | None) -> Workers:
    ids = device_ids(n)
    count = max(1, math.ceil(n / PER_CLIENT))
    args = []
    start = 0
    for size in split(n, count):
        args.append(
            {
                "index": len(args),
                "ca_cert": str(ca_cert),
                "ids": ids[start : start + size],
                "timeout_s": timeout_s,
            }
        )
        start += size
    return Workers("devices", args, cpus)


# --------------------------------------------------------------------------- servers


class Redis:
    """A throwaway ``redis-server`` (``tests.redis_servers.RedisServer``) on a free port."""

    def __init__(self, directory: Path | None = None, server: Any = None) -> None:
        """A new server in ``directory``, or one already running (``server``)."""
        from tests.redis_servers import RedisServer

        if server is None:
            server = RedisServer(directory)
            server.start()
        self.server = server
        assert server.proc is not None
        self.pid = server.proc.pid
        self.url = server.url

    def commands(self) -> tuple[Counter[str], Counter[str]]:
        """Calls and microseconds per command since the server started (``INFO
        commandstats``; a script's inner commands count both on their own and in its
        EVALSHA's time)."""
        client = self.server.client()
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        calls: Counter[str] = Counter()
        usec: Counter[str] = Counter()
        for k, v in stats.items():
            if k != "cmdstat_info":
                calls[k.removeprefix("cmdstat_")] = int(v["calls"])
                usec[k.removeprefix("cmdstat_")] = int(v["usec"])
        return calls, usec

    def info_memory(self) -> int:
        client = self.server.client()
        try:
            return int(client.info("memory")["used_memory"])
        finally:
            client.close()

    def stop(self) -> None:
        self.server.stop()


class Cluster:
    """A throwaway Redis Cluster of three masters (``tests.redis_servers.RedisCluster``):
    what ``Redis`` reports, summed over its nodes."""

    def __init__(self, directory: Path) -> None:
        from tests.redis_servers import RedisCluster

        self.cluster = RedisCluster(directory)
        self.cluster.start()
        self.nodes = [Redis(server=server) for server in self.cluster.nodes]
        self.url = self.cluster.url

    @property
    def pids(self) -> dict[str, int]:
        return {f"redis{i}": node.pid for i, node in enumerate(self.nodes)}

    def commands(self) -> tuple[Counter[str], Counter[str]]:
        calls: Counter[str] = Counter()
        usec: Counter[str] = Counter()
        for node in self.nodes:
            c, u = node.commands()
            calls += c
            usec += u
        return calls, usec

    def info_memory(self) -> int:
        return sum(node.info_memory() for node in self.nodes)

    def stop(self) -> None:
        self.cluster.stop()


def gateway_settings(n: int, backend: str, redis_url: str = "", buckets: int = 0) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "server": {
            "max_connections": n + 1000,
            "max_connections_per_ip": n + 1000,
            "handshake_timeout_s": 120.0,
        },
        "heartbeat": {"interval_s": 600, "max_s": 600},
        "push": {"backend": backend},
        "api": {"port": 0},
    }
    if backend in ("redis", "cluster"):
        settings["push"]["backend"] = "redis"
        settings["push"]["redis_cluster"] = backend == "cluster"
        settings["push"]["redis_url"] = redis_url
        settings["push"]["presence_buckets"] = buckets or max(16, n // 64)
    return settings


def api_key(state_dir: Path) -> str:
    return (state_dir / "api" / "dev.key").read_text(encoding="ascii").strip()


def api_url(gateway: GatewayProcess) -> str:
    port = gateway.info.get("api_port")
    if not port:
        raise RuntimeError(
            f"{gateway.name}: its 'listening' line has no api_port (is the HTTP API wired "
            f"into 'channel serve'?): {gateway.info}"
        )
    return f"http://127.0.0.1:{port}"


def post_json(url: str, key: str, obj: object, timeout_s: float = 60.0) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(obj).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {url}: HTTP {exc.code}: {exc.read()[:300]!r}") from None


def pin(pid: int, cpus: Sequence[int] | None) -> None:
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


class Profiler:
    """``py-spy record`` on one process for a window (optional: ``--profile DIR``)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc: subprocess.Popen[bytes] | None = None
        self.path: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.directory is not None and Path(self.binary).exists()

    def start(self, pid: int, name: str, seconds: float) -> None:
        if not self.enabled:
            return
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{name}.txt"
        self.proc = subprocess.Popen(
            [
                self.binary,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(self.path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def finish(self) -> dict[str, Any] | None:
        if self.proc is None or self.path is None:
            return None
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        return summarise_profile(self.path)


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any] | None:
    """Self and inclusive shares of the busiest functions in py-spy's collapsed stacks."""
    if not path.exists():
        return None
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.split(" (")[0] + " " + _short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        if "select" in frames[-1] or "epoll" in frames[-1] or "run_forever" in frames[-1]:
            idle += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return None
    return {
        "file": str(path),
        "samples": total,
        "self": [(f, round(c / total, 4)) for f, c in own.most_common(top)],
        "inclusive": [(f, round(c / total, 4)) for f, c in inclusive.most_common(top)],
    }


def _short(frame: str) -> str:
    """``name (path/to/module.py:12)`` -> ``module.py``."""
    start = frame.find("(")
    if start < 0:
        return ""
    where = frame[start + 1 : frame.rfind(")")]
    return where.rsplit("/", 1)[-1].split(":")[0]


# --------------------------------------------------------------------------- unicast


def _ms(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))] * 1000


def analyse_unicast(
    gen: dict[str, Any],
    reports: Sequence[dict[str, Any]],
    window: tuple[float, float],
    cpu: dict[str, float],
) -> dict[str, Any]:
    accepted = array.array("q")
    accepted.frombytes(gen["accepted"])
    seqs = array.array("q")
    sent = array.array("d")
    acked = array.array("d")
    for report in reports:
        seqs.frombytes(report["seqs"])
        sent.frombytes(report["sent"])
        acked.frombytes(report["acked"])
    accepted_set = set(accepted)
    received = Counter(seqs)
    w0, w1 = window
    length = w1 - w0
    in_window_latencies = sorted(a - s for s, a in zip(sent, acked, strict=True) if w0 <= s < w1)
    all_latencies = sorted(a - s for s, a in zip(sent, acked, strict=True))
    acked_in_window = sum(1 for a in acked if w0 <= a < w1)
    posted_in_window = sum(n for t, n, _ in gen["requests"] if w0 <= t < w1)
    responses = sorted(took for t, _, took in gen["requests"] if w0 <= t < w1)
    per_k = 1000 / acked_in_window if acked_in_window else None
    return {
        "posted": gen["posted"],
        "accepted": len(accepted),
        "api_errors": gen["error_count"],
        "api_error_samples": gen["errors"],
        "received": len(seqs),
        "unique_received": len(received),
        "duplicates": len(seqs) - len(received),
        "lost": len(accepted_set - received.keys()),
        "unexpected": len(received.keys() - accepted_set),
        "window_s": length,
        "accepted_per_s": posted_in_window / length if length else None,
        "acked_per_s": acked_in_window / length if length else None,
        "latency_ms": {
            "p50": _ms(in_window_latencies, 0.50),
            "p90": _ms(in_window_latencies, 0.90),
            "p99": _ms(in_window_latencies, 0.99),
            "max": _ms(in_window_latencies, 1.0),
            "count": len(in_window_latencies),
        },
        "latency_all_ms": {
            "p50": _ms(all_latencies, 0.50),
            "p99": _ms(all_latencies, 0.99),
            "max": _ms(all_latencies, 1.0),
        },
        "http_response_ms": {"p50": _ms(responses, 0.5), "p99": _ms(responses, 0.99)},
        "generator_late_p50_ms": gen["late_p50_ms"],
        "generator_late_max_ms": gen["late_max_ms"],
        "cpu_s": cpu,
        "cpu_s_per_1000": {k: v * per_k for k, v in cpu.items()} if per_k else None,
    }


def run_unicast_backend(
    args: argparse.Namespace,
    backend: str,
    nodes: int,
    state_root: Path,
    profiler: Profiler,
    seq_base: int,
) -> dict[str, Any]:
    """Start Redis (if needed), the gateway(s), devices and the generator; run every mode."""
    quiet = args.quiet
    n = args.devices
    label = backend if nodes == 1 else f"{backend}×{nodes}"
    state_dir = state_root / label
    redis: Redis | Cluster | None = None
    gateways: list[GatewayProcess] = []
    clients: Workers | None = None
    generator: Workers | None = None
    result: dict[str, Any] = {"backend": backend, "nodes": nodes}
    try:
        if backend == "redis":
            redis = Redis(state_dir / "redis")
            result["redis_pid"] = redis.pid
        elif backend == "cluster":
            redis = Cluster(state_dir / "cluster")
            result["redis_pids"] = redis.pids
        settings = gateway_settings(n, backend, redis.url if redis else "", args.presence_buckets)
        for i in range(nodes):
            gateways.append(
                GatewayProcess(state_dir=state_dir, settings=settings, name=f"gateway{i}").start()
            )
        urls = [api_url(g) for g in gateways]
        key = api_key(state_dir)
        log(quiet, f"{label}: gateway(s) on {[g.port for g in gateways]}, API {urls}")
        clients = device_pool(n, gateways[0].ca_cert, args.connect_timeout_s, None)
        clients.command(
            "targets", ports=[g.port for g in gateways], token_key=str(gateways[0].token_key)
        )
        started = time.monotonic()
        connected = clients.command("connect")
        ok = sum(r["ok"] for r in connected)
        log(quiet, f"{label}: {ok}/{n} devices connected in {time.monotonic() - started:.1f} s")
        sessions = wait_connections(gateways, ok, key="sessions", timeout_s=60)
        result["devices_held"] = sessions
        generator = Workers("generator", [{}], None)
        generator.command("setup", api_urls=urls, key=key, connections=args.concurrency)
        pids = {
            **{g.name: g.pid for g in gateways},
            **(redis.pids if isinstance(redis, Cluster) else {"redis": redis.pid} if redis else {}),
            "generator": generator.pids[0],
            "clients": -1,
        }
        # Presence is written in batches after HELLO_ACK: wait until a push to every
        # device gets through (one warm-up push each), which also warms every path.
        warm = run_mode(
            args, clients, generator, pids, clients.pids, mode="warmup", seq0=seq_base,
            rate=min(args.rate, 5_000) or 5_000, seconds=max(1.0, n / 5_000), warmup_s=0.0,
        )  # fmt: skip
        result["warmup"] = {k: warm[k] for k in ("accepted", "lost", "acked_per_s")}
        log(quiet, f"{label}: warm-up {warm['accepted']} accepted, {warm['lost']} lost")
        for index, mode in enumerate(args.modes):
            rate = args.rate if mode == "rate" else 0.0
            if mode == "half":
                # Below saturation: latency without the queueing a saturated node adds.
                most = result.get("max", {}).get("acked_per_s")
                if not most:
                    continue
                rate = most * args.half_fraction
            if profiler.enabled:
                profiler.start(
                    gateways[0].pid, f"unicast-{label}-{mode}", args.warmup_s + args.seconds
                )
            phase = run_mode(
                args, clients, generator, pids, clients.pids, mode=mode,
                seq0=seq_base + (index + 1) * SEQ_STRIDE, rate=rate,
                seconds=args.seconds, warmup_s=args.warmup_s, redis=redis,
            )  # fmt: skip
            if profiler.enabled:
                phase["profile"] = profiler.finish()
            result[mode] = phase
            lat = phase["latency_ms"]
            log(
                quiet,
                f"{label} {mode}: {phase['acked_per_s'] or 0:,.0f} acked/s, p50 "
                f"{lat['p50'] or 0:.1f} ms, p99 {lat['p99'] or 0:.1f} ms, lost {phase['lost']}",
            )
        if redis is not None:
            result["redis_used_memory_bytes"] = redis.info_memory()
    finally:
        if generator is not None:
            generator.close()
        if clients is not None:
            clients.close()
        for g in gateways:
            g.stop()
        if redis is not None:
            redis.stop()
    return result


def run_mode(
    args: argparse.Namespace,
    clients: Workers,
    generator: Workers,
    pids: dict[str, int],
    client_pids: Sequence[int],
    *,
    mode: str,
    seq0: int,
    rate: float,
    seconds: float,
    warmup_s: float,
    redis: Redis | Cluster | None = None,
) -> dict[str, Any]:
    """One generator run: reset the devices' records, load, drain, collect, analyse."""
    clients.command("reset")
    start_at = time.monotonic() + 0.5
    generator.send(
        "unicast",
        start_at=start_at,
        seconds=warmup_s + seconds,
        rate=rate,
        batch=args.batch,
        concurrency=args.concurrency,
        devices=args.devices,
        seq0=seq0,
        ttl_s=args.ttl_s,
    )
    named = {k: v for k, v in pids.items() if v > 0}

    def snapshot() -> dict[str, float]:
        out = {}
        for name, pid in named.items():
            with contextlib.suppress(OSError):
                out[name] = precise_cpu_s(pid)
        out["clients"] = sum(precise_cpu_s(p) for p in client_pids)
        return out

    w0 = start_at + warmup_s
    w1 = start_at + warmup_s + seconds
    time.sleep(max(0.0, w0 - time.monotonic()))
    cpu0 = snapshot()
    calls0, usec0 = redis.commands() if redis is not None else (Counter(), Counter())
    time.sleep(max(0.0, w1 - time.monotonic()))
    cpu1 = snapshot()
    calls1, usec1 = redis.commands() if redis is not None else (Counter(), Counter())
    commands, usec = calls1 - calls0, usec1 - usec0
    (gen,) = generator.replies()
    accepted = len(gen["accepted"]) // 8
    # Drain: wait until every accepted push arrived, or nothing arrived for a while.
    deadline = time.monotonic() + args.drain_s
    last_total, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        total = sum(r["received"] for r in clients.command("count"))
        if total >= accepted:
            break
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > min(2.0, args.drain_s):
            break
        time.sleep(0.1)
    reports = clients.command("report")
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu1 if k in cpu0}
    phase = analyse_unicast(gen, reports, (w0, w1), cpu)
    phase.update(mode=mode, target_rate=rate or None, batch=args.batch)
    phase["bad_bodies"] = sum(r["bad_bodies"] for r in reports)
    if commands:
        acked = phase["acked_per_s"] * phase["window_s"] if phase["acked_per_s"] else 0
        # INFO commandstats counts the commands scripts run inside Redis too.
        phase["redis_commands_per_push"] = (
            {k: v / acked for k, v in commands.most_common()} if acked else None
        )
        phase["redis_usec_per_push"] = (
            {k: v / acked for k, v in usec.most_common()} if acked else None
        )
    return phase


# --------------------------------------------------------------------------- fan-out


def run_fanout(args: argparse.Namespace, state_root: Path, profiler: Profiler) -> dict[str, Any]:
    quiet = args.quiet
    n = args.fanout_devices
    cpus = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cpus) >= 2
    server_cpus = cpus[:1] if pinned else None
    client_cpus = cpus[1:] if pinned else None
    state_dir = state_root / "fanout"
    redis: Redis | None = None
    settings: dict[str, Any]
    if args.fanout_backend == "redis":
        redis = Redis(state_dir / "redis")
        settings = gateway_settings(n, "redis", redis.url, args.presence_buckets)
    else:
        settings = gateway_settings(n, "memory")
    settings["push"]["fanout_linger_ms"] = args.fanout_linger_ms
    gateway = GatewayProcess(state_dir=state_dir, settings=settings, name="gateway-fanout")
    clients: Workers | None = None
    result: dict[str, Any] = {
        "backend": args.fanout_backend,
        "fanout_linger_ms": args.fanout_linger_ms,
        "pinned": {"gateway": server_cpus, "clients": client_cpus},
    }
    try:
        gateway.start()
        pin(gateway.pid, server_cpus)
        url = api_url(gateway)
        key = api_key(state_dir)
        clients = device_pool(n, gateway.ca_cert, args.connect_timeout_s, client_cpus)
        clients.command("targets", ports=[gateway.port], token_key=str(gateway.token_key))
        seq = [0]
        for label, count in (("full", n), ("baseline", args.baseline_devices)):
            if label == "baseline":
                clients.command("close_all")
                wait_connections([gateway], 0, timeout_s=30)
                if count <= 0:
                    break
            started = time.monotonic()
            parts = split(count, len(clients.pipes))
            for pipe, part in zip(clients.pipes, parts, strict=True):
                pipe.send(("connect", {"limit": part}))
            ok = sum(r["ok"] for r in clients.replies())
            held = wait_connections([gateway], ok, key="sessions", timeout_s=60)
            log(
                quiet,
                f"fan-out: {held} devices connected in {time.monotonic() - started:.1f} s",
            )
            idle0, t_idle = precise_cpu_s(gateway.pid), time.monotonic()
            time.sleep(args.idle_window_s)
            idle = (precise_cpu_s(gateway.pid) - idle0) / (time.monotonic() - t_idle)
            result[label] = {"devices": held, "idle_cpu_percent": idle * 100}
            for delay_ms in args.ack_delays_ms:
                clients.command("ack_delay", ms=delay_ms)
                runs = fanout_scenarios(
                    args, clients, gateway, url, key, held, seq, profiler, label, delay_ms, idle
                )
                if delay_ms == args.ack_delays_ms[0]:
                    result[label].update(runs)
                    result[label]["ack_delay_ms"] = delay_ms
                else:
                    result[label][f"ack_delay_{delay_ms:g}ms"] = runs
    finally:
        if clients is not None:
            clients.close()
        gateway.stop()
        if redis is not None:
            redis.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    return result


def _broadcast(k: int, sent_at: float) -> dict[str, Any]:
    body = json.dumps(
        {"b": k, "t": round(sent_at, 6), "kind": "promo", "text": "Red envelopes are live!"},
        separators=(",", ":"),
    )
    return {"broadcast": True, "body": body, "ttl_s": 0}


def fanout_scenarios(
    args: argparse.Namespace,
    clients: Workers,
    gateway: GatewayProcess,
    url: str,
    key: str,
    devices: int,
    seq: list[int],
    profiler: Profiler,
    label: str,
    ack_delay_ms: float = 0.0,
    idle_cpu_per_s: float = 0.0,
) -> dict[str, Any]:
    m = args.broadcasts
    ack_delay_s = ack_delay_ms / 1000
    out: dict[str, Any] = {}
    for name, count, one_request in (
        ("batch", m, True),
        ("separate", m, False),
        ("single", 1, True),
    ):
        # Repeated until enough deliveries were timed: a 200-device broadcast costs the
        # gateway well under a millisecond, too little for one reading.
        runs: list[dict[str, Any]] = []
        while True:
            runs.append(
                fanout_once(
                    args,
                    clients,
                    gateway,
                    url,
                    key,
                    devices,
                    seq,
                    count,
                    one_request,
                    ack_delay_s,
                    idle_cpu_per_s,
                )
            )
            done = sum(r["deliveries"] for r in runs)
            if done >= args.min_deliveries or len(runs) >= args.max_repeats:
                break
        out[name] = r = combine_runs(runs)
        log(
            args.quiet,
            f"fan-out {label}, ack delay {ack_delay_ms:g} ms, {name}: "
            f"{r['deliveries']:,}/{r['expected']:,} in {r['repeats']} "
            f"run(s), all delivered in {r['all_delivered_s'] or 0:.3f} s (median), "
            f"{r['per_gateway_cpu_s'] or 0:,.0f} per gateway CPU-s "
            f"({r['per_gateway_cpu_s_with_acks'] or 0:,.0f} with acks)",
        )
    if label == "full" and not ack_delay_s:
        out["unicast_behind_broadcast"] = r = unicast_behind_broadcast(
            args, clients, url, key, devices, seq
        )
        log(
            args.quiet,
            f"unicast posted right behind a {devices:,}-device broadcast: p50 "
            f"{r['unicast_p50_ms'] or 0:.1f} ms, max {r['unicast_max_ms'] or 0:.1f} ms; the "
            f"broadcast's last delivery {r['broadcast_all_delivered_ms'] or 0:.1f} ms",
        )
    if profiler.enabled and label == "full" and not ack_delay_s:
        # Longer runs of batches and of single broadcasts, only to see where the
        # gateway's CPU goes (not timed: the profiler costs the gateway some CPU).
        for name, count in (("batch", m), ("single", 1)):
            profiler.start(gateway.pid, f"fanout-{name}", args.profile_s)
            end = time.monotonic() + args.profile_s
            while time.monotonic() < end:
                fanout_once(args, clients, gateway, url, key, devices, seq, count, True)
            out[f"profile_{name}"] = profiler.finish()
    return out


def unicast_behind_broadcast(
    args: argparse.Namespace,
    clients: Workers,
    url: str,
    key: str,
    devices: int,
    seq: list[int],
    probes: int = 50,
    repeats: int = 3,
) -> dict[str, Any]:
    """Head-of-line blocking: a batch of unicasts posted right after a broadcast to every
    device. POST -> ACK latency of the unicasts against the broadcast's last delivery."""
    latencies: list[float] = []
    all_delivered: list[float] = []
    ids = device_ids(devices)
    rng = random.Random(seq[0])
    for _ in range(repeats):
        clients.command("reset")
        k = seq[0]
        seq[0] += 1
        t0 = time.monotonic()
        post_json(url + "/v1/push/batch", key, {"messages": [_broadcast(k, t0)]})
        t1 = time.monotonic()
        unicasts = [
            {"device_id": d, "body": json.dumps({"seq": i, "t": t1}), "ttl_s": 60}
            for i, d in enumerate(rng.sample(ids, min(probes, len(ids))))
        ]
        post_json(url + "/v1/push/batch", key, {"messages": unicasts})
        replies = clients.command("wait_fanout", ks=[k], timeout_s=args.fanout_timeout_s)
        lasts = [v for r in replies for v in r["last"].values() if v is not None]
        if lasts:
            all_delivered.append(max(lasts) - t0)
        deadline = time.monotonic() + args.fanout_timeout_s
        while time.monotonic() < deadline:
            if sum(r["received"] for r in clients.command("count")) >= len(unicasts):
                break
            time.sleep(0.01)
        for report in clients.command("report"):
            sent = array.array("d")
            sent.frombytes(report["sent"])
            acked = array.array("d")
            acked.frombytes(report["acked"])
            latencies += [a - s for s, a in zip(sent, acked, strict=True)]
    latencies.sort()
    return {
        "probes": probes,
        "repeats": repeats,
        "unicasts_received": len(latencies),
        "unicast_p50_ms": _ms(latencies, 0.5),
        "unicast_max_ms": latencies[-1] * 1000 if latencies else None,
        "broadcast_all_delivered_ms": (
            statistics.median(all_delivered) * 1000 if all_delivered else None
        ),
    }


def combine_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    deliveries = sum(r["deliveries"] for r in runs)
    cpu = sum(r["gateway_cpu_s"] for r in runs)
    cpu_acks = sum(r["gateway_cpu_s_with_acks"] for r in runs)
    times = [r["all_delivered_s"] for r in runs]
    return {
        "repeats": len(runs),
        "broadcasts": runs[0]["broadcasts"],
        "requests": runs[0]["requests"],
        "devices": runs[0]["devices"],
        "expected": sum(r["expected"] for r in runs),
        "deliveries": deliveries,
        "complete": all(r["complete"] for r in runs),
        "all_delivered_s": _median(times),
        "all_delivered_s_max": max((t for t in times if t is not None), default=None),
        "first_delivery_s": _median([r["first_delivery_s"] for r in runs]),
        "api_s": _median([r["api_s"] for r in runs]),
        "gateway_cpu_s": cpu,
        "gateway_cpu_s_with_acks": cpu_acks,
        "per_gateway_cpu_s": deliveries / cpu if cpu > 0 else None,
        "per_gateway_cpu_s_with_acks": deliveries / cpu_acks if cpu_acks > 0 else None,
        "gateway_cpu_us_per_delivery": cpu / deliveries * 1e6 if deliveries else None,
        "deliveries_per_s": _median([r["per_s"] for r in runs]),
        "runs": list(runs[:5]),
    }


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fanout_once(
    args: argparse.Namespace,
    clients: Workers,
    gateway: GatewayProcess,
    url: str,
    key: str,
    devices: int,
    seq: list[int],
    count: int,
    one_request: bool,
    ack_delay_s: float = 0.0,
    idle_cpu_per_s: float = 0.0,
) -> dict[str, Any]:
    clients.command("reset")
    ks = list(range(seq[0], seq[0] + count))
    seq[0] += count
    batch_url = url + "/v1/push/batch"
    one_url = url + "/v1/push"
    cpu0 = precise_cpu_s(gateway.pid)
    t0 = time.monotonic()
    if one_request:
        post_json(batch_url, key, {"messages": [_broadcast(k, t0) for k in ks]})
    else:
        for k in ks:
            post_json(one_url, key, _broadcast(k, time.monotonic()))
    posted_s = time.monotonic() - t0
    replies = clients.command("wait_fanout", ks=ks, timeout_s=args.fanout_timeout_s)
    cpu1 = precise_cpu_s(gateway.pid)
    t1 = time.monotonic()
    if ack_delay_s:
        time.sleep(ack_delay_s)  # the last ACKs are on their way
    cpu2 = settled_cpu(gateway.pid)
    t2 = time.monotonic()
    deliveries = sum(sum(r["counts"].values()) for r in replies)
    lasts = [v for r in replies for v in r["last"].values() if v is not None]
    firsts = [v for r in replies for v in r["first"].values() if v is not None]
    complete = all(r["complete"] for r in replies)
    used = cpu1 - cpu0
    # The wait for the last ACKs (up to the ACK delay) is idle time: its sweep and
    # timers are not the fan-out's cost.
    used_acks = max(cpu2 - cpu0 - idle_cpu_per_s * (t2 - t0), 1e-9)
    return {
        "broadcasts": count,
        "devices": devices,
        "requests": 1 if one_request else count,
        "expected": devices * count,
        "deliveries": deliveries,
        "complete": complete,
        "api_s": posted_s,
        "first_delivery_s": (min(firsts) - t0) if firsts else None,
        "all_delivered_s": (max(lasts) - t0) if lasts and complete else None,
        "wait_s": t1 - t0,
        "gateway_cpu_s": used,
        "gateway_cpu_s_with_acks": used_acks,
        "gateway_cpu_s_with_acks_raw": cpu2 - cpu0,
        "per_gateway_cpu_s": deliveries / used if used > 0 else None,
        "per_gateway_cpu_s_with_acks": deliveries / used_acks if used_acks > 0 else None,
        "per_s": deliveries / (max(lasts) - t0) if lasts and complete else None,
    }


def settled_cpu(
    pid: int, step_s: float = 0.05, quiet_s: float = 0.002, limit_s: float = 10.0
) -> float:
    """The process's CPU once it stops working: two readings ``step_s`` apart differ by
    less than ``quiet_s`` (the gateway's idle sweep costs less than that)."""
    deadline = time.monotonic() + limit_s
    last = precise_cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(step_s)
        now = precise_cpu_s(pid)
        if now - last < quiet_s:
            return now
        last = now
    return last


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile_limit()
    doc: dict[str, Any] = {
        "tool": "stress.push",
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "unicast": {},
        "warnings": [],
    }
    profiler = Profiler(args.profile)
    if args.profile is not None and not profiler.enabled:
        doc["warnings"].append("--profile: py-spy not found (pip install py-spy); not profiled")
    state_root = Path(tempfile.mkdtemp(prefix="channel-bench-push-"))
    try:
        if args.devices > 0:
            runs: list[tuple[str, int]] = [(b, 1) for b in args.backends]
            if args.nodes > 1 and "redis" in args.backends:
                runs.append(("redis", args.nodes))
            for i, (backend, nodes) in enumerate(runs):
                label = backend if nodes == 1 else f"{backend}x{nodes}"
                doc["unicast"][label] = run_unicast_backend(
                    args, backend, nodes, state_root, profiler, seq_base=i * 10 * SEQ_STRIDE
                )
        if args.fanout_devices > 0:
            doc["fanout"] = run_fanout(args, state_root, profiler)
    finally:
        shutil.rmtree(state_root, ignore_errors=True)
    doc["ratios"] = ratios(doc)
    return doc


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    uni = doc.get("unicast", {})
    base = uni.get("memory")
    if base:
        for label, side in uni.items():
            if label == "memory":
                continue
            for mode in ("rate", "max", "half"):
                a, b = side.get(mode), base.get(mode)
                if not a or not b:
                    continue
                out[f"unicast_{label}_vs_memory_{mode}"] = {
                    "acked_per_s": _ratio(a["acked_per_s"], b["acked_per_s"]),
                    "p50_ms": _ratio(a["latency_ms"]["p50"], b["latency_ms"]["p50"]),
                    "p99_ms": _ratio(a["latency_ms"]["p99"], b["latency_ms"]["p99"]),
                    "gateway_cpu_per_1000": _ratio(_gateway_cpu(a), _gateway_cpu(b)),
                }
    fan = doc.get("fanout")
    if fan and "baseline" in fan:
        full, small = fan["full"], fan["baseline"]
        for scenario in ("batch", "separate", "single"):
            out[f"fanout_{scenario}_full_vs_baseline"] = {
                "per_gateway_cpu_s": _ratio(
                    full[scenario]["per_gateway_cpu_s"], small[scenario]["per_gateway_cpu_s"]
                ),
                "per_gateway_cpu_s_with_acks": _ratio(
                    full[scenario]["per_gateway_cpu_s_with_acks"],
                    small[scenario]["per_gateway_cpu_s_with_acks"],
                ),
            }
    return out


def _gateway_cpu(phase: dict[str, Any]) -> float | None:
    per = phase.get("cpu_s_per_1000")
    if not per:
        return None
    return sum(v for k, v in per.items() if k.startswith("gateway"))


# --------------------------------------------------------------------------- report


def render(doc: dict[str, Any]) -> str:
    out: list[str] = []
    uni = doc.get("unicast", {})
    if uni:
        labels = list(uni)
        for mode in doc["args"]["modes"]:
            title = {
                "rate": f"unicast, open loop at {doc['args']['rate']:,.0f} pushes/s",
                "max": f"unicast, closed loop ({doc['args']['concurrency']} requests in flight)",
                "half": f"unicast, open loop at {doc['args']['half_fraction']:.0%} of closed loop",
            }[mode]
            header = [title, *labels]
            if "memory" in uni and len(labels) > 1:
                header += [f"{lab}/memory" for lab in labels if lab != "memory"]
            rows = [header]

            def row(
                name: str,
                get: Callable[[dict[str, Any]], float | None],
                spec: str,
                mode: str = mode,
                rows: list[list[str]] = rows,
            ) -> None:
                values = [get(uni[lab][mode]) if mode in uni[lab] else None for lab in labels]
                cells = [name] + [_f(v, spec) for v in values]
                if "memory" in uni and len(labels) > 1:
                    base = values[labels.index("memory")]
                    cells += [
                        _f(_ratio(v, base), ".2f")
                        for lab, v in zip(labels, values, strict=True)
                        if lab != "memory"
                    ]
                rows.append(cells)

            row("target pushes/s", lambda p: p["target_rate"], ",.0f")
            row("accepted pushes/s", lambda p: p["accepted_per_s"], ",.0f")
            row("acked pushes/s", lambda p: p["acked_per_s"], ",.0f")
            row("latency p50 ms (POST -> ACK)", lambda p: p["latency_ms"]["p50"], ".1f")
            row("latency p99 ms", lambda p: p["latency_ms"]["p99"], ".1f")
            row("latency max ms", lambda p: p["latency_ms"]["max"], ".1f")
            row("HTTP response p50 ms", lambda p: p["http_response_ms"]["p50"], ".1f")
            # Open loop: latency runs from the actual POST; time the generator was held
            # back (all --concurrency slots busy) is here, not in the latency.
            row("generator behind schedule p50 ms", lambda p: p["generator_late_p50_ms"], ",.0f")
            row("lost (accepted, never acked)", lambda p: p["lost"], "d")
            row("duplicates", lambda p: p["duplicates"], "d")
            row("API errors", lambda p: p["api_errors"], "d")
            for who in ("gateway", "redis", "generator", "clients"):
                row(
                    f"CPU-s per 1,000 pushes: {who}",
                    lambda p, who=who: _cpu_per_1000(p, who),
                    ".3f",
                )
            out.append(_table(rows))
    fan = doc.get("fanout")
    if fan:
        full = fan["full"]
        small = fan.get("baseline") or {}
        variants = [(f"ACK at once ({full.get('ack_delay_ms', 0):g} ms)", full, small)]
        for key in full:
            if key.startswith("ack_delay_") and isinstance(full[key], dict):
                delay = key.removeprefix("ack_delay_").removesuffix("ms")
                variants.append((f"ACK coalesced over {delay} ms", full[key], small.get(key, {})))
        for title, a_side, b_side in variants:
            rows = [
                [
                    f"broadcast fan-out ({fan['backend']} backend), {title}",
                    f"{full['devices']:,} devices",
                    f"{small['devices']:,} devices" if small else "-",
                    "ratio",
                ]
            ]
            for scenario, name in (
                ("batch", f"{doc['args']['broadcasts']} broadcasts in one request"),
                ("separate", f"{doc['args']['broadcasts']} broadcasts, one request each"),
                ("single", "1 broadcast"),
            ):
                a, b = a_side[scenario], b_side.get(scenario, {})
                rows.append(
                    [
                        f"{name}: all delivered s (median)",
                        _f(a["all_delivered_s"], ".3f"),
                        _f(b.get("all_delivered_s"), ".3f"),
                        "",
                    ]
                )
                for label, figure in (
                    ("  deliveries per gateway CPU-s (to the last delivery)", "per_gateway_cpu_s"),
                    (
                        "  ... until all ACKs are in (idle CPU subtracted)",
                        "per_gateway_cpu_s_with_acks",
                    ),
                ):
                    rows.append(
                        [
                            label,
                            _f(a[figure], ",.0f"),
                            _f(b.get(figure), ",.0f"),
                            _f(_ratio(a[figure], b.get(figure)), ".2f"),
                        ]
                    )
            out.append(_table(rows))
        hol = full.get("unicast_behind_broadcast")
        if hol:
            out.append(
                f"{hol['probes']} unicasts posted right behind a broadcast to "
                f"{full['devices']:,} devices (x{hol['repeats']}): POST -> ACK p50 "
                f"{_f(hol['unicast_p50_ms'], '.1f')} ms, max {_f(hol['unicast_max_ms'], '.1f')} "
                f"ms; the broadcast's last delivery {_f(hol['broadcast_all_delivered_ms'], '.1f')} "
                "ms after its POST"
            )
    return "\n\n".join(out)


def _cpu_per_1000(phase: dict[str, Any], who: str) -> float | None:
    per = phase.get("cpu_s_per_1000")
    if not per:
        return None
    values = [v for k, v in per.items() if k.startswith(who)]
    return sum(values) if values else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stress.push",
        description="Pushes through the gateway: unicast acked pushes/s and POST->ACK latency "
        "with the Redis backend against the memory backend, and broadcast fan-out "
        "deliveries per gateway CPU-second at 10,000 devices against 200.",
    )
    u = p.add_argument_group("unicast")
    u.add_argument("--devices", type=int, default=2_000, help="devices (default 2000; 0 = skip)")
    u.add_argument("--rate", type=float, default=30_000, help="open-loop pushes/s (default 30000)")
    u.add_argument("--seconds", type=float, default=10.0, help="measured seconds per mode (10)")
    u.add_argument("--warmup-s", type=float, default=2.0, help="load before measuring (2 s)")
    u.add_argument("--batch", type=int, default=200, help="pushes per API request (200)")
    u.add_argument(
        "--concurrency",
        type=int,
        default=8,
        help="API requests in flight at most (open loop), exactly (closed loop); default 8",
    )
    u.add_argument(
        "--modes",
        type=lambda s: [m for m in s.split(",") if m],
        default=["rate", "max", "half"],
        help="rate (open loop at --rate), max (closed loop), half (open loop at "
        "--half-fraction of what max acked; after max); default rate,max,half",
    )
    u.add_argument(
        "--backends",
        type=lambda s: [b for b in s.split(",") if b],
        default=["memory", "redis"],
        help="push backends, each a gateway of its own: memory, redis (one redis-server), "
        "cluster (a Redis Cluster of three masters); default memory,redis",
    )
    u.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="also run the redis backend with this many gateway processes (default 1: no)",
    )
    u.add_argument(
        "--half-fraction",
        type=float,
        default=0.5,
        help="mode half: open loop at this fraction of the closed-loop rate (0.5)",
    )
    u.add_argument("--ttl-s", type=int, default=3600, help="ttl_s of each push (default 3600)")
    u.add_argument("--drain-s", type=float, default=10.0, help="wait for stragglers (10 s)")
    u.add_argument(
        "--presence-buckets", type=int, default=0, help="[push] presence_buckets (devices/64)"
    )
    f = p.add_argument_group("broadcast fan-out")
    f.add_argument(
        "--fanout-devices", type=int, default=10_000, help="devices (default 10000; 0 = skip)"
    )
    f.add_argument(
        "--baseline-devices", type=int, default=200, help="baseline devices (default 200)"
    )
    f.add_argument("--broadcasts", type=int, default=20, help="broadcasts per burst (20)")
    f.add_argument(
        "--min-deliveries",
        type=int,
        default=50_000,
        help="repeat each fan-out until this many deliveries were timed (50000)",
    )
    f.add_argument("--max-repeats", type=int, default=100, help="... or this many runs (100)")
    f.add_argument(
        "--fanout-backend", choices=("memory", "redis"), default="memory", help="(memory)"
    )
    f.add_argument(
        "--ack-delays-ms",
        type=lambda text: [float(x) for x in text.split(",") if x],
        default=[0.0, 1000.0],
        help="device ACK delays to run the fan-out with; the first is the headline "
        "(default 0,1000: at once per read as the SDK does, and coalesced over 1 s)",
    )
    f.add_argument(
        "--idle-window-s",
        type=float,
        default=2.0,
        help="gateway idle CPU measured this long before the fan-outs (2 s); subtracted "
        "from the 'until idle again' figure over the time it waited for the last ACKs",
    )
    f.add_argument("--fanout-timeout-s", type=float, default=60.0)
    f.add_argument(
        "--fanout-linger-ms",
        type=float,
        default=0.0,
        help="[push] fanout_linger_ms of the fan-out gateway (default 0: the ring starts at "
        "once); broadcasts posted within it share one write per device",
    )
    f.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="fan-out: do not pin the gateway to the first CPU and the clients to the others",
    )
    p.add_argument("--connect-timeout-s", type=float, default=120.0)
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy the gateway during each measured phase (collapsed stacks in DIR, "
        "a summary in the JSON); the profiler costs the gateway a little CPU",
    )
    p.add_argument("--profile-s", type=float, default=10.0, help="fan-out profile length (10 s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if not set(args.modes) <= {"rate", "max", "half"} or not args.modes:
        p.error("--modes: rate, max, half (half runs after max)")
    if not set(args.backends) <= {"memory", "redis", "cluster"}:
        p.error("--backends: memory, redis and/or cluster")
    if args.batch < 1 or args.batch > 1000:
        p.error("--batch must be 1..1000 (the API's max_batch)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run(args)
    print(f"machine: {machine_line()}")
    print(
        f"unicast: {args.devices} devices, batches of {args.batch}, {args.seconds:g} s measured "
        f"after {args.warmup_s:g} s; fan-out: {args.fanout_devices} devices vs "
        f"{args.baseline_devices}; TLS 1.3, uvloop, loopback"
    )
    print(render(doc))
    for warning in doc["warnings"]:
        print(f"warning: {warning}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return None
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    sys.exit(main())
