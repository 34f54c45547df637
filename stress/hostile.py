"""One hostile device against a node: another device's PING latency with and without it.

A ``channel serve`` process on the Redis backend (a throwaway ``redis-server``);
a *pinger* device in its own process sends a PING every ``--ping-interval-ms`` and
fetches ``/healthz`` every 100 ms for the whole run; the main process first lets it
measure a quiet baseline, then attacks the node with each kind of hostile input in
turn from one more device and records which samples fell inside each attack:

* single frames, forty of each (``--frames``), 256 KiB apiece: a header block of
  HPACK table size updates; a SETTINGS of unknown pairs; a HELLO of unknown
  fields with a bad token; the longest Huffman-coded header block the length rule
  lets through; a legal REQUEST with a 16 KiB header list of 30-bit Huffman codes
  (the costliest legal frame); a legal REQUEST whose zstd body inflates to 1 MiB.
  A frame the node refuses ends its connection, so those come one connection each.
* floods of cheap frames for ``--flood-s`` seconds: 2-byte PINGs, and minimal
  REQUESTs on new stream ids (past the rate limit each costs an ERROR).

Each row prints the pinger's PING p50/p99 and ``/healthz`` p99 during the attack
next to the quiet baseline (delta and ratio), and the bar: the attack moves PING
p99 by at most 50 ms. The node's presence lease is sampled in Redis all along
(its smallest margin before lapsing is printed) and its node number must be the
same at the end: a node that froze past its lease would have rejoined under a new
one. Then a second node with ``max_connections_per_ip = 20`` gets 150 idle TCP
connections from one address (``--idle-tcp``): how many were closed at once and
how many at the handshake timeout.

    python -m stress.hostile [--frames 40] [--flood-s 10] [--ping-interval-ms 10]
                             [--idle-tcp 150] [--out stress/results/hostile.json]

See ``stress/README.md`` for figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import hpack
import uvloop

from channel.default_presets import register_default_presets
from channel.security.tls import client_ssl_context
from channel.wire import BodyCodec, Connection, HelloAccepted, PongReceived, Role
from channel.wire import messages as m
from channel.wire.frames import FrameType, encode_frame
from channel.wire.varint import encode_varint
from stress.gateway_proc import (
    GatewayProcess,
    MmtpDevice,
    TlsLink,
    connect_link,
    device_hello,
)
from stress.machine import machine_info, machine_line
from stress.report import fmt, table

#: The default max_frame_size: every single-frame attack fills it.
MAX_PAYLOAD = 256 * 1024
#: The bar of issue 10: an attack moves the other device's PING p99 by at most this.
BAR_P99_DELTA_MS = 50.0
NODE_ID = "hostile-node"
KEY_PREFIX = "ch"
OP_LITERAL = b"\x00\x03:op\x0bhostile.nop"  # literal without indexing: :op = hostile.nop


def log(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"[hostile] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ attack frames


def _request(stream_id: int, block: bytes, body: bytes = b"", compressed: bool = False) -> bytes:
    flags, tail = m.encode_tail(block, body, compressed)
    return encode_frame(FrameType.REQUEST, flags, encode_varint(stream_id) + tail)


def _fill(prefix_len: int) -> int:
    """Payload bytes left in a 256 KiB frame after ``prefix_len`` and ~8 of framing."""
    return MAX_PAYLOAD - prefix_len - 8


def size_update_block(_: int) -> bytes:
    # A REQUEST whose 256 KiB header block is HPACK "table size 0" updates, then :op.
    return _request(1, b"\x20" * _fill(len(OP_LITERAL)) + OP_LITERAL)


def settings_pairs(_: int) -> bytes:
    # 256 KiB of SETTINGS pairs with an unknown id (0x7f) and value 0.
    return encode_frame(FrameType.SETTINGS, 0, b"\x7f\x00" * (MAX_PAYLOAD // 2 - 8))


def hello_unknown_fields(_: int) -> bytes:
    # version 1, device id "x", a bad token, then unknown field 63 (varint 0) to 256 KiB.
    head = bytes.fromhex("0201") + b"\x05\x01x" + b"\x09\x03bad"
    return encode_frame(FrameType.HELLO, 0, head + b"\x7e\x00" * ((MAX_PAYLOAD - 64) // 2))


def huffman_block(_: int) -> bytes:
    # The longest block the length rule admits (4 x 16384 + 12): one Huffman string of
    # "0"s (5 bits each), decoded in full before its size is known; the rest is body.
    room = 4 * 16384 + 12 - len(OP_LITERAL) - 8
    coded = room // 5 * 5
    length = bytearray(hpack.hpack.encode_integer(coded, 7))
    length[0] |= 0x80
    block = OP_LITERAL + b"\x00\x01z" + bytes(length) + b"\x00" * coded
    return _request(1, block, b"\x00" * _fill(len(block) + 4))


_LEGAL_BLOCK: bytes | None = None


def legal_max_headers(i: int) -> bytes:
    # A legal REQUEST: header list just under 16 KiB, every octet a 30-bit Huffman
    # code (hpack Huffman-codes even where that is longer): ~60 KiB to decode.
    global _LEGAL_BLOCK
    if _LEGAL_BLOCK is None:
        value = "\n" * (16384 - 32 - 1 - (32 + 3 + len("hostile.nop")) - 64)
        fields = [(":op", "hostile.nop"), ("x", value)]
        _LEGAL_BLOCK = bytes(hpack.Encoder().encode(fields, huffman=True))
    return _request(2 * i + 1, _LEGAL_BLOCK, b"\x00" * _fill(len(_LEGAL_BLOCK) + 4))


_ZSTD_BODY: tuple[bytes, bool] | None = None


def zstd_max_body(i: int) -> bytes:
    # A legal REQUEST whose zstd body declares and inflates to max_body_size (1 MiB).
    global _ZSTD_BODY
    if _ZSTD_BODY is None:
        raw = (b'{"k":"' + bytes(range(48, 122)) + b'"},') * (1024 * 1024 // 80)
        raw = raw[: 1024 * 1024]
        encoded = BodyCodec().encode(raw, 0)
        _ZSTD_BODY = (encoded.data, encoded.compressed)
    data, compressed = _ZSTD_BODY
    return _request(2 * i + 1, OP_LITERAL, data, compressed)


def ping_flood(_: int) -> bytes:
    return encode_frame(FrameType.PING, 0, b"") * (MAX_PAYLOAD // 2)


def request_flood(i: int) -> bytes:
    # Minimal REQUESTs on fresh stream ids: past the burst each one costs an ERROR.
    frames = []
    size = 0
    stream_id = 1 + 2 * (i * 40_000)
    while size < MAX_PAYLOAD:
        frame = _request(stream_id, OP_LITERAL)
        frames.append(frame)
        size += len(frame)
        stream_id += 2
    return b"".join(frames)


@dataclass(frozen=True)
class Attack:
    name: str
    what: str
    unit: Callable[[int], bytes]
    #: The node refuses the frame and closes: one connection per frame.
    per_connection: bool
    #: Sent after HELLO_ACK (False: the frame is the HELLO itself).
    authenticated: bool = True
    #: Sent for --flood-s seconds rather than --frames times.
    flood: bool = False


ATTACKS = [
    Attack("hpack-size-updates", "REQUEST, 256 KiB of HPACK size updates", size_update_block, True),
    Attack("settings-pairs", "SETTINGS, 256 KiB of unknown pairs", settings_pairs, True),
    Attack(
        "hello-unknown-fields",
        "HELLO, 256 KiB of unknown fields, bad token",
        hello_unknown_fields,
        True,
        authenticated=False,
    ),
    Attack("hpack-huffman-64k", "REQUEST, 64 KiB Huffman string (refused)", huffman_block, True),
    Attack(
        "legal-16k-headers", "REQUEST, legal 16 KiB list of 30-bit codes", legal_max_headers, False
    ),
    Attack("legal-zstd-1mib", "REQUEST, legal zstd body of 1 MiB", zstd_max_body, False),
    Attack("ping-flood", "2-byte PINGs, 256 KiB per write", ping_flood, False, flood=True),
    Attack("request-flood", "minimal REQUESTs, new stream ids", request_flood, False, flood=True),
]


# -------------------------------------------------------------------- attacker


class AttackLink(TlsLink):
    """A device that (optionally) completes HELLO, then writes raw bytes.

    What the node sends back is decrypted (in C) and only searched for the PONG
    that marks the end of an attack: no MMTP parsing on the attacker's side.
    """

    def __init__(self, context: Any, hello: Any | None) -> None:
        super().__init__(context)
        loop = asyncio.get_running_loop()
        self.conn = Connection(Role.CLIENT)
        self._hello = hello
        self.accepted: asyncio.Future[None] = loop.create_future()
        self.marker_seen: asyncio.Future[None] = loop.create_future()
        self._marker = b""
        self._tail = b""

    def tls_ready(self) -> None:
        assert self.ssl is not None
        if self._hello is None:
            self.accepted.set_result(None)
            return
        self.conn.send_hello(self._hello)
        self.ssl.write(self.conn.data_to_send())

    def app_data_received(self, data: bytes) -> None:
        if not self.accepted.done():
            try:
                events = self.conn.receive_data(data)
            except Exception as exc:
                self.link_failed(exc)
                return
            if any(isinstance(e, HelloAccepted) for e in events):
                self.accepted.set_result(None)
            return
        if self._marker and not self.marker_seen.done():
            window = self._tail + data
            if self._marker in window:
                self.marker_seen.set_result(None)
            self._tail = window[-len(self._marker) :]

    def expect_pong(self, payload: bytes) -> bytes:
        """A PING whose PONG ``marker_seen`` waits for (the node read everything before it)."""
        self._marker = encode_frame(FrameType.PONG, 0, payload)
        return encode_frame(FrameType.PING, 0, payload)

    def link_failed(self, exc: BaseException) -> None:
        for future in (self.accepted, self.marker_seen):
            if not future.done():
                future.set_exception(exc)
                future.exception()


async def _attack_link(port: int, ca: Path, token: bytes | None, device_id: str) -> AttackLink:
    hello = device_hello(device_id, token=token) if token is not None else None
    link = AttackLink(client_ssl_context(ca), hello)
    await connect_link(link, port)
    await asyncio.wait_for(link.accepted, 10)
    return link


async def run_attack(
    attack: Attack, gateway: GatewayProcess, frames: int, flood_s: float
) -> dict[str, Any]:
    """Send one kind of attack; return what was sent and its window on the monotonic clock."""
    port, ca = gateway.port, gateway.ca_cert
    started = time.monotonic()
    sent = refused = 0
    if attack.per_connection:
        for i in range(frames):
            device_id = f"attacker-{attack.name}-{i}"
            token = gateway.token(device_id) if attack.authenticated else None
            link = await _attack_link(port, ca, token, device_id)
            # The frame, then a PING: the node either refuses the frame and closes, or
            # (a node without the rules) decodes it and answers the PING after it.
            link.send_app(attack.unit(i) + link.expect_pong(b"the-end!"))
            sent += 1
            await asyncio.wait(
                [link.closed, link.marker_seen], timeout=60, return_when=asyncio.FIRST_COMPLETED
            )
            marker = link.marker_seen
            if not (marker.done() and not marker.cancelled() and marker.exception() is None):
                refused += 1
            link.close()
    else:
        link = await _attack_link(port, ca, gateway.token("attacker"), "attacker")
        deadline = started + flood_s
        i = 0
        while (i < frames and not attack.flood) or (attack.flood and time.monotonic() < deadline):
            link.send_app(attack.unit(i))
            sent += 1
            i += 1
            # Keep at most ~1 MiB queued: the node reads at the pace its budget allows.
            while link.transport is not None and link.transport.get_write_buffer_size() > 1 << 20:
                if attack.flood and time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.005)
            if link.transport is None:
                break
        if not attack.flood:
            # The PONG to this PING comes once the node has read every frame before it.
            link.send_app(link.expect_pong(b"the-end!"))
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(link.marker_seen, 120)
        # A flood ends at --flood-s: what the node has not read yet goes with the link.
        link.abort()
    ended = time.monotonic()
    return {
        "attack": attack.name,
        "what": attack.what,
        "units_sent": sent,
        "connections_refused": refused if attack.per_connection else None,
        "window": [started, ended],
        "seconds": round(ended - started, 3),
    }


# ---------------------------------------------------------------------- pinger


def pinger_main(
    pipe: Pipe, port: int, admin_port: int, ca: str, token: bytes, interval_s: float
) -> None:
    """Child process: PING every ``interval_s`` and GET /healthz every 100 ms until told."""
    register_default_presets()
    uvloop.run(_pinger(pipe, port, admin_port, Path(ca), token, interval_s))


async def _pinger(
    pipe: Pipe, port: int, admin_port: int, ca: Path, token: bytes, interval_s: float
) -> None:
    loop = asyncio.get_running_loop()
    sent: dict[bytes, float] = {}
    pings: list[tuple[float, float]] = []  # (sent at, rtt s)
    health: list[tuple[float, float]] = []

    def on_event(event: object) -> None:
        if isinstance(event, PongReceived):
            at = sent.pop(event.payload, None)
            if at is not None:
                pings.append((at, time.monotonic() - at))

    device = MmtpDevice(
        client_ssl_context(ca), device_hello("pinger", token=token), on_event=on_event
    )
    await connect_link(device, port)
    await asyncio.wait_for(device.ack, 10)
    pipe.send("ready")
    stop = asyncio.Event()
    loop.add_reader(pipe.fileno(), stop.set)

    async def ping_forever() -> None:
        counter = 0
        while not stop.is_set():
            payload = counter.to_bytes(8, "big")
            counter += 1
            sent[payload] = time.monotonic()
            device.conn.send_ping(payload)
            device.send_app(device.conn.data_to_send())
            await asyncio.sleep(interval_s)

    async def health_forever() -> None:
        request = f"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1:{admin_port}\r\n\r\n".encode()
        while not stop.is_set():
            at = time.monotonic()
            with contextlib.suppress(OSError, TimeoutError):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", admin_port), 30
                )
                writer.write(request)
                await asyncio.wait_for(reader.read(), 30)
                writer.close()
                health.append((at, time.monotonic() - at))
            await asyncio.sleep(0.1)

    tasks = [loop.create_task(ping_forever()), loop.create_task(health_forever())]
    await stop.wait()
    loop.remove_reader(pipe.fileno())
    pipe.recv()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lost = len(sent)
    pipe.send({"pings": pings, "health": health, "unanswered": lost})
    device.close()


# ----------------------------------------------------------------------- lease


class LeaseWatch:
    """Samples the node's lease in Redis: its number, and how long before it would lapse."""

    def __init__(self, redis_url: str) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.from_url(redis_url)
        self._key = f"{KEY_PREFIX}:{{nodes}}"
        self.min_margin_ms: float | None = None
        self.samples = 0

    async def numbers(self) -> dict[int, str]:
        raw = await self._client.hgetall(self._key)
        return {int(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items()}

    async def node_numbers(self) -> list[int]:
        return sorted(n for n, v in (await self.numbers()).items() if v.startswith(NODE_ID + "|"))

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            seconds, micros = await self._client.time()
            now_ms = seconds * 1000 + micros // 1000
            for value in (await self.numbers()).values():
                node_id, _, lease_end = value.rpartition("|")
                if node_id == NODE_ID:
                    margin = int(lease_end) - now_ms
                    if self.min_margin_ms is None or margin < self.min_margin_ms:
                        self.min_margin_ms = margin
            self.samples += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)

    async def close(self) -> None:
        await self._client.aclose()


# ----------------------------------------------------------------------- stats


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def window_stats(
    samples: Sequence[tuple[float, float]], start: float, end: float
) -> dict[str, Any]:
    rtts = [rtt * 1000 for at, rtt in samples if start <= at <= end]
    return {
        "n": len(rtts),
        "p50_ms": percentile(rtts, 0.50),
        "p99_ms": percentile(rtts, 0.99),
        "max_ms": max(rtts) if rtts else None,
    }


# ---------------------------------------------------------------- idle TCP flood


async def idle_tcp(
    count: int, per_ip: int, handshake_timeout_s: float, quiet: bool
) -> dict[str, Any]:
    """``count`` idle TCP connections from one address to a node with ``per_ip``."""
    settings: dict[str, dict[str, Any]] = {
        "server": {
            "max_connections_per_ip": per_ip,
            "handshake_timeout_s": handshake_timeout_s,
        },
        "api": {"enabled": False},
    }
    with GatewayProcess(settings=settings, name="idle-tcp") as gateway:
        log(quiet, f"idle TCP: {count} connections, max_connections_per_ip {per_ip}")
        started = time.monotonic()

        async def one() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            opened = time.monotonic()
            try:
                await asyncio.wait_for(reader.read(), handshake_timeout_s + 30)
            except (ConnectionError, TimeoutError):
                pass
            finally:
                writer.close()
            return time.monotonic() - opened

        lifetimes = await asyncio.gather(*(one() for _ in range(count)))
        total_s = time.monotonic() - started
    at_once = sum(1 for s in lifetimes if s < 1.0)
    at_timeout = sum(1 for s in lifetimes if 1.0 <= s <= handshake_timeout_s + 2)
    later = count - at_once - at_timeout
    return {
        "connections": count,
        "max_connections_per_ip": per_ip,
        "handshake_timeout_s": handshake_timeout_s,
        "closed_within_1s": at_once,
        "closed_at_handshake_timeout": at_timeout,
        "open_longer": later,
        "slowest_refused_ms": round(max((s for s in lifetimes if s < 1.0), default=0) * 1000, 1),
        "kept_s": [round(s, 2) for s in sorted(lifetimes)[-per_ip:]],
        "all_closed_after_s": round(total_s, 2),
        "bar_met": at_once >= count - per_ip and later == 0,
    }


# -------------------------------------------------------------------------- run


async def attack_node(args: argparse.Namespace) -> dict[str, Any]:
    from tests.redis_servers import RedisServer

    register_default_presets()
    redis = RedisServer(Path(tempfile.mkdtemp(prefix="channel-hostile-redis-")))
    redis.start()
    limits: dict[str, Any] = {}
    if args.no_budget:
        limits["device_input_cpu_ms_per_s"] = 0
    settings: dict[str, dict[str, Any]] = {
        "server": {"node_id": NODE_ID},
        "push": {"backend": "redis", "redis_url": redis.url, "key_prefix": KEY_PREFIX},
        "limits": limits,
    }
    try:
        with GatewayProcess(settings=settings, name="hostile") as gateway:
            return await _attack_node(args, gateway, redis.url)
    finally:
        redis.stop()
        shutil.rmtree(redis.directory, ignore_errors=True)


async def _attack_node(
    args: argparse.Namespace, gateway: GatewayProcess, redis_url: str
) -> dict[str, Any]:
    quiet = args.quiet
    lease = LeaseWatch(redis_url)
    numbers_before = await lease.node_numbers()
    stop_watch = asyncio.Event()
    watcher = asyncio.get_running_loop().create_task(lease.watch(stop_watch))
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    pinger = ctx.Process(
        target=pinger_main,
        args=(
            child,
            gateway.port,
            gateway.admin_port,
            str(gateway.ca_cert),
            gateway.token("pinger"),
            args.ping_interval_ms / 1000,
        ),
    )
    pinger.start()
    cpu_start = gateway.cpu_s()
    loop = asyncio.get_running_loop()
    try:
        ready = await loop.run_in_executor(None, lambda: parent.poll(30) and parent.recv())
        if ready != "ready":
            raise RuntimeError("the pinger did not connect")
        quiet_start = time.monotonic()
        log(quiet, f"baseline: {args.baseline_s} s")
        await asyncio.sleep(args.baseline_s)
        windows: list[dict[str, Any]] = [
            {"attack": "baseline", "what": "no attack", "window": [quiet_start, time.monotonic()]}
        ]
        for attack in ATTACKS:
            if args.attacks and attack.name not in args.attacks:
                continue
            log(quiet, f"attack {attack.name}: {attack.what}")
            windows.append(await run_attack(attack, gateway, args.frames, args.flood_s))
            await asyncio.sleep(args.settle_s)  # let the node settle between kinds
        quiet_start = time.monotonic()
        await asyncio.sleep(args.baseline_s)
        windows.append(
            {
                "attack": "baseline-after",
                "what": "no attack",
                "window": [quiet_start, time.monotonic()],
            }
        )
        parent.send("stop")
        result = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
    finally:
        pinger.join(30)
        if pinger.is_alive():
            pinger.terminate()
        stop_watch.set()
        await watcher
    numbers_after = await lease.node_numbers()
    await lease.close()
    cpu_s = gateway.cpu_s() - cpu_start
    rejoined = "rejoined" in gateway.log_tail(2000)
    for window in windows:
        start, end = window["window"]
        window["ping"] = window_stats(result["pings"], start, end)
        window["healthz"] = window_stats(result["health"], start, end)
    return {
        "windows": windows,
        "unanswered_pings": result["unanswered"],
        "gateway_cpu_s": round(cpu_s, 2),
        "lease": {
            "node_numbers_before": numbers_before,
            "node_numbers_after": numbers_after,
            "intact": numbers_before == numbers_after and len(numbers_after) == 1 and not rejoined,
            "min_margin_ms": lease.min_margin_ms,
            "samples": lease.samples,
        },
    }


def report(doc: dict[str, Any]) -> str:
    lines = [f"machine: {machine_line()}"]
    node = doc.get("node")
    if node:
        windows = node["windows"]
        base = windows[0]["ping"]
        rows = [
            [
                "window",
                "frames",
                "s",
                "PING n",
                "p50 ms",
                "p99 ms",
                "Δp99 ms",
                "×p99",
                "/healthz p99 ms",
                "bar",
            ]
        ]
        for window in windows:
            ping = window["ping"]
            delta = None
            ratio = None
            if ping["p99_ms"] is not None and base["p99_ms"]:
                delta = ping["p99_ms"] - base["p99_ms"]
                ratio = ping["p99_ms"] / base["p99_ms"]
            baseline = window["attack"].startswith("baseline")
            window["p99_delta_ms"] = delta
            window["bar_met"] = (
                None if baseline else (delta is not None and delta <= BAR_P99_DELTA_MS)
            )
            rows.append(
                [
                    window["attack"],
                    str(window.get("units_sent", "-")),
                    fmt(window.get("seconds"), ".1f"),
                    str(ping["n"]),
                    fmt(ping["p50_ms"], ".1f"),
                    fmt(ping["p99_ms"], ".1f"),
                    "-" if baseline else fmt(delta, "+.1f"),
                    "-" if baseline else fmt(ratio, ".2f"),
                    fmt(window["healthz"]["p99_ms"], ".1f"),
                    "-" if baseline else ("ok" if window["bar_met"] else "FAIL"),
                ]
            )
        lines.append(
            f"PING every {doc['args']['ping_interval_ms']} ms from another device; "
            f"bar: Δp99 ≤ {BAR_P99_DELTA_MS:.0f} ms; budget "
            f"{'off' if doc['args']['no_budget'] else 'on'}"
        )
        lines.append(table(rows))
        lease = node["lease"]
        lines.append(
            f"presence lease: node number {lease['node_numbers_before']} -> "
            f"{lease['node_numbers_after']} ({'intact' if lease['intact'] else 'LOST'}), "
            f"smallest margin before lapsing {fmt(lease['min_margin_ms'], '.0f')} ms "
            f"({lease['samples']} samples); gateway CPU {node['gateway_cpu_s']} s; "
            f"unanswered PINGs {node['unanswered_pings']}"
        )
    idle = doc.get("idle_tcp")
    if idle:
        lines.append(
            f"idle TCP: {idle['connections']} from one address, max_connections_per_ip "
            f"{idle['max_connections_per_ip']}: {idle['closed_within_1s']} closed at once "
            f"(slowest {idle['slowest_refused_ms']} ms), {idle['closed_at_handshake_timeout']} "
            f"at the {idle['handshake_timeout_s']:.0f} s handshake timeout, "
            f"{idle['open_longer']} longer: bar {'met' if idle['bar_met'] else 'NOT met'}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stress.hostile", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--frames", type=int, default=40, help="frames of each single-frame kind")
    parser.add_argument("--flood-s", type=float, default=10.0, help="seconds of each flood")
    parser.add_argument("--baseline-s", type=float, default=5.0, help="quiet seconds before/after")
    parser.add_argument("--ping-interval-ms", type=float, default=10.0)
    parser.add_argument("--settle-s", type=float, default=1.0, help="quiet seconds between kinds")
    parser.add_argument(
        "--attacks",
        nargs="*",
        default=[],
        help=f"only these ({', '.join(a.name for a in ATTACKS)})",
    )
    parser.add_argument(
        "--no-budget", action="store_true", help="run the node with device_input_cpu_ms_per_s = 0"
    )
    parser.add_argument("--idle-tcp", type=int, default=150, help="idle TCP connections (0: skip)")
    parser.add_argument(
        "--per-ip", type=int, default=20, help="max_connections_per_ip for --idle-tcp"
    )
    parser.add_argument("--handshake-timeout-s", type=float, default=10.0)
    parser.add_argument("--skip-node", action="store_true", help="only the idle TCP part")
    parser.add_argument("--out", type=Path, default=Path("stress/results/hostile.json"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    doc: dict[str, Any] = {
        "tool": "stress.hostile",
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    if not args.skip_node:
        doc["node"] = uvloop.run(attack_node(args))
    if args.idle_tcp:
        doc["idle_tcp"] = uvloop.run(
            idle_tcp(args.idle_tcp, args.per_ip, args.handshake_timeout_s, args.quiet)
        )
    print(report(doc))
    windows = doc.get("node", {}).get("windows", [])
    doc["bars_met"] = (
        all(w.get("bar_met") is not False for w in windows)
        and doc.get("node", {}).get("lease", {}).get("intact", True)
        and doc.get("idle_tcp", {}).get("bar_met", True)
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
