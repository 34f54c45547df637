"""``[push]`` settings a node refuses to start with, each named in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from channel.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("user_devices_ttl_s = -1", r"push\.user_devices_ttl_s"),
        ("user_devices_cap = 0", r"push\.user_devices_cap"),
        ("user_devices_sweep_s = -1", r"push\.user_devices_sweep_s"),
        ("fanout_batch = 0", r"push\.fanout_batch"),
        ("inbox_max_entries = 0", r"push\.inbox_max_entries"),
        ("recent_acks = -1", r"push\.recent_acks"),
        ("fanout_linger_ms = -1", r"push\.fanout_linger_ms"),
        ("fanout_linger_ms = 20000", r"push\.fanout_linger_ms"),
        ("final_status_retention_s = -1", r"push\.final_status_retention_s"),
        ("memory_max_statuses = -1", r"push\.memory_max_statuses"),
        ("redis_max_connections = 1", r"push\.redis_max_connections"),
        ("redis_max_connections = 10001", r"push\.redis_max_connections"),
        ("redis_raw_connections = -1", r"push\.redis_raw_connections"),
        ("redis_raw_connections = 64", r"push\.redis_raw_connections"),
        ("redis_key_memo_devices = 0", r"push\.redis_key_memo_devices"),
        ("redis_key_memo_devices = 10000001", r"push\.redis_key_memo_devices"),
        ("redis_presence_memo_devices = 0", r"push\.redis_presence_memo_devices"),
        ("redis_local_envelopes = -1", r"push\.redis_local_envelopes"),
        ("redis_local_envelopes = 10000001", r"push\.redis_local_envelopes"),
        ("redis_pipeline_commands = 0", r"push\.redis_pipeline_commands"),
        ("redis_pipeline_commands = 100001", r"push\.redis_pipeline_commands"),
        ("redis_keys_per_script = 0", r"push\.redis_keys_per_script"),
        ("redis_inbox_read_entries = 10001", r"push\.redis_inbox_read_entries"),
    ],
)
def test_bad_push_settings_are_named(tmp_path: Path, setting: str, message: str) -> None:
    config_file = tmp_path / "channel.toml"
    config_file.write_text(f"[push]\n{setting}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(config_file, environ={})


def test_push_settings_take_environment_overrides(tmp_path: Path) -> None:
    config = load_config(
        None,
        environ={
            "CHANNEL_PUSH__USER_DEVICES_TTL_S": "0",
            "CHANNEL_PUSH__FANOUT_BATCH": "64",
        },
    )
    assert config.push.user_devices_ttl_s == 0 and config.push.fanout_batch == 64


def test_redis_memory_bounds_keep_their_defaults_and_take_overrides(tmp_path: Path) -> None:
    defaults = load_config(None, environ={}).push
    assert (
        defaults.redis_max_connections,
        defaults.redis_raw_connections,
        defaults.redis_key_memo_devices,
        defaults.redis_presence_memo_devices,
        defaults.redis_local_envelopes,
        defaults.redis_pipeline_commands,
        defaults.redis_keys_per_script,
        defaults.redis_inbox_read_entries,
    ) == (64, 4, 32_768, 32_768, 65_536, 1_000, 256, 256)
    config_file = tmp_path / "channel.toml"
    config_file.write_text("[push]\nredis_max_connections = 16\nredis_key_memo_devices = 100\n")
    config = load_config(
        config_file,
        environ={
            "CHANNEL_PUSH__REDIS_RAW_CONNECTIONS": "0",
            "CHANNEL_PUSH__REDIS_PRESENCE_MEMO_DEVICES": "200",
            "CHANNEL_PUSH__REDIS_LOCAL_ENVELOPES": "0",
            "CHANNEL_PUSH__REDIS_KEY_MEMO_DEVICES": "300",  # the environment wins
            "CHANNEL_PUSH__REDIS_PIPELINE_COMMANDS": "50",
            "CHANNEL_PUSH__REDIS_KEYS_PER_SCRIPT": "60",
            "CHANNEL_PUSH__REDIS_INBOX_READ_ENTRIES": "70",
        },
    ).push
    assert (
        config.redis_max_connections,
        config.redis_raw_connections,
        config.redis_key_memo_devices,
        config.redis_presence_memo_devices,
        config.redis_local_envelopes,
        config.redis_pipeline_commands,
        config.redis_keys_per_script,
        config.redis_inbox_read_entries,
    ) == (16, 0, 300, 200, 0, 50, 60, 70)


@pytest.mark.parametrize("value", ["-1", "3600001"])
def test_a_bad_dup_clock_margin_is_named(tmp_path: Path, value: str) -> None:
    config_file = tmp_path / "channel.toml"
    config_file.write_text(f"[mqtt]\ndup_clock_margin_ms = {value}\n")
    with pytest.raises(ConfigError, match=r"mqtt\.dup_clock_margin_ms"):
        load_config(config_file, environ={})


def test_the_dup_clock_margin_takes_an_environment_override() -> None:
    config = load_config(None, environ={"CHANNEL_MQTT__DUP_CLOCK_MARGIN_MS": "0"})
    assert config.mqtt.dup_clock_margin_ms == 0
