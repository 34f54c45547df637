"""Chaos and rolling upgrades on a local fleet: is every accepted push delivered once?

``python -m stress.fleet_chaos`` (root, Linux; HAProxy, Redis and Prometheus from
Debian) makes a fleet with ``channel.fleet`` (nodes in network namespaces behind
HAProxy, a 3+3 Redis Cluster) and runs, each on a fresh fleet:

* ``chaos``: devices (SDK clients through the balancer, two per user, half on a
  topic) and, with ``--boxes N``, MQTT boxes (QoS 1, persistent sessions, through
  the balancer's MQTT over TLS port; ``stress/fleet_boxes.py``) get device, user,
  topic and broadcast pushes posted through the
  balancer's API while the run ``kill -9``s a node and restarts it, restarts a
  Redis master (SIGTERM, same files), ``kill -9``s a second node and restarts it,
  fails a Redis master over to its replica (``CLUSTER FAILOVER``) and cuts a node
  off from Redis for a few seconds. Then every accepted device and user push must
  have reached its devices' apps exactly once, or be expired/failed with a receipt.
* ``upgrade``: devices call an RPC in a loop and get pushes while every node is
  replaced in turn (SIGTERM: drain and GOAWAY; the new process; back in rotation).
  Every call that raised (the SDK did not retry it transparently) is a failure.
* ``calm`` (the baseline, with ``--scenarios calm,...``): the chaos run's load
  with no faults.

Prints a table per scenario and writes ``stress/results/fleet_chaos.json``.
``tests/test_fleet.py`` runs both at a small size in the test suite; the figures
in ``docs/deploy.md`` come from the bar-size run::

    python -m stress.fleet_chaos --devices 200 --rate 400 --duration-s 60 --boxes 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from channel.fleet import Fleet, FleetSettings
from stress.fleet_boxes import box_totals
from stress.fleet_load import CallLoad, CallOutcome, Devices, EchoUpstream, PushLoad, settle
from stress.machine import machine_info, machine_line
from stress.report import table

RESULTS = Path(__file__).parent / "results" / "fleet_chaos.json"
KINDS = ("device", "user", "topic", "broadcast")


@dataclass
class Plan:
    devices: int = 40
    nodes: int = 3
    rate_per_s: float = 100.0
    duration_s: float = 30.0
    batch: int = 25
    partition_s: float = 4.0
    settle_s: float = 60.0
    engine: str = "native"
    #: Each device's pause between two RPC calls (upgrade scenario).
    call_pause_s: float = 0.2
    #: MQTT boxes beside the SDK devices (they take device and user pushes too).
    boxes: int = 0


@dataclass
class Report:
    scenario: str
    plan: dict[str, Any]
    pushes: dict[str, Any]
    calls: dict[str, Any] | None
    reconnects: int
    resumed: int
    faults: list[tuple[float, str]]
    wall_s: float
    out_of_rotation_s: list[float] = field(default_factory=list)
    #: The boxes' connection and copy counters (``fleet_boxes.box_totals``).
    boxes: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return int(self.pushes["lost"])

    @property
    def duplicates(self) -> int:
        return int(self.pushes["duplicates"]) + int(self.pushes["fanout_duplicates"])


# ------------------------------------------------------------------ faults


def chaos_faults(fleet: Fleet, plan: Plan) -> list[tuple[float, str, Callable[[], object]]]:
    """(seconds into the push phase, what, do it) for the chaos scenario."""
    d = plan.duration_s
    last = len(fleet.nodes) - 1
    redis = fleet.redis
    assert redis is not None

    def partition() -> None:
        fleet.partition_from_redis(last)
        time.sleep(plan.partition_s)
        fleet.heal(last)

    return [
        (0.10 * d, "kill -9 n0", lambda: fleet.kill_node(0)),
        (0.20 * d, "restart n0", lambda: fleet.start_node(0)),
        (0.30 * d, "restart a Redis master (SIGTERM, AOF)", redis.restart_master),
        (0.45 * d, "kill -9 n1", lambda: fleet.kill_node(1)),
        (0.55 * d, "restart n1", lambda: fleet.start_node(1)),
        (0.62 * d, "Redis master fails over to its replica", redis.failover),
        (0.72 * d, f"partition n{last} from Redis for {plan.partition_s:.0f} s", partition),
    ]


async def run_faults(
    faults: list[tuple[float, str, Callable[[], object]]], log: list[tuple[float, str]]
) -> None:
    started = time.monotonic()
    for at_s, what, action in faults:
        await asyncio.sleep(max(0.0, at_s - (time.monotonic() - started)))
        log.append((round(time.monotonic() - started, 1), what))
        await asyncio.to_thread(action)
        log.append((round(time.monotonic() - started, 1), f"done: {what}"))


# ---------------------------------------------------------------- scenarios


async def chaos(fleet: Fleet, plan: Plan, *, faults: bool = True) -> Report:
    started = time.monotonic()
    devices = Devices(fleet, plan.devices, plan.boxes)
    await devices.connect()
    load = PushLoad(fleet, devices, rate_per_s=plan.rate_per_s, batch=plan.batch)
    log: list[tuple[float, str]] = []
    try:
        async with aiohttp.ClientSession() as http:
            await devices.wait_known(fleet, http)
            jobs = [load.run(plan.duration_s, http)]
            if faults:
                jobs.append(run_faults(chaos_faults(fleet, plan), log))
            await asyncio.gather(*jobs)
            # Every node is up again: the devices that were cut off are back.
            await asyncio.to_thread(fleet.wait_in_rotation, {n.name for n in fleet.nodes}, 60)
            outcome = await settle(load, http, plan.settle_s)
    finally:
        reconnects, resumed = devices.reconnects()
        boxes = box_totals(list(devices.boxes.values()))
        await devices.close()
    return Report(
        "chaos" if faults else "calm",
        asdict(plan),
        asdict(outcome),
        None,
        reconnects,
        resumed,
        log,
        round(time.monotonic() - started, 1),
        boxes=boxes,
    )


async def upgrade(fleet: Fleet, plan: Plan) -> Report:
    started = time.monotonic()
    devices = Devices(fleet, plan.devices, plan.boxes)
    await devices.connect()
    load = PushLoad(fleet, devices, rate_per_s=plan.rate_per_s, batch=plan.batch)
    calls = CallLoad(devices, pause_s=plan.call_pause_s)
    log: list[tuple[float, str]] = []
    out: list[float] = []

    async def roll() -> None:
        # Spread over the load: a node every 0.8 * duration / nodes seconds from 0.1 * it,
        # so devices settle on the new processes between two upgrades.
        t0 = time.monotonic()
        step_s = 0.8 * plan.duration_s / len(fleet.nodes)
        for node in fleet.nodes:
            at_s = 0.1 * plan.duration_s + node.index * step_s
            await asyncio.sleep(max(0.0, at_s - (time.monotonic() - t0)))
            log.append((round(time.monotonic() - t0, 1), f"upgrade {node.name}"))
            out.append(round(await asyncio.to_thread(fleet.upgrade_node, node.index), 1))
            log.append((round(time.monotonic() - t0, 1), f"{node.name} back in rotation"))

    try:
        async with aiohttp.ClientSession() as http:
            await devices.wait_known(fleet, http)
            call_task = asyncio.create_task(calls.run())
            rolled = asyncio.create_task(roll())
            await load.run(plan.duration_s, http)
            await rolled  # the pushes keep a steady pace; the upgrade may take longer
            calls.stop()
            await call_task
            outcome = await settle(load, http, plan.settle_s)
    finally:
        reconnects, resumed = devices.reconnects()
        boxes = box_totals(list(devices.boxes.values()))
        await devices.close()
    return Report(
        "upgrade",
        asdict(plan),
        asdict(outcome),
        _calls(calls.outcome),
        reconnects,
        resumed,
        log,
        round(time.monotonic() - started, 1),
        out,
        boxes,
    )


def _calls(outcome: CallOutcome) -> dict[str, Any]:
    return {"ok": outcome.ok, "failed": outcome.failed, "errors": dict(outcome.errors)}


async def run_scenario(name: str, plan: Plan, directory: Path | None = None) -> Report:
    """One scenario on a fresh fleet (made and removed here)."""
    upstream = EchoUpstream()
    port = await upstream.start()
    settings = FleetSettings(
        nodes=plan.nodes,
        engine=plan.engine,
        prometheus=False,
        rpc_upstream_port=port,
        directory=directory,
        keep_dir=directory is not None,
        drain_timeout_s=10.0,
        log_level="warning",
    )
    try:
        fleet = await asyncio.to_thread(Fleet(settings).__enter__)
        try:
            if name == "upgrade":
                return await upgrade(fleet, plan)
            return await chaos(fleet, plan, faults=name == "chaos")
        finally:
            await asyncio.to_thread(fleet.close)
    finally:
        await upstream.stop()


# ---------------------------------------------------------------- printing


def summary(report: Report) -> str:
    p = report.pushes
    kinds = " / ".join(str(p["accepted_by_kind"].get(k, 0)) for k in KINDS)
    rows = [
        ["figure", "value"],
        ["pushes accepted (device / user / topic / broadcast)",
         f"{p['accepted_pushes']:,} ({kinds})"],
        ["deliveries expected (device + user pushes)", f"{p['expected_deliveries']:,}"],
        ["delivered to the app", f"{p['delivered']:,}"],
        ["lost", str(p["lost"])],
        ["duplicates reaching the app", str(report.duplicates)],
        ["expired / failed with a receipt", str(p["expired_or_failed"])],
        ["topic + broadcast deliveries (online devices)", f"{p['fanout_deliveries']:,}"],
        ["API requests (retried after no answer)", f"{p['api_requests']:,} ({p['api_retries']})"],
        ["device reconnects (sessions resumed)", f"{report.reconnects} ({report.resumed})"],
        ["seconds until the last delivery after the load", str(p["settle_s"])],
        ["wall seconds", str(report.wall_s)],
    ]  # fmt: skip
    if report.boxes:
        b = report.boxes
        rows += [
            ["MQTT boxes: deliveries expected / delivered",
             f"{p['box_expected']:,} / {p['box_delivered']:,}"],
            ["MQTT boxes: lost", str(p["box_lost"])],
            ["MQTT boxes: duplicates reaching the app (repeats without DUP)",
             str(p["box_duplicates"])],
            ["MQTT boxes: repeated copies on the wire (with DUP 1)",
             f"{b['wire_repeats']:,} ({b['repeats_with_dup']:,})"],
            ["MQTT boxes: reconnects (session present)",
             f"{b['reconnects']} ({b['sessions_present']})"],
        ]  # fmt: skip
    if report.calls is not None:
        rows.append(["RPC calls ok", f"{report.calls['ok']:,}"])
        rows.append(["RPC calls failed (not retried by the SDK)", str(report.calls["failed"])])
        rows.append(["seconds each node was out of rotation", str(report.out_of_rotation_s)])
    lines = [f"== {report.scenario}", table(rows), "faults (s into the load):"]
    lines += [f"  {at:6.1f}  {what}" for at, what in report.faults]
    if p["lost_examples"]:
        lines.append(f"lost, e.g.: {p['lost_examples']}")
    if report.calls and report.calls["errors"]:
        lines.append(f"call errors: {report.calls['errors']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="chaos,upgrade", help="chaos,upgrade,calm")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rate", type=float, default=400.0, help="pushes per second posted")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--call-pause-s", type=float, default=0.2, help="between a device's calls")
    parser.add_argument("--boxes", type=int, default=0, help="MQTT boxes beside the devices")
    parser.add_argument("--engine", default="native", choices=["native", "python"])
    parser.add_argument("--dir", type=Path, help="keep each fleet's logs under this directory")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    plan = Plan(
        devices=args.devices,
        nodes=args.nodes,
        rate_per_s=args.rate,
        duration_s=args.duration_s,
        batch=args.batch,
        engine=args.engine,
        call_pause_s=args.call_pause_s,
        boxes=args.boxes,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(machine_line(), file=sys.stderr)
    reports = []
    for name in args.scenarios.split(","):
        directory = args.dir / name if args.dir else None
        report = asyncio.run(run_scenario(name, plan, directory))
        print(summary(report), flush=True)
        reports.append(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine_info(),
                "argv": sys.argv[1:],
                "reports": [asdict(r) for r in reports],
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    failed = any(r.lost or r.duplicates or (r.calls and r.calls["failed"]) for r in reports)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
