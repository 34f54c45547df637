"""API keys: format, records, authentication, scopes, the dev key, `channel apikey`."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest

from channel.api.keys import (
    ApiKeyError,
    ApiKeyring,
    AuthError,
    ensure_dev_api_key,
    key_id_of,
    new_api_key,
    parse_record,
)
from channel.cli import main


def test_new_key_format_and_record() -> None:
    key, record = new_api_key("billing", ["push", "status"])
    assert re.fullmatch(r"ck_billing_[A-Za-z0-9_-]{43}", key)
    key_id, digest, scopes = record.split(":")
    assert key_id == "billing"
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert scopes == "push+status"
    assert key_id_of(key) == "billing"
    # Two keys never repeat.
    assert new_api_key("billing", ["push"])[0] != key


def test_secret_may_contain_underscores() -> None:
    key = "ck_a_" + "_" * 43
    assert key_id_of(key) == "a"


def test_authenticate_and_scopes() -> None:
    push_key, push_record = new_api_key("backend", ["push"])
    all_key, all_record = new_api_key("ops", ["*"])
    keyring = ApiKeyring([push_record, all_record])
    key = keyring.authenticate(f"Bearer {push_key}")
    assert key.key_id == "backend"
    assert key.allows("push") and not key.allows("kick")
    assert keyring.authenticate(f"bearer  {all_key}").allows("kick")
    assert keyring.key_ids == ["backend", "ops"]


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "AUTH_REQUIRED"),
        ("", "AUTH_REQUIRED"),
        ("Basic abc", "AUTH_REQUIRED"),
        ("Bearer nope", "AUTH_INVALID"),
        ("Bearer ck_backend_" + "A" * 43, "AUTH_INVALID"),  # right id, wrong secret
        ("Bearer ck_other_" + "A" * 43, "AUTH_INVALID"),  # unknown id
        ("Bearer ck_backend_" + "A" * 400, "AUTH_INVALID"),
    ],
)
def test_refused(header: str | None, code: str) -> None:
    _, record = new_api_key("backend", ["push"])
    with pytest.raises(AuthError) as info:
        ApiKeyring([record]).authenticate(header)
    assert info.value.code == code
    # Never echoes what was sent.
    if header and len(header) > 20:
        assert header.split()[-1] not in info.value.message


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ("abc", "key_id:sha256-hex"),
        ("a_b:" + "0" * 64 + ":push", "no '_'"),
        ("a:" + "0" * 63 + ":push", "64 lowercase hex"),
        ("a:" + "0" * 64 + ":", "at least one scope"),
        ("a:" + "0" * 64 + ":push+pull", "unknown scope 'pull'"),
    ],
)
def test_bad_records(record: str, words: str) -> None:
    with pytest.raises(ApiKeyError, match=re.escape(words)):
        parse_record(record)


def test_duplicate_key_ids_refused() -> None:
    _, record = new_api_key("a", ["push"])
    with pytest.raises(ApiKeyError, match="twice"):
        ApiKeyring([record, record])


def test_dev_key_made_once_private_and_reused(tmp_path: Path) -> None:
    key, record = ensure_dev_api_key(tmp_path)
    path = tmp_path / "api" / "dev.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key
    assert ensure_dev_api_key(tmp_path) == (key, record)
    dev = ApiKeyring([record]).authenticate(f"Bearer {key}")
    assert dev.key_id == "dev" and dev.allows("rpc")


def test_dev_key_file_garbage_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "dev.key").write_text("not a key")
    with pytest.raises(ApiKeyError, match="delete it"):
        ensure_dev_api_key(tmp_path)


def test_cli_apikey_new(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apikey", "new", "--id", "billing", "--scopes", "push,status"]) == 0
    out, err = capsys.readouterr()
    key = re.search(r"^key:\s+(\S+)$", out, re.M)
    record = re.search(r"^record:\s+(\S+)$", out, re.M)
    assert key and record
    assert "[api]" in err and record.group(1) in err
    found = ApiKeyring([record.group(1)]).authenticate(f"Bearer {key.group(1)}")
    assert found.scopes == {"push", "status"}


def test_cli_apikey_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apikey", "new", "--id", "a_b", "--scopes", "push"]) == 2
    assert "no '_'" in capsys.readouterr().err
    assert main(["apikey", "new", "--id", "ab", "--scopes", "pushy"]) == 2
    assert "unknown scope" in capsys.readouterr().err
    assert main(["apikey", "new", "--help"]) == 0
    assert "presence" in capsys.readouterr().out
