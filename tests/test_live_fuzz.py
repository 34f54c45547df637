"""The live-socket fuzzer (``stress/fuzz``): its parts, its detectors, and a bounded run.

``test_live_fuzz_run_finds_nothing`` starts a real ``channel serve`` process
and sends it ~3,000 mutated frames from the stored SDK captures over real
TLS (seed 1, 8 connections at once); it fails on any finding: an error or a
traceback in the node's log, a hang, /healthz not answering, the node dying,
connections left behind. It prints the report either way. Longer runs:
``python -m stress.fuzz --frames 1000000`` (see stress/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from channel.security.devcert import ensure_dev_certificates
from channel.security.tls import client_ssl_context, server_ssl_context
from channel.wire import FrameType, ProtocolError
from channel.wire.frames import FrameParser, encode_frame
from stress.fuzz.__main__ import counters, findings_text, summary
from stress.fuzz.capture import capture_corpus, capture_gateway
from stress.fuzz.cases import Case, CaseBuilder, LaneSeed, Mode, Round
from stress.fuzz.driver import run_fuzz
from stress.fuzz.frames import FrameTracker, fresh_stream_ids, parse_frame, split_stream
from stress.fuzz.inner import default_codec
from stress.fuzz.link import Bounds, play_case
from stress.fuzz.mutate import Mutator
from stress.fuzz.nodewatch import LogWatch, held_connections
from stress.fuzz.results import FuzzOptions
from stress.fuzz.seeds import SeedCorpus

MAX_FRAME = 262_144


@pytest.fixture(scope="module")
def corpus() -> SeedCorpus:
    return SeedCorpus.load()


def lane(corpus: SeedCorpus) -> list[LaneSeed]:
    return [LaneSeed(s.label, tuple(fresh_stream_ids(list(s.client)))) for s in corpus.sessions]


# ------------------------------------------------------------------ the parts


def test_tracker_sees_frame_boundaries_as_the_gateways_parser_does(corpus: SeedCorpus) -> None:
    # The driver pads a stream that ends inside a frame, so its PING probe is read as a
    # frame: if the tracker disagreed with the real parser, a probe would go unanswered
    # and a healthy node would be reported as hanging.
    mutator = Mutator(corpus.donors(), default_codec())
    for n in range(3000):
        rng = random.Random(n)
        session = rng.choice(corpus.sessions)
        data = b"".join(mutator.mutate(rng, session.client, rng.randint(1, 4)).frames)
        data = data[: rng.randrange(len(data) + 1)]
        tracker = FrameTracker(MAX_FRAME)
        tracker.feed(data)
        parser = FrameParser(MAX_FRAME)
        if tracker.dead:
            with pytest.raises(ProtocolError):
                parser.feed(data)
            continue
        parser.feed(data + tracker.padding())
        assert parser.buffered_bytes == 0, n


def test_cases_are_a_function_of_the_run_seed_and_their_index(corpus: SeedCorpus) -> None:
    def builder(seed: int) -> CaseBuilder:
        mutator = Mutator(corpus.donors(), default_codec())
        return CaseBuilder(mutator, run_seed=seed, max_frame_size=MAX_FRAME)

    seeds = lane(corpus)
    first = [builder(1).build(i, seeds).to_json() for i in range(200)]
    assert first == [builder(1).build(i, seeds).to_json() for i in range(200)]
    assert first != [builder(2).build(i, seeds).to_json() for i in range(200)]
    again = Case.from_json(json.loads(json.dumps(first[7])))
    assert again.to_json() == first[7]


def test_fresh_stream_ids_give_each_request_its_own_id_and_cancels_follow() -> None:
    def request(stream_id: int) -> bytes:
        return encode_frame(FrameType.REQUEST, 0, bytes((stream_id,)) + b"body")

    cancel = encode_frame(FrameType.CANCEL, 0, b"\x01")
    frames = fresh_stream_ids([request(1), request(1), cancel, request(3)])
    ids = [parse_frame(f).payload[0] for f in frames]  # type: ignore[union-attr]
    assert ids == [1, 3, 3, 5]


def test_log_watch_flags_error_lines_tracebacks_and_fatal_errors(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    lines = [
        {"level": "info", "msg": "gateway listening"},
        {"level": "warning", "msg": "TLS input left unread (12 bytes)"},
        {
            "level": "error",
            "msg": "rpc handler failed",
            "exc": 'Traceback\n  File "a.py", line 3, in f\nValueError: x',
        },
        {"level": "info", "msg": "Fatal error on transport"},
    ]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    watch = LogWatch(log)
    bad = watch.poll()
    assert [line.msg for line in bad] == ["rpc handler failed", "Fatal error on transport"]
    assert bad[0].signature == "rpc handler failed | ValueError | a.py:# f"
    assert watch.warnings == {"TLS input left unread (# bytes)": 1}
    with log.open("a", encoding="utf-8") as handle:
        handle.write("Traceback (most recent call last):\n")  # written past the logger
    assert [line.text for line in watch.poll()] == ["Traceback (most recent call last):"]
    assert watch.poll() == []


def test_held_connections_counts_what_the_kernel_says_a_listener_holds() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert held_connections(port) == 0
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        assert held_connections(port) == 1
        client.close()
        assert held_connections(port) == 1  # CLOSE_WAIT: the peer left, we did not
        accepted.close()
        assert held_connections(port) == 0


@asynccontextmanager
async def tls_peer(tmp_path: Path, *, answer: bool) -> AsyncIterator[tuple[int, ssl.SSLContext]]:
    """A TLS server that reads everything and then either closes or says nothing at all."""
    certs = ensure_dev_certificates(tmp_path / "tls")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await reader.read(65536)
            if not answer:
                await reader.read()  # until the client gives up and goes away
        writer.close()

    server = await asyncio.start_server(
        handle, "127.0.0.1", 0, ssl=server_ssl_context(certs.cert, certs.key)
    )
    async with server:
        yield server.sockets[0].getsockname()[1], client_ssl_context(certs.ca_cert)


async def test_a_peer_that_neither_answers_nor_closes_is_a_hang(tmp_path: Path) -> None:
    probe = b"12345678"
    data = encode_frame(FrameType.PING, 0, probe)
    case = Case(0, "probe", Mode.RAW, b"", (Round((data,), (False,), probe, 1, 1, ()),))
    bounds = Bounds(connect_s=5.0, answer_s=0.5, stall_s=0.5)
    async with tls_peer(tmp_path, answer=False) as (port, context):
        silent = await play_case(case, port, context, bounds)
    async with tls_peer(tmp_path, answer=True) as (port, context):
        closing = await play_case(case, port, context, bounds)
    assert (silent.result, silent.detail) == (
        "hang",
        "round 1: neither the PONG of the probe nor close",
    )
    assert closing.result == "closed" and closing.mutated_read == 1


# ------------------------------------------------------------------ captures and the run


def test_capture_records_real_sdk_sessions_with_every_kind_of_client_frame() -> None:
    with capture_gateway() as node:
        corpus = asyncio.run(capture_corpus(node))
    kinds = corpus.frame_types()
    for kind in ("HELLO", "REQUEST", "ACK", "PING", "SETTINGS", "GOAWAY", "ERROR", "CANCEL"):
        assert kinds[kind] > 0, kinds
    assert kinds["RESPONSE"] > 0  # the device answered a backend's call
    credentials = {s.credential for s in corpus.sessions}
    assert credentials == {"token", "ticket", "ticket+token"}
    flags = [f[0] & 0x0F for s in corpus.sessions for f in s.client if f[0] >> 4 == 2]
    assert any(flag & 0x2 for flag in flags)  # a body compressed with the dictionary
    assert any(flag & 0x4 for flag in flags)  # typed header fields
    for session in corpus.sessions:
        assert split_stream(b"".join(session.client)) == list(session.client)
        hello = session.hello
        assert set(hello.token + hello.resume_ticket) <= {0}  # blanked in the corpus


def test_live_fuzz_run_finds_nothing() -> None:
    result = run_fuzz(FuzzOptions(frames=3000, seed=1, concurrency=8))
    report = "\n".join((summary(result), counters(result), findings_text(result)))
    print(report)
    stats = result.stats
    assert stats.mutated_frames >= 3000
    assert stats.results["refused"] == 0, "the lanes' credentials were refused"
    assert stats.rounds_answered > 100, "the fuzzer barely got past the handshakes"
    if result.findings:
        pytest.fail(report, pytrace=False)
