"""The native clients (``native/loadgen``) as the comparison drives them.

``Fleet``: N devices held open in ``ceil(N / per_client)`` processes (a process may
hold 20,000 descriptors), each from its own loopback source address, answering every
push at once. ``Publisher``: the MQTT client that publishes for Mosquitto. ``churn``
and ``rpc_calls``: one-shot runs that print one JSON line.
"""

from __future__ import annotations

import array
import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from stress.compare.procs import LOADGEN, LineProc, Reaper, precise_cpu_s, raise_nofile

#: MQTT topics: each device's own (unicast) and one all of them share (broadcast).
DEVICE_TOPIC = "devices/{id}/push"
SHARED_TOPIC = "bcast/all"


class Target(Protocol):
    name: str
    protocol: str

    @property
    def port(self) -> int: ...


def device_ids(n: int) -> list[str]:
    """``bench-000000``...: the names ``stress.push.LoadGenerator`` pushes to."""
    return [f"bench-{i:06d}" for i in range(n)]


def write_ids(path: Path, target: Any, ids: Sequence[str]) -> Path:
    """One line per device: MMTP ``id token``, MQTT ``id username password`` (hex)."""
    lines = []
    channel = hasattr(target, "token")
    for device in ids:
        token = target.token(device).hex() if channel else "-"
        if target.protocol == "mqtt":
            lines.append(f"{device} {device if channel else '-'} {token}")
        else:
            lines.append(f"{device} {token}")
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def split(total: int, parts: int) -> list[int]:
    return [total * (i + 1) // parts - total * i // parts for i in range(parts)]


class Fleet:
    """``n`` devices of ``target`` held by native client processes."""

    def __init__(
        self,
        reaper: Reaper,
        target: Any,
        n: int,
        workdir: Path,
        *,
        per_client: int,
        cpus: Sequence[int] | None,
        concurrency: int = 128,
        timeout_s: float = 300.0,
        dictionary: Path | None = None,
    ) -> None:
        """``dictionary``: MMTP devices hold this ``.mmtpdict`` and name it in HELLO."""
        self.n = n
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        ids = device_ids(n)
        self.shares = split(n, max(1, math.ceil(n / per_client)))
        self.procs: list[LineProc] = []
        start = 0
        for i, share in enumerate(self.shares):
            path = write_ids(workdir / f"ids-{i}.txt", target, ids[start : start + share])
            start += share
            argv = [
                str(LOADGEN),
                f"{target.protocol}-hold",
                "--port",
                str(target.port),
                "--ids",
                str(path),
                "--source",
                f"127.0.0.{2 + i}",
                "--concurrency",
                str(concurrency),
            ]
            if target.protocol == "mqtt":
                # A box on Channel gets broadcasts on its own topic too (and its ACL
                # keeps it there); Mosquitto's clients also share one broadcast topic.
                topics = (
                    DEVICE_TOPIC if hasattr(target, "token") else f"{DEVICE_TOPIC},{SHARED_TOPIC}"
                )
                argv += ["--topics", topics, "--keepalive", "600"]
            elif dictionary is not None:
                argv += ["--dictionary", str(dictionary)]
            self.procs.append(LineProc(reaper, argv, cpus))
        replies = [p.read(timeout_s) for p in self.procs]
        self.ready = sum(r["ready"] for r in replies)
        self.failed = sum(r["failed"] for r in replies)
        self.connect_s = max(r["seconds"] for r in replies)

    def cpu_s(self) -> float:
        return sum(p.cpu_s() for p in self.procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def reset(self) -> None:
        for p in self.procs:
            p.send("reset")
        for p in self.procs:
            p.read(30)

    def wait_pushes(self, per_device: int, timeout_s: float) -> tuple[int, float]:
        """Until every process got ``per_device`` pushes per device it holds (since the
        reset) or ``timeout_s``; returns (pushes, when the last process got its last)."""
        for p, share in zip(self.procs, self.shares, strict=True):
            p.send(f"wait {share * per_device} {int(timeout_s * 1000)}")
        replies = [p.read(timeout_s + 30) for p in self.procs]
        return sum(r["pushes"] for r in replies), max(r["at"] for r in replies)

    def pushes(self) -> int:
        return sum(int(p.ask("stats")["pushes"]) for p in self.procs)

    def records(self) -> array.array[float]:
        """(seq, sent at, acked at) of every unicast push since the reset, flattened."""
        out = array.array("d")
        for i, p in enumerate(self.procs):
            path = self.workdir / f"records-{i}.bin"
            p.ask(f"dump {path}", 60)
            out.frombytes(path.read_bytes())
            path.unlink()
        return out

    def close(self) -> None:
        for p in self.procs:
            p.quit()


class Publisher(LineProc):
    """``loadgen mqtt-pub``: QoS 1 to the devices' own topics or the shared one."""

    def __init__(
        self, reaper: Reaper, target: Any, ids_file: Path, cpus: Sequence[int] | None
    ) -> None:
        super().__init__(
            reaper,
            [
                str(LOADGEN),
                "mqtt-pub",
                "--port",
                str(target.port),
                "--ids",
                str(ids_file),
                "--topic",
                DEVICE_TOPIC,
                "--source",
                "127.0.0.250",
            ],
            cpus,
        )
        self.read(30)


def run_json(argv: Sequence[str], cpus: Sequence[int] | None, timeout_s: float) -> dict[str, Any]:
    """Run a one-shot load generator; its last stdout line is JSON. Also its CPU."""
    import json
    import os

    def setup() -> None:
        raise_nofile()
        if cpus:
            os.sched_setaffinity(0, cpus)

    proc = subprocess.run(
        [str(LOADGEN), *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        preexec_fn=setup,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"loadgen {argv[0]} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    doc: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


def self_cpu_children_s() -> float:
    """CPU of finished children (``run_json`` runs), for the client side of churn."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


__all__ = ["Fleet", "Publisher", "precise_cpu_s", "run_json", "write_ids"]
