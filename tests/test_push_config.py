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


@pytest.mark.parametrize("value", ["-1", "3600001"])
def test_a_bad_dup_clock_margin_is_named(tmp_path: Path, value: str) -> None:
    config_file = tmp_path / "channel.toml"
    config_file.write_text(f"[mqtt]\ndup_clock_margin_ms = {value}\n")
    with pytest.raises(ConfigError, match=r"mqtt\.dup_clock_margin_ms"):
        load_config(config_file, environ={})


def test_the_dup_clock_margin_takes_an_environment_override() -> None:
    config = load_config(None, environ={"CHANNEL_MQTT__DUP_CLOCK_MARGIN_MS": "0"})
    assert config.mqtt.dup_clock_margin_ms == 0
