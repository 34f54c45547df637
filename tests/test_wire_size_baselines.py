"""Wire-size baselines (stress/baselines) and the stress.wire_size driver."""
# ruff: noqa: E402  (the repo root goes on sys.path before ``stress`` is imported)

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

# ``stress`` is not part of the installed package; make the repo root importable.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from stress import wire_size
from stress.baselines import baseline_codecs
from stress.baselines import http2 as http2_mod
from stress.baselines.common import (
    Msg,
    RoundTripError,
    SessionIdentity,
    WireCodec,
    WireSession,
    merge_headers,
)
from stress.baselines.http2 import Http2Codec
from stress.baselines.mqtt import (
    PUBLISH,
    decode_remaining_length,
    encode_remaining_length,
    publish_qos1,
    read_packet,
)
from stress.baselines.websocket import WebSocketCodec

BASELINE_NAMES = [c.name for c in baseline_codecs()]


def _hdrs(trace: str, ts: int, extra: list[list[str]] | None = None) -> list[list[str]]:
    return [["trace-id", trace], ["ts", str(ts)], *(extra or [])]


def _fixture_corpus() -> list[Msg]:
    """Two sessions, 11 messages: pairs, pushes, an error status, unicode, a >16 KiB body, an
    app header that is also an HTTP header (content-type)."""
    rng = random.Random(7)
    ts = 1_764_000_000_000
    big = {"items": [{"id": i, "memo": rng.randbytes(8).hex(), "名称": "咖啡"} for i in range(700)]}
    s0: list[Msg] = [
        {
            "session": 0,
            "kind": "request",
            "op": "account.balance.get",
            "headers": _hdrs("a" * 32, ts, [["content-type", "application/json; charset=utf-8"]]),
            "body": {"currency": "CNY"},
        },
        {
            "session": 0,
            "kind": "response",
            "op": "account.balance.get",
            "status": 0,
            "headers": _hdrs("a" * 32, ts + 40),
            "body": {"code": "SUCCESS", "data": {"balance": "1024.50", "名字": "小明"}},
        },
        {
            "session": 0,
            "kind": "push",
            "message_id": "65a1b2c3d4e5f60718293a4b",
            "topic": "bill.reminder",
            "headers": [["ts", str(ts + 900)], ["priority", "high"]],
            "body": {"title": "账单提醒", "amount": "88.00"},
        },
        {
            "session": 0,
            "kind": "request",
            "op": "bill.list",
            "headers": _hdrs("b" * 32, ts + 2000),
            "body": {"page": 1, "size": 700},
        },
        {
            "session": 0,
            "kind": "response",
            "op": "bill.list",
            "status": 0,
            "headers": _hdrs("b" * 32, ts + 2100),
            "body": big,
        },
        {
            "session": 0,
            "kind": "request",
            "op": "coupon.claim",
            "headers": _hdrs("c" * 32, ts + 5000),
            "body": {"couponId": "CP123"},
        },
        {
            "session": 0,
            "kind": "response",
            "op": "coupon.claim",
            "status": 9,
            "headers": [*_hdrs("c" * 32, ts + 5100), ["retry-after", "5"]],
            "body": {"code": "RATE_LIMITED", "msg": "gateway"},
        },
    ]
    s1: list[Msg] = [
        {
            "session": 1,
            "kind": "push",
            "message_id": "65a1b2c3d4e5f60718293a4c",
            "topic": "payment.received",
            "headers": [["ts", str(ts)]],
            "body": {"amount": "12.00", "from": "Lily"},
        },
        {
            "session": 1,
            "kind": "request",
            "op": "config.get",
            "headers": _hdrs("d" * 32, ts + 100),
            "body": {},
        },
        {
            "session": 1,
            "kind": "response",
            "op": "config.get",
            "status": 0,
            "headers": _hdrs("d" * 32, ts + 150),
            "body": {"code": "SUCCESS", "data": {"flags": [1, 2, 3]}},
        },
        {
            "session": 1,
            "kind": "push",
            "message_id": "65a1b2c3d4e5f60718293a4d",
            "topic": "marketing",
            "headers": [],
            "body": {"text": "x" * 300},
        },
    ]
    return s0 + s1


def _sessions() -> list[list[Msg]]:
    return list(wire_size.group_sessions(_fixture_corpus()))


def _run(session: WireSession, msgs: list[Msg]) -> list[int]:
    sizes = []
    for m in msgs:
        data = session.encode(m)
        session.decode(data, m)
        sizes.append(len(data))
    return sizes


@pytest.fixture(params=BASELINE_NAMES)
def codec(request: pytest.FixtureRequest) -> WireCodec:
    return next(c for c in baseline_codecs() if c.name == request.param)


def test_group_sessions_splits_contiguous_runs() -> None:
    sessions = _sessions()
    assert [len(s) for s in sessions] == [7, 4]
    assert {m["session"] for m in sessions[1]} == {1}


def test_baseline_round_trips_fixture_corpus(codec: WireCodec) -> None:
    for msgs in _sessions():
        session = codec.new_session()
        assert isinstance(session, WireSession)
        assert session.setup_bytes() > 0
        sizes = _run(session, msgs)
        assert all(n > 0 for n in sizes)


def test_baseline_decode_detects_a_wrong_body(codec: WireCodec) -> None:
    msg = _fixture_corpus()[0]
    session = codec.new_session()
    data = session.encode(msg)
    wrong = copy.deepcopy(msg)
    wrong["body"]["currency"] = "USD"
    with pytest.raises(RoundTripError):
        session.decode(data, wrong)


def test_baseline_handles_a_response_without_request(codec: WireCodec) -> None:
    resp = _fixture_corpus()[1]
    session = codec.new_session()
    assert len(_run(session, [resp, resp])) == 2


def test_identity_is_deterministic_and_realistic() -> None:
    a, b = SessionIdentity.for_index(3), SessionIdentity.for_index(3)
    assert a == b
    assert a != SessionIdentity.for_index(4)
    assert 160 <= len(a.token) <= 180
    assert a.token.count(".") == 2
    names = [k for k, _ in a.http_headers()]
    assert names == [
        "authorization",
        "x-device-id",
        "x-app-id",
        "x-app-version",
        "x-platform",
        "user-agent",
    ]


def test_merge_headers_app_header_replaces_protocol_header() -> None:
    base = [("content-type", "application/json"), ("accept", "*/*")]
    merged = merge_headers(base, [("content-type", "text/plain"), ("trace-id", "t")])
    assert merged == [("content-type", "text/plain"), ("accept", "*/*"), ("trace-id", "t")]
    with pytest.raises(ValueError):
        merge_headers(base, [("content-length", "3")])


def _twice(codec: WireCodec) -> tuple[int, int]:
    msg = _fixture_corpus()[0]
    session = codec.new_session()
    first, second = _run(session, [msg, msg])
    return first, second


def test_http2_hpack_makes_repeated_request_smaller() -> None:
    first, second = _twice(Http2Codec())
    assert second < first
    # h2's default never-indexes ``authorization``; indexing it (OkHttp, Chromium) saves more.
    _, second_noidx = _twice(Http2Codec(index_authorization=False))
    assert second_noidx > second + 100


def test_http2_long_session_does_not_stall_on_flow_control(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http2_mod, "WINDOW", 70_000)
    rng = random.Random(1)
    session = Http2Codec().new_session()
    pushes: list[Msg] = [
        {
            "session": 0,
            "kind": "push",
            "message_id": f"{i:024x}",
            "topic": "t",
            "headers": [],
            "body": {"blob": rng.randbytes(2048).hex()},
        }
        for i in range(60)
    ]
    pairs: list[Msg] = []
    for i in range(10):
        body = {"blob": rng.randbytes(4096).hex()}
        pairs.append({"kind": "request", "op": f"op{i}", "headers": [], "body": body})
        pairs.append({"kind": "response", "op": f"op{i}", "status": 0, "headers": [], "body": body})
    sizes = _run(session, pushes + pairs)  # ~240 KB (gzip'd hex) through a 70 KB window
    assert sum(sizes) > 3 * 70_000
    assert sum(sizes[:60]) > 2 * 70_000  # the push stream alone outgrows its window


def test_permessage_deflate_makes_repeated_request_smaller() -> None:
    first, second = _twice(WebSocketCodec(deflate=True))
    assert second < first
    plain_first, plain_second = _twice(WebSocketCodec(deflate=False))
    assert plain_first == plain_second  # no state without the extension
    assert second < plain_second


def test_websocket_client_frames_are_masked() -> None:
    msg = _fixture_corpus()[0]
    req = WebSocketCodec().new_session().encode(msg)
    assert req[1] & 0x80  # MASK bit on client -> server
    resp = WebSocketCodec().new_session().encode(_fixture_corpus()[1])
    assert not resp[1] & 0x80


@pytest.mark.parametrize(
    ("n", "width"),
    [
        (0, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (2_097_151, 3),
        (2_097_152, 4),
        (268_435_455, 4),
    ],
)
def test_mqtt_remaining_length_edges(n: int, width: int) -> None:
    enc = encode_remaining_length(n)
    assert len(enc) == width
    assert decode_remaining_length(b"\x30" + enc + b"rest", 1) == (n, 1 + width)


def test_mqtt_remaining_length_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_remaining_length(268_435_456)
    with pytest.raises(ValueError):
        encode_remaining_length(-1)
    with pytest.raises(ValueError):
        decode_remaining_length(b"\xff\xff\xff\xff\x01", 0)
    with pytest.raises(ValueError):
        decode_remaining_length(b"\x80", 0)


@pytest.mark.parametrize("remaining", [127, 128, 16_383, 16_384])
def test_mqtt_publish_at_remaining_length_edges(remaining: int) -> None:
    topic = "rpc/req/x"
    payload = b"p" * (remaining - (2 + len(topic)) - 2)
    pkt = publish_qos1(topic, 513, payload)
    ptype, flags, body, end = read_packet(pkt, 0)
    assert (ptype, flags, len(body), end) == (PUBLISH, 0b0010, remaining, len(pkt))
    assert body.endswith(payload)
    assert len(pkt) == 1 + len(encode_remaining_length(remaining)) + remaining


def _write_corpus(path: Path) -> Path:
    path.write_text(
        "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in _fixture_corpus()),
        encoding="utf-8",
    )
    return path


def test_main_writes_json_with_every_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = _write_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "res" / "wire_size.json"
    argv = ["--corpus", str(corpus), "--out", str(out), "--cold", "3", "--quiet"]
    rc = wire_size.main([*argv, "--codecs", ",".join(BASELINE_NAMES)])
    assert rc == 0
    doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    assert set(BASELINE_NAMES) <= set(doc["codecs"])
    assert doc["corpus"]["messages"] == 11
    assert doc["corpus"]["sessions"] == 2
    assert {"platform", "cpu", "cores", "python"} <= set(doc["machine"])
    assert doc["args"]["cold"] == 3
    for r in doc["codecs"].values():
        assert r["messages"] == 11
        assert r["by_kind"]["request"]["messages"] == 4
        assert r["by_kind"]["push"]["messages"] == 3
        assert r["cold"]["messages"] == 6
        assert r["cold"]["bytes_incl_setup"] > r["setup_bytes_total"]
        assert r["encode_us"]["mean"] > 0
    h2 = doc["codecs"][wire_size.REFERENCE]
    assert h2["x_reference"]["bytes_per_msg"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "×HTTP/2" in printed and "http1-json" in printed


def test_mmtp_missing_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "stress.baselines.mmtp", None)  # import -> ImportError
    codecs, warning = wire_size.load_mmtp(None)
    assert codecs == []
    assert warning is not None and "baselines only" in warning
