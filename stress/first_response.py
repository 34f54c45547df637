"""Bytes and round trips from TCP connect to the first RPC response: a full TLS
handshake, a resumed one, and a resumed one whose HELLO and request ride as TLS 1.3
early data; each with and without TCP Fast Open; the native engine (early data on),
and the Python engine beside it as the baseline (Python's ssl has no early data).

::

    python -m stress.first_response                  # 20 visits per mode, both engines
    python -m stress.first_response --visits 5 --engines native

A ``channel serve`` process per engine (``[tls] early_data_max_bytes = 16384``, TCP Fast
Open queue on, loopback) and one device, the Rust client
``native/engine/examples/first_response.rs`` (built here, release): ``channel.echo``
pipelined behind HELLO. It counts TLS bytes at the socket (TCP/IP headers not) until
the response is read, and round trips as a lazy client: after its first flight it
sends nothing until the server has been quiet for 300 ms, so each round trip counted
is one the response could not arrive without; TCP's handshake counts one unless the
SYN carried the ClientHello (checked in ``TCP_INFO``; each run listens on a loopback
address of its own, whose fast-open cookie other jobs' traffic cannot evict from the
kernel's small per-destination cache). One warm-up visit per mode
(not counted) gets the TLS ticket and the fast-open cookie. No times: the lazy client
waits on purpose, and a loopback round trip (~0.05 ms) says nothing of a phone's
(50-300 ms); round trips are what carries over.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from channel import fastopen
from stress.gateway_proc import GatewayProcess
from stress.machine import machine_info, machine_line
from stress.report import table

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "target" / "release" / "examples" / "first_response"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "first_response.json"
OP = "channel.echo"


def build_client() -> None:
    command = ["cargo", "build", "--release", "-q", "-p", "channel-engine"]
    subprocess.run([*command, "--example", "first_response"], cwd=ROOT, check=True)


def loopback_address() -> str:
    """A loopback address of this run's own: the kernel keeps TCP Fast Open cookies per
    destination in a small table, and other jobs' loopback churn evicts 127.0.0.1's."""
    rng = random.Random()
    return f"127.{rng.randrange(100, 250)}.{rng.randrange(1, 250)}.{rng.randrange(1, 250)}"


def measure(engine: str, visits: int) -> list[dict[str, Any]]:
    host = loopback_address()
    settings = {
        "server": {"engine": engine, "tcp_fastopen_queue": 4096, "host": host},
        "tls": {"early_data_max_bytes": 16384},
    }
    with (
        GatewayProcess(settings=settings, name=f"first-{engine}") as gw,
        tempfile.TemporaryDirectory() as tmp,
    ):
        token = Path(tmp) / "token"
        token.write_bytes(gw.token("probe", app_id="demo"))
        address = f"{host}:{gw.port}"
        command = [str(CLIENT), "measure", address, str(gw.ca_cert), "probe", str(token)]
        done = subprocess.run(
            [*command, str(visits), OP], capture_output=True, text=True, timeout=900
        )
    if done.returncode != 0:
        raise RuntimeError(f"first_response failed: {done.stderr}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    for row in rows:
        row["engine"] = engine
    return rows


def report(results: dict[str, Any]) -> str:
    header = ["engine / handshake", "TCP Fast Open", "resumed", "early data accepted"]
    rows = [[*header, "SYN carried data", "up B", "down B", "total B", "round trips"]]
    for row in results["rows"]:
        n = row["visits"]
        trips = str(row["round_trips"])
        if row["round_trips_max"] != row["round_trips"]:
            trips += f" (max {row['round_trips_max']})"
        rows.append(
            [
                f"{row['engine']} / {row['mode']}",
                "yes" if row["fast_open"] else "no",
                f"{row['resumed']}/{n}",
                f"{row['early_accepted']}/{n}",
                f"{row['syn_data']}/{n}",
                f"{row['bytes_out']:,}",
                f"{row['bytes_in']:,}",
                f"{row['bytes_out'] + row['bytes_in']:,}",
                trips,
            ]
        )
    return table(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--visits", type=int, default=20, help="measured visits per mode")
    p.add_argument("--engines", default="native,python")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    build_client()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "tcp_fastopen_sysctl": fastopen.sysctl_value(),
        "args": vars(args) | {"out": str(args.out)},
        "rows": [],
    }
    for engine in args.engines.split(","):
        results["rows"].extend(measure(engine, args.visits))
    print(machine_line())
    print(report(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
