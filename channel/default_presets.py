"""Preset tables shipped inside the package (``channel/presets/*.json``).

Call ``register_default_presets()`` once at start-up in the gateway, the SDK
and tools, so every process knows the same presets by the same ids.
"""

from __future__ import annotations

from importlib import resources

from channel.wire.presets import Preset, register_preset


def load_default_presets() -> list[Preset]:
    folder = resources.files("channel").joinpath("presets")
    presets = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            presets.append(Preset.from_json(entry.read_text(encoding="utf-8")))
    return presets


def register_default_presets() -> list[Preset]:
    """Register every packaged preset; returns them (for logs)."""
    presets = load_default_presets()
    for preset in presets:
        register_preset(preset)
    return presets
