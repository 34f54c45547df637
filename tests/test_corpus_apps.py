"""The synthetic apps of ``channel corpus generate --app`` and what ``channel preset build``
learns from them (typed fields, connection-scoped names, never-indexed names)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from channel.cli import main
from channel.corpus import message_body_bytes
from channel.corpus_apps import APP_NAMES, MODELS, generate_app_corpus
from channel.presetbuild import (
    build_preset,
    detect_connection_names,
    detect_never_indexed,
    detect_typed_fields,
)
from channel.wire.presets import Preset
from stress.wire_size import main as wire_size_main


@pytest.fixture(scope="module", params=sorted(MODELS))
def app(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _sample(app: str, sessions: int = 60, seed: int = 1) -> list[dict[str, object]]:
    return list(generate_app_corpus(app, sessions, seed, 0.1))


def test_apps_are_deterministic_and_seeds_disjoint(app: str) -> None:
    assert _sample(app, 5) == _sample(app, 5)
    first = {message_body_bytes(m) for m in _sample(app, 20, 1)}
    second = {message_body_bytes(m) for m in _sample(app, 20, 2)}
    assert len(first & second) < 0.2 * len(first)


def test_every_response_follows_its_request(app: str) -> None:
    messages = _sample(app)
    for before, message in itertools.pairwise(messages):
        if message["kind"] == "response":
            assert before["kind"] == "request" and before["op"] == message["op"]
            assert isinstance(message["status"], int)
    kinds = {m["kind"] for m in messages}
    assert kinds == {"request", "response", "push"}
    assert all(
        m["message_id"] and bytes.fromhex(str(m["message_id"]))
        for m in messages
        if m["kind"] == "push"
    )


def test_apps_differ_in_names_and_languages() -> None:
    names = {}
    for app in APP_NAMES:
        messages = _sample(app, 20)
        names[app] = {n for m in messages if m["kind"] == "request" for n, _ in m["headers"]}  # type: ignore[attr-defined]
    for a in APP_NAMES:
        for b in APP_NAMES:
            if a < b:
                assert names[a] != names[b]
    text = "".join(message_body_bytes(m).decode() for m in _sample("shop", 10))
    assert any("\u3040" <= ch <= "\u30ff" for ch in text)  # Japanese kana


def test_preset_build_learns_the_social_apps_habits() -> None:
    sample = _sample("social", 300)
    connection = detect_connection_names(sample)
    assert {"authorization", "user-agent", "x-device-id"} <= set(connection)
    typed = detect_typed_fields(sample, exclude=connection)
    assert ("x-request-id", "uuid") in typed and ("x-request-id", "echo") in typed
    assert ("x-client-time", "time-s") in typed
    assert "etag" in detect_never_indexed(sample, typed, connection)
    preset = build_preset(sample, 50, "social")
    assert all(name not in connection for name, _ in preset.entries)
    assert Preset.from_json(preset.to_json()) == preset


def _renewing_sessions(renewing_share: float) -> list[dict[str, object]]:
    """40 sessions of 20 requests; in ``renewing_share`` of them the bearer token and
    the session token are renewed once, mid-session; ``x-page`` changes every 5th."""
    messages: list[dict[str, object]] = []
    for session in range(40):
        renews = session < renewing_share * 40
        for i in range(20):
            generation = int(renews and i >= 10)
            messages.append(
                {
                    "session": session,
                    "kind": "request",
                    "op": "feed.get",
                    "headers": [
                        ["authorization", f"Bearer tok-{session}-{generation}"],
                        ["x-session-token", f"st-{session}-{generation}"],
                        ["x-page", str(i // 5)],
                        ["x-nonce", f"{session}-{i}"],
                    ],
                }
            )
    return messages


def test_a_token_renewed_mid_session_is_still_connection_scoped() -> None:
    # 10 % of sessions renew: 4 changes in 800 requests, far above "1 % of sessions".
    sample = _renewing_sessions(0.1)
    connection = detect_connection_names(sample)
    assert set(connection) == {"authorization", "x-session-token"}
    assert detect_connection_names(sample, max_change_share=0.0) == ()
    assert "x-page" in detect_connection_names(sample, max_change_share=0.2)
    # A connection-scoped secret stays never-indexed inside the connection block.
    assert "x-session-token" in detect_never_indexed(sample, (), connection)
    preset = build_preset(sample, 60, "renewing")
    assert {"authorization", "x-session-token"} <= set(preset.connection)
    assert "x-session-token" in preset.never_indexed


def test_low_cardinality_values_are_not_typed() -> None:
    messages = [
        {
            "session": i // 10,
            "kind": "request",
            "op": "x",
            "headers": [["content-type", "application/json"], ["t", str(1_700_000_000 + i)]],
        }
        for i in range(400)
    ]
    typed = dict(detect_typed_fields(messages))
    assert typed == {"t": "time-s"}  # "application/json" is canonical base64, but repeats


def test_cli_generates_an_app_and_builds_its_preset(tmp_path: Path) -> None:
    corpus = tmp_path / "ride.jsonl"
    assert (
        main(
            [
                "corpus",
                "generate",
                "--app",
                "ride",
                "--sessions",
                "80",
                "--seed",
                "1",
                "--out",
                str(corpus),
            ]
        )
        == 0
    )
    first = json.loads(corpus.read_text().splitlines()[0])
    assert any(name == "cookie" for name, _ in first["headers"])
    out = tmp_path / "ride.json"
    assert (
        main(["preset", "build", str(corpus), "--id", "30", "--name", "ride", "--out", str(out)])
        == 0
    )
    preset = Preset.from_json(out.read_text())
    assert "cookie" in preset.connection and ("req-ts", "time-ms") in preset.typed


def test_wire_size_reports_each_app(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "apps.json"
    code = wire_size_main(
        [
            "--apps",
            "ride,fitness",
            "--sessions",
            "6",
            "--train-sessions",
            "60",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    for app in ("ride", "fitness"):
        codecs = doc["apps"][app]["codecs"]
        mmtp = next(iter(codecs.values()))
        assert mmtp["bytes_per_msg"] < codecs["ws-deflate-json"]["bytes_per_msg"]
        assert doc["apps"][app]["trained"]["preset"]["connection"]
    assert "per app" in capsys.readouterr().out
