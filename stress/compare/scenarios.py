"""The five scenarios, each run the same way against every target of the run.

A target is Mosquitto or ``channel serve`` with an engine and a device protocol
(MMTP, or MQTT once Channel has an MQTT listener). Every scenario starts its own
server (pinned to the server CPUs) and its own clients (pinned to the others), and
ends both whatever happens.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import channel
from channel.default_dictionary import DEFAULT_DICTIONARY_FILE
from stress.compare import unicast
from stress.compare.clients import (
    SHARED_TOPIC,
    Fleet,
    Publisher,
    run_json,
    self_cpu_children_s,
    write_ids,
)
from stress.compare.procs import Reaper, pin, precise_cpu_s, settled_cpu_s, settled_rss_bytes
from stress.compare.servers import Channel, Mosquitto

#: The packaged dictionary SDK devices hold (``--device-dictionary default``).
DEFAULT_DICTIONARY = Path(channel.__file__).parent / "dictionaries" / DEFAULT_DICTIONARY_FILE


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str  # "mosquitto" | "channel"
    engine: str = ""
    protocol: str = "mqtt"


@dataclasses.dataclass
class Ctx:
    reaper: Reaper
    workdir: Path
    args: Any
    server_cpus: list[int] | None
    client_cpus: list[int] | None
    cert: Path
    key: Path
    log: Callable[[str], None]

    def start(self, spec: TargetSpec, devices: int, label: str, **channel: Any) -> Any:
        workdir = self.workdir / spec.name / label
        server: Any
        if spec.kind == "mosquitto":
            server = Mosquitto(self.reaper, workdir, self.cert, self.key)
        else:
            server = Channel(
                self.reaper,
                workdir,
                engine=spec.engine,
                protocol=spec.protocol,
                devices=devices,
                extra_settings=self.args.channel_settings,
                **channel,
            )
        pin(server.pid, self.server_cpus)
        return server

    def fleet(self, server: Any, n: int, label: str) -> Fleet:
        return Fleet(
            self.reaper,
            server,
            n,
            self.workdir / server.name / label / "fleet",
            per_client=self.args.per_client,
            cpus=self.client_cpus,
            dictionary=DEFAULT_DICTIONARY if self.args.device_dictionary == "default" else None,
        )


# ------------------------------------------------------------------ 1. idle memory


def idle(ctx: Ctx, spec: TargetSpec) -> dict[str, Any]:
    n = ctx.args.idle_devices
    server = ctx.start(spec, n, "idle")
    try:
        before = settled_rss_bytes(server.pid)
        cpu0 = precise_cpu_s(server.pid)
        fleet = ctx.fleet(server, n, "idle")
        connect_cpu = precise_cpu_s(server.pid) - cpu0
        after = settled_rss_bytes(server.pid)
        held = server.connections() if spec.kind == "channel" else fleet.ready
        result = {
            "devices": n,
            "ready": fleet.ready,
            "failed": fleet.failed,
            "server_connections": held,
            "client_processes": len(fleet.procs),
            "rss_before_bytes": before,
            "rss_after_bytes": after,
            "bytes_per_connection": (after - before) / max(1, fleet.ready),
            "connect_s": fleet.connect_s,
            "server_connect_cpu_s": connect_cpu,
            "client_connect_cpu_s": fleet.cpu_s(),
        }
        fleet.close()
    finally:
        server.stop()
    ctx.log(
        f"{spec.name} idle: {result['bytes_per_connection']:,.0f} B per connection "
        f"({result['ready']:,} held, {result['failed']} failed)"
    )
    return result


# ------------------------------------------------------------------ 2 + 3. fan-out, unicast


def fanout_and_unicast(
    ctx: Ctx, spec: TargetSpec, *, do_fanout: bool = True, do_unicast: bool = True
) -> dict[str, Any]:
    """One server and one fleet of ``--fanout-devices``: broadcasts, then unicast."""
    n = ctx.args.fanout_devices
    server = ctx.start(spec, n, "push")
    out: dict[str, Any] = {}
    publisher: Publisher | None = None
    try:
        fleet = ctx.fleet(server, n, "push")
        out["devices"] = fleet.ready
        if spec.kind == "channel":
            _wait_sessions(server, fleet.ready)
        else:
            ids_file = write_ids(
                ctx.workdir / spec.name / "push" / "pub-ids.txt",
                server,
                [f"bench-{i:06d}" for i in range(n)],
            )
            publisher = Publisher(ctx.reaper, server, ids_file, ctx.client_cpus)
        if do_fanout:
            out["fanout"] = broadcasts(ctx, spec, server, fleet, publisher)
        if do_unicast:
            out["unicast"] = _unicast(ctx, spec, server, fleet, publisher)
        fleet.close()
    finally:
        if publisher is not None:
            publisher.quit()
        server.stop()
    return out


def _unicast(
    ctx: Ctx, spec: TargetSpec, server: Any, fleet: Fleet, publisher: Publisher | None
) -> dict[str, Any]:
    sender: unicast.ChannelSender | unicast.MqttSender
    if publisher is None:
        sender = unicast.ChannelSender(
            server.api_url,
            server.api_key,
            fleet.n,
            ctx.args.batch,
            ctx.args.concurrency,
            ctx.client_cpus,
        )
    else:
        sender = unicast.MqttSender(publisher, ctx.args.mqtt_inflight, fleet.workdir)
    try:
        return unicast.run_modes(
            fleet,
            sender,
            {"server": server.pid},
            seconds=ctx.args.seconds,
            warmup_s=ctx.args.warmup_s,
            half_fraction=0.5,
            drain_s=ctx.args.drain_s,
            log=lambda line: ctx.log(f"{spec.name} {line}"),
        )
    finally:
        sender.close()


def _wait_sessions(server: Channel, expected: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if int(server.gateway.readyz().get("sessions", 0)) >= expected:
            return
        time.sleep(0.1)


def _post(url: str, key: str, doc: object) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(doc).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def broadcasts(
    ctx: Ctx, spec: TargetSpec, server: Any, fleet: Fleet, publisher: Publisher | None
) -> dict[str, Any]:
    """``--rounds`` broadcasts to every device, one in flight at a time: server CPU from
    the send until it is quiet again after the last ACK (its idle CPU subtracted)."""
    idle0, t_idle = precise_cpu_s(server.pid), time.monotonic()
    time.sleep(ctx.args.idle_window_s)
    idle_rate = (precise_cpu_s(server.pid) - idle0) / (time.monotonic() - t_idle)
    rounds = []
    client0 = fleet.cpu_s() + (publisher.cpu_s() if publisher else 0.0)
    for k in range(ctx.args.rounds):
        fleet.reset()
        cpu0, t0 = precise_cpu_s(server.pid), time.monotonic()
        body = json.dumps(
            {"b": k, "t": round(t0, 6), "kind": "promo", "text": "Red envelopes are live!"},
            separators=(",", ":"),
        )
        if publisher is None:
            _post(
                server.api_url + "/v1/push",
                server.api_key,
                {"broadcast": True, "body": body, "ttl_s": 0},
            )
        else:
            publisher.ask(f"broadcast {SHARED_TOPIC} {k}", 60)
        got, last_at = fleet.wait_pushes(1, ctx.args.fanout_timeout_s)
        cpu = settled_cpu_s(server.pid)
        t2 = time.monotonic()
        used = max(cpu - cpu0 - idle_rate * (t2 - t0), 1e-9)
        rounds.append({"deliveries": got, "server_cpu_s": used, "all_delivered_s": last_at - t0})
    client_cpu = fleet.cpu_s() + (publisher.cpu_s() if publisher else 0.0) - client0
    deliveries = sum(r["deliveries"] for r in rounds)
    cpu_total = sum(r["server_cpu_s"] for r in rounds)
    delivered = sorted(r["all_delivered_s"] for r in rounds)
    result = {
        "rounds": rounds,
        "devices": fleet.ready,
        "deliveries": deliveries,
        "expected": fleet.ready * len(rounds),
        "server_idle_cpu_percent": idle_rate * 100,
        "server_cpu_s": cpu_total,
        "deliveries_per_server_cpu_s": deliveries / cpu_total if cpu_total else None,
        "client_cpu_s": client_cpu,
        "all_delivered_s_median": delivered[len(delivered) // 2] if delivered else None,
    }
    ctx.log(
        f"{spec.name} fan-out: {deliveries:,}/{result['expected']:,} delivered, "
        f"{result['deliveries_per_server_cpu_s'] or 0:,.0f} per server CPU-s "
        f"(clients {client_cpu:.2f} s vs server {cpu_total:.2f} s)"
    )
    return result


def unicast_redis(ctx: Ctx, spec: TargetSpec) -> dict[str, Any]:
    """Channel only: the same unicast with ``[push] backend = "redis"``."""
    from stress.push import Redis

    n = ctx.args.fanout_devices
    redis = Redis(ctx.workdir / spec.name / "redis-server")
    ctx.reaper.cleanups.append(redis.stop)
    pin(redis.pid, ctx.server_cpus)
    sender = None
    server = ctx.start(spec, n, "redis", backend="redis", redis_url=redis.url)
    try:
        fleet = ctx.fleet(server, n, "redis")
        _wait_sessions(server, fleet.ready)
        sender = unicast.ChannelSender(
            server.api_url, server.api_key, n, ctx.args.batch, ctx.args.concurrency, ctx.client_cpus
        )
        out = unicast.run_modes(
            fleet,
            sender,
            {"server": server.pid, "redis": redis.pid},
            seconds=ctx.args.seconds,
            warmup_s=ctx.args.warmup_s,
            half_fraction=0.5,
            drain_s=ctx.args.drain_s,
            log=lambda line: ctx.log(f"{spec.name} redis {line}"),
        )
        fleet.close()
    finally:
        if sender is not None:
            sender.close()
        server.stop()
        redis.stop()
    return out


# ------------------------------------------------------------------ 4. handshakes


def handshakes(ctx: Ctx, spec: TargetSpec) -> dict[str, Any]:
    workers = ctx.args.workers
    channel: dict[str, Any] = {}
    cache_entries = ctx.args.token_cache_entries
    if spec.kind == "channel" and cache_entries is not None:
        channel["config_toml"] = f"[auth]\ntoken_cache_entries = {cache_entries}\n"
    server = ctx.start(spec, workers * 4, "handshakes", **channel)
    out: dict[str, Any] = {}
    try:
        argv = [
            f"{spec.protocol}-churn",
            "--port",
            str(server.port),
            "--seconds",
            str(ctx.args.churn_s),
            "--workers",
            str(workers),
            "--source",
            "127.0.0.251",
        ]
        if spec.kind == "channel":
            ids = [f"churn-{w:04d}" for w in range(workers)]
            path = write_ids(ctx.workdir / spec.name / "handshakes" / "ids.txt", server, ids)
            argv += ["--ids", str(path)]
        for mode in ("full", "resumed"):
            cpu0, children0 = precise_cpu_s(server.pid), self_cpu_children_s()
            doc = run_json([*argv, "--mode", mode], ctx.client_cpus, ctx.args.churn_s + 60)
            cpu = settled_cpu_s(server.pid) - cpu0
            client = self_cpu_children_s() - children0
            done = doc["handshakes"]
            out[mode] = {
                **doc,
                "server_cpu_s": cpu,
                "client_cpu_s": client,
                "per_server_cpu_s": done / cpu if cpu > 0 else None,
                "per_s": done / doc["seconds"] if doc["seconds"] else None,
            }
            ctx.log(
                f"{spec.name} {mode} handshakes: {done:,} ({doc['resumed']:,} TLS-resumed, "
                f"{doc['errors']} errors), {out[mode]['per_server_cpu_s'] or 0:,.0f} per "
                f"server CPU-s (client {client:.2f} s vs server {cpu:.2f} s)"
            )
    finally:
        server.stop()
    return out


# ------------------------------------------------------------------ 5. RPC


def rpc(ctx: Ctx, spec: TargetSpec) -> dict[str, Any]:
    """Channel only: ``bench.echo`` through the gateway vs. POSTing to the upstream
    directly, one call at a time from native clients; alternating rounds."""
    from stress.gateway_proc import RPC_BODY
    from stress.rpc import gateway_toml, upstream_main

    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    upstream = mp.Process(target=upstream_main, args=(child,), daemon=True)
    upstream.start()

    def end_upstream() -> None:
        upstream.kill()
        upstream.join(5)

    ctx.reaper.cleanups.append(end_upstream)
    if not parent.poll(60):
        raise RuntimeError("the RPC upstream did not start")
    up = parent.recv()
    pin(up["pid"], ctx.client_cpus)
    server = ctx.start(spec, 16, "rpc", config_toml=gateway_toml(up["url"], 64))
    workdir = ctx.workdir / spec.name / "rpc"
    body = workdir / "body.json"
    body.write_bytes(RPC_BODY)
    ids = write_ids(workdir / "ids.txt", server, ["rpc-0001"])
    calls = str(ctx.args.rpc_calls)
    samples: dict[str, list[float]] = {"direct": [], "gateway": []}
    gateway_cpu_s = 0.0
    gateway_calls = 0
    try:
        for _ in range(ctx.args.rpc_rounds):
            direct = run_json(
                [
                    "http-rpc",
                    "--port",
                    up["url"].rsplit(":", 1)[1],
                    "--calls",
                    calls,
                    "--path",
                    "/rpc/bench.echo",
                    "--body",
                    str(body),
                ],
                ctx.client_cpus,
                300,
            )
            cpu_before_s = precise_cpu_s(server.pid)
            gateway = run_json(
                [
                    "mmtp-rpc",
                    "--port",
                    str(server.port),
                    "--ids",
                    str(ids),
                    "--calls",
                    calls,
                    "--op",
                    "bench.echo",
                    "--body",
                    str(body),
                ],
                ctx.client_cpus,
                300,
            )
            # The gateway's own CPU (every thread) over the round: its cost per call,
            # one call in flight, whichever thread serves it.
            gateway_cpu_s += precise_cpu_s(server.pid) - cpu_before_s
            gateway_calls += len(gateway["us"])
            for name, doc in (("direct", direct), ("gateway", gateway)):
                us = doc["us"]
                samples[name] += us[len(us) // 10 :]  # the first tenth warms up
    finally:
        server.stop()
        parent.send("stop")
        upstream.join(10)
    out: dict[str, Any] = {}
    for name, values in samples.items():
        values.sort()
        out[name] = {
            "calls": len(values),
            "p50_ms": _q(values, 0.5),
            "p99_ms": _q(values, 0.99),
            "p90_ms": _q(values, 0.9),
        }
    out["overhead_p50_ms"] = out["gateway"]["p50_ms"] - out["direct"]["p50_ms"]
    out["overhead_p99_ms"] = out["gateway"]["p99_ms"] - out["direct"]["p99_ms"]
    out["gateway_cpu_us_per_call"] = gateway_cpu_s * 1e6 / max(1, gateway_calls)
    out["samples_ms"] = {k: [round(v / 1000, 4) for v in vals] for k, vals in samples.items()}
    ctx.log(
        f"{spec.name} rpc: added p50 {out['overhead_p50_ms']:+.3f} ms, "
        f"p99 {out['overhead_p99_ms']:+.3f} ms, "
        f"gateway CPU {out['gateway_cpu_us_per_call']:.0f} µs a call"
    )
    return out


def _q(sorted_us: Sequence[float], q: float) -> float:
    return sorted_us[min(len(sorted_us) - 1, int(len(sorted_us) * q))] / 1000
