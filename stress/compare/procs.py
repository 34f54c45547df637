"""Processes a comparison starts: every one registered, every one ended on the way out.

``Reaper`` ends what it holds (SIGTERM, then SIGKILL) when the run finishes, fails or
is interrupted. ``LineProc`` is a native load generator spoken to in lines: commands
on its stdin, one JSON answer per line on its stdout, each read with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOADGEN = ROOT / "target" / "release" / "loadgen"


class ProcError(RuntimeError):
    """A helper process ended early or did not answer in time."""


def build_loadgen() -> Path:
    """``cargo build --release -p channel-loadgen`` (a no-op once built)."""
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "channel-loadgen"], cwd=ROOT, check=True
    )
    return LOADGEN


def precise_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of ``pid`` to the µs (``se.sum_exec_runtime``)."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        with (
            contextlib.suppress(OSError),
            open(f"/proc/{pid}/task/{tid}/sched", encoding="ascii") as handle,
        ):
            for line in handle:
                if line.startswith("se.sum_exec_runtime"):
                    total += float(line.rsplit(":", 1)[1]) / 1000
                    break
    return total


def runqueue_wait_s(pid: int) -> float:
    """Seconds the threads of ``pid`` were runnable but waited for a CPU (second field of
    ``/proc/<pid>/task/*/schedstat``): how much other work on the machine held it back."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        with (
            contextlib.suppress(OSError, IndexError, ValueError),
            open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as handle,
        ):
            total += int(handle.read().split()[1])
    return total / 1e9


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ProcError(f"no VmRSS for pid {pid}")


def settled_rss_bytes(
    pid: int,
    interval_s: float = 0.5,
    window: int = 4,
    tolerance_bytes: int = 256 << 10,
    timeout_s: float = 30.0,
) -> int:
    """RSS once the last ``window`` readings lie within ``tolerance_bytes``."""
    readings: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        readings.append(rss_bytes(pid))
        recent = readings[-window:]
        if len(recent) == window and max(recent) - min(recent) <= tolerance_bytes:
            return recent[-1]
        if time.monotonic() > deadline:
            return readings[-1]
        time.sleep(interval_s)


def settled_cpu_s(
    pid: int, step_s: float = 0.05, quiet_s: float = 0.002, limit_s: float = 10.0
) -> float:
    """The process's CPU once it stops working (two readings ``step_s`` apart differ
    by less than ``quiet_s``)."""
    deadline = time.monotonic() + limit_s
    last = precise_cpu_s(pid)
    while time.monotonic() < deadline:
        time.sleep(step_s)
        now = precise_cpu_s(pid)
        if now - last < quiet_s:
            return now
        last = now
    return last


def pin(pid: int, cpus: Sequence[int] | None) -> None:
    """Pin ``pid`` and its threads (a thread inherits affinity only when it starts)."""
    if not cpus:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


def raise_nofile() -> None:
    """For a child: open-file soft limit up to the hard one (20,000 here)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Reaper:
    """Ends every registered process on exit; SIGTERM becomes an exception so it does too."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self.cleanups: list[Any] = []

    def add(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Reaper:
        self._old = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGTERM")

    def __exit__(self, *exc: object) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()
        for proc in self.procs:
            end(proc)
        signal.signal(signal.SIGTERM, self._old)


def end(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LineProc:
    """A load generator process: commands in, JSON lines out, each with a deadline."""

    def __init__(self, reaper: Reaper, argv: Sequence[str], cpus: Sequence[int] | None) -> None:
        self.argv = list(argv)
        self.proc = reaper.add(
            subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=raise_nofile,
            )
        )
        pin(self.proc.pid, cpus)
        self._selector = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        return precise_cpu_s(self.proc.pid)

    def read(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        if not self._selector.select(timeout_s):
            raise ProcError(f"{Path(self.argv[0]).name} {self.argv[1]}: no answer in {timeout_s} s")
        line = self.proc.stdout.readline()
        if not line:
            raise ProcError(f"{Path(self.argv[0]).name} {self.argv[1]} ended ({self.proc.wait()})")
        doc: dict[str, Any] = json.loads(line)
        if "error" in doc:
            raise ProcError(f"{self.argv[1]}: {doc['error']}")
        return doc

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str, timeout_s: float = 60.0) -> dict[str, Any]:
        self.send(command)
        return self.read(timeout_s)

    def quit(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                end(self.proc)
