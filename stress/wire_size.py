"""Bytes on the wire per message: MMTP vs. HTTP/1.1, HTTP/2, WebSocket and MQTT.

For every codec and every session (= one device connection) of a JSONL corpus, each message is
encoded by the sending side and decoded (and checked) by the receiving side of that connection;
the bytes handed to TLS are counted, and encode/decode are timed separately.

    python -m stress.wire_size [--corpus PATH.jsonl | --sessions N --seed S]
                               [--dict PATH.mmtpdict] [--preset PATH.json]
                               [--out results/wire_size.json] [--cold 10]
    python -m stress.wire_size --apps wallet,social,ride,shop,fitness [--sessions N]

See ``stress/README.md`` for the exact modelling of each baseline.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib
import json
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stress.baselines import baseline_codecs
from stress.baselines.common import KINDS, Msg, WireCodec, body_bytes
from stress.machine import machine_info
from stress.report import table

REFERENCE = "http2-hpack-gzip"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "wire_size.json"
DEFAULT_SESSIONS = 300
DEFAULT_SEED = 2

Session = list[Msg]


# --------------------------------------------------------------------------- corpus


def group_sessions(messages: Iterable[Msg]) -> Iterator[Session]:
    """Split a message stream into sessions (messages of one session are contiguous)."""
    current: Session = []
    key: Any = object()
    for msg in messages:
        if msg.get("session") != key and current:
            yield current
            current = []
        key = msg.get("session")
        current.append(msg)
    if current:
        yield current


def read_jsonl(path: Path) -> Iterator[Msg]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{lineno}: bad JSON: {e}") from e


def load_corpus(args: argparse.Namespace) -> tuple[list[Session], str]:
    if args.corpus is not None:
        return list(group_sessions(read_jsonl(Path(args.corpus)))), str(args.corpus)
    try:
        corpus_mod = importlib.import_module("channel.corpus")
    except ImportError as e:
        raise SystemExit(f"channel.corpus is not available ({e}); pass --corpus PATH.jsonl") from e
    gen = corpus_mod.generate_corpus(n_sessions=args.sessions, seed=args.seed)
    source = f"channel.corpus(n_sessions={args.sessions}, seed={args.seed})"
    return list(group_sessions(gen)), source


def corpus_summary(sessions: Sequence[Session], source: str) -> dict[str, Any]:
    kinds = {k: 0 for k in KINDS}
    body_total = 0
    n = 0
    for sess in sessions:
        for msg in sess:
            kinds[msg["kind"]] = kinds.get(msg["kind"], 0) + 1
            body_total += len(body_bytes(msg))
            n += 1
    return {
        "source": source,
        "sessions": len(sessions),
        "messages": n,
        "messages_by_kind": kinds,
        "json_body_bytes_total": body_total,
        "json_body_bytes_per_msg": body_total / n if n else 0.0,
    }


# --------------------------------------------------------------------------- codecs


def load_mmtp(
    dict_path: str | None, preset_path: str | None = None
) -> tuple[list[WireCodec], str | None]:
    """The MMTP codecs from ``stress/baselines/mmtp.py``: the app preset with the
    dictionary first, then the generic preset, then no preset and no dictionary."""
    try:
        mod = importlib.import_module("stress.baselines.mmtp")
    except ImportError as e:
        return [], f"MMTP codec unavailable ({e}); running the baselines only"
    try:
        return list(mod.mmtp_codecs(dict_path, preset_path)), None
    except Exception as e:
        return [], f"MMTP codec failed to initialise ({type(e).__name__}: {e}); baselines only"


def select_codecs(args: argparse.Namespace) -> tuple[list[WireCodec], list[str]]:
    """All codecs (MMTP first, if it loads), or those named by ``--codecs``; there the name
    ``mmtp`` (any case) stands for the MMTP codec whatever its display name."""
    wanted = {c.strip() for c in args.codecs.split(",") if c.strip()} if args.codecs else None
    want_mmtp = wanted is None or any(w.lower() == "mmtp" for w in wanted)
    warnings: list[str] = []
    codecs: list[WireCodec] = []
    if want_mmtp:
        mmtp, warning = load_mmtp(args.dict, args.preset)
        if warning:
            warnings.append(warning)
        codecs.extend(mmtp)
    baselines = baseline_codecs()
    if wanted is not None:
        unknown = {w for w in wanted if w.lower() != "mmtp"} - {c.name for c in baselines}
        if unknown:
            known = ", ".join(["mmtp", *(c.name for c in baselines)])
            raise SystemExit(f"unknown codec(s): {', '.join(sorted(unknown))} (known: {known})")
        baselines = [c for c in baselines if c.name in wanted]
    codecs += baselines
    return codecs, warnings


# --------------------------------------------------------------------------- measurement


def _us_stats(ns: list[int]) -> dict[str, float]:
    if not ns:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0}
    s = sorted(ns)
    return {
        "mean": statistics.fmean(s) / 1000,
        "p50": s[len(s) // 2] / 1000,
        "p99": s[min(len(s) - 1, (len(s) * 99) // 100)] / 1000,
    }


class Progress:
    def __init__(self, name: str, total: int, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.t0 = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= 1.0:
            self.last = now
            pct = 100 * done / self.total if self.total else 100
            print(
                f"[wire_size] {self.name}: {done}/{self.total} sessions ({pct:.0f}%) "
                f"{now - self.t0:.1f}s",
                file=sys.stderr,
                flush=True,
            )

    def finish(self) -> None:
        if self.enabled:
            print(
                f"[wire_size] {self.name}: done in {time.monotonic() - self.t0:.1f}s",
                file=sys.stderr,
                flush=True,
            )


def measure(
    codec: WireCodec, sessions: Sequence[Session], cold_n: int, progress: bool = True
) -> dict[str, Any]:
    by_kind_bytes = {k: 0 for k in KINDS}
    by_kind_msgs = {k: 0 for k in KINDS}
    enc_ns: list[int] = []
    dec_ns: list[int] = []
    setup_total = cold_bytes = cold_msgs = 0
    clock = time.perf_counter_ns
    prog = Progress(codec.name, len(sessions), progress)
    if progress:
        print(f"[wire_size] {codec.name}: {len(sessions)} sessions", file=sys.stderr, flush=True)
    gc.collect()
    for done, sess in enumerate(sessions, 1):
        prepare = getattr(codec, "prepare_session", None)
        if prepare is not None:  # lets a codec set its clocks to the session's start
            prepare(sess)
        ws = codec.new_session()
        setup = ws.setup_bytes()
        setup_total += setup
        if sess:
            cold_bytes += setup
        for i, msg in enumerate(sess):
            t0 = clock()
            data = ws.encode(msg)
            t1 = clock()
            ws.decode(data, msg)
            t2 = clock()
            enc_ns.append(t1 - t0)
            dec_ns.append(t2 - t1)
            n = len(data)
            kind = msg["kind"]
            by_kind_bytes[kind] = by_kind_bytes.get(kind, 0) + n
            by_kind_msgs[kind] = by_kind_msgs.get(kind, 0) + 1
            if i < cold_n:
                cold_bytes += n
                cold_msgs += 1
        prog.update(done)
    prog.finish()
    messages = sum(by_kind_msgs.values())
    total = sum(by_kind_bytes.values())
    return {
        "messages": messages,
        "total_bytes": total,
        "bytes_per_msg": total / messages if messages else 0.0,
        "setup_bytes_total": setup_total,
        "setup_bytes_per_session": setup_total / len(sessions) if sessions else 0.0,
        "bytes_per_msg_incl_setup": (total + setup_total) / messages if messages else 0.0,
        "by_kind": {
            k: {
                "messages": by_kind_msgs[k],
                "bytes": by_kind_bytes[k],
                "bytes_per_msg": by_kind_bytes[k] / by_kind_msgs[k] if by_kind_msgs[k] else None,
            }
            for k in by_kind_msgs
        },
        "cold": {
            "first_n": cold_n,
            "messages": cold_msgs,
            "bytes_incl_setup": cold_bytes,
            "bytes_per_msg": cold_bytes / cold_msgs if cold_msgs else 0.0,
        },
        "encode_us": _us_stats(enc_ns),
        "decode_us": _us_stats(dec_ns),
    }


def add_ratios(results: dict[str, dict[str, Any]], reference: str) -> None:
    ref = results.get(reference)
    for r in results.values():
        if ref is None:
            r["x_reference"] = None
            continue

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a is not None and b else None

        r["x_reference"] = {
            "reference": reference,
            "bytes_per_msg": ratio(r["bytes_per_msg"], ref["bytes_per_msg"]),
            "cold_bytes_per_msg": ratio(r["cold"]["bytes_per_msg"], ref["cold"]["bytes_per_msg"]),
            **{
                k: ratio(r["by_kind"][k]["bytes_per_msg"], ref["by_kind"][k]["bytes_per_msg"])
                for k in r["by_kind"]
                if k in ref["by_kind"]
            },
        }


# --------------------------------------------------------------------------- reporting


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render_table(results: dict[str, dict[str, Any]], cold_n: int) -> str:
    cols = [
        "codec",
        "bytes/msg",
        "×HTTP/2",
        "req",
        "resp",
        "push",
        f"cold{cold_n} B/msg",
        "cold ×HTTP/2",
        "enc µs",
        "dec µs",
    ]
    rows = [cols]
    for name, r in results.items():
        x = r.get("x_reference") or {}
        bk = r["by_kind"]
        rows.append(
            [
                name,
                _fmt(r["bytes_per_msg"], ".1f"),
                _fmt(x.get("bytes_per_msg"), ".3f"),
                _fmt(bk.get("request", {}).get("bytes_per_msg"), ".1f"),
                _fmt(bk.get("response", {}).get("bytes_per_msg"), ".1f"),
                _fmt(bk.get("push", {}).get("bytes_per_msg"), ".1f"),
                _fmt(r["cold"]["bytes_per_msg"], ".1f"),
                _fmt(x.get("cold_bytes_per_msg"), ".3f"),
                f"{r['encode_us']['mean']:.1f} ({r['encode_us']['p50']:.1f})",
                f"{r['decode_us']['mean']:.1f} ({r['decode_us']['p50']:.1f})",
            ]
        )
    return table(rows)


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stress.wire_size",
        description="Bytes handed to TLS per message (and µs to encode/decode): MMTP vs. peers.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", help="JSONL corpus (default: generate with channel.corpus)")
    p.add_argument(
        "--sessions",
        type=int,
        default=DEFAULT_SESSIONS,
        help=f"sessions to generate when no --corpus (default {DEFAULT_SESSIONS})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"corpus seed when no --corpus (default {DEFAULT_SEED})",
    )
    p.add_argument(
        "--dict",
        default=None,
        help="MMTP dictionary (.mmtpdict) for the MMTP codecs (default: the packaged "
        "default dictionary; 'none' for no dictionary)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="the app's preset file (channel preset build) for the first MMTP row "
        "(default: the packaged wallet demo preset 2)",
    )
    p.add_argument(
        "--apps",
        default=None,
        help="comma-separated synthetic apps (channel/corpus_apps: wallet, social, ride, shop, "
        "fitness): for each, train a dictionary and build a preset on its training split "
        "(seed 1) and measure its test split (seed 2, --sessions sessions)",
    )
    p.add_argument(
        "--train-sessions",
        type=int,
        default=1250,
        help="training sessions per app with --apps (default 1250)",
    )
    p.add_argument(
        "--dict-size", type=int, default=16 * 1024, help="dictionary bytes with --apps (16 KiB)"
    )
    p.add_argument(
        "--push-fraction", type=float, default=0.10, help="push share with --apps (0.10)"
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results path")
    p.add_argument(
        "--cold",
        type=int,
        default=10,
        help="cold figure: first N messages of each session incl. setup (default 10)",
    )
    p.add_argument(
        "--codecs",
        default=None,
        help="comma-separated codec names to run (default: all, MMTP if available)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.cold < 1:
        p.error("--cold must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.apps:
        from stress.wire_apps import run_apps

        machine = machine_info()
        print(f"machine: {machine['platform']} | {machine['cpu']} | {machine['cores']} cores")
        apps = run_apps(args)
        doc = {
            "tool": "stress.wire_size",
            "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "args": vars(args),
            "machine": machine,
            "reference": REFERENCE,
            "apps": apps,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        return 0
    sessions, source = load_corpus(args)
    corpus = corpus_summary(sessions, source)
    codecs, warnings = select_codecs(args)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)

    results: dict[str, dict[str, Any]] = {}
    for codec in codecs:
        results[codec.name] = measure(codec, sessions, args.cold, progress=not args.quiet)
    add_ratios(results, REFERENCE)

    machine = machine_info()
    print(
        f"machine: {machine['platform']} | {machine['cpu']} | {machine['cores']} cores | "
        f"{machine['python']}"
    )
    print(
        f"corpus:  {source}: {corpus['sessions']} sessions, {corpus['messages']} messages "
        f"({', '.join(f'{k} {v}' for k, v in corpus['messages_by_kind'].items())}), "
        f"JSON body {corpus['json_body_bytes_per_msg']:.1f} B/msg"
    )
    print(
        f"bytes handed to TLS per message; cold = first {args.cold} messages of each session "
        f"incl. setup; ×HTTP/2 vs {REFERENCE}; µs = mean (p50)"
    )
    print(render_table(results, args.cold))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "tool": "stress.wire_size",
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "machine": machine,
        "corpus": corpus,
        "reference": REFERENCE,
        "warnings": warnings,
        "codecs": results,
    }
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
