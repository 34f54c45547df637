"""``python -m stress.compare``: Channel and Mosquitto, the same scenarios, one run.

See ``stress/README.md`` ("compare") for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from stress.compare import plots, report, scenarios
from stress.compare.procs import Reaper, build_loadgen
from stress.compare.scenarios import Ctx, TargetSpec
from stress.compare.servers import mosquitto_version, mqtt_front_available, native_engine_selectable
from stress.machine import machine_info, machine_line

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "compare"
#: Connections one process may hold here (20,000 descriptors, a few for itself).
MAX_CONNECTIONS = 19_900
SCENARIOS = ("idle", "fanout", "unicast", "redis", "handshakes", "rpc")


def log(text: str) -> None:
    print(f"[compare] {text}", file=sys.stderr, flush=True)


def targets(args: argparse.Namespace, skipped: list[str]) -> list[TargetSpec]:
    out = [TargetSpec("mosquitto", "mosquitto")] if not args.no_mosquitto else []
    for engine in args.engines:
        if engine == "native" and not native_engine_selectable():
            skipped.append(
                "channel-native: `[server] engine` is not in channel.config yet "
                "(the native engine is not wired into `channel serve`)"
            )
            continue
        out.append(TargetSpec(f"channel-{engine}", "channel", engine, "mmtp"))
        if args.mqtt:
            if mqtt_front_available():
                out.append(TargetSpec(f"channel-{engine}-mqtt", "channel", engine, "mqtt"))
            else:
                skipped.append(
                    f"channel-{engine}-mqtt: Channel has no MQTT listener yet "
                    "(no [mqtt] section in channel.config): MQTT scenarios skipped"
                )
    return out


def plan(spec: TargetSpec, wanted: set[str]) -> list[str]:
    """Which scenarios a target runs: RPC and Redis are Channel's; MQTT boxes on
    Channel run idle memory and the push scenarios."""
    if spec.kind == "mosquitto":
        allowed = {"idle", "fanout", "unicast", "handshakes"}
    elif spec.protocol == "mqtt":
        allowed = {"idle", "fanout", "unicast"}
    else:
        allowed = set(SCENARIOS)
    return [s for s in SCENARIOS if s in wanted and s in allowed]


def run_target(ctx: Ctx, spec: TargetSpec, wanted: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"target": dataclass_dict(spec)}
    if "idle" in wanted:
        doc["idle"] = scenarios.idle(ctx, spec)
    if "fanout" in wanted or "unicast" in wanted:
        doc["push"] = scenarios.fanout_and_unicast(
            ctx, spec, do_fanout="fanout" in wanted, do_unicast="unicast" in wanted
        )
    if "redis" in wanted:
        doc["redis"] = scenarios.unicast_redis(ctx, spec)
    if "handshakes" in wanted:
        doc["handshakes"] = scenarios.handshakes(ctx, spec)
    if "rpc" in wanted:
        doc["rpc"] = scenarios.rpc(ctx, spec)
    return doc


def dataclass_dict(spec: TargetSpec) -> dict[str, str]:
    return {"name": spec.name, "kind": spec.kind, "engine": spec.engine, "protocol": spec.protocol}


def run(args: argparse.Namespace) -> dict[str, Any]:
    build_loadgen()
    skipped: list[str] = []
    specs = targets(args, skipped)
    for line in skipped:
        log(f"skipped {line}")
    cpus = sorted(os.sched_getaffinity(0))
    pinned = args.pin and len(cpus) >= 2
    doc: dict[str, Any] = {
        "tool": "stress.compare",
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info() | {"mosquitto": mosquitto_version()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "layout": {
            "server_cpus": cpus[:1] if pinned else None,
            "client_cpus": cpus[1:] if pinned else None,
        },
        "skipped": skipped,
        # Other work on the machine moves wall-clock figures (rates, latency) far more
        # than CPU-second ones: the load average says how busy it was.
        "load_average": {"start": os.getloadavg()},
        "results": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="channel-compare-"))
    started = time.monotonic()
    try:
        with Reaper() as reaper:
            from channel.security.devcert import ensure_dev_certificates

            certs = ensure_dev_certificates(workdir / "tls")
            ctx = Ctx(
                reaper,
                workdir,
                args,
                doc["layout"]["server_cpus"],
                doc["layout"]["client_cpus"],
                Path(certs.cert),
                Path(certs.key),
                log,
            )
            for spec in specs:
                wanted = plan(spec, set(args.scenarios))
                log(f"{spec.name}: {', '.join(wanted)}")
                doc["results"][spec.name] = run_target(ctx, spec, wanted)
            before = doc["results"].get("mosquitto")
            if args.bracket and before is not None:
                # The VM's speed drifts over a run: Mosquitto again after Channel, and
                # Channel compared with the mean of the two.
                again = TargetSpec("mosquitto-after", "mosquitto")
                wanted = plan(again, set(args.scenarios))
                log(f"mosquitto (again, after Channel): {', '.join(wanted)}")
                after = run_target(ctx, again, wanted)
                after["target"] = before["target"]
                doc["brackets"] = {"before": before, "after": after}
                doc["results"]["mosquitto"] = report.mean_doc(before, after)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    doc["seconds"] = time.monotonic() - started
    doc["load_average"]["end"] = os.getloadavg()
    doc["ratios"] = report.ratios(doc["results"])
    doc["bars"] = report.bars(doc["results"])
    return doc


def write(doc: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    common = {k: doc[k] for k in ("tool", "generated_at", "machine", "args", "layout", "skipped")}
    for scenario in SCENARIOS:
        key = {"fanout": "push", "unicast": "push"}.get(scenario, scenario)
        part = {name: r[key] for name, r in doc["results"].items() if key in r}
        if part:
            path = out / f"{scenario}.json"
            path.write_text(
                json.dumps(common | {scenario: part}, indent=2) + "\n", encoding="utf-8"
            )
            paths.append(path)
    path = out / "compare.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    paths.append(path)
    return paths + plots.write(out, doc["results"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stress.compare",
        description="Channel and Mosquitto 2.x side by side, the same scenarios in one run, "
        "native clients; prints ratios and writes JSON and PNG plots.",
    )
    csv = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    p.add_argument(
        "--engines",
        type=csv,
        default=["native", "python"],
        help="Channel engines to run (native,python); one not available is skipped",
    )
    p.add_argument(
        "--scenarios", type=csv, default=list(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}"
    )
    p.add_argument(
        "--no-mqtt", dest="mqtt", action="store_false", help="leave Channel's MQTT listener out"
    )
    p.add_argument("--no-mosquitto", action="store_true", help="Channel only (no ratios)")
    p.add_argument("--idle-devices", type=int, default=19_900, help="idle connections (19,900)")
    p.add_argument(
        "--fanout-devices",
        type=int,
        default=10_000,
        help="devices for broadcast and unicast (10,000)",
    )
    p.add_argument(
        "--per-client",
        type=int,
        default=10_000,
        help="connections per client process (10,000; 20,000 descriptors each)",
    )
    p.add_argument("--rounds", type=int, default=10, help="broadcasts, one at a time (10)")
    p.add_argument("--idle-window-s", type=float, default=2.0)
    p.add_argument("--fanout-timeout-s", type=float, default=60.0)
    p.add_argument("--seconds", type=float, default=10.0, help="measured s per unicast mode (10)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="load before measuring (2)")
    p.add_argument("--drain-s", type=float, default=10.0, help="wait for stragglers (10)")
    p.add_argument("--batch", type=int, default=200, help="Channel: pushes per API request (200)")
    p.add_argument(
        "--device-dictionary",
        choices=("none", "default"),
        default="none",
        help="Channel's MMTP devices hold no dictionary (none; bodies are compressed without "
        "one) or the packaged one, as SDK devices do (default)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="Channel: API requests in flight (8)")
    p.add_argument(
        "--mqtt-inflight",
        type=int,
        default=0,
        help="Mosquitto: unacked PUBLISHes in flight (default batch x concurrency)",
    )
    p.add_argument("--churn-s", type=float, default=10.0, help="seconds per handshake run (10)")
    p.add_argument("--workers", type=int, default=16, help="handshake loops in flight (16)")
    p.add_argument(
        "--token-cache-entries",
        type=int,
        default=None,
        help="Channel's [auth] token_cache_entries in the handshake runs (default: the "
        "product's; 0: every full handshake verifies its token's signature)",
    )
    p.add_argument("--rpc-calls", type=int, default=2000, help="calls per RPC round (2000)")
    p.add_argument("--rpc-rounds", type=int, default=2, help="direct/gateway alternations (2)")
    p.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin servers to the first CPU and clients to the others",
    )
    p.add_argument(
        "--bracket",
        action="store_true",
        help="run Mosquitto again after Channel and compare with the mean of its two runs "
        "(the VM's speed drifts during a run; the drift is printed)",
    )
    p.add_argument(
        "--channel-setting",
        dest="channel_settings",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a Channel setting for every Channel server of the run, as its config file "
        "would set it (VALUE read as JSON, else as a string); e.g. "
        "compression.compress_min_saving=0. Repeatable",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for JSON and PNGs")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=60.0,
        help="stop (and end every process started) after this long (60)",
    )
    args = p.parse_args(argv)
    bad = set(args.scenarios) - set(SCENARIOS)
    if bad:
        p.error(f"--scenarios: unknown {sorted(bad)}")
    if set(args.engines) - {"native", "python"}:
        p.error("--engines: native and/or python")
    # One server process and one client process each hold at most 20,000 descriptors.
    for name in ("idle_devices", "fanout_devices", "per_client"):
        if not 1 <= getattr(args, name) <= MAX_CONNECTIONS:
            p.error(f"--{name.replace('_', '-')}: 1..{MAX_CONNECTIONS:,}")
    if args.max_minutes <= 0:
        p.error("--max-minutes must be positive")
    args.mqtt_inflight = args.mqtt_inflight or args.batch * args.concurrency
    try:
        args.channel_settings = parse_settings(args.channel_settings)
    except ValueError as exc:
        p.error(f"--channel-setting: {exc}")
    return args


def parse_settings(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["compression.compress_min_saving=0"]`` -> ``{"compression": {...: 0}}``."""
    settings: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        section, dot, key = name.partition(".")
        if not (sep and dot and section and key):
            raise ValueError(f"{item!r} is not SECTION.KEY=VALUE")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        settings.setdefault(section, {})[key] = value
    return settings


class RunTimeout(Exception):
    """``--max-minutes`` passed."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise RunTimeout("--max-minutes passed: stopping")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Raised wherever the run is; the Reaper ends every process on the way out.
    # (Ctrl-C too, also when started where SIGINT was ignored, as in a background job.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(args.max_minutes * 60)))
    try:
        doc = run(args)
    finally:
        signal.alarm(0)
    print(f"machine: {machine_line()} | {doc['machine']['mosquitto']}")
    layout = doc["layout"]
    print(
        f"servers on CPUs {layout['server_cpus']}, clients on {layout['client_cpus']}; "
        f"TLS 1.3 on loopback; {doc['seconds']:.0f} s; load average "
        f"{doc['load_average']['start'][0]:.1f} -> {doc['load_average']['end'][0]:.1f}"
    )
    for line in doc["skipped"]:
        print(f"skipped: {line}")
    if "brackets" in doc:
        print("mosquitto ran before and after Channel; its columns are the mean of the two")
        for figure, change in report.drift(doc["brackets"]["before"], doc["brackets"]["after"]):
            print(f"  drift, after / before: {figure}: {change:.2f}")
    print(report.render(doc["results"]))
    for path in write(doc, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
