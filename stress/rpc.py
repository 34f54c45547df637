"""RPC through the gateway against calling the upstream directly: RPC/s, latency, CPU.

A real aiohttp upstream (its own process, ``POST /rpc/{op}`` echoes the body) and a
``channel serve`` process routing ``bench.*`` to it. The load comes from 1-2 client
processes: D devices over TLS (bare MMTP, ``stress.gateway_proc.MmtpDevice``) keeping
C calls in flight in total, each call a ~340 B JSON body with 7 app headers; and, as
the baseline, aiohttp HTTP/1.1 keep-alive clients posting the same body and headers
to the upstream directly, with the same concurrency. Phases alternate direct,
gateway, direct, gateway so drift on a shared machine hits both alike.

    python -m stress.rpc [--seconds 10] [--concurrency 64] [--devices 64]
                         [--out stress/results/rpc.json]

``--seconds`` is the measured length of each of the 4 phases (after ``--warmup-s``).
Gateway CPU is utime + stime of its process over the measured windows. See
``stress/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from channel.default_presets import register_default_presets
from channel.security.tls import client_ssl_context
from stress.gateway_proc import (
    RPC_BODY,
    GatewayProcess,
    MmtpDevice,
    TokenMinter,
    close_worker_processes,
    connect_link,
    cpu_s,
    device_hello,
    raise_nofile_limit,
    rpc_headers,
)
from stress.machine import machine_info, machine_line

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "rpc.json"
OP = "bench.echo"
ROUNDS = ("direct", "gateway", "direct", "gateway")
REPLY_TIMEOUT_S = 300.0


def log(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"[rpc] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- upstream


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, content_type="application/json")


def upstream_main(pipe: Pipe) -> None:
    """An aiohttp upstream on 127.0.0.1:0: ``POST /rpc/{op}`` answers with the body."""

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/rpc/{op}", _echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = runner.addresses[0][1]
        pipe.send({"url": f"http://127.0.0.1:{port}", "pid": os.getpid()})
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        await runner.cleanup()

    uvloop.run(serve())


def gateway_toml(upstream_url: str, concurrency: int) -> str:
    return f"""
[limits]
# The benchmark measures the proxy, not the per-device rate limit.
requests_per_second = 1000000.0
request_burst = 1000000

[heartbeat]
interval_s = 600
max_s = 600

[rpc.clusters.bench]
endpoints = ["{upstream_url}"]
timeout_ms = 10000
max_connections = {max(100, concurrency)}
# Nor a device's cap on calls in flight (--concurrency may exceed 16 per device).
breaker.device_max_in_flight = 0

[[rpc.routes]]
match = "bench."
cluster = "bench"
"""


# --------------------------------------------------------------------------- load process


class Load:
    """One client process: its devices and, for the baseline, an aiohttp session."""

    def __init__(self, index: int) -> None:
        register_default_presets()
        self.index = index
        self.devices: list[MmtpDevice] = []
        self.calls = 0

    async def connect(
        self, port: int, ca_cert: str, token_key: str, device_ids: list[str]
    ) -> dict[str, Any]:
        context = client_ssl_context(Path(ca_cert))
        minter = TokenMinter(token_key)
        for device_id in device_ids:
            device = MmtpDevice(
                context, device_hello(device_id, token=minter.token(device_id, ttl_s=86_400))
            )
            await connect_link(device, port)
            await asyncio.wait_for(device.ack, 30)
            self.devices.append(device)
        return {"devices": len(self.devices)}

    async def run(
        self,
        mode: str,
        concurrency: int,
        start_at: float,
        end_at: float,
        upstream_url: str,
    ) -> dict[str, Any]:
        """Keep ``concurrency`` calls in flight until ``end_at`` (monotonic clock, the
        same in every process); record calls that start and end inside the window."""
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        cpu0 = time.process_time()
        if mode == "gateway":
            if not self.devices:
                raise RuntimeError("no devices connected")
            workers = [
                self._device_worker(
                    self.devices[w % len(self.devices)], start_at, end_at, latencies, errors
                )
                for w in range(concurrency)
            ]
            await asyncio.gather(*workers)
        else:
            connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                url = f"{upstream_url}/rpc/{OP}"
                workers = [
                    self._http_worker(session, url, start_at, end_at, latencies, errors)
                    for _ in range(concurrency)
                ]
                await asyncio.gather(*workers)
        return {
            "latencies": latencies,
            "errors": sum(errors.values()),
            "error_samples": dict(errors.most_common(5)),
            "client_cpu_s": time.process_time() - cpu0,
        }

    async def _device_worker(
        self,
        device: MmtpDevice,
        start_at: float,
        end_at: float,
        latencies: list[float],
        errors: Counter[str],
    ) -> None:
        clock = time.monotonic
        while True:
            started = clock()
            if started >= end_at:
                return
            self.calls += 1
            try:
                result = await device.call(OP, RPC_BODY, rpc_headers(self.calls))
            except Exception as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                await asyncio.sleep(0.01)
                continue
            ended = clock()
            if getattr(result, "status", None) != 0:
                errors[f"status {getattr(result, 'code', getattr(result, 'status', '?'))}"] += 1
            elif started >= start_at and ended <= end_at:
                latencies.append(ended - started)

    async def _http_worker(
        self,
        session: aiohttp.ClientSession,
        url: str,
        start_at: float,
        end_at: float,
        latencies: list[float],
        errors: Counter[str],
    ) -> None:
        clock = time.monotonic
        while True:
            started = clock()
            if started >= end_at:
                return
            self.calls += 1
            headers = dict(rpc_headers(self.calls))
            try:
                async with session.post(url, data=RPC_BODY, headers=headers) as response:
                    await response.read()
                    status = response.status
            except Exception as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                await asyncio.sleep(0.01)
                continue
            ended = clock()
            if status != 200:
                errors[f"HTTP {status}"] += 1
            elif started >= start_at and ended <= end_at:
                latencies.append(ended - started)

    async def close(self) -> dict[str, Any]:
        for device in self.devices:
            device.close()
        if self.devices:
            await asyncio.wait([asyncio.ensure_future(d.closed) for d in self.devices], timeout=10)
        return {"closed": len(self.devices)}


def load_main(pipe: Pipe, index: int) -> None:
    raise_nofile_limit()

    async def serve() -> None:
        load = Load(index)
        loop = asyncio.get_running_loop()
        pipe.send({"ready": True})
        while True:
            command, params = await loop.run_in_executor(None, pipe.recv)
            try:
                reply = await getattr(load, command)(**params)
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            pipe.send(reply)
            if command == "close":
                return

    uvloop.run(serve())


class LoadPool:
    def __init__(self, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for i in range(count):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=load_main, args=(child_end, i), daemon=True)
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(proc)
        self.replies(timeout_s=120)

    def replies(self, timeout_s: float = REPLY_TIMEOUT_S) -> list[dict[str, Any]]:
        out = []
        for i, pipe in enumerate(self.pipes):
            if not pipe.poll(timeout_s):
                raise RuntimeError(f"load process {i} did not answer in {timeout_s} s")
            try:
                reply = pipe.recv()
            except EOFError:
                raise RuntimeError(f"load process {i} exited (traceback above)") from None
            if "error" in reply:
                raise RuntimeError(f"load process {i}: {reply['error']}")
            out.append(reply)
        return out

    def send(self, command: str, per_process: Sequence[dict[str, Any]]) -> None:
        for pipe, params in zip(self.pipes, per_process, strict=True):
            pipe.send((command, params))

    def close(self) -> None:
        close_worker_processes(self.pipes, self.procs, "close", 15)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --------------------------------------------------------------------------- run


def _ms(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] * 1000


def run_round(
    pool: LoadPool,
    gateway_pid: int,
    upstream: dict[str, Any],
    mode: str,
    concurrency: Sequence[int],
    seconds: float,
    warmup_s: float,
) -> dict[str, Any]:
    """One phase: every load process runs ``mode`` with its share of the concurrency; the
    gateway's and upstream's CPU is read at the edges of the measured window."""
    start_at = time.monotonic() + 0.2 + warmup_s
    end_at = start_at + seconds
    pool.send(
        "run",
        [
            {
                "mode": mode.removesuffix("_unloaded"),
                "concurrency": c,
                "start_at": start_at,
                "end_at": end_at,
                "upstream_url": upstream["url"],
            }
            for c in concurrency
        ],
    )
    time.sleep(max(0.0, start_at - time.monotonic()))
    g0, u0 = cpu_s(gateway_pid), cpu_s(upstream["pid"])
    time.sleep(max(0.0, end_at - time.monotonic()))
    g1, u1 = cpu_s(gateway_pid), cpu_s(upstream["pid"])
    replies = pool.replies()
    samples: Counter[str] = Counter()
    for r in replies:
        samples.update(r["error_samples"])
    through_gateway = mode.startswith("gateway")
    return {
        "mode": mode,
        "concurrency": sum(concurrency),
        "seconds": seconds,
        "latencies": [x for r in replies for x in r["latencies"]],
        "errors": sum(r["errors"] for r in replies),
        "error_samples": dict(samples.most_common(5)),
        "gateway_cpu_s": (g1 - g0) if through_gateway else 0.0,
        "gateway_idle_cpu_s": 0.0 if through_gateway else (g1 - g0),
        "upstream_cpu_s": u1 - u0,
        "client_cpu_s": sum(r["client_cpu_s"] for r in replies),
    }


def summarise(rounds: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    mine = [r for r in rounds if r["mode"] == mode]
    latencies = [x for r in mine for x in r["latencies"]]
    seconds = sum(r["seconds"] for r in mine)
    calls = len(latencies)
    gateway_cpu = sum(r["gateway_cpu_s"] for r in mine)
    upstream_cpu = sum(r["upstream_cpu_s"] for r in mine)
    return {
        "calls": calls,
        "seconds": seconds,
        "rpc_per_s": calls / seconds if seconds else None,
        "p50_ms": _ms(latencies, 0.50),
        "p90_ms": _ms(latencies, 0.90),
        "p99_ms": _ms(latencies, 0.99),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else None,
        "errors": sum(r["errors"] for r in mine),
        "gateway_cpu_s": gateway_cpu,
        "gateway_rpc_per_cpu_s": calls / gateway_cpu if gateway_cpu > 0 else None,
        "upstream_cpu_s": upstream_cpu,
        "upstream_rpc_per_cpu_s": calls / upstream_cpu if upstream_cpu > 0 else None,
        "client_cpu_s": sum(r["client_cpu_s"] for r in mine),
        "per_round_rpc_per_s": [len(r["latencies"]) / r["seconds"] for r in mine],
        "per_round_p50_ms": [_ms(r["latencies"], 0.5) for r in mine],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile_limit()
    quiet = args.quiet
    n_clients = max(1, min(args.clients, args.devices))
    ctx = multiprocessing.get_context("spawn")
    up_parent, up_child = ctx.Pipe()
    upstream = ctx.Process(target=upstream_main, args=(up_child,), daemon=True)
    upstream.start()
    up_child.close()
    if not up_parent.poll(60):
        raise RuntimeError("the upstream did not start")
    up = up_parent.recv()
    log(quiet, f"upstream {up['url']} (pid {up['pid']})")
    gateway = GatewayProcess(config_toml=gateway_toml(up["url"], args.concurrency), name="rpc")
    pool: LoadPool | None = None
    rounds: list[dict[str, Any]] = []
    try:
        gateway.start()
        log(quiet, f"gateway port {gateway.port} (pid {gateway.pid})")
        pool = LoadPool(n_clients)
        ids = [f"rpc-{i:05d}" for i in range(args.devices)]
        sizes = split(args.devices, n_clients)
        chunks, offset = [], 0
        for size in sizes:
            chunks.append(ids[offset : offset + size])
            offset += size
        pool.send(
            "connect",
            [
                {
                    "port": gateway.port,
                    "ca_cert": str(gateway.ca_cert),
                    "token_key": str(gateway.token_key),
                    "device_ids": chunk,
                }
                for chunk in chunks
            ],
        )
        pool.replies()
        held = gateway.readyz()["sessions"]
        log(quiet, f"{held} devices connected in {n_clients} process(es)")
        per_process = split(args.concurrency, n_clients)
        schedule = [(mode, per_process, args.seconds) for mode in ROUNDS]
        if args.unloaded_s > 0:
            one = [1] + [0] * (n_clients - 1)
            schedule += [(f"{m}_unloaded", one, args.unloaded_s) for m in ("direct", "gateway")]
        for number, (mode, concurrency, seconds) in enumerate(schedule, 1):
            rounds.append(
                run_round(pool, gateway.pid, up, mode, concurrency, seconds, args.warmup_s)
            )
            rounds[-1]["round"] = number
            latencies = rounds[-1]["latencies"]
            log(
                quiet,
                f"round {number} {mode}: {len(latencies) / seconds:.0f} RPC/s, "
                f"p50 {_ms(latencies, 0.5) or 0:.2f} ms, {rounds[-1]['errors']} errors",
            )
        readyz = gateway.readyz()
    finally:
        if pool is not None:
            pool.close()
        gateway.cleanup()
        with contextlib.suppress(OSError):
            up_parent.send("exit")
        upstream.join(10)
        if upstream.is_alive():
            upstream.kill()
    direct, through = summarise(rounds, "direct"), summarise(rounds, "gateway")
    direct_1 = summarise(rounds, "direct_unloaded")
    through_1 = summarise(rounds, "gateway_unloaded")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def minus(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    return {
        "tool": "stress.rpc",
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "setup": {
            "op": OP,
            "request_body_bytes": len(RPC_BODY),
            "app_headers": len(rpc_headers(0)),
            "client_processes": n_clients,
            "devices_held": readyz.get("sessions"),
            "order": [r["mode"] for r in rounds],
        },
        "direct": direct,
        "gateway": through,
        "added_latency_p50_ms": minus(through["p50_ms"], direct["p50_ms"]),
        "added_latency_p99_ms": minus(through["p99_ms"], direct["p99_ms"]),
        "direct_unloaded": direct_1,
        "gateway_unloaded": through_1,
        "added_latency_unloaded_p50_ms": minus(through_1["p50_ms"], direct_1["p50_ms"]),
        "added_latency_unloaded_p99_ms": minus(through_1["p99_ms"], direct_1["p99_ms"]),
        "ratios": {
            "rpc_per_s_gateway_over_direct": ratio(through["rpc_per_s"], direct["rpc_per_s"]),
            "p50_gateway_over_direct": ratio(through["p50_ms"], direct["p50_ms"]),
        },
        "rounds": [{k: v for k, v in r.items() if k != "latencies"} for r in rounds],
    }


def render(doc: dict[str, Any]) -> str:
    d, g = doc["direct"], doc["gateway"]

    def f(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    rows = [
        ["path", "RPC/s", "p50 ms", "p99 ms", "errors", "gateway RPC/CPU-s", "upstream RPC/CPU-s"],
        [
            "direct (aiohttp HTTP/1.1 keep-alive)",
            f(d["rpc_per_s"], ".0f"),
            f(d["p50_ms"], ".2f"),
            f(d["p99_ms"], ".2f"),
            str(d["errors"]),
            "-",
            f(d["upstream_rpc_per_cpu_s"], ".0f"),
        ],
        [
            "through the gateway (MMTP/TLS)",
            f(g["rpc_per_s"], ".0f"),
            f(g["p50_ms"], ".2f"),
            f(g["p99_ms"], ".2f"),
            str(g["errors"]),
            f(g["gateway_rpc_per_cpu_s"], ".0f"),
            f(g["upstream_rpc_per_cpu_s"], ".0f"),
        ],
    ]
    for key, label in (
        ("direct_unloaded", "direct, 1 call in flight"),
        ("gateway_unloaded", "gateway, 1 call in flight"),
    ):
        u = doc[key]
        if u["calls"]:
            rows.append(
                [
                    label,
                    f(u["rpc_per_s"], ".0f"),
                    f(u["p50_ms"], ".2f"),
                    f(u["p99_ms"], ".2f"),
                    str(u["errors"]),
                    f(u["gateway_rpc_per_cpu_s"], ".0f") if key.startswith("gateway") else "-",
                    f(u["upstream_rpc_per_cpu_s"], ".0f"),
                ]
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        lines.append(
            " | ".join(
                [row[0].ljust(widths[0])]
                + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            )
        )
        if j == 0:
            lines.append("-+-".join("-" * w for w in widths))
    r = doc["ratios"]
    lines.append(
        f"added latency p50 {f(doc['added_latency_p50_ms'], '+.2f')} ms, "
        f"p99 {f(doc['added_latency_p99_ms'], '+.2f')} ms; "
        f"RPC/s gateway/direct {f(r['rpc_per_s_gateway_over_direct'], '.2f')}"
    )
    if doc["added_latency_unloaded_p50_ms"] is not None:
        lines.append(
            f"added latency with 1 call in flight: p50 "
            f"{f(doc['added_latency_unloaded_p50_ms'], '+.2f')} ms, p99 "
            f"{f(doc['added_latency_unloaded_p99_ms'], '+.2f')} ms"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stress.rpc",
        description="RPC/s and latency through the gateway vs. HTTP/1.1 straight to the "
        "upstream; gateway RPC per CPU-second.",
    )
    p.add_argument(
        "--seconds", type=float, default=10.0, help="measured seconds per phase (4 phases)"
    )
    p.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured start of each phase")
    p.add_argument(
        "--unloaded-s",
        type=float,
        default=3.0,
        help="then one direct and one gateway phase with 1 call in flight, this long "
        "(added latency without queueing; 0 = skip)",
    )
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight in total")
    p.add_argument("--devices", type=int, default=64, help="devices sharing those calls")
    p.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.concurrency < 1 or args.devices < 1:
        p.error("--seconds, --concurrency and --devices must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run(args)
    setup = doc["setup"]
    print(f"machine: {machine_line()}")
    print(
        f"{OP}: {setup['request_body_bytes']} B JSON body + {setup['app_headers']} app headers, "
        f"echoed by an aiohttp upstream; {args.concurrency} calls in flight over "
        f"{args.devices} devices in {setup['client_processes']} process(es); "
        f"rounds {'/'.join(setup['order'][:4])} ({args.seconds:g} s each)"
    )
    print(render(doc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
