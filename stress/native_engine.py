"""The native engine (``channel._engine``) under load: idle memory per TLS device,
one broadcast at a time with ACKs, full and resumed handshakes per server CPU-second.

::

    python -m stress.native_engine                     # 19,900 idle, 10,000 fan-out, 10 s churn
    python -m stress.native_engine --idle-devices 5000 --fanout-devices 2000 --churn-s 5
    python -m stress.native_engine --scenarios fanout --out /tmp/ne.json

The server is its own process (``--serve``: the engine plus a Python loop that
ACCEPTs every HELLO and counts fan-out ACKs, as a gateway would); its RSS and CPU
(utime + stime of all its threads, from /proc) are what is measured. Devices are the
native simulator ``native/engine/examples/mmtp_devices.rs`` (built here with cargo,
release): rustls clients, HELLO, ACK every PUSH, in ``--clients`` processes (one
process may hold at most 20,000 descriptors). The prototype's figures for the same
design are printed beside as the baseline (measured once, not re-run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from stress.machine import machine_info, machine_line
from stress.report import fmt, table

ROOT = Path(__file__).resolve().parent.parent
CERTS = ROOT / "native" / "engine" / "tests" / "certs"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "native_engine.json"
SIMULATOR = ROOT / "target" / "release" / "examples" / "mmtp_devices"
#: The prototype (/work/proto/tlsengine, srv_mio_unbuf: same design, echo app,
#: 2026-12-06, this kind of machine); not re-run here.
PROTOTYPE = {
    "idle_bytes_per_device": 3508,
    "fanout_per_cpu_s": 200_000,
    "handshakes_full_per_cpu_s": 6_600,
    "handshakes_resumed_per_cpu_s": 7_700,
}
#: A 150-byte push body zstd cannot shrink (fixed, so runs compare).
BODY = random.Random(150).randbytes(150)


# ------------------------------------------------------------------ server


def serve() -> None:
    """The server process: engine + accept loop; JSON commands on stdin, replies on stdout."""
    from channel._engine import Engine

    engine = Engine(
        {
            "tls_cert_pem": (CERTS / "server.pem").read_bytes(),
            "tls_key_pem": (CERTS / "server.key").read_bytes(),
            "max_connections_per_ip": 100_000,
            "handshake_timeout_ms": 60_000,
        }
    )
    port = engine.listen("mmtp", "127.0.0.1", 0, tls=True, backlog=8192)
    reply({"port": port, "pid": os.getpid()})
    selector = selectors.DefaultSelector()
    selector.register(engine.event_fd(), selectors.EVENT_READ, "engine")
    selector.register(sys.stdin, selectors.EVENT_READ, "stdin")
    acks: dict[bytes, int] = {}
    waiting: tuple[bytes, int] | None = None
    accepted = 0
    while True:
        for key, _ in selector.select():
            if key.data == "engine":
                accepted += handle_events(engine, acks)
            else:
                command = json.loads(sys.stdin.readline() or '{"do": "quit"}')
                if command["do"] == "quit":
                    engine.shutdown()
                    return
                if command["do"] == "accepted":
                    reply({"accepted": accepted})
                elif command["do"] == "fanout":
                    message_id = command["id"].encode()
                    waiting = (message_id, int(command["count"]))
                    engine.submit([("FANOUT", message_id, [("topic", "news")], BODY, None)])
                elif command["do"] == "stats":
                    reply({"stats": engine.stats()})
        if waiting is not None and acks.get(waiting[0], 0) >= waiting[1]:
            reply({"acked": acks[waiting[0]]})
            waiting = None


def handle_events(engine: Any, acks: dict[bytes, int]) -> int:
    """ACCEPT every HELLO of the batch in one submit; count fan-out ACKs."""
    now_ms = int(time.time() * 1000)
    accepts = []
    for event in engine.take_events():
        if event[0] == "HELLO":
            accepts.append(("ACCEPT", event[1], b"session!", b"", 240, now_ms, False))
        elif event[0] == "FANOUT_ACKS":
            for message_id, count in event[1].items():
                acks[message_id] = acks.get(message_id, 0) + count
    if accepts:
        engine.submit(accepts)
    return len(accepts)


def reply(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ driver


class Server:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stress.native_engine", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        hello = self.read()
        self.port: int = hello["port"]
        self.pid: int = hello["pid"]

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the server process ended")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read() if command["do"] != "fanout" else {}

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime, all threads

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"do": "quit"}\n')
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


def simulator(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(SIMULATOR), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def read_json(stream: IO[str] | None) -> dict[str, Any]:
    assert stream is not None
    line = stream.readline()
    if not line:
        raise RuntimeError("a device simulator ended early")
    doc: dict[str, Any] = json.loads(line)
    return doc


def hold(server: Server, devices: int, clients: int) -> list[subprocess.Popen[str]]:
    """``devices`` accepted devices in ``clients`` processes (returns when all are in)."""
    share = [devices // clients + (1 if i < devices % clients else 0) for i in range(clients)]
    procs = [simulator("hold", str(server.port), str(n), "128") for n in share]
    for proc in procs:
        ready = read_json(proc.stdout)
        if ready["failed"]:
            raise RuntimeError(f"{ready['failed']} devices failed to connect")
    return procs


def release(procs: Sequence[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("quit\n")
        proc.stdin.flush()
    for proc in procs:
        proc.wait(timeout=30)


def idle_memory(server: Server, devices: int, clients: int) -> dict[str, Any]:
    before = server.rss_bytes()
    started = time.monotonic()
    procs = hold(server, devices, clients)
    connect_s = time.monotonic() - started
    after = server.rss_bytes()
    release(procs)
    return {
        "devices": devices,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_device": (after - before) / devices,
        "connect_s": connect_s,
    }


def fanout(server: Server, devices: int, clients: int, rounds: int) -> dict[str, Any]:
    procs = hold(server, devices, clients)
    per_round = []
    for r in range(rounds):
        cpu = server.cpu_s()
        wall = time.monotonic()
        server.ask(do="fanout", id=f"bc-{r}", count=devices)
        acked = server.read()["acked"]
        per_round.append(
            {"acked": acked, "cpu_s": server.cpu_s() - cpu, "wall_s": time.monotonic() - wall}
        )
    release(procs)
    cpu_total = sum(r["cpu_s"] for r in per_round)
    return {
        "devices": devices,
        "rounds": per_round,
        "deliveries_per_cpu_s": devices * rounds / cpu_total if cpu_total else None,
        "wall_s_per_broadcast": sum(r["wall_s"] for r in per_round) / rounds,
    }


def handshakes(
    server: Server, seconds: int, clients: int, workers: int, kind: str
) -> dict[str, Any]:
    cpu = server.cpu_s()
    procs = [
        simulator("churn", str(server.port), str(seconds), str(workers), kind)
        for _ in range(clients)
    ]
    results = [read_json(p.stdout) for p in procs]
    for proc in procs:
        proc.wait(timeout=30)
    cpu_s = server.cpu_s() - cpu
    done = sum(r["handshakes"] for r in results)
    return {
        "kind": kind,
        "handshakes": done,
        "resumed": sum(r["resumed"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "server_cpu_s": cpu_s,
        "per_cpu_s": done / cpu_s if cpu_s else None,
    }


def build_simulator() -> None:
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "channel-engine", "--example", "mmtp_devices"],
        cwd=ROOT,
        check=True,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    build_simulator()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "args": vars(args) | {"out": str(args.out)},
    }
    scenarios = set(args.scenarios.split(","))
    server = Server()
    try:
        if "idle" in scenarios:
            results["idle"] = idle_memory(server, args.idle_devices, args.clients)
        if "fanout" in scenarios:
            results["fanout"] = fanout(server, args.fanout_devices, args.clients, args.rounds)
        if "handshakes" in scenarios:
            for kind in ("full", "resumed"):
                results[f"handshakes_{kind}"] = handshakes(
                    server, args.churn_s, args.clients, args.workers, kind
                )
        results["engine_stats"] = server.ask(do="stats")["stats"]
    finally:
        server.close()
    results["prototype"] = PROTOTYPE
    return results


def report(results: dict[str, Any]) -> str:
    rows = [["figure", "channel._engine", "prototype (not re-run)"]]
    if "idle" in results:
        idle = results["idle"]
        rows.append(
            [
                f"server RSS per idle TLS device at {idle['devices']:,} (bytes)",
                fmt(idle["bytes_per_device"], ",.0f"),
                f"{PROTOTYPE['idle_bytes_per_device']:,}",
            ]
        )
    if "fanout" in results:
        fan = results["fanout"]
        rows.append(
            [
                f"one PUSH to {fan['devices']:,}, acked: deliveries per server CPU-s",
                fmt(fan["deliveries_per_cpu_s"], ",.0f"),
                f"{PROTOTYPE['fanout_per_cpu_s']:,} (no ACKs)",
            ]
        )
    for kind in ("full", "resumed"):
        hs = results.get(f"handshakes_{kind}")
        if hs:
            rows.append(
                [
                    f"{kind} handshakes (TLS + HELLO + ACCEPT) per server CPU-s",
                    fmt(hs["per_cpu_s"], ",.0f"),
                    f"{PROTOTYPE[f'handshakes_{kind}_per_cpu_s']:,} (TLS only)",
                ]
            )
    return table(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scenarios", default="idle,fanout,handshakes")
    p.add_argument("--idle-devices", type=int, default=19_900)
    p.add_argument("--fanout-devices", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=10, help="broadcasts, one at a time")
    p.add_argument("--clients", type=int, default=2, help="device simulator processes")
    p.add_argument("--churn-s", type=int, default=10, help="seconds per handshake run")
    p.add_argument("--workers", type=int, default=16, help="handshake loops per client")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        serve()
        return
    results = run(args)
    print(machine_line())
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
