"""Idle devices per gateway: memory per connection and handshake rate, against bare TLS.

N devices connect over TLS 1.3 from several client processes (each bound to its
own source address 127.0.0.x, at most ``--per-client`` connections each), send
HELLO with a token, get HELLO_ACK and stay idle. Measured on the gateway's own
process (``/proc``): RSS before and after (settled) -> KiB per idle device; CPU
(utime + stime) over the connect phase -> full handshakes per server CPU-second;
then a fraction of the devices reconnects with their TLS session and MMTP resume
ticket -> resumed handshakes per server CPU-second. The same clients then hold N
connections to a bare uvloop TLS echo server (same certificate and TLS settings)
for the baseline. One more device measures the bytes and round trips from TCP
connect to its first RPC response, with a full and a resumed handshake.

    python -m stress.connections [--devices 20000] [--clients 4] [--resume-fraction 0.5]
                                 [--out stress/results/connections.json]

A process may hold at most the open-file hard limit of sockets; above that the
devices are spread over several gateway processes (and as many baseline servers),
like ``channel serve --workers``. See ``stress/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import math
import multiprocessing
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import uvloop

from channel import fastopen
from channel.default_presets import register_default_presets
from channel.security.tls import client_ssl_context, server_ssl_context
from channel.wire import HelloAck
from stress.gateway_proc import (
    RPC_BODY,
    EchoDevice,
    GatewayProcess,
    MmtpDevice,
    TlsLink,
    TokenMinter,
    close_worker_processes,
    connect_link,
    cpu_times,
    device_hello,
    raise_nofile_limit,
    rpc_headers,
    rss_kib,
    settled_rss_kib,
    wait_connections,
)
from stress.machine import machine_info, machine_line
from stress.report import fmt as _f
from stress.report import table as _table

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "connections.json"
#: Descriptors a server process needs besides device sockets (listeners, epoll, logs...).
FD_RESERVE = 64
#: What an echo-baseline device sends after its handshake (about a HELLO's size).
ECHO_PROBE = b"x" * 200
FIRST_RPC_OP = "channel.echo"
REPLY_TIMEOUT_S = 900.0


def log(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"[connections] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- client process


@dataclass
class Slot:
    device_id: str
    port: int
    token: bytes = b""
    link: TlsLink | None = None
    session: Any = None
    ticket: bytes = b""


class DeviceClient:
    """One client process's devices: connect, drop, resume, close on command."""

    def __init__(
        self,
        index: int,
        source_ip: str,
        ca_cert: str,
        device_ids: Sequence[str],
        inflight: int,
        timeout_s: float,
    ) -> None:
        register_default_presets()
        self.index = index
        self.source_ip = source_ip
        self.context = client_ssl_context(Path(ca_cert))
        self.device_ids = list(device_ids)
        self.slots: list[Slot] = []
        self.inflight = inflight
        self.timeout_s = timeout_s

    def set_targets(self, ports: Sequence[int], token_key: str | None) -> dict[str, Any]:
        """Point device j at ``ports[j % len(ports)]``; mint tokens (outside any timing)."""
        minter = TokenMinter(token_key) if token_key else None
        self.slots = [
            Slot(
                device_id,
                ports[j % len(ports)],
                minter.token(device_id, ttl_s=86_400) if minter else b"",
            )
            for j, device_id in enumerate(self.device_ids)
        ]
        return {"devices": len(self.slots), "rss_kib": rss_kib(os.getpid())}

    async def connect(self, mode: str, resume: bool = False) -> dict[str, Any]:
        """Connect every slot without a link (all, or the dropped ones when resuming)."""
        todo = [s for s in self.slots if s.link is None]
        gate = asyncio.Semaphore(self.inflight)
        failures: Counter[str] = Counter()
        latencies: list[float] = []
        counts = Counter[str]()
        cpu0 = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(
            *(self._open(s, mode, resume, gate, failures, latencies, counts) for s in todo)
        )
        seconds = time.perf_counter() - started
        return {
            "attempted": len(todo),
            "ok": len(latencies),
            "failures": dict(failures.most_common(5)),
            "failed": sum(failures.values()),
            "seconds": seconds,
            "client_cpu_s": time.process_time() - cpu0,
            "latency_ms": _ms_stats(latencies),
            "tls_resumed": counts["tls_resumed"],
            "mmtp_resumed": counts["mmtp_resumed"],
            "rss_kib": rss_kib(os.getpid()),
            "held": sum(1 for s in self.slots if s.link is not None),
        }

    async def _open(
        self,
        slot: Slot,
        mode: str,
        resume: bool,
        gate: asyncio.Semaphore,
        failures: Counter[str],
        latencies: list[float],
        counts: Counter[str],
    ) -> None:
        session = slot.session if resume else None
        link: TlsLink
        if mode == "mmtp":
            hello = (
                device_hello(slot.device_id, resume_ticket=slot.ticket)
                if resume
                else device_hello(slot.device_id, token=slot.token)
            )
            link = MmtpDevice(self.context, hello, session=session)
        else:
            link = EchoDevice(self.context, ECHO_PROBE, session=session)
        async with gate:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.timeout_s):
                    await connect_link(link, slot.port, self.source_ip)
                    ack = await link.ack
            except Exception as exc:
                failures[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                link.abort()
                return
        latencies.append(time.perf_counter() - started)
        slot.link = link
        if link.session_reused:
            counts["tls_resumed"] += 1
        if isinstance(ack, HelloAck):
            slot.ticket = ack.resume_ticket
            if ack.resumed:
                counts["mmtp_resumed"] += 1

    async def drop(self, fraction: float) -> dict[str, Any]:
        """Close the first ``fraction`` of the held links, keeping session and ticket."""
        held = [s for s in self.slots if s.link is not None]
        chosen = held[: round(len(held) * fraction)]
        with_ticket = 0
        for slot in chosen:
            assert slot.link is not None
            slot.session = slot.link.session
            with_ticket += bool(slot.session is not None and slot.session.has_ticket)
        await self._close(chosen)
        return {"dropped": len(chosen), "tls_sessions_with_ticket": with_ticket}

    async def close_all(self) -> dict[str, Any]:
        held = [s for s in self.slots if s.link is not None]
        await self._close(held)
        for slot in self.slots:
            slot.session, slot.ticket = None, b""
        return {"closed": len(held)}

    async def _close(self, slots: Sequence[Slot]) -> None:
        links = [s.link for s in slots if s.link is not None]
        for slot in slots:
            slot.link = None
        for link in links:
            link.close()
        if links:
            await asyncio.wait([asyncio.ensure_future(link.closed) for link in links], timeout=30)


def _ms_stats(seconds: Sequence[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50": None, "p99": None, "max": None}
    s = sorted(seconds)
    return {
        "p50": s[len(s) // 2] * 1000,
        "p99": s[min(len(s) - 1, len(s) * 99 // 100)] * 1000,
        "max": s[-1] * 1000,
    }


def client_main(
    pipe: Pipe,
    index: int,
    source_ip: str,
    ca_cert: str,
    device_ids: list[str],
    inflight: int,
    timeout_s: float,
    cpus: list[int] | None = None,
) -> None:
    """Entry point of a client process: serve commands from the parent until "exit"."""
    raise_nofile_limit()
    if cpus:
        pin(0, cpus)
    uvloop.run(_serve_commands(pipe, index, source_ip, ca_cert, device_ids, inflight, timeout_s))


async def _serve_commands(
    pipe: Pipe,
    index: int,
    source_ip: str,
    ca_cert: str,
    device_ids: list[str],
    inflight: int,
    timeout_s: float,
) -> None:
    client = DeviceClient(index, source_ip, ca_cert, device_ids, inflight, timeout_s)
    loop = asyncio.get_running_loop()
    pipe.send({"ready": True, "pid": os.getpid(), "rss_kib": rss_kib(os.getpid())})
    while True:
        command, params = await loop.run_in_executor(None, pipe.recv)
        if command == "exit":
            await client.close_all()
            pipe.send({"bye": True})
            return
        try:
            if command == "targets":
                reply = client.set_targets(**params)
            else:
                reply = await getattr(client, command)(**params)
        except Exception as exc:  # reported to the parent, which stops the run
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        pipe.send(reply)


class ClientPool:
    """The parent's handle on the client processes."""

    def __init__(
        self,
        n_devices: int,
        n_clients: int,
        ca_cert: Path,
        inflight: int,
        timeout_s: float,
        cpus: list[int] | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.sizes: list[int] = []
        ids = [f"bench-{i:06d}" for i in range(n_devices)]
        for c in range(n_clients):
            chunk = ids[c * n_devices // n_clients : (c + 1) * n_devices // n_clients]
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=client_main,
                args=(
                    child_end,
                    c,
                    f"127.0.0.{2 + c}",
                    str(ca_cert),
                    chunk,
                    inflight,
                    timeout_s,
                    cpus,
                ),
                name=f"bench-client-{c}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.procs.append(proc)
            self.sizes.append(len(chunk))
        self.ready = self._replies(timeout_s=120)

    def _replies(self, timeout_s: float = REPLY_TIMEOUT_S) -> list[dict[str, Any]]:
        replies = []
        deadline = time.monotonic() + timeout_s
        for c, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"client {c} did not answer within {timeout_s} s")
            try:
                reply = pipe.recv()
            except EOFError:
                raise RuntimeError(f"client {c} exited (see its traceback above)") from None
            if "error" in reply:
                raise RuntimeError(f"client {c}: {reply['error']}")
            replies.append(reply)
        return replies

    def command(self, command: str, **params: Any) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send((command, params))
        return self._replies()

    def close(self) -> None:
        close_worker_processes(self.pipes, self.procs, "exit", 30)


# --------------------------------------------------------------------------- baseline server


class _Echo(asyncio.Protocol):
    """Bare TLS baseline: echoes what it gets, keeps nothing else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def echo_server_main(pipe: Pipe, cert: str, key: str) -> None:
    """A uvloop TLS echo server on 127.0.0.1:0 with the gateway's certificate and TLS
    settings (TLS 1.3, one ticket, ALPN); sends its port, runs until "exit"."""
    raise_nofile_limit()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        context = server_ssl_context(Path(cert), Path(key))
        server = await loop.create_server(
            _Echo, "127.0.0.1", 0, ssl=context, backlog=4096, ssl_handshake_timeout=120
        )
        pipe.send({"port": server.sockets[0].getsockname()[1], "pid": os.getpid()})
        await loop.run_in_executor(None, pipe.recv)
        server.close()

    uvloop.run(serve())


class EchoServers:
    def __init__(self, count: int, cert: Path, key: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Pipe] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.ports: list[int] = []
        self.pids: list[int] = []
        for i in range(count):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=echo_server_main,
                args=(child_end, str(cert), str(key)),
                name=f"bench-echo-{i}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            if not parent_end.poll(60):
                raise RuntimeError("the baseline echo server did not start")
            info = parent_end.recv()
            self.pipes.append(parent_end)
            self.procs.append(proc)
            self.ports.append(info["port"])
            self.pids.append(info["pid"])

    def close(self) -> None:
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            with contextlib.suppress(OSError):
                pipe.send("exit")
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# --------------------------------------------------------------------------- first RPC


async def _first_rpc(
    port: int,
    context: Any,
    device_id: str,
    *,
    token: bytes = b"",
    ticket: bytes = b"",
    session: Any = None,
    source_ip: str = "127.0.0.1",
    fast_open: bool = True,
) -> tuple[dict[str, Any], Any, bytes]:
    hello = device_hello(device_id, token=token, resume_ticket=ticket)
    call = (FIRST_RPC_OP, RPC_BODY, rpc_headers(1))
    device = MmtpDevice(context, hello, session=session, pipelined=[call])
    started = time.perf_counter()
    await connect_link(device, port, source_ip, fast_open=fast_open)
    ack = await asyncio.wait_for(device.ack, 10)
    response = await asyncio.wait_for(device.first_calls[0], 10)
    elapsed_ms = (time.perf_counter() - started) * 1000
    syn_data = device.syn_carried_data
    figures = {
        "bytes_up": device.bytes_out,
        "bytes_down": device.bytes_in,
        "bytes_total": device.bytes_out + device.bytes_in,
        "tls_handshake_bytes_up": device.tls_bytes_out,
        "tls_handshake_bytes_down": device.tls_bytes_in,
        # + TCP's SYN / SYN-ACK, unless the SYN carried the ClientHello (fast open).
        "round_trips": device.round_trips + (0 if syn_data else 1),
        "tcp_fast_open": syn_data,
        "tls_resumed": device.session_reused,
        "mmtp_resumed": ack.resumed,
        "response_status": getattr(response, "status", None),
        "ms_loopback": elapsed_ms,
    }
    await asyncio.sleep(0.05)  # the TLS session ticket may trail the handshake
    session_out = device.session
    device.close()
    await device.closed
    return figures, session_out, ack.resume_ticket


async def first_rpc_costs(first: GatewayProcess, other: GatewayProcess) -> dict[str, Any]:
    """Bytes and round trips from TCP connect to the first RPC response (pipelined behind
    HELLO, as the SDK does): full handshake; resumed on the same node; resumed on another
    node of the fleet (same ticket secret, its own TLS ticket keys)."""
    register_default_presets()
    context = client_ssl_context(first.ca_cert)
    token = first.token("probe-1")
    # The kernel keeps fast-open cookies per source and destination address: a source
    # address this host has never used is a device that never met this gateway.
    a, b, c = (secrets.randbelow(254) + 1 for _ in range(3))
    device_ip = f"127.{a}.{b}.{c}"
    full, session, ticket = await _first_rpc(
        first.port, context, "probe-1", token=token, source_ip=device_ip
    )
    resumed, session2, ticket2 = await _first_rpc(
        first.port, context, "probe-1", ticket=ticket, session=session, source_ip=device_ip
    )
    other_node, _, _ = await _first_rpc(
        other.port, context, "probe-1", ticket=ticket2, session=session2, source_ip=device_ip
    )
    # The same two without fast open (a kernel or network that lacks it), and a returning
    # device that lost its ticket and session (full TLS handshake over a fast-open SYN).
    full_no_tfo, session3, ticket3 = await _first_rpc(
        first.port, context, "probe-1", token=token, source_ip=device_ip, fast_open=False
    )
    resumed_no_tfo, _, _ = await _first_rpc(
        first.port,
        context,
        "probe-1",
        ticket=ticket3,
        session=session3,
        source_ip=device_ip,
        fast_open=False,
    )
    full_returning, _, _ = await _first_rpc(
        first.port, context, "probe-1", token=token, source_ip=device_ip
    )
    return {
        "op": FIRST_RPC_OP,
        "request_body_bytes": len(RPC_BODY),
        "tcp_fastopen_sysctl": fastopen.sysctl_value(),
        "full": full,
        "resumed": resumed,
        "resumed_other_node": other_node,
        "full_returning_device": full_returning,
        "full_no_fast_open": full_no_tfo,
        "resumed_no_fast_open": resumed_no_tfo,
    }


# --------------------------------------------------------------------------- phases


def _sum(replies: Sequence[dict[str, Any]], key: str) -> int:
    return sum(int(r.get(key, 0)) for r in replies)


def _merge_failures(replies: Sequence[dict[str, Any]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for reply in replies:
        total.update(reply.get("failures", {}))
    return dict(total.most_common(5))


def connect_phase(
    clients: ClientPool, pids: Sequence[int], mode: str, resume: bool
) -> dict[str, Any]:
    """Connect (or resume) on every client at once; handshakes per wall s and per server
    CPU-s (utime + stime of the server processes over the phase)."""
    before = [cpu_times(p) for p in pids]
    started = time.perf_counter()
    replies = clients.command("connect", mode=mode, resume=resume)
    wall = time.perf_counter() - started
    after = [cpu_times(p) for p in pids]
    server_user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    server_sys = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    server_cpu = server_user + server_sys
    ok = _sum(replies, "ok")
    p50s = [r["latency_ms"]["p50"] for r in replies if r["latency_ms"]["p50"] is not None]
    return {
        "attempted": _sum(replies, "attempted"),
        "ok": ok,
        "failed": _sum(replies, "failed"),
        "failures": _merge_failures(replies),
        "wall_s": wall,
        "server_cpu_s": server_cpu,
        "server_user_s": server_user,
        "server_sys_s": server_sys,
        "client_cpu_s": sum(r["client_cpu_s"] for r in replies),
        "per_s": ok / wall if wall > 0 else None,
        "per_server_cpu_s": ok / server_cpu if server_cpu > 0 else None,
        "server_cpu_busy": server_cpu / wall / len(pids) if wall > 0 else None,
        "latency_ms_p50_median_client": statistics.median(p50s) if p50s else None,
        "tls_resumed": _sum(replies, "tls_resumed"),
        "mmtp_resumed": _sum(replies, "mmtp_resumed"),
        "client_rss_kib": _sum(replies, "rss_kib"),
    }


def idle_cpu_percent(pids: Sequence[int], window_s: float) -> float:
    """CPU % (of one core) the servers use while every device is idle."""

    def total() -> float:
        return sum(sum(cpu_times(p)) for p in pids)

    cpu0, t0 = total(), time.monotonic()
    time.sleep(window_s)
    return 100 * (total() - cpu0) / (time.monotonic() - t0)


def hold_and_resume(
    clients: ClientPool,
    pids: Sequence[int],
    mode: str,
    args: argparse.Namespace,
    count_connections: Callable[[int], int],
    client_rss_before: int,
) -> dict[str, Any]:
    """The measurement shared by the gateway and the baseline: RSS before, connect all,
    RSS after (settled), idle CPU, drop a fraction, resume it, close all."""
    quiet = args.quiet
    settle = args.settle_interval_s
    rss_before = settled_rss_kib(pids, interval_s=settle)
    log(quiet, f"{mode}: server RSS {rss_before} KiB; connecting {args.devices} devices")
    full = connect_phase(clients, pids, mode, resume=False)
    log(
        quiet,
        f"{mode}: {full['ok']} connected in {full['wall_s']:.1f} s "
        f"({full['per_s']:.0f}/s, {full['per_server_cpu_s'] or 0:.0f} per server CPU-s), "
        f"{full['failed']} failed",
    )
    held = count_connections(full["ok"])
    rss_after = settled_rss_kib(pids, interval_s=settle)
    idle = idle_cpu_percent(pids, args.idle_window_s)
    log(quiet, f"{mode}: server RSS {rss_after} KiB settled; {held} held; idle CPU {idle:.1f} %")
    result: dict[str, Any] = {
        "processes": len(pids),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "held": held,
        "kib_per_device": (rss_after - rss_before) / held if held else None,
        "client_rss_before_kib": client_rss_before,
        "client_rss_after_kib": full["client_rss_kib"],
        "client_kib_per_device": (full["client_rss_kib"] - client_rss_before) / full["ok"]
        if full["ok"]
        else None,
        "idle_cpu_percent": idle,
        "full": full,
    }
    if args.resume_fraction > 0 and full["ok"]:
        drops = clients.command("drop", fraction=args.resume_fraction)
        dropped = _sum(drops, "dropped")
        count_connections(full["ok"] - dropped)
        log(quiet, f"{mode}: dropped {dropped}; resuming them")
        resumed = connect_phase(clients, pids, mode, resume=True)
        resumed["dropped"] = dropped
        resumed["tls_sessions_with_ticket"] = _sum(drops, "tls_sessions_with_ticket")
        log(
            quiet,
            f"{mode}: {resumed['ok']} resumed in {resumed['wall_s']:.1f} s "
            f"({resumed['per_s']:.0f}/s, {resumed['per_server_cpu_s'] or 0:.0f} per server "
            f"CPU-s; TLS resumed {resumed['tls_resumed']}, MMTP resumed "
            f"{resumed['mmtp_resumed']})",
        )
        count_connections(full["ok"] - dropped + resumed["ok"])
        rss_churned = settled_rss_kib(pids, interval_s=settle, timeout_s=10)
        result["rss_after_resume_kib"] = rss_churned
        # Mobile devices reconnect all the time: this is closer to a node's steady state.
        result["kib_per_device_after_resume"] = (rss_churned - rss_before) / held if held else None
        result["resumed"] = resumed
    clients.command("close_all")
    count_connections(0)
    return result


# --------------------------------------------------------------------------- run


def pin(pid: int, cpus: Sequence[int]) -> None:
    """Restrict ``pid`` (0: this process) to ``cpus``; a refusal only costs precision."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, cpus)


def plan(args: argparse.Namespace, fd_hard: int) -> dict[str, Any]:
    per_server = fd_hard - FD_RESERVE
    servers = args.gateways or max(1, math.ceil(args.devices / per_server))
    clients = max(args.clients, math.ceil(args.devices / args.per_client))
    if clients > 250:
        raise SystemExit(f"{clients} client processes needed; raise --per-client")
    if math.ceil(args.devices / servers) > per_server:
        raise SystemExit(f"{servers} server processes cannot hold {args.devices} sockets")
    cpus = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cpus) >= 2
    return {
        "servers": servers,
        "clients": clients,
        "fd_hard_limit": fd_hard,
        # Servers on the first CPU, clients on the others: the server's CPU-seconds then
        # count its own work, not cache misses and switches caused by client processes.
        "server_cpus": cpus[:1] if pinned else cpus,
        "client_cpus": cpus[1:] if pinned else cpus,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    _soft, hard = raise_nofile_limit()
    layout = plan(args, hard)
    quiet = args.quiet
    n = args.devices
    settings = {
        "server": {
            "max_connections": n + 1000,
            "max_connections_per_ip": n + 1000,
            "handshake_timeout_s": 120.0,
        },
        "heartbeat": {"interval_s": 600, "max_s": 600},
    }
    if args.tls_engine:
        settings["server"]["tls_engine"] = args.tls_engine
    doc: dict[str, Any] = {
        "tool": "stress.connections",
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "layout": layout,
        "warnings": [],
    }
    state_dir = Path(tempfile.mkdtemp(prefix="channel-bench-conn-"))
    gateways: list[GatewayProcess] = []
    clients: ClientPool | None = None
    try:
        for i in range(layout["servers"]):
            gateways.append(
                GatewayProcess(state_dir=state_dir, settings=settings, name=f"gateway{i}").start()
            )
            pin(gateways[-1].pid, layout["server_cpus"])
        log(quiet, f"{len(gateways)} gateway(s) on ports {[g.port for g in gateways]}")
        extra = None
        if len(gateways) == 1:  # the first-RPC probe resumes on another node too
            extra = GatewayProcess(state_dir=state_dir, settings=settings, name="gateway-x")
            extra.start()
        try:
            doc["first_rpc"] = uvloop.run(
                first_rpc_costs(gateways[0], gateways[1] if extra is None else extra)
            )
        finally:
            if extra is not None:
                extra.stop()
        wait_connections(gateways, 0)
        pids = [g.pid for g in gateways]

        clients = ClientPool(
            n,
            layout["clients"],
            gateways[0].ca_cert,
            args.inflight,
            args.connect_timeout_s,
            layout["client_cpus"],
        )
        targeted = clients.command(
            "targets", ports=[g.port for g in gateways], token_key=str(gateways[0].token_key)
        )

        def gateway_count(expected: int) -> int:
            """/readyz of every node must count ``expected`` connections and sessions."""
            held = wait_connections(gateways, expected, timeout_s=60)
            sessions = wait_connections(gateways, expected, key="sessions", timeout_s=10)
            if held != expected or sessions != expected:
                doc["warnings"].append(
                    f"gateway /readyz: {held} connections, {sessions} sessions; expected {expected}"
                )
            return held

        doc["gateway"] = hold_and_resume(
            clients, pids, "mmtp", args, gateway_count, _sum(targeted, "rss_kib")
        )
        doc["gateway"]["exit_codes"] = [g.stop() for g in gateways]

        if not args.no_baseline:
            echo = EchoServers(layout["servers"], gateways[0].tls_cert, gateways[0].tls_key)
            try:
                for pid in echo.pids:
                    pin(pid, layout["server_cpus"])
                targeted = clients.command("targets", ports=echo.ports, token_key=None)

                def echo_count(expected: int) -> int:
                    return expected  # the echo server has no admin port; clients count

                doc["baseline"] = hold_and_resume(
                    clients, echo.pids, "echo", args, echo_count, _sum(targeted, "rss_kib")
                )
            finally:
                echo.close()
    finally:
        if clients is not None:
            clients.close()
        for g in gateways:
            g.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    doc["ratios"] = ratios(doc)
    return doc


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(doc: dict[str, Any]) -> dict[str, float | None]:
    g, b = doc.get("gateway", {}), doc.get("baseline", {})
    return {
        "kib_per_device": _ratio(g.get("kib_per_device"), b.get("kib_per_device")),
        "kib_per_device_after_resume": _ratio(
            g.get("kib_per_device_after_resume"), b.get("kib_per_device_after_resume")
        ),
        "full_per_server_cpu_s": _ratio(
            g.get("full", {}).get("per_server_cpu_s"), b.get("full", {}).get("per_server_cpu_s")
        ),
        "resumed_per_server_cpu_s": _ratio(
            g.get("resumed", {}).get("per_server_cpu_s"),
            b.get("resumed", {}).get("per_server_cpu_s"),
        ),
    }


# --------------------------------------------------------------------------- report


def render(doc: dict[str, Any]) -> str:
    g, b, r = doc.get("gateway", {}), doc.get("baseline", {}), doc["ratios"]
    gf, gr = g.get("full", {}), g.get("resumed", {})
    bf, br = b.get("full", {}), b.get("resumed", {})
    rows = [
        ["figure", "gateway", "bare TLS", "×bare"],
        [
            "idle devices held",
            _f(g.get("held"), "d"),
            _f(b.get("held"), "d"),
            "",
        ],
        [
            "server KiB per idle device",
            _f(g.get("kib_per_device"), ".1f"),
            _f(b.get("kib_per_device"), ".1f"),
            _f(r["kib_per_device"], ".2f"),
        ],
        [
            f"  after {doc['args']['resume_fraction']:.0%} reconnected (churn)",
            _f(g.get("kib_per_device_after_resume"), ".1f"),
            _f(b.get("kib_per_device_after_resume"), ".1f"),
            _f(r["kib_per_device_after_resume"], ".2f"),
        ],
        [
            "full handshakes/s (wall)",
            _f(gf.get("per_s"), ".0f"),
            _f(bf.get("per_s"), ".0f"),
            "",
        ],
        [
            "full handshakes per server CPU-s",
            _f(gf.get("per_server_cpu_s"), ".0f"),
            _f(bf.get("per_server_cpu_s"), ".0f"),
            _f(r["full_per_server_cpu_s"], ".2f"),
        ],
        [
            "resumed handshakes/s (wall)",
            _f(gr.get("per_s"), ".0f"),
            _f(br.get("per_s"), ".0f"),
            "",
        ],
        [
            "resumed per server CPU-s",
            _f(gr.get("per_server_cpu_s"), ".0f"),
            _f(br.get("per_server_cpu_s"), ".0f"),
            _f(r["resumed_per_server_cpu_s"], ".2f"),
        ],
        [
            "  of which TLS-resumed / MMTP-resumed",
            f"{gr.get('tls_resumed', '-')}/{gr.get('mmtp_resumed', '-')}",
            f"{br.get('tls_resumed', '-')}/-",
            "",
        ],
        [
            "server idle CPU %",
            _f(g.get("idle_cpu_percent"), ".1f"),
            _f(b.get("idle_cpu_percent"), ".1f"),
            "",
        ],
        [
            # Only the first phase starts with fresh client processes; later phases reuse
            # memory the clients freed, so their difference means nothing.
            "client KiB per device (MemoryBIO TLS)",
            _f(g.get("client_kib_per_device"), ".1f"),
            "-",
            "",
        ],
    ]
    out = [_table(rows)]
    first = doc.get("first_rpc")
    if first:
        rows = [
            [
                "first RPC (TCP connect -> response)",
                "up B",
                "down B",
                "total B",
                "RTTs",
                "TLS hs B",
                "TLS/MMTP resumed",
                "SYN data",
            ]
        ]
        for key, label in (
            ("full", "full handshake (token), first contact"),
            ("resumed", "resumed, same node"),
            ("resumed_other_node", "resumed, other node"),
            ("full_returning_device", "full, device that lost its ticket"),
            ("full_no_fast_open", "full, no TCP fast open"),
            ("resumed_no_fast_open", "resumed, no TCP fast open"),
        ):
            f = first.get(key)
            if f is None:
                continue
            rows.append(
                [
                    label,
                    str(f["bytes_up"]),
                    str(f["bytes_down"]),
                    str(f["bytes_total"]),
                    str(f["round_trips"]),
                    str(f["tls_handshake_bytes_up"] + f["tls_handshake_bytes_down"]),
                    f"{'yes' if f['tls_resumed'] else 'no'}/{'yes' if f['mmtp_resumed'] else 'no'}",
                    "yes" if f.get("tcp_fast_open") else "no",
                ]
            )
        out.append(
            f"first RPC: {first['op']} with a {first['request_body_bytes']} B body and 7 app "
            "headers, pipelined behind HELLO; bytes at the socket (TLS records), RTTs incl. TCP; "
            f"net.ipv4.tcp_fastopen = {first.get('tcp_fastopen_sysctl')}"
        )
        out.append(_table(rows))
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stress.connections",
        description="Idle devices per gateway: KiB per device and handshakes per server "
        "CPU-second (full and resumed), against a bare uvloop TLS server.",
    )
    p.add_argument("--devices", type=int, default=20_000, help="devices to hold (default 20000)")
    p.add_argument("--clients", type=int, default=4, help="client processes, at least (default 4)")
    p.add_argument(
        "--per-client",
        type=int,
        default=5_000,
        help="connections per client process, at most (default 5000)",
    )
    p.add_argument(
        "--gateways",
        type=int,
        default=0,
        help="gateway processes (default: as few as the open-file limit allows)",
    )
    p.add_argument(
        "--resume-fraction",
        type=float,
        default=0.5,
        help="share of devices that reconnect with TLS session + MMTP ticket (default 0.5)",
    )
    p.add_argument(
        "--inflight", type=int, default=64, help="handshakes in flight per client (default 64)"
    )
    p.add_argument("--connect-timeout-s", type=float, default=120.0)
    p.add_argument("--idle-window-s", type=float, default=3.0, help="idle CPU window (default 3 s)")
    p.add_argument(
        "--settle-interval-s",
        type=float,
        default=0.5,
        help="RSS is settled when 4 readings this far apart agree within 256 KiB (default 0.5)",
    )
    p.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin servers to the first CPU and clients to the others",
    )
    p.add_argument(
        "--tls-engine",
        choices=("memorybio", "uvloop"),
        default=None,
        help="the gateway's server.tls_engine (default: the gateway's default)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the bare TLS baseline")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.devices < 1:
        p.error("--devices must be >= 1")
    if not 0 <= args.resume_fraction <= 1:
        p.error("--resume-fraction must be in [0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run(args)
    layout = doc["layout"]
    print(f"machine: {machine_line()}")
    print(
        f"{args.devices} devices, {layout['servers']} server process(es) on CPU "
        f"{layout['server_cpus']}, {layout['clients']} client processes on CPU "
        f"{layout['client_cpus']}; TLS 1.3 P-256, uvloop, loopback"
    )
    print(render(doc))
    for warning in doc["warnings"]:
        print(f"warning: {warning}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
