"""µs per protocol operation: Python reference (channel/wire) beside the Rust twin (native/mmtp).

Five operations on a warm connection with preset 2 and dictionary 1, as the
gateway runs them: decode a typical REQUEST (``:op`` + 7 headers, 300-byte
JSON body, as in ``stress/frame_speed.py``), encode a RESPONSE, encode a PUSH,
send a push prepared once (context-free block) on one more connection, decode
an ACK of 16 ids. The Rust figures come from ``cargo run --release --example
bench`` (same operations, same data), run right after the Python ones.

    python -m stress.wire_native [--iterations 20000] [--out stress/results/wire_native.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from channel.default_dictionary import load_default_dictionary
from channel.default_presets import register_default_presets
from channel.wire import BodyCodec, Connection, DictionaryStore, Hello, Role
from channel.wire.events import RequestReceived
from stress.frame_speed import BODY, EPOCH_MS, OP, request_headers
from stress.machine import machine_info, machine_line

ROOT = Path(__file__).resolve().parent.parent
RESPONSE_BODY = (
    b'{"code":"SUCCESS","data":{"balance":"2881.25","currency":"CNY",'
    b'"yuebao":{"amount":"66398.07","yesterdayProfit":"0.29"}}}'
)
PUSH_BODY = (
    '{"type":"payment.received","title":"收款到账","amount":"128.50","currency":"CNY",'
    '"payer":"小明","tradeNo":"2026112622001400000000000001"}'
).encode()
PUSH_HEADERS = [("priority", "high"), ("collapse-key", "balance")]
OPERATIONS = [
    "decode_request",
    "encode_response",
    "encode_push",
    "prepared_push_one_more_connection",
    "decode_ack_16",
]


def _pair() -> tuple[Connection, Connection]:
    held = (load_default_dictionary(),)
    client = Connection(Role.CLIENT, body_codec=BodyCodec(DictionaryStore(held)))
    server = Connection(Role.SERVER, body_codec=BodyCodec(DictionaryStore(held)))
    client.send_hello(
        Hello(device_id="bench", preset_id=2, dictionaries=(1,), client_time_ms=EPOCH_MS)
    )
    server.receive_data(client.data_to_send())
    server.accept(server_time_ms=EPOCH_MS)
    client.receive_data(server.data_to_send())
    return client, server


def python_figures(iterations: int) -> dict[str, float]:
    register_default_presets()
    client, server = _pair()
    prepared = server.prepare_push(b"bc-0000000000000001", PUSH_BODY, PUSH_HEADERS)
    samples: dict[str, list[int]] = {name: [] for name in OPERATIONS}
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        for i in range(iterations + 500):
            warm = i >= 500
            client.send_request(OP, BODY, request_headers(i))
            data = client.data_to_send()
            t0 = clock()
            (event,) = server.receive_data(data)
            t1 = clock()
            assert isinstance(event, RequestReceived)
            headers = [("content-type", "application/json"), ("server-time", str(EPOCH_MS + i))]
            t2 = clock()
            server.send_response(event.stream_id, RESPONSE_BODY, headers)
            out = server.data_to_send()
            t3 = clock()
            client.receive_data(out)
            t4 = clock()
            server.send_push(f"m-{i:016}".encode(), PUSH_BODY, PUSH_HEADERS)
            out = server.data_to_send()
            t5 = clock()
            t6 = clock()
            server.send_prepared_push(prepared)
            out2 = server.data_to_send()
            t7 = clock()
            client.receive_data(out + out2)
            if i % 8:
                client.send_ack(*sorted(server.unacked_deliveries))
                server.receive_data(client.data_to_send())
            else:
                for _ in range(14):
                    server.send_push(b"m-extra", PUSH_BODY, PUSH_HEADERS)
                client.receive_data(server.data_to_send())
                client.send_ack(*sorted(server.unacked_deliveries))
                ack = client.data_to_send()
                t8 = clock()
                server.receive_data(ack)
                t9 = clock()
                if warm:
                    samples["decode_ack_16"].append(t9 - t8)
            if warm:
                samples["decode_request"].append(t1 - t0)
                samples["encode_response"].append(t3 - t2)
                samples["encode_push"].append(t5 - t4)
                samples["prepared_push_one_more_connection"].append(t7 - t6)
    finally:
        gc.enable()
    return {name: round(statistics.median(v) / 1000, 3) for name, v in samples.items()}


def rust_figures(iterations: int) -> dict[str, Any]:
    command = [
        "cargo",
        "run",
        "--release",
        "--quiet",
        "-p",
        "mmtp",
        "--example",
        "bench",
        "--",
        "--iterations",
        str(iterations),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path("stress/results/wire_native.json"))
    args = parser.parse_args(argv)
    print(f"[wire_native] Python reference, {args.iterations} iterations", file=sys.stderr)
    python = python_figures(args.iterations)
    print("[wire_native] Rust twin (cargo run --release --example bench)", file=sys.stderr)
    rust = rust_figures(args.iterations)
    print(f"machine: {machine_line()} | pid {os.getpid()}")
    print(f"p50 of {args.iterations} operations on one warm connection (preset 2, dictionary 1)")
    print(f"{'operation':<36} | {'Python µs':>9} | {'Rust µs':>8} | {'× faster':>8}")
    print("-" * 72)
    for name in OPERATIONS:
        py, rs = python[name], rust["us_p50"][name]
        print(f"{name:<36} | {py:>9.2f} | {rs:>8.3f} | {py / rs:>8.1f}")
    memory = rust["memory"]
    print(
        f"Rust: size_of::<Connection>() {memory['size_of_connection']} B; idle server connection "
        f"heap {memory['server_heap_bytes_per_idle_connection']:.0f} B; RSS per idle client+server "
        f"pair {memory['rss_bytes_per_idle_client_server_pair']:.0f} B ({memory['connections']})"
    )
    result = {
        "machine": machine_info(),
        "iterations": args.iterations,
        "python_us_p50": python,
        "rust": rust,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
