"""The synthetic corpus: deterministic, schema-valid, the traffic mix we claim."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from channel.corpus import (
    OPERATION_NAMES,
    Message,
    generate_corpus,
    message_body_bytes,
    write_corpus,
)

HEX_RE = re.compile(r"[0-9a-f]+")
N_SESSIONS = 300


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    return list(generate_corpus(N_SESSIONS, seed=1))


def _header_names(message: Message) -> list[str]:
    headers = message["headers"]
    assert isinstance(headers, list)
    return [name for name, _ in headers]


def test_same_seed_gives_same_corpus() -> None:
    assert list(generate_corpus(20, seed=7)) == list(generate_corpus(20, seed=7))


def test_different_seeds_give_disjoint_bodies() -> None:
    first = {message_body_bytes(m) for m in generate_corpus(50, seed=1)}
    second = {message_body_bytes(m) for m in generate_corpus(50, seed=2)}
    # Tiny constant bodies ({"success":true}) legitimately repeat; big ones must not.
    overlap = {body for body in first & second if len(body) > 100}
    assert not overlap


def _check_headers(message: Message) -> None:
    headers = message["headers"]
    assert isinstance(headers, list)
    assert 2 <= len(headers) <= 8
    for pair in headers:
        assert isinstance(pair, list) and len(pair) == 2
        name, value = pair
        assert isinstance(name, str) and name == name.lower()
        assert isinstance(value, str) and value


def test_every_message_matches_the_schema(messages: list[Message]) -> None:
    for message in messages:
        kind = message["kind"]
        assert isinstance(message["session"], int)
        _check_headers(message)
        json.dumps(message["body"])
        if kind == "request":
            assert set(message) == {"session", "kind", "op", "headers", "body"}
            assert message["op"] in OPERATION_NAMES
        elif kind == "response":
            assert set(message) == {"session", "kind", "op", "status", "headers", "body"}
            assert isinstance(message["status"], int)
        else:
            assert kind == "push"
            assert set(message) == {"session", "kind", "message_id", "topic", "headers", "body"}
            message_id = message["message_id"]
            assert isinstance(message_id, str) and len(message_id) == 24
            assert HEX_RE.fullmatch(message_id)
            assert isinstance(message["topic"], str)


def test_each_response_follows_its_request(messages: list[Message]) -> None:
    for index, message in enumerate(messages):
        if message["kind"] != "request":
            continue
        response = messages[index + 1]
        assert response["kind"] == "response"
        assert response["op"] == message["op"]
        assert response["session"] == message["session"]
        request_headers = dict(message["headers"])
        response_headers = dict(response["headers"])
        trace_id = request_headers["trace-id"]
        assert len(trace_id) == 32 and HEX_RE.fullmatch(trace_id)
        assert response_headers["trace-id"] == trace_id


def test_sessions_are_contiguous_and_sized_like_app_launches(
    messages: list[Message],
) -> None:
    order = [m["session"] for m in messages]
    assert order == sorted(order)
    lengths = Counter(order)
    assert len(lengths) == N_SESSIONS
    assert min(lengths.values()) >= 2
    assert max(lengths.values()) <= 80
    assert 8 <= len(messages) / N_SESSIONS <= 25


def test_traffic_mix(messages: list[Message]) -> None:
    kinds = Counter(m["kind"] for m in messages)
    total = len(messages)
    assert kinds["request"] == kinds["response"]
    assert kinds["push"] / total == pytest.approx(0.10, abs=0.02)
    requests = [m for m in messages if m["kind"] == "request"]
    signed = sum("sign" in _header_names(m) for m in requests)
    assert signed / len(requests) == pytest.approx(0.40, abs=0.07)
    assert len({m["op"] for m in requests}) >= 30


def test_push_fraction_is_a_parameter() -> None:
    messages = list(generate_corpus(300, seed=3, push_fraction=0.3))
    pushes = sum(m["kind"] == "push" for m in messages)
    assert pushes / len(messages) == pytest.approx(0.3, abs=0.03)


def test_body_sizes_look_like_mobile_rpc(messages: list[Message]) -> None:
    sizes = sorted(len(message_body_bytes(m)) for m in messages)
    assert sizes[0] >= 15
    assert sizes[-1] <= 3500
    median = sizes[len(sizes) // 2]
    assert 100 <= median <= 600


def test_message_body_bytes_is_compact_utf8_json() -> None:
    message = {"body": {"title": "收款", "amount": "1.00"}}
    assert message_body_bytes(message) == '{"title":"收款","amount":"1.00"}'.encode()


def test_write_corpus_writes_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    progress: list[tuple[int, int]] = []
    count = write_corpus(path, 10, seed=4, progress=lambda s, m: progress.append((s, m)))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == count
    assert [json.loads(line) for line in lines] == list(generate_corpus(10, seed=4))
    assert progress[-1] == (10, count)
