"""`channel token keygen / issue / verify`: round trip, stdout hygiene, refusals."""

from __future__ import annotations

import io
import stat
import time
from pathlib import Path

import pytest

from channel.cli import main
from channel.security.tokens import (
    DeviceClaims,
    TokenSigner,
    TokenVerifier,
    decode_token_text,
    encode_token_text,
    load_private_key,
    load_public_key,
)

ISSUE = ["--device", "dev-42", "--user", "u-7", "--app", "wallet"]


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["token", "keygen", "--dir", str(tmp_path / "keys")]) == 0
    capsys.readouterr()
    return tmp_path / "keys"


def issue(keys: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(["token", "issue", "--key", str(keys / "token-1.key"), *ISSUE, *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["token"], ["token", "keygen"], ["token", "issue"], ["token", "verify"]],
)
def test_help_teaches_with_examples(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: channel token" in out
    assert "example" in out


def test_keygen_writes_pair_and_picks_next_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "keys"
    assert main(["token", "keygen", "--dir", str(directory)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"private: {directory / 'token-1.key'}",
        f"public:  {directory / 'token-1.pub'}",
    ]
    assert "copy token-1.pub" in captured.err
    assert stat.S_IMODE((directory / "token-1.key").stat().st_mode) == 0o600
    assert main(["token", "keygen", "--dir", str(directory)]) == 0
    assert "token-2.key" in capsys.readouterr().out
    assert main(["token", "keygen", "--dir", str(directory), "--id", "9"]) == 0
    assert "token-9.key" in capsys.readouterr().out


def test_keygen_refuses_to_overwrite(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (keys / "token-1.key").read_bytes()
    assert main(["token", "keygen", "--dir", str(keys), "--id", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (keys / "token-1.key").read_bytes() == before


def test_keygen_rejects_out_of_range_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "keygen", "--dir", str(tmp_path), "--id", "256"]) == 2
    assert "0..255" in capsys.readouterr().err


def test_issue_prints_only_the_token_on_stdout(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = int(time.time())
    assert (
        main(
            [
                "token",
                "issue",
                "--key",
                str(keys / "token-1.key"),
                *ISSUE,
                "--ttl",
                "600",
                "--scope",
                "rpc",
                "--scope",
                "push",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1
    token = decode_token_text(lines[0])
    assert "key id 1" in captured.err and "bytes" in captured.err
    assert lines[0] not in captured.err
    verifier = TokenVerifier({1: load_public_key(keys / "token-1.pub")})
    claims = verifier.verify(token, device_id="dev-42", app_id="wallet", now=time.time())
    assert (claims.user_id, claims.scopes) == ("u-7", ("rpc", "push"))
    assert before + 600 <= claims.expires_at <= int(time.time()) + 600


def test_issue_then_verify_round_trip(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = issue(keys, capsys, "--scope", "rpc").strip()
    for pub in (keys / "token-1.pub", keys):
        argv = ["token", "verify", "--pub", str(pub), "--device", "dev-42", "--app", "wallet"]
        assert main([*argv, token]) == 0
        out = capsys.readouterr().out
        assert "device:  dev-42" in out
        assert "user:    u-7" in out
        assert "scopes:  rpc" in out
        assert "key id:  1" in out


def test_verify_reads_stdin(
    keys: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = issue(keys, capsys)
    monkeypatch.setattr("sys.stdin", io.StringIO(token))
    assert main(["token", "verify", "--pub", str(keys), "--device", "dev-42", "-"]) == 0
    assert "app:     wallet" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (["--device", "dev-43"], "FORBIDDEN"),
        (["--device", "dev-42", "--app", "other"], "FORBIDDEN"),
    ],
)
def test_verify_refusals_exit_2(
    keys: Path, capsys: pytest.CaptureFixture[str], extra: list[str], code: str
) -> None:
    token = issue(keys, capsys).strip()
    assert main(["token", "verify", "--pub", str(keys), *extra, token]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"token rejected: {code}" in captured.err
    assert token not in captured.err


def test_verify_expired_token(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = int(time.time())
    old = DeviceClaims("dev-42", "u-7", "wallet", expires_at=now - 3600, issued_at=now - 7200)
    token = TokenSigner(load_private_key(keys / "token-1.key"), 1).issue(old)
    argv = ["token", "verify", "--pub", str(keys), "--device", "dev-42"]
    assert main([*argv, encode_token_text(token)]) == 2
    assert "AUTH_EXPIRED" in capsys.readouterr().err


def test_verify_garbage_and_wrong_key(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["token", "verify", "--pub", str(keys), "--device", "dev-42"]
    assert main([*argv, "not a token!"]) == 2
    assert "AUTH_INVALID" in capsys.readouterr().err
    token = issue(keys, capsys).strip()
    assert main(["token", "keygen", "--dir", str(keys)]) == 0
    capsys.readouterr()
    other = ["token", "verify", "--pub", str(keys / "token-2.pub"), "--device", "dev-42"]
    assert main([*other, token]) == 2
    assert "key id 1" in capsys.readouterr().err
    # The same file claimed as key 1 fails on the signature instead.
    assert main([*other, "--key-id", "1", token]) == 2
    assert "signature does not verify" in capsys.readouterr().err


def test_key_id_from_other_file_names(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    renamed = keys / "issuer.pem"
    renamed.write_bytes((keys / "token-1.key").read_bytes())
    base = ["token", "issue", "--key", str(renamed), *ISSUE]
    assert main(base) == 2
    assert "pass --key-id" in capsys.readouterr().err
    assert main([*base, "--key-id", "1"]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["token", "verify", "--pub", str(keys), "--device", "dev-42", token]) == 0


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--scope", "two words"], "scope"),
        (["--ttl", "0"], "at least 1"),
        (["--ttl", str(2**33)], "expires_at"),
    ],
)
def test_issue_input_errors(
    keys: Path, capsys: pytest.CaptureFixture[str], extra: list[str], fragment: str
) -> None:
    assert main(["token", "issue", "--key", str(keys / "token-1.key"), *ISSUE, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert fragment in captured.err


def test_missing_key_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "issue", "--key", str(tmp_path / "token-1.key"), *ISSUE]) == 2
    assert "cannot read key file" in capsys.readouterr().err
    argv = ["token", "verify", "--pub", str(tmp_path), "--device", "d", "AAAA"]
    assert main(argv) == 2
    assert "no token-<id>.pub files" in capsys.readouterr().err
