"""Acked unicast: Channel through its HTTP API (``stress.push.LoadGenerator``: batches
of pushes, each to a random device), Mosquitto from an MQTT publisher (QoS 1 to each
device's own topic). Both bodies carry a sequence number and the sender's
``CLOCK_MONOTONIC`` time; devices record when they wrote the ACK / PUBACK."""

from __future__ import annotations

import array
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stress.compare.clients import Fleet, Publisher
from stress.compare.procs import precise_cpu_s, runqueue_wait_s

Sender = Callable[[float, float, float, int], dict[str, Any]]


def _ms(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


class ChannelSender:
    """Pushes through the HTTP API from a generator process (``stress.push``)."""

    def __init__(
        self,
        api_url: str,
        key: str,
        devices: int,
        batch: int,
        concurrency: int,
        cpus: Sequence[int] | None,
    ) -> None:
        from stress.push import Workers

        self.devices, self.batch, self.concurrency = devices, batch, concurrency
        self.workers = Workers("generator", [{}], list(cpus) if cpus else None)
        self.workers.command("setup", api_urls=[api_url], key=key, connections=concurrency)
        self.pid = self.workers.pids[0]

    def start(self, start_at: float, seconds: float, rate: float, seq0: int) -> None:
        self.workers.send(
            "unicast",
            start_at=start_at,
            seconds=seconds,
            rate=rate,
            batch=self.batch,
            concurrency=self.concurrency,
            devices=self.devices,
            seq0=seq0,
            ttl_s=3600,
        )

    def finish(self) -> tuple[array.array[int], dict[str, Any]]:
        (reply,) = self.workers.replies()
        accepted = array.array("q")
        accepted.frombytes(reply["accepted"])
        took = sorted(t for _, _, t in reply["requests"])
        return accepted, {
            "posted": reply["posted"],
            "errors": reply["error_count"],
            "late_p50_ms": reply["late_p50_ms"],
            # POST -> 202: what the API made each batch of pushes wait.
            "http_response_ms": {"p50": _ms(took, 0.5), "p99": _ms(took, 0.99)},
        }

    def close(self) -> None:
        self.workers.close()


class MqttSender:
    """QoS 1 PUBLISHes to the devices' own topics from ``loadgen mqtt-pub``."""

    def __init__(self, publisher: Publisher, inflight: int, workdir: Path) -> None:
        self.publisher = publisher
        self.inflight = inflight
        self.path = workdir / "accepted.bin"
        self.pid = publisher.pid

    def start(self, start_at: float, seconds: float, rate: float, seq0: int) -> None:
        self.publisher.send(
            f"unicast {start_at:.6f} {seconds} {rate} {self.inflight} {seq0} {seq0 + 7} {self.path}"
        )

    def finish(self) -> tuple[array.array[int], dict[str, Any]]:
        reply = self.publisher.read(120)
        pairs = array.array("d")
        pairs.frombytes(self.path.read_bytes())
        accepted = array.array("q", (int(s) for s in pairs[0::2]))
        return accepted, {
            "posted": reply["posted"],
            "errors": reply["unacked"],
            "late_p50_ms": reply["late_p50_ms"] if reply["late_p50_ms"] >= 0 else None,
        }

    def close(self) -> None:
        self.publisher.quit()


def run_mode(
    fleet: Fleet,
    sender: ChannelSender | MqttSender,
    pids: dict[str, int],
    *,
    seconds: float,
    warmup_s: float,
    rate: float,
    seq0: int,
    drain_s: float,
) -> dict[str, Any]:
    """One window: reset the devices, load, read every CPU at the window's edges, drain."""
    fleet.reset()
    start_at = time.monotonic() + 0.5
    sender.start(start_at, warmup_s + seconds, rate, seq0)
    w0, w1 = start_at + warmup_s, start_at + warmup_s + seconds

    def snapshot() -> dict[str, float]:
        out = {name: precise_cpu_s(pid) for name, pid in pids.items()}
        out["server_runqueue_wait"] = runqueue_wait_s(pids["server"])
        out["generator"] = precise_cpu_s(sender.pid)
        out["clients"] = fleet.cpu_s()
        return out

    time.sleep(max(0.0, w0 - time.monotonic()))
    cpu0 = snapshot()
    time.sleep(max(0.0, w1 - time.monotonic()))
    cpu1 = snapshot()
    accepted, gen = sender.finish()
    deadline = time.monotonic() + drain_s
    last, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = fleet.pushes()
        if got >= len(accepted):
            break
        if got != last:
            last, changed = got, time.monotonic()
        elif time.monotonic() - changed > 2.0:
            break
        time.sleep(0.1)
    phase = analyse(accepted, fleet.records(), (w0, w1), {k: cpu1[k] - cpu0[k] for k in cpu1})
    phase.update(target_rate=rate or None, generator=gen)
    return phase


def analyse(
    accepted: array.array[int],
    records: array.array[float],
    window: tuple[float, float],
    cpu: dict[str, float],
) -> dict[str, Any]:
    seqs, sent, acked = records[0::3], records[1::3], records[2::3]
    w0, w1 = window
    received = Counter(int(s) for s in seqs)
    accepted_set = set(accepted)
    latencies = sorted(a - s for s, a in zip(sent, acked, strict=True) if w0 <= s < w1)
    acked_in_window = sum(1 for a in acked if w0 <= a < w1)
    per_s = acked_in_window / (w1 - w0)
    wait = cpu.pop("server_runqueue_wait", 0.0)
    server_cpu = cpu.get("server", 0.0)
    # Under 1.0: the load generators (devices + sender, one core) were not saturated.
    client_core = (cpu.get("clients", 0.0) + cpu.get("generator", 0.0)) / (w1 - w0)
    return {
        "window_s": w1 - w0,
        "accepted": len(accepted),
        "received": len(seqs),
        "lost": len(accepted_set - received.keys()),
        "duplicates": len(seqs) - len(received),
        "acked_per_s": per_s,
        "deliveries_per_server_cpu_s": acked_in_window / server_cpu if server_cpu > 0 else None,
        "latency_ms": {
            "p50": _ms(latencies, 0.5),
            "p90": _ms(latencies, 0.9),
            "p99": _ms(latencies, 0.99),
            "max": _ms(latencies, 1.0),
            "count": len(latencies),
        },
        # 201 quantiles (0, 0.5, ..., 100 %): the latency curve, without every sample.
        "latency_cdf_ms": [_ms(latencies, i / 200) for i in range(201)] if latencies else None,
        "cpu_s": cpu,
        "client_cores_busy": client_core,
        # Seconds per second the server was runnable but another process had its CPU.
        "server_runqueue_wait_per_s": wait / (w1 - w0),
        "cpu_s_per_1000": (
            {k: v * 1000 / acked_in_window for k, v in cpu.items()} if acked_in_window else None
        ),
    }


def run_modes(
    fleet: Fleet,
    sender: ChannelSender | MqttSender,
    pids: dict[str, int],
    *,
    seconds: float,
    warmup_s: float,
    half_fraction: float,
    drain_s: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """A warm-up push per device, then closed loop (``max``), then open loop at
    ``half_fraction`` of what ``max`` acked (``half``: latency below saturation)."""
    n = fleet.n
    out: dict[str, Any] = {}
    warm = run_mode(
        fleet,
        sender,
        pids,
        seconds=max(1.0, n / 5000),
        warmup_s=0.0,
        rate=5000.0,
        seq0=0,
        drain_s=drain_s,
    )
    out["warmup"] = {k: warm[k] for k in ("accepted", "received", "lost")}
    out["max"] = most = run_mode(
        fleet,
        sender,
        pids,
        seconds=seconds,
        warmup_s=warmup_s,
        rate=0.0,
        seq0=10_000_000,
        drain_s=drain_s,
    )
    log(_line("max", most))
    rate = most["acked_per_s"] * half_fraction
    if rate > 0:
        out["half"] = half = run_mode(
            fleet,
            sender,
            pids,
            seconds=seconds,
            warmup_s=warmup_s,
            rate=rate,
            seq0=20_000_000,
            drain_s=drain_s,
        )
        log(_line("half", half))
    return out


def _line(mode: str, phase: dict[str, Any]) -> str:
    lat = phase["latency_ms"]
    return (
        f"unicast {mode}: {phase['acked_per_s']:,.0f} acked/s, "
        f"{phase['deliveries_per_server_cpu_s'] or 0:,.0f} per server CPU-s, p50 "
        f"{lat['p50'] or 0:.1f} ms, p99 {lat['p99'] or 0:.1f} ms, lost {phase['lost']}"
    )
