"""``python -m stress.fuzz``: fuzz a real gateway process with mutated MMTP frames.

::

    python -m stress.fuzz                                 # 3,000 mutated frames, seed 1
    python -m stress.fuzz --frames 1000000 --concurrency 16   # RSS within 5 % after warm-up
    python -m stress.fuzz --seed 7 --out /tmp/fuzz.json

Prints progress to stderr, then a summary table and every finding (with the
cases that ran around it, and the one that reproduced it alone); writes the
whole result, findings' case bytes included, to ``stress/results/fuzz.json``.
Exit status 1 when anything was found. Seeds come from
``stress/fuzz/seeds.json`` (``python -m stress.fuzz.capture`` records it).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stress.fuzz.driver import run_fuzz
from stress.fuzz.results import FuzzOptions, FuzzResult, FuzzStats
from stress.fuzz.seeds import DEFAULT_CORPUS
from stress.machine import machine_info, machine_line
from stress.report import fmt, table

DEFAULT_OUT = Path("stress/results/fuzz.json")
#: RSS may move this much after warm-up in a long run...
RSS_TOLERANCE_PERCENT = 5.0
#: ...and a run this long has a warm-up worth the name.
RSS_CHECK_MIN_FRAMES = 100_000


def rss_tolerance(given: float | None, frames: int) -> float | None:
    if given is not None:
        return given
    return RSS_TOLERANCE_PERCENT if frames >= RSS_CHECK_MIN_FRAMES else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stress.fuzz",
        description="Mutated MMTP frames from real SDK captures, over real TLS, against a "
        "real 'channel serve' process; fails on tracebacks, hangs, a dead node or RSS growth.",
    )
    p.add_argument("--frames", type=int, default=3000, help="mutated frames to send")
    p.add_argument("--seed", type=int, default=1, help="run seed (cases are a function of it)")
    p.add_argument("--concurrency", type=int, default=8, help="connections at once")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument(
        "--answer-bound-s",
        type=float,
        default=10.0,
        help="a connection neither answering nor closed after this is a hang",
    )
    p.add_argument("--healthz-bound-s", type=float, default=5.0)
    p.add_argument(
        "--stall-share",
        type=float,
        default=0.02,
        help="share of connections that stop mid-frame and wait to be closed",
    )
    p.add_argument(
        "--rss-tolerance",
        type=float,
        default=None,
        metavar="PERCENT",
        help=f"fail when RSS after warm-up drifts more (default: {RSS_TOLERANCE_PERCENT:g} for "
        f"runs of {RSS_CHECK_MIN_FRAMES:,} frames or more, else report only)",
    )
    p.add_argument(
        "--backend-per-s",
        type=float,
        default=20.0,
        help="API calls a second (pushes, device calls, kicks) while fuzzing; 0: none",
    )
    p.add_argument("--no-confirm", action="store_true", help="do not replay suspect cases")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def progress_line(stats: FuzzStats, target: int) -> None:
    rate = stats.mutated_frames / max(stats.elapsed_s, 1e-9)
    print(
        f"[{stats.elapsed_s:7.0f} s] {stats.mutated_frames:>9,} / {target:,} mutated frames, "
        f"{stats.connections:,} connections, {rate:,.0f} frames/s, "
        f"hangs {stats.results['hang']}",
        file=sys.stderr,
        flush=True,
    )


def summary(result: FuzzResult) -> str:
    stats, rss, health = result.stats, result.rss, result.healthz
    answered = stats.rounds_answered / max(stats.rounds_sent, 1)
    rows = [
        ["figure", "value"],
        ["mutated frames read by the node", f"{stats.mutated_frames:,}"],
        ["mutated frames sent", f"{stats.mutated_frames_sent:,}"],
        ["frames sent (mutated and not)", f"{stats.frames_sent:,}"],
        ["connections", f"{stats.connections:,}"],
        ["rounds answered with PONG", f"{stats.rounds_answered:,} ({answered:.0%})"],
        ["connections closed by the node", f"{stats.results['closed']:,}"],
        [
            "tracebacks / bad log lines",
            str(sum(f.count for f in result.findings if f.kind == "log")),
        ],
        ["hangs", str(stats.results["hang"])],
        ["healthz checks (failed)", f"{health['checks']:.0f} ({health['failures']:.0f})"],
        ["healthz p99 / max, s", f"{health['p99_s']:.3f} / {health['max_s']:.3f}"],
        ["RSS first, MiB", fmt(_mib(rss.first_kib), ".1f")],
        ["RSS after warm-up, MiB", fmt(_mib(rss.after_warmup_kib), ".1f")],
        ["RSS end, MiB", fmt(_mib(rss.end_kib), ".1f")],
        ["RSS drift after warm-up, %", fmt(rss.drift_percent, "+.2f")],
        ["node CPU, s", f"{result.node_cpu_s:.1f}"],
        ["wall time, s", f"{result.wall_s:.0f}"],
    ]
    return table(rows)


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / 1024


def counters(result: FuzzResult) -> str:
    stats = result.stats
    lines = [
        "outcomes: " + _counts(stats.results),
        "modes: " + _counts(stats.modes),
        "node's connection errors: " + _counts(stats.error_codes),
        "mutations: " + _counts(stats.ops),
        "mutations in rounds the node answered: " + _counts(stats.ops_answered),
        "node RSS by tenth of the run, MiB: "
        + " ".join(fmt(_mib(kib), ".1f") for kib in result.rss.tenths_kib),
        "backend API calls: " + _counts(result.backend_answers),
    ]
    if result.warnings:
        lines.append("node warnings: " + _counts(result.warnings))
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def findings_text(result: FuzzResult) -> str:
    if not result.findings:
        return "findings: none"
    lines = [f"findings: {len(result.findings)}"]
    for finding in result.findings:
        lines.append(f"- {finding.kind} x{finding.count}: {finding.signature}")
        lines.append(f"  example: {finding.example.strip()[:1500]}")
        if finding.reproduced_by is not None:
            lines.append(f"  reproduced alone by case {finding.reproduced_by}")
        elif finding.candidates:
            shown = ", ".join(str(c.index) for c in finding.candidates[:10])
            lines.append(f"  cases around it: {shown}")
    return "\n".join(lines)


def document(result: FuzzResult, argv: Sequence[str]) -> dict[str, Any]:
    stats = result.stats
    return {
        "command": "python -m stress.fuzz " + shlex.join(argv),
        "machine": machine_info(),
        "seed": result.options.seed,
        "concurrency": result.options.concurrency,
        "corpus": {"path": str(result.options.corpus), "sessions": result.corpus_sessions},
        "mutated_frames_read": stats.mutated_frames,
        "mutated_frames_sent": stats.mutated_frames_sent,
        "frames_sent": stats.frames_sent,
        "connections": stats.connections,
        "rounds_sent": stats.rounds_sent,
        "rounds_answered": stats.rounds_answered,
        "outcomes": dict(stats.results),
        "modes": dict(stats.modes),
        "node_error_codes": dict(stats.error_codes),
        "mutations": dict(stats.ops),
        "mutations_answered": dict(stats.ops_answered),
        "hangs": stats.results["hang"],
        "bad_log_lines": sum(f.count for f in result.findings if f.kind == "log"),
        "rss_kib": result.rss.to_json(),
        "rss_tolerance_percent": result.options.rss_tolerance_percent,
        "healthz": result.healthz,
        "node_warnings": result.warnings,
        "node_log_lines": result.node_log_lines,
        "backend_api_answers": result.backend_answers,
        "node_cpu_s": round(result.node_cpu_s, 1),
        "wall_s": round(result.wall_s, 1),
        "findings": [finding.to_json() for finding in result.findings],
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    options = FuzzOptions(
        frames=args.frames,
        seed=args.seed,
        concurrency=args.concurrency,
        corpus=args.corpus,
        answer_bound_s=args.answer_bound_s,
        healthz_bound_s=args.healthz_bound_s,
        stall_share=args.stall_share,
        rss_tolerance_percent=rss_tolerance(args.rss_tolerance, args.frames),
        confirm=not args.no_confirm,
        backend_per_s=args.backend_per_s,
        progress=None if args.quiet else lambda stats: progress_line(stats, args.frames),
    )
    result = run_fuzz(options)
    print(f"machine: {machine_line()}")
    print(f"seed {args.seed}, {args.concurrency} connections at once, corpus {args.corpus}")
    print(summary(result))
    print(counters(result))
    print(findings_text(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document(result, argv), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
