"""``HeapTrimmer`` (glibc malloc_trim after handshake bursts) and its setting."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from channel.config import ConfigError, load_config
from channel.engine.heaptrim import HeapTrimmer, glibc_malloc_trim


class CountingTrim:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pad: int) -> int:
        self.calls.append(pad)
        return 1


def test_trims_once_a_burst_of_handshakes_is_over() -> None:
    trim = CountingTrim()
    trimmer = HeapTrimmer(100, min_interval_s=1.0, trim=trim)
    for _ in range(99):
        trimmer.handshake()
    assert not trimmer.tick(0.0) and not trimmer.tick(0.5)  # below the threshold
    trimmer.handshake()
    assert not trimmer.tick(1.0)  # a handshake since the last tick: the burst goes on
    assert trimmer.tick(1.5)  # a quiet tick after >= 100: trim
    assert trim.calls == [0] and trimmer.trims == 1 and trimmer.trimmed_s >= 0
    assert not trimmer.tick(2.0)  # nothing new since


def test_continuous_churn_trims_every_ten_bursts_at_most_once_per_interval() -> None:
    trim = CountingTrim()
    trimmer = HeapTrimmer(100, min_interval_s=5.0, trim=trim)
    now = 0.0
    for _ in range(40):  # 50 handshakes in every tick: never quiet
        for _ in range(50):
            trimmer.handshake()
        trimmer.tick(now)
        now += 0.5
    # 10 x 100 pending after 20 ticks (t = 9.5 s), then again after 20 more (t = 19.5 s).
    assert len(trim.calls) == 2


def test_off_when_zero_or_without_glibc() -> None:
    trim = CountingTrim()
    off = HeapTrimmer(0, trim=trim)
    for _ in range(10_000):
        off.handshake()
    assert not off.enabled and not off.tick(10.0) and not off.tick(20.0)
    assert trim.calls == []
    if platform.libc_ver()[0] == "glibc":
        assert glibc_malloc_trim() is not None
        assert HeapTrimmer(1).enabled
    else:
        assert glibc_malloc_trim() is None
        assert not HeapTrimmer(1).enabled


def test_real_malloc_trim_runs() -> None:
    trim = glibc_malloc_trim()
    if trim is None:
        pytest.skip("not glibc")
    trimmer = HeapTrimmer(1, trim=trim)
    trimmer.handshake()
    assert not trimmer.tick(0.0)  # the tick that saw the handshake
    assert trimmer.tick(0.5)
    assert trimmer.trims == 1


def test_setting_from_toml_and_environment(tmp_path: Path) -> None:
    assert load_config(None, environ={}).server.malloc_trim_after_handshakes == 0  # off
    config_file = tmp_path / "channel.toml"
    config_file.write_text("[server]\nmalloc_trim_after_handshakes = 5000\n")
    assert load_config(config_file, environ={}).server.malloc_trim_after_handshakes == 5000
    environ = {"CHANNEL_SERVER__MALLOC_TRIM_AFTER_HANDSHAKES": "0"}
    assert load_config(config_file, environ=environ).server.malloc_trim_after_handshakes == 0
    config_file.write_text("[server]\nmalloc_trim_after_handshakes = -1\n")
    with pytest.raises(ConfigError, match=r"server\.malloc_trim_after_handshakes"):
        load_config(config_file, environ={})
