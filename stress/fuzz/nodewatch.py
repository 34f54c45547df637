"""Watching the node under fuzz: its structured log, /healthz, its memory, its life.

``LogWatch`` reads the node's log (one JSON object per line, ``channel.logs``)
as it grows. A line is *bad* when its level is error or critical, or when it
holds "Traceback" or "Fatal error" anywhere (a line that is not JSON, from
something that wrote to stderr directly, counts the same way). Warnings are
counted by message. ``NodeWatch`` is a thread, so its timings do not depend
on the fuzzer's busy event loop: every ``interval_s`` it polls the log,
GETs /healthz with a deadline, samples the node's RSS and checks that the
process is alive.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stress.gateway_proc import GatewayProcess, rss_kib

_BAD_TEXT = ("Traceback", "Fatal error")
_FRAME_LINE = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class LogLine:
    text: str
    level: str
    msg: str
    ts: float
    entry: dict[str, Any] | None

    @property
    def bad(self) -> bool:
        return self.level in ("error", "critical") or any(t in self.text for t in _BAD_TEXT)

    @property
    def signature(self) -> str:
        """What makes two bad lines the same defect: message, exception, deepest frame."""
        exc = str((self.entry or {}).get("exc", "")) or self.text
        frames = _FRAME_LINE.findall(exc)
        where = f"{Path(frames[-1][0]).name}:{frames[-1][1]} {frames[-1][2]}" if frames else ""
        last = exc.strip().splitlines()[-1] if exc.strip() else ""
        error = last.split(":", 1)[0] if frames else ""
        return _DIGITS.sub("#", f"{self.msg[:80]} | {error} | {where}")


def parse_line(text: str) -> LogLine:
    try:
        entry = json.loads(text)
    except ValueError:
        entry = None
    if not isinstance(entry, dict):
        return LogLine(text, "text", text[:200], time.time(), None)
    return LogLine(
        text,
        str(entry.get("level", "")),
        str(entry.get("msg", "")),
        float(entry.get("ts", time.time())),
        entry,
    )


class LogWatch:
    """The lines a log file gained since the last ``poll``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.warnings: Counter[str] = Counter()
        self.lines_read = 0

    def poll(self) -> list[LogLine]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        lines = [parse_line(raw.decode("utf-8", "replace")) for raw in complete if raw.strip()]
        self.lines_read += len(lines)
        for line in lines:
            if line.level == "warning":
                self.warnings[_DIGITS.sub("#", line.msg)[:120]] += 1
        return [line for line in lines if line.bad]


@dataclass
class HealthStats:
    checks: int = 0
    failures: int = 0
    max_latency_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class RssSample:
    elapsed_s: float
    mutated_frames: int
    rss_kib: int


class NodeWatch(threading.Thread):
    """Polls the node every ``interval_s``; calls ``on_bad`` with bad log lines and events."""

    def __init__(
        self,
        node: GatewayProcess,
        progress: Callable[[], int],
        on_bad: Callable[[str, str, LogLine | None], None],
        *,
        healthz_bound_s: float,
        interval_s: float = 1.0,
    ) -> None:
        super().__init__(name="node-watch", daemon=True)
        self.node = node
        self.log = LogWatch(node.state_dir / f"{node.name}.log")
        self.progress = progress
        self.on_bad = on_bad
        self.healthz_bound_s = healthz_bound_s
        self.interval_s = interval_s
        self.health = HealthStats()
        self.rss: list[RssSample] = []
        self.died = False
        self._halt = threading.Event()
        self._started_at = time.monotonic()

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.tick()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.healthz_bound_s + 5)
        self.tick()

    def tick(self) -> None:
        for line in self.log.poll():
            self.on_bad("log", line.signature, line)
        if self.died:
            return
        proc = self.node.proc
        if proc is not None and proc.poll() is not None:
            self.died = True
            self.on_bad("node-died", f"exit status {proc.returncode}", None)
            return
        self._check_health()
        try:
            rss = rss_kib(self.node.pid)
        except (OSError, ValueError):
            return
        elapsed = time.monotonic() - self._started_at
        self.rss.append(RssSample(round(elapsed, 2), self.progress(), rss))

    def _check_health(self) -> None:
        url = f"http://127.0.0.1:{self.node.admin_port}/healthz"
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=self.healthz_bound_s) as reply:
                reply.read()
            ok = True
        except urllib.error.HTTPError as exc:
            ok = exc.code < 500  # it answered (an admin port may want a key for everything)
        except (OSError, urllib.error.URLError):
            ok = False
        latency = time.monotonic() - started
        health = self.health
        health.checks += 1
        health.latencies_s.append(latency)
        health.max_latency_s = max(health.max_latency_s, latency)
        if not ok or latency > self.healthz_bound_s:
            health.failures += 1
            self.on_bad("healthz", f"no answer within {self.healthz_bound_s} s", None)


#: TCP states of a connection the node still holds: ESTABLISHED, CLOSE_WAIT (the
#: peer closed, the node did not). /proc/net/tcp writes them in hex.
_HELD_STATES = frozenset({"01", "08"})


def held_connections(port: int) -> int:
    """Sockets on local ``port`` the kernel says are still held open (IPv4 and IPv6)."""
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                next(handle)
                for line in handle:
                    fields = line.split()
                    local_port = int(fields[1].rsplit(":", 1)[1], 16)
                    if local_port == port and fields[3] in _HELD_STATES:
                        held += 1
        except OSError:
            continue
    return held
