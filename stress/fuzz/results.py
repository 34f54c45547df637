"""What a fuzz run is asked to do and what it found: options, counters, findings."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from channel.wire import ErrorCode
from stress.fuzz.cases import Case
from stress.fuzz.link import Outcome
from stress.fuzz.seeds import DEFAULT_CORPUS


@dataclass(frozen=True)
class FuzzOptions:
    frames: int = 3000
    seed: int = 1
    concurrency: int = 8
    corpus: Path = DEFAULT_CORPUS
    answer_bound_s: float = 10.0
    healthz_bound_s: float = 5.0
    stall_share: float = 0.02
    #: RSS is compared between the window after this share of the frames and the last 10 %.
    warmup_share: float = 0.2
    #: Fail when RSS after warm-up moves by more than this (None: report only).
    rss_tolerance_percent: float | None = None
    #: Replay the cases around each bad log line to find the one that reproduces it.
    confirm: bool = True
    #: API calls a second from a backend: pushes, calls and kicks to the lanes' devices.
    backend_per_s: float = 20.0
    progress: Callable[[FuzzStats], None] | None = None


@dataclass
class Finding:
    kind: str  # log, hang, healthz, node-died, connections-left, bad-output, rss
    signature: str
    count: int = 1
    example: str = ""
    candidates: list[Case] = field(default_factory=list)
    reproduced_by: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "signature": self.signature,
            "count": self.count,
            "example": self.example[-4000:],
            "reproduced_by_case": self.reproduced_by,
            "candidate_cases": [case.to_json() for case in self.candidates],
        }


@dataclass
class FuzzStats:
    started_at: float = field(default_factory=time.monotonic)
    connections: int = 0
    frames_sent: int = 0
    mutated_frames_sent: int = 0
    #: The lower bound of ``Outcome.mutated_read``: what the run's target counts.
    mutated_frames: int = 0
    rounds_sent: int = 0
    rounds_answered: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    ops: Counter[str] = field(default_factory=Counter)
    #: Mutations of rounds the node answered (it read them and kept the connection).
    ops_answered: Counter[str] = field(default_factory=Counter)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at

    def add(self, outcome: Outcome) -> None:
        self.connections += 1
        self.frames_sent += outcome.frames_sent
        self.mutated_frames_sent += outcome.mutated_sent
        self.mutated_frames += outcome.mutated_read
        self.rounds_sent += outcome.rounds_sent
        self.rounds_answered += outcome.rounds_answered
        self.modes[outcome.case.mode.value] += 1
        self.results[outcome.result] += 1
        if outcome.error_code is not None:
            self.error_codes[_code_name(outcome.error_code)] += 1
        for number, round_ in enumerate(outcome.case.rounds[: outcome.rounds_sent], 1):
            self.ops.update(round_.ops)
            if number <= outcome.rounds_answered:
                self.ops_answered.update(round_.ops)


@dataclass(frozen=True)
class RssSummary:
    """The node's RSS (KiB): first sample, after warm-up, at the end, highest, by tenth."""

    first_kib: float | None
    after_warmup_kib: float | None
    end_kib: float | None
    max_kib: float | None
    tenths_kib: list[float | None]

    @property
    def drift_percent(self) -> float | None:
        start, end = self.after_warmup_kib, self.end_kib
        return 100.0 * (end - start) / start if start and end else None

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "drift_percent": self.drift_percent}


@dataclass
class FuzzResult:
    options: FuzzOptions
    stats: FuzzStats
    findings: list[Finding]
    corpus_sessions: int
    rss: RssSummary
    healthz: dict[str, float]
    warnings: dict[str, int]
    node_log_lines: int
    node_cpu_s: float
    #: The backend's API calls during the run, by "action status".
    backend_answers: dict[str, int]
    wall_s: float

    @property
    def failed(self) -> bool:
        return bool(self.findings)


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"CODE_{code}"
