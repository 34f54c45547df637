"""A fuzz run: a ``channel serve`` process, lanes of connections playing cases, the verdict.

``run_fuzz(options)`` starts an RPC upstream and the node (port 0, its
``listening`` line, routes to the upstream, a short handshake timeout and
heartbeat so that stalled connections end within seconds), gives every lane
its own device identities with live tokens and resume tickets, and runs
``concurrency`` lanes of sequential connections, with backend traffic
through the node's API alongside, until the node read ``frames`` mutated
frames. It fails on (each is a ``Finding``): a bad line in the node's log
(error level, a traceback, a "Fatal error"), a connection that neither
answered nor was closed within a bound, /healthz not answering within a
bound, the node dying, connections the node still holds after every client
left, bytes from the node that are not MMTP frames, a 500 from its API, and
— with ``rss_tolerance_percent`` — RSS drift after warm-up beyond that
tolerance. Bad log lines are tied to the cases that ran around them; at the
end each is replayed alone to find the one that reproduces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import random
import ssl
import statistics
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from typing import Any

import uvloop

from channel.default_presets import register_default_presets
from channel.security.tls import client_ssl_context
from channel.wire import Hello
from stress.fuzz.backend import BackendTraffic, rpc_routes, upstream_main
from stress.fuzz.cases import Case, CaseBuilder, LaneSeed, Mode
from stress.fuzz.frames import fresh_stream_ids
from stress.fuzz.inner import default_codec
from stress.fuzz.link import Bounds, Outcome, play_case
from stress.fuzz.mutate import Mutator
from stress.fuzz.nodewatch import LogLine, NodeWatch, held_connections
from stress.fuzz.results import Finding, FuzzOptions, FuzzResult, FuzzStats, RssSummary
from stress.fuzz.seeds import SeedCorpus, SeedSession, personal_hello
from stress.gateway_proc import GatewayProcess, MmtpDevice, connect_link

#: Node settings that make every deadline short enough to observe in a run.
HANDSHAKE_TIMEOUT_S = 3.0
HEARTBEAT_S = 4
IDLE_FACTOR = 1.5
#: How many stalled connections may wait for the node to close them at once.
STALLED_AT_ONCE = 64
#: Ended cases are kept this long for tying a log line to what ran around it (the
#: watcher reads the log every second); older ones go, with their bytes.
RECENT_CASES_S = 6.0


def node_settings() -> dict[str, dict[str, Any]]:
    return {
        "server": {
            "handshake_timeout_s": HANDSHAKE_TIMEOUT_S,
            "max_connections_per_ip": 100_000,
            "drain_timeout_s": 1.0,
            # Hundreds of handshakes a second: glibc would keep their freed pages and
            # RSS would follow the allocator's high-water mark, not what the node holds
            # (the knob is meant for such churn; see channel/gateway/heaptrim.py).
            "malloc_trim_after_handshakes": 1000,
        },
        "heartbeat": {"interval_s": HEARTBEAT_S, "min_s": 1, "idle_factor": IDLE_FACTOR},
        "api": {"port": 0},
        # The backend's pushes leave state behind (queues, statuses, receipts): kept
        # small and short here, so the node's memory levels off within the warm-up
        # and what RSS does after it is the fuzzing's doing.
        "push": {
            "queue_cap": 10,
            "status_retention_s": 20,
            "final_status_retention_s": 2.0,
            "receipt_stream_maxlen": 2000,
            "user_devices_ttl_s": 60,
        },
    }


def bounds_for(options: FuzzOptions) -> Bounds:
    deadline_s = max(HANDSHAKE_TIMEOUT_S, HEARTBEAT_S * IDLE_FACTOR)
    # The node's sweep checks deadlines every 0.5 s; the rest is slack for a busy machine.
    return Bounds(
        connect_s=options.answer_bound_s,
        answer_s=options.answer_bound_s,
        stall_s=deadline_s + 1.0 + options.answer_bound_s / 2,
    )


# ------------------------------------------------------------------ credentials


async def lane_seeds(
    node: GatewayProcess, corpus: SeedCorpus, lane: int, context: ssl.SSLContext
) -> list[LaneSeed]:
    """The corpus with lane ``lane``'s devices: fresh tokens, tickets from real handshakes."""
    seeds = []
    for session in corpus.sessions:
        device_id = f"{session.device_id}-{lane}"  # as BackendTraffic's devices
        token = node.token(
            device_id, user_id=session.user_id, app_id=session.app_id, ttl_s=7 * 86400
        )
        ticket = (
            await _ticket(node, session, device_id, token, context)
            if (session.needs_ticket)
            else b""
        )
        hello = personal_hello(session, device_id, token, ticket)
        frames = fresh_stream_ids([hello, *session.client[1:]])
        seeds.append(LaneSeed(session.label, tuple(frames)))
    return seeds


async def _ticket(
    node: GatewayProcess, session: SeedSession, device_id: str, token: bytes, ctx: ssl.SSLContext
) -> bytes:
    hello: Hello = dataclasses.replace(
        session.hello, device_id=device_id, token=token, resume_ticket=b""
    )
    device = MmtpDevice(ctx, hello)
    await connect_link(device, node.port)
    try:
        ack = await asyncio.wait_for(device.ack, 10)
    finally:
        device.close()
    return ack.resume_ticket


# ------------------------------------------------------------------ the run


class FuzzRun:
    def __init__(self, options: FuzzOptions, node: GatewayProcess, corpus: SeedCorpus) -> None:
        self.options = options
        self.node = node
        self.corpus = corpus
        self.stats = FuzzStats()
        self.bounds = bounds_for(options)
        self.context = client_ssl_context(node.ca_cert)
        self.builder = CaseBuilder(
            Mutator(corpus.donors(), default_codec()),
            run_seed=options.seed,
            max_frame_size=262_144,
            stall_share=options.stall_share,
        )
        self.findings: dict[tuple[str, str], Finding] = {}
        self._lock = threading.Lock()
        self._active: dict[int, tuple[float, Case]] = {}
        self._recent: deque[tuple[float, float, Case]] = deque()
        self._next_index = 0
        self.node_cpu_s = 0.0
        self._stalled = asyncio.Semaphore(STALLED_AT_ONCE)
        self._stall_tasks: set[asyncio.Task[Outcome]] = set()
        api_key = (node.state_dir / "api" / "dev.key").read_text(encoding="ascii").strip()
        devices = [
            f"{session.device_id}-{lane}"
            for lane in range(options.concurrency)
            for session in corpus.sessions
        ]
        self.backend = BackendTraffic(
            f"http://127.0.0.1:{node.info['api_port']}", api_key, devices, options.seed
        )
        self.watch = NodeWatch(
            node,
            lambda: self.stats.mutated_frames,
            self._on_bad,
            healthz_bound_s=options.healthz_bound_s,
        )

    # -- findings (called from the watch thread too)

    def _on_bad(self, kind: str, signature: str, line: LogLine | None) -> None:
        with self._lock:
            key = (kind, signature)
            finding = self.findings.get(key)
            if finding is not None:
                finding.count += 1
                return
            finding = Finding(kind, signature, example=line.text if line else signature)
            if line is not None:
                finding.candidates = self._cases_around(line.ts)
            self.findings[key] = finding

    def _cases_around(self, ts: float) -> list[Case]:
        """Cases that may have caused a log line at ``ts``, the likeliest first.

        Those running at ``ts`` come first, shortest first (a stall that ran for
        seconds is a weak suspect), then those that ended up to 2 s before it.
        """
        now = time.time()
        spans = [(started, now, case) for started, case in self._active.values()]
        spans += [(s, e, case) for s, e, case in self._recent if e >= ts - 2.0]
        near = [span for span in spans if span[0] <= ts + 0.5]

        def rank(span: tuple[float, float, Case]) -> tuple[bool, bool, float]:
            started, ended, case = span
            return (not started <= ts <= ended, case.mode is Mode.STALL, ended - started)

        return [case for _, _, case in sorted(near, key=rank)][:40]

    def _hang(self, outcome: Outcome) -> None:
        with self._lock:
            key = ("hang", outcome.detail.split(":")[-1].strip())
            finding = self.findings.setdefault(key, Finding("hang", key[1], count=0))
            finding.count += 1
            finding.example = f"case {outcome.case.index}: {outcome.detail}"
            if len(finding.candidates) < 5:
                finding.candidates.append(outcome.case)

    # -- lanes

    async def run(self) -> None:
        lanes = [
            await lane_seeds(self.node, self.corpus, n, self.context)
            for n in range(self.options.concurrency)
        ]
        cpu_before = self.node.cpu_s()
        self.watch.start()
        reporter = asyncio.create_task(self._report_progress())
        per_s = self.options.backend_per_s
        backend = asyncio.create_task(self.backend.run(per_s)) if per_s > 0 else None
        try:
            await asyncio.gather(*(self._lane(n, seeds) for n, seeds in enumerate(lanes)))
            if self._stall_tasks:
                await asyncio.wait(self._stall_tasks)
        finally:
            reporter.cancel()
            if backend is not None:
                backend.cancel()
        for answer in self.backend.answers:
            if answer.endswith(" 500"):
                self._on_bad("api-500", f"the HTTP API answered {answer}", None)
        self.node_cpu_s = self.node.cpu_s() - cpu_before
        await asyncio.to_thread(self._check_connections_released)
        self.watch.stop()
        if self.options.confirm:
            await self._confirm()

    async def _lane(self, lane: int, seeds: list[LaneSeed]) -> None:
        rng = random.Random(f"{self.options.seed}:lane:{lane}")
        source_ip = f"127.0.1.{lane % 250 + 1}"
        session: ssl.SSLSession | None = None
        played = 0
        while self.stats.mutated_frames < self.options.frames and not self.watch.died:
            index = self._next_index
            self._next_index += 1
            case = self.builder.build(index, seeds)
            offered = session if rng.random() < 0.7 else None
            if case.mode is Mode.STALL:
                await self._stalled.acquire()
                task = asyncio.create_task(self._play(case, source_ip, offered, keep=False))
                self._stall_tasks.add(task)
                task.add_done_callback(self._stall_done)
                continue
            # Devices resume TLS sessions; a fresh session every 50 connections will do.
            outcome = await self._play(case, source_ip, offered, keep=played % 50 == 0)
            session = outcome.session or session
            played += 1

    def _stall_done(self, task: asyncio.Task[Outcome]) -> None:
        self._stall_tasks.discard(task)
        self._stalled.release()

    async def _play(
        self, case: Case, source_ip: str, session: ssl.SSLSession | None, *, keep: bool
    ) -> Outcome:
        with self._lock:
            self._active[case.index] = (time.time(), case)
        outcome = await play_case(
            case,
            self.node.port,
            self.context,
            self.bounds,
            source_ip=source_ip,
            session=session,
            keep_session=keep,
        )
        with self._lock:
            del self._active[case.index]
            recent = self._recent
            recent.append((outcome.started_at, outcome.ended_at, case))
            while recent[0][1] < outcome.ended_at - RECENT_CASES_S:
                recent.popleft()
        self.stats.add(outcome)
        if outcome.result == "hang":
            self._hang(outcome)
        if outcome.bad_output:
            self._on_bad("bad-output", outcome.bad_output, None)
        return outcome

    async def _report_progress(self) -> None:
        if self.options.progress is None:
            return
        while True:
            await asyncio.sleep(5)
            self.options.progress(self.stats)

    # -- end of run

    def _check_connections_released(self) -> None:
        """Every client left: within 15 s the node must hold no device connection, as
        the kernel sees its sockets and as /readyz counts its sessions (when readable)."""
        deadline = time.monotonic() + 15
        while True:
            sockets, sessions = held_connections(self.node.port), self._sessions()
            if sockets == 0 and not sessions:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
        self._on_bad(
            "connections-left",
            f"{sockets} sockets and {sessions} sessions still held 15 s after the last client",
            None,
        )

    def _sessions(self) -> int:
        """/readyz ``connections``; 0 if the admin port does not tell (it may want a key)."""
        url = f"http://127.0.0.1:{self.node.admin_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=self.options.healthz_bound_s) as reply:
                return int(json.loads(reply.read())["connections"])
        except (OSError, ValueError, KeyError):
            return 0

    async def _confirm(self) -> None:
        """Replay the cases around each bad log line alone, until one reproduces it
        (a case carries its bytes, the lane's credentials included)."""
        for finding in list(self.findings.values()):
            if finding.kind != "log":
                continue
            for case in finding.candidates:
                await play_case(case, self.node.port, self.context, self.bounds)
                await asyncio.sleep(0.3)
                if any(line.signature == finding.signature for line in self.watch.log.poll()):
                    finding.reproduced_by = case.index
                    break

    def rss_summary(self) -> RssSummary:
        """RSS after warm-up (the 10 % of the frames after ``warmup_share``) against the
        last 10 %, each the median of the samples taken then; and per tenth of the run."""
        samples = self.watch.rss
        total = max(1, self.options.frames)

        def median_between(low: float, high: float) -> float | None:
            window = [s.rss_kib for s in samples if low * total <= s.mutated_frames < high * total]
            return statistics.median(window) if window else None

        start = self.options.warmup_share
        tenths = [median_between(n / 10, (n + 1) / 10) for n in range(10)]
        end = median_between(0.9, float("inf"))
        if end is None and samples:
            end = statistics.median(s.rss_kib for s in samples[-3:])
        return RssSummary(
            first_kib=float(samples[0].rss_kib) if samples else None,
            after_warmup_kib=median_between(start, start + 0.1),
            end_kib=end,
            max_kib=float(max(s.rss_kib for s in samples)) if samples else None,
            tenths_kib=tenths,
        )

    def result(self, wall_s: float) -> FuzzResult:
        rss = self.rss_summary()
        tolerance = self.options.rss_tolerance_percent
        drift = rss.drift_percent
        if tolerance is not None and (drift is None or abs(drift) > tolerance):
            shown = "not measured" if drift is None else f"{drift:+.1f} %"
            self._on_bad("rss", f"RSS after warm-up moved {shown} (tolerance {tolerance} %)", None)
        health = self.watch.health
        latencies = sorted(health.latencies_s) or [0.0]
        return FuzzResult(
            options=self.options,
            stats=self.stats,
            findings=list(self.findings.values()),
            corpus_sessions=len(self.corpus.sessions),
            rss=rss,
            healthz={
                "checks": health.checks,
                "failures": health.failures,
                "p99_s": latencies[int(0.99 * (len(latencies) - 1))],
                "max_s": health.max_latency_s,
            },
            warnings=dict(self.watch.log.warnings.most_common(20)),
            node_log_lines=self.watch.log.lines_read,
            node_cpu_s=self.node_cpu_s,
            backend_answers=dict(self.backend.answers),
            wall_s=wall_s,
        )


@contextlib.contextmanager
def upstream_process() -> Iterator[str]:
    """``backend.upstream_main`` in its own process; yields its base URL."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=upstream_main, args=(child,), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(60):
            raise RuntimeError("the fuzz upstream did not start within 60 s")
        yield str(parent.recv()["url"])
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        process.join(10)
        if process.is_alive():
            process.terminate()


def run_fuzz(options: FuzzOptions) -> FuzzResult:
    """Start an upstream and a node, fuzz the node, stop both; the result holds every finding."""
    register_default_presets()  # the wire core of our ticket handshakes needs preset 2
    corpus = SeedCorpus.load(options.corpus)
    started = time.monotonic()
    with (
        upstream_process() as upstream_url,
        GatewayProcess(
            name="fuzz", settings=node_settings(), config_toml=rpc_routes(upstream_url)
        ) as node,
    ):
        run = FuzzRun(options, node, corpus)
        uvloop.run(run.run())
        return run.result(time.monotonic() - started)
