"""Python per routed RPC, in process: the router's fast path against a task per call.

``python -m stress.rpc_router [--calls 3000] [--rounds 5]``

An ``RpcRouter`` in this process (uvloop, as the gateway) calls ``stress.rpc``'s
aiohttp echo upstream, run in a process of its own, one call at a time with
``stress.rpc``'s body and seven app headers. Two ways, alternating per round:

- ``task``: as the session serves a call the fast path does not take: a task
  per call awaiting ``RpcRouter.handle()``;
- ``fast``: ``RpcRouter.start_call()``, the answer from the connection's callback.

Per call: this process's CPU (``time.process_time``, the lowest round of each way:
the one least disturbed by other work on the machine), the median wall time from a
call's start to its answer (what the loop adds shows here: the fast path writes the
request at once and answers from the connection's callback) and the Python function
calls (cProfile, one extra round each, deterministic; builtins count too).
``--ways task`` runs on a checkout without the fast path, as the baseline. No TLS, MMTP or engine:
only the Python between a request and its answer, which the gateway's Python
thread spends per call on top of the engine's work. The fast path must take every
call after the first (asserted), or the figures would mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as _dt
import json
import multiprocessing
import pstats
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvloop

from channel.rpc import DeviceContext, RoutingConfig, RpcRequest, RpcResponse, RpcRouter
from stress.machine import machine_info, machine_line
from stress.report import write_json
from stress.rpc import upstream_main

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "rpc_router.json"
OP = "bench.echo"
BODY = json.dumps({"account": "acct-000042", "items": list(range(40)), "note": "x" * 120}).encode()
HEADERS = (
    ("content-type", "application/json"),
    ("accept", "application/json"),
    ("x-request-id", "0f8e6a4c-2b1d-4e8f-9a7b-3c5d6e7f8a9b"),
    ("x-app-build", "8123"),
    ("x-locale", "en-GB"),
    ("x-timezone", "Europe/London"),
    ("x-feature-flags", "a,b,c"),
)
WAYS = ("task", "fast")


def _request() -> RpcRequest:
    device = DeviceContext(
        device_id="dev-1",
        user_id="user-1",
        app_id="wallet",
        app_version="8.12.3",
        platform="android",
        zone="hz",
        scopes=("rpc",),
        session_id="sess-1",
    )
    return RpcRequest(OP, HEADERS, BODY, device)


async def _task_calls(router: RpcRouter, request: RpcRequest, calls: int) -> list[float]:
    """Each call's wall time in µs, from the call's start to its answer."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    took: list[float] = []

    async def serve() -> RpcResponse:
        return await router.handle(request)

    for _ in range(calls):
        started = clock()
        response = await loop.create_task(serve())
        took.append(clock() - started)
        assert response.status == 0, response
    return took


async def _fast_calls(router: RpcRouter, request: RpcRequest, calls: int) -> list[float]:
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    took: list[float] = []
    for _ in range(calls):
        answer: asyncio.Future[RpcResponse] = loop.create_future()
        started = clock()
        if router.start_call(request, answer.set_result) is None:
            raise AssertionError("the fast path did not take a call")
        response = await answer
        took.append(clock() - started)
        assert response.status == 0, response
    return took


async def _measure(url: str, calls: int, rounds: int, ways: Sequence[str] = WAYS) -> dict[str, Any]:
    config = RoutingConfig.from_dict(
        {
            "clusters": {"bench": {"endpoints": [url], "timeout_ms": 5000}},
            "routes": [{"match": "bench.", "cluster": "bench"}],
        }
    )
    router = RpcRouter(config)
    await router.start()
    request = _request()
    run = {"task": _task_calls, "fast": _fast_calls}
    try:
        await _task_calls(router, request, 200)  # opens the connection, warms caches
        cpu_us: dict[str, list[float]] = {way: [] for way in ways}
        wall_s: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(rounds):
            for way in ways:
                started = time.process_time()
                wall_s[way] += await run[way](router, request, calls)
                cpu_us[way].append((time.process_time() - started) / calls * 1e6)
        py_calls: dict[str, float] = {}
        for way in ways:
            profile = cProfile.Profile()
            profile.enable()
            await run[way](router, request, calls)
            profile.disable()
            py_calls[way] = pstats.Stats(profile).total_calls / calls  # type: ignore[attr-defined]
    finally:
        await router.close()
    return {
        way: {
            "cpu_us_per_call_rounds": [round(v, 1) for v in cpu_us[way]],
            "cpu_us_per_call_min": round(min(cpu_us[way]), 1),
            "python_calls_per_call": round(py_calls[way], 1),
            "wall_us_p50": round(statistics.median(wall_s[way]) * 1e6, 1),
        }
        for way in ways
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    parent, child = multiprocessing.Pipe()
    upstream = multiprocessing.Process(target=upstream_main, args=(child,), daemon=True)
    upstream.start()
    try:
        url = parent.recv()["url"]
        results = uvloop.run(_measure(url, args.calls, args.rounds, args.ways.split(",")))
    finally:
        parent.send("stop")
        upstream.join(timeout=10)
        if upstream.is_alive():
            upstream.kill()
    return {
        "tool": "stress.rpc_router",
        "generated_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "args": {"calls": args.calls, "rounds": args.rounds, "ways": args.ways},
        "machine": machine_info(),
        "results": results,
    }


def render(doc: dict[str, Any]) -> str:
    results = doc["results"]
    lines = [
        "way  | CPU µs per call (min of rounds) | rounds                | Python calls per call"
        " | wall µs p50",
        "-----+---------------------------------+-----------------------+----------------------"
        "+------------",
    ]
    for way in results:
        r = results[way]
        rounds = ", ".join(f"{v:.0f}" for v in r["cpu_us_per_call_rounds"])
        lines.append(
            f"{way:<4} | {r['cpu_us_per_call_min']:>31.1f} | {rounds:<21} | "
            f"{r['python_calls_per_call']:>20.1f} | {r['wall_us_p50']:>10.1f}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stress.rpc_router",
        description="Python CPU and calls per routed RPC: the fast path against a task per call.",
    )
    p.add_argument("--calls", type=int, default=3000, help="calls per round and way")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per way")
    p.add_argument(
        "--ways",
        default=",".join(WAYS),
        help="task,fast (default) or task alone (a checkout without the fast path)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    p.add_argument("--quiet", action="store_true", help="no effect: it prints no progress")
    args = p.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        p.error("--calls and --rounds must be positive")
    if not set(args.ways.split(",")) <= set(WAYS):
        p.error("--ways: task and/or fast")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run(args)
    print(f"machine: {machine_line()}")
    print(render(doc))
    write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
