"""The compression registry (files and a real Redis), ``channel dict publish|list|retrain``
and ``channel preset publish``, and the ``[compression]`` limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from channel.cli import main as channel_main
from channel.compression.registry import FileRegistry, RedisRegistry, Registry, RegistryError
from channel.config import ConfigError, GatewayConfig, validate
from channel.corpus import message_body_bytes
from channel.corpus_apps import generate_app_corpus
from channel.dicttrain import train_dictionary
from channel.presetbuild import build_preset
from tests.redis_servers import RedisServer

APP = "com.example.chirp"


def _dictionary(dict_id: int, seed: int = 1) -> object:
    bodies = [message_body_bytes(m) for m in generate_app_corpus("social", 40, seed, 0.1)]
    return train_dictionary(bodies, dict_id, 4096, threads=1)


@pytest.fixture(params=["files", "redis"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    if request.param == "files":
        yield FileRegistry(tmp_path / "registry")
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = Redis.from_url(server.url)
    prefix = f"t{tmp_path.name}"
    try:
        yield RedisRegistry(client, prefix)
    finally:
        await client.aclose()


async def test_published_dictionaries_stay_and_the_largest_id_is_current(
    registry: Registry,
) -> None:
    version = await registry.version()
    first_id = await registry.next_dictionary_id()
    assert first_id >= 2  # 1 is the packaged dictionary
    first = _dictionary(first_id, 1)
    await registry.publish_dictionary(APP, first)
    assert await registry.version() != version
    second = _dictionary(await registry.next_dictionary_id(), 2)
    assert second.dict_id > first.dict_id
    await registry.publish_dictionary(APP, second)
    snapshot = await registry.load()
    artifacts = snapshot.apps[APP]
    assert [d.dict_id for d in artifacts.dictionaries] == [first.dict_id, second.dict_id]
    assert artifacts.current_dictionary == second
    # Publishing the same dictionary again is harmless; its id for other content is not.
    await registry.publish_dictionary(APP, first)
    with pytest.raises(RegistryError, match="never reused"):
        await registry.publish_dictionary(APP, _dictionary(first.dict_id, 3))
    with pytest.raises(RegistryError, match="never reused"):
        await registry.publish_dictionary("com.other", first)
    with pytest.raises(RegistryError, match="packaged"):
        await registry.publish_dictionary(APP, _dictionary(1, 1))
    with pytest.raises(RegistryError, match="app id"):
        await registry.publish_dictionary("../etc", second)


async def test_presets_are_published_once_per_id(registry: Registry) -> None:
    preset = build_preset(list(generate_app_corpus("ride", 40, 1, 0.1)), 77, "ride")
    await registry.publish_preset(APP, preset)
    await registry.publish_preset(APP, preset)
    assert (await registry.load()).apps[APP].presets == (preset,)
    other = build_preset(list(generate_app_corpus("shop", 40, 1, 0.1)), 77, "shop")
    with pytest.raises(RegistryError, match="never changes"):
        await registry.publish_preset(APP, other)
    with pytest.raises(RegistryError, match="packaged"):
        await registry.publish_preset(APP, build_preset([], 2, "x"))


async def test_one_retraining_at_a_time_in_a_redis_fleet(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url)
    try:
        registry = RedisRegistry(client, "lock-test")
        assert await registry.try_lock("retrain:a", 60)
        assert not await registry.try_lock("retrain:a", 60)
        assert await registry.try_lock("retrain:b", 60)
        ids = {await registry.next_dictionary_id() for _ in range(5)}
        assert len(ids) == 5  # two nodes never get one id
    finally:
        await client.aclose()


# ------------------------------------------------------------------------ CLI


def _corpus(path: Path, app: str, sessions: int, seed: int) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for message in generate_app_corpus(app, sessions, seed, 0.1):
            out.write(json.dumps(message) + "\n")
    return path


def test_cli_retrain_publishes_only_past_the_margin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = _corpus(tmp_path / "social.jsonl", "social", 60, 1)
    where = ["--registry-dir", str(tmp_path / "reg"), "--app", APP]
    # Dry run: evaluated, nothing published.
    assert (
        channel_main(["dict", "retrain", str(samples), *where, "--size", "4096", "--dry-run"]) == 0
    )
    assert "not published (dry run)" in capsys.readouterr().out
    assert not (tmp_path / "reg").exists() or not list((tmp_path / "reg").rglob("*.mmtpdict"))
    # No current dictionary: the candidate beats plain zstd and is published as id 2.
    assert channel_main(["dict", "retrain", str(samples), *where, "--size", "4096"]) == 0
    out = capsys.readouterr().out
    assert "published as dictionary 2" in out, out
    # Retrained on the same traffic: no better than the current one, kept.
    assert channel_main(["dict", "retrain", str(samples), *where, "--size", "4096"]) == 0
    out = capsys.readouterr().out
    assert "vs current 2" in out and "not published (saves less than 3%)" in out, out
    assert channel_main(["dict", "list", *where]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["apps"][APP]["current_dictionary"] == 2


def test_cli_publish_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dictionary = _dictionary(12)
    path = tmp_path / "d.mmtpdict"
    path.write_bytes(dictionary.to_file_bytes())
    preset_path = tmp_path / "p.json"
    preset = build_preset(list(generate_app_corpus("fitness", 40, 1, 0.1)), 40, "fit")
    preset_path.write_text(preset.to_json())
    where = ["--registry-dir", str(tmp_path / "reg"), "--app", APP]
    assert channel_main(["dict", "publish", str(path), *where]) == 0
    assert channel_main(["preset", "publish", str(preset_path), *where]) == 0
    capsys.readouterr()
    assert channel_main(["dict", "list", *where]) == 0
    app = json.loads(capsys.readouterr().out)["apps"][APP]
    assert app["current_dictionary"] == 12 and app["presets"][0]["id"] == 40
    # Another app may not take id 12: a clear error, exit status 2.
    assert (
        channel_main(
            [
                "dict",
                "publish",
                str(path),
                "--registry-dir",
                str(tmp_path / "reg"),
                "--app",
                "com.other",
            ]
        )
        == 2
    )
    assert "already published for app 'com.example.chirp'" in capsys.readouterr().err
    path.write_bytes(b"not a dictionary")
    assert channel_main(["dict", "publish", str(path), *where]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("registry", "s3", "compression.registry"),
        ("dict_chunk_bytes", 100, "compression.dict_chunk_bytes"),
        ("dict_delivery_bytes_per_s", 10, "compression.dict_delivery_bytes_per_s"),
        ("dict_budget_bytes", -1, "compression.dict_budget_bytes"),
        ("sample_fraction", 1.5, "compression.sample_fraction"),
        ("sample_max_bodies", 0, "compression.sample_max_bodies"),
        ("retrain_min_saving", 1.0, "compression.retrain_min_saving"),
        ("compress_min_saving", -0.1, "compression.compress_min_saving"),
        ("compress_min_saving", 1.0, "compression.compress_min_saving"),
        ("dict_size_bytes", 100, "compression.dict_size_bytes"),
    ],
)
def test_compression_limits_are_checked(field: str, value: object, message: str) -> None:
    config = GatewayConfig()
    setattr(config.compression, field, value)
    with pytest.raises(ConfigError, match=message):
        validate(config)
