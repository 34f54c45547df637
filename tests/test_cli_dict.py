"""The `channel` CLI: corpus generate, dict train / info, help and error exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from channel.cli import main
from channel.corpus import write_corpus
from channel.wire.dictionaries import Dictionary

SIZE_ARGS = ["--size", "1024"]


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    write_corpus(path, 30, seed=1)
    return path


def _dict_id(path: Path) -> int:
    return Dictionary.from_file_bytes(path.read_bytes()).dict_id


@pytest.mark.parametrize(
    "argv",
    [[], ["dict"], ["dict", "train"], ["dict", "info"], ["corpus"], ["corpus", "generate"]],
)
def test_help_at_every_level_exits_zero(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: channel" in out
    assert "example" in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "required" in capsys.readouterr().err


def test_corpus_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.jsonl"
    assert main(["corpus", "generate", "--sessions", "5", "--seed", "3", "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines
    assert f"wrote {len(lines):,} messages in 5 sessions" in capsys.readouterr().err


def test_corpus_generate_rejects_zero_sessions(tmp_path: Path) -> None:
    assert main(["corpus", "generate", "--sessions", "0", "--out", str(tmp_path / "c")]) == 2


def test_dict_train_writes_file_and_summary(
    tmp_path: Path, corpus_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "app-7.mmtpdict"
    argv = ["dict", "train", str(corpus_path), "--id", "7", "--out", str(out), *SIZE_ARGS]
    assert main([*argv, "--eval", str(corpus_path)]) == 0
    dictionary = Dictionary.from_file_bytes(out.read_bytes())
    assert dictionary.dict_id == 7
    captured = capsys.readouterr()
    assert "id:      7" in captured.out
    assert dictionary.sha256 in captured.out
    assert "ratio" in captured.out
    assert "samples" in captured.err and "trained" in captured.err


def test_dict_train_assigns_next_id(tmp_path: Path, corpus_path: Path) -> None:
    first = tmp_path / "a.mmtpdict"
    second = tmp_path / "b.mmtpdict"
    third = tmp_path / "c.mmtpdict"
    assert main(["dict", "train", str(corpus_path), "--out", str(first), *SIZE_ARGS]) == 0
    assert _dict_id(first) == 1
    assert (
        main(["dict", "train", str(corpus_path), "--out", str(second), "--id", "41", *SIZE_ARGS])
        == 0
    )
    assert main(["dict", "train", str(corpus_path), "--out", str(third), *SIZE_ARGS]) == 0
    assert _dict_id(third) == 42


def test_dict_train_refuses_to_guess_past_an_unreadable_dictionary(
    tmp_path: Path, corpus_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.mmtpdict").write_bytes(b"garbage")
    out = tmp_path / "new.mmtpdict"
    assert main(["dict", "train", str(corpus_path), "--out", str(out), *SIZE_ARGS]) == 2
    assert "pass --id explicitly" in capsys.readouterr().err
    assert not out.exists()


def test_dict_train_bad_jsonl_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": {}}\n{"body": \n', encoding="utf-8")
    out = tmp_path / "d.mmtpdict"
    assert main(["dict", "train", str(bad), "--id", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "Traceback" not in err
    assert not out.exists()


def test_dict_train_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.mmtpdict"
    assert (
        main(["dict", "train", str(tmp_path / "nope.jsonl"), "--id", "1", "--out", str(out)]) == 2
    )
    assert "cannot read" in capsys.readouterr().err


def test_dict_train_rejects_bad_id(tmp_path: Path, corpus_path: Path) -> None:
    out = str(tmp_path / "d.mmtpdict")
    assert main(["dict", "train", str(corpus_path), "--id", "0", "--out", out]) == 2
    assert main(["dict", "train", str(corpus_path), "--id", str(2**32), "--out", out]) == 2


def test_dict_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.mmtpdict"
    dictionary = Dictionary(3, b"\x37\xa4\x30\xec" + b"x" * 60)
    path.write_bytes(dictionary.to_file_bytes())
    assert main(["dict", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "id:      3" in out and "size:    64 bytes" in out and dictionary.sha256 in out


@pytest.mark.parametrize("content", [None, b"not a dictionary file"])
def test_dict_info_errors(
    tmp_path: Path, content: bytes | None, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.mmtpdict"
    if content is not None:
        path.write_bytes(content)
    assert main(["dict", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err


def test_python_dash_m_channel() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "channel", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert "dict" in result.stdout and "corpus" in result.stdout
