"""µs to encode and decode one typical request frame, MMTP variants against HTTP/2.

The frame: ``:op`` + 7 app headers (trace-id, ts, sign, locale, biz-scene,
content-type, app-scene) and a 300-byte JSON body, on a warm connection (HPACK
tables already hold the repeating fields; ids, timestamps and the signature are
new on every request, as in real traffic). Each variant runs interleaved with
the others in the same process, so the ratios hold on a noisy shared machine.

    python -m stress.frame_speed [--iterations 20000] [--out stress/results/frame_speed.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events

from channel.default_dictionary import load_default_dictionary
from channel.default_presets import register_default_presets
from channel.wire import BodyCodec, Connection, DictionaryStore, Hello, Role
from channel.wire.headers import HeaderDecoder, HeaderEncoder
from stress.machine import machine_info, machine_line

BODY = json.dumps(
    {
        "userId": "2088031882206968",
        "assetTypes": ["BALANCE", "YUEBAO", "HUABEI"],
        "currency": "CNY",
        "extParams": {"chInfo": "ch_home", "spm": "a90.b856.c22", "sourceAppId": "20000056"},
        "page": {"size": 20, "cursor": "eyJvIjoyMH0"},
        "filter": {"from": "2026-11-01", "to": "2026-11-26", "types": ["TRANSFER", "PAY"]},
        "client": {"lat": "31.2304", "lng": "121.4737", "net": "4G"},
    },
    separators=(",", ":"),
).encode()
OP = "bill.list.query"
EPOCH_MS = 1_764_000_000_000


def request_headers(i: int) -> list[tuple[str, str]]:
    return [
        ("trace-id", f"{i:032x}"),
        ("ts", str(EPOCH_MS + 37 * i)),
        ("sign", f"{i * 7919:064x}"),
        ("locale", "zh-CN"),
        ("biz-scene", "home"),
        ("content-type", "application/json"),
        ("app-scene", "bill-list"),
    ]


class MmtpVariant:
    """A client/server pair; ``step`` encodes one request and decodes it."""

    def __init__(self, name: str, preset: int, dictionary: bool, typed: bool) -> None:
        self.name = name
        held = (load_default_dictionary(),) if dictionary else ()
        self.client = Connection(
            Role.CLIENT, body_codec=BodyCodec(DictionaryStore(held)), send_typed_headers=typed
        )
        self.server = Connection(Role.SERVER, body_codec=BodyCodec(DictionaryStore(held)))
        self.client.send_hello(
            Hello(
                device_id="bench",
                preset_id=preset,
                dictionaries=tuple(d.dict_id for d in held),
                client_time_ms=EPOCH_MS,
            )
        )
        self.server.receive_data(self.client.data_to_send())
        self.server.accept(server_time_ms=EPOCH_MS)
        self.client.receive_data(self.server.data_to_send())
        self.frame_bytes = 0

    def step(self, i: int, clock: Callable[[], int]) -> tuple[int, int]:
        headers = request_headers(i)
        t0 = clock()
        self.client.send_request(OP, BODY, headers)
        data = self.client.data_to_send()
        t1 = clock()
        (event,) = self.server.receive_data(data)
        t2 = clock()
        self.frame_bytes = len(data)
        # Close the stream outside the timed part.
        self.server.send_response(event.stream_id)  # type: ignore[attr-defined]
        self.client.receive_data(self.server.data_to_send())
        return t1 - t0, t2 - t1


class HpackOnlyVariant:
    """Just the header block of the MMTP variant without typed fields (where time goes)."""

    def __init__(self) -> None:
        self.name = "hpack block only (8 headers, preset 2)"
        self.encoder = HeaderEncoder(2)
        self.decoder = HeaderDecoder(2, 4096, 16384)
        self.frame_bytes = 0

    def step(self, i: int, clock: Callable[[], int]) -> tuple[int, int]:
        headers = [(":op", OP), *request_headers(i)]
        t0 = clock()
        block = self.encoder.encode(headers)
        t1 = clock()
        self.decoder.decode(block)
        t2 = clock()
        self.frame_bytes = len(block)
        return t1 - t0, t2 - t1


class Http2Variant:
    """HTTP/2 with h2 (HPACK + 2 frames), gzip-free body: the cheapest HTTP/2 can be."""

    def __init__(self) -> None:
        self.name = "HTTP/2 (h2, HEADERS+DATA)"
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.server.receive_data(self.client.data_to_send())
        self.client.receive_data(self.server.data_to_send())
        self.server.receive_data(self.client.data_to_send())
        self.frame_bytes = 0

    def step(self, i: int, clock: Callable[[], int]) -> tuple[int, int]:
        headers = [
            (":method", "POST"),
            (":path", f"/rpc/{OP}"),
            (":scheme", "https"),
            (":authority", "api.example.com"),
            *request_headers(i),
        ]
        t0 = clock()
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, headers)
        self.client.send_data(stream_id, BODY, end_stream=True)
        data = self.client.data_to_send()
        t1 = clock()
        events = self.server.receive_data(data)
        t2 = clock()
        self.frame_bytes = len(data)
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.server.acknowledge_received_data(event.flow_controlled_length, stream_id)
        self.server.send_headers(stream_id, [(":status", "200")], end_stream=True)
        self.client.receive_data(self.server.data_to_send())
        self.server.receive_data(self.client.data_to_send())
        return t1 - t0, t2 - t1


def run(iterations: int) -> dict[str, Any]:
    register_default_presets()
    variants: list[Any] = [
        MmtpVariant("MMTP preset 2 + dict + typed", 2, True, True),
        MmtpVariant("MMTP preset 2 + dict, no typed", 2, True, False),
        MmtpVariant("MMTP no preset, no dict, no typed", 0, False, False),
        HpackOnlyVariant(),
        Http2Variant(),
    ]
    samples: dict[str, tuple[list[int], list[int]]] = {v.name: ([], []) for v in variants}
    clock = time.perf_counter_ns
    for i in range(200):  # warm-up: tables, compressors, caches
        for variant in variants:
            variant.step(i, clock)
    gc.collect()
    gc.disable()
    try:
        for i in range(200, 200 + iterations):
            for variant in variants:
                enc, dec = variant.step(i, clock)
                samples[variant.name][0].append(enc)
                samples[variant.name][1].append(dec)
            if i % 5000 == 0:
                print(f"[frame_speed] {i - 200}/{iterations}", file=sys.stderr, flush=True)
    finally:
        gc.enable()
    http2 = variants[-1].name
    http2_total = statistics.median(samples[http2][0]) + statistics.median(samples[http2][1])
    rows = []
    for variant in variants:
        enc, dec = samples[variant.name]
        enc_us, dec_us = statistics.median(enc) / 1000, statistics.median(dec) / 1000
        rows.append(
            {
                "variant": variant.name,
                "bytes": variant.frame_bytes,
                "encode_us_p50": round(enc_us, 2),
                "decode_us_p50": round(dec_us, 2),
                "total_us_p50": round(enc_us + dec_us, 2),
                "x_http2": round((enc_us + dec_us) * 1000 / http2_total, 3),
            }
        )
    return {
        "machine": machine_info(),
        "iterations": iterations,
        "body_bytes": len(BODY),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=Path("stress/results/frame_speed.json"))
    args = parser.parse_args(argv)
    result = run(args.iterations)
    print(f"machine: {machine_line()} | pid {os.getpid()}")
    print(f"request: :op + 7 headers, {result['body_bytes']} B JSON body; p50 of {args.iterations}")
    print(
        f"{'variant':<40} | {'bytes':>5} | {'enc µs':>7} | {'dec µs':>7} | {'total':>7} | ×HTTP/2"
    )
    print("-" * 90)
    for row in result["rows"]:
        print(
            f"{row['variant']:<40} | {row['bytes']:>5} | {row['encode_us_p50']:>7.2f} | "
            f"{row['decode_us_p50']:>7.2f} | {row['total_us_p50']:>7.2f} | {row['x_http2']:.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
