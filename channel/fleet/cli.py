"""``channel fleet up``: a local fleet (namespaces, HAProxy, Redis Cluster, Prometheus)
until Ctrl-C; ``channel fleet reap``: remove what killed runs left behind."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1


def _up(args: argparse.Namespace) -> int:
    from channel.fleet import Fleet, FleetError, FleetSettings

    settings = FleetSettings(
        nodes=args.nodes,
        engine=args.engine,
        prometheus=not args.no_prometheus,
        directory=Path(args.dir) if args.dir else None,
        keep_dir=args.keep,
        drain_timeout_s=args.drain_timeout_s,
    )
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        if not started.is_set() and not stop.is_set():
            # Still starting: unwind now (the with-block tears down what exists). Only
            # once: a second Ctrl-C must not interrupt that teardown.
            stop.set()
            raise KeyboardInterrupt
        stop.set()

    started = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    try:
        with Fleet(settings) as fleet:
            started.set()
            print(fleet.describe(), flush=True)
            print("Ctrl-C stops the fleet and removes everything it made.", file=sys.stderr)
            if args.for_s is not None:
                stop.wait(args.for_s)
            else:
                stop.wait()
            print("stopping...", file=sys.stderr, flush=True)
    except FleetError as exc:
        print(f"channel fleet: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; everything made so far was removed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _reap(args: argparse.Namespace) -> int:
    from channel.fleet.netns import reap_stale

    reaped = reap_stale()
    print(f"removed {len(reaped)} stale fleet(s): {' '.join(reaped) or '-'}")
    return EXIT_OK


def add_fleet_commands(subparsers: Any) -> None:
    group = subparsers.add_parser(
        "fleet",
        help="run a local fleet: nodes in network namespaces behind HAProxy (root, Linux)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "A fleet on this machine, the way operators run one: N gateway nodes, each a\n"
            "host of its own (a network namespace with its own address on a bridge), HAProxy\n"
            "in front for MMTP devices and MQTT boxes (TLS passed through, PROXY protocol v2\n"
            "to the nodes), a Redis Cluster\n"
            "(3 masters, 3 replicas) and Prometheus scraping every node with the alert rules\n"
            "of deploy/prometheus/alerts.yml. Everything it makes is removed when it stops\n"
            "(Ctrl-C, SIGTERM, a failure). Needs root, iproute2, haproxy, redis-server and\n"
            "prometheus (scripts/test.sh installs them) and a checkout (deploy/fleet/)."
        ),
        epilog=(
            "examples:\n"
            "  sudo channel fleet up --nodes 3\n"
            "  sudo channel fleet up --nodes 4 --for-s 600 --keep --dir /tmp/fleet\n"
            "  sudo channel fleet reap        # after a run was killed with SIGKILL\n"
            "  python -m stress.fleet_chaos   # the chaos and rolling-upgrade runs"
        ),
    )
    commands = group.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    up = commands.add_parser("up", help="start a fleet and keep it until Ctrl-C")
    up.add_argument("--nodes", type=int, default=3, help="gateway nodes (default 3)")
    up.add_argument(
        "--engine", choices=["native", "python"], default="native",
        help="the nodes' engine (default native)",
    )  # fmt: skip
    up.add_argument("--no-prometheus", action="store_true", help="skip Prometheus")
    up.add_argument("--dir", help="where logs and state go (default: a temporary directory)")
    up.add_argument("--keep", action="store_true", help="keep --dir's files after stopping")
    up.add_argument("--drain-timeout-s", type=float, default=10.0, help="nodes' drain timeout")
    up.add_argument("--for-s", type=float, help="stop by itself after this many seconds")
    up.set_defaults(handler=_up)
    reap = commands.add_parser("reap", help="remove namespaces and bridges of dead runs")
    reap.set_defaults(handler=_reap)
