"""``stress.wire_size --apps``: the wire-size comparison on every synthetic app.

For each app of ``channel/corpus_apps`` the MMTP rows are what a deployment of
that app would run: a dictionary trained (``channel dict train``) and a preset
built (``channel preset build``: entries, typed fields, connection-scoped
headers) on the app's *training* split (seed 1), measured on its *test* split
(seed 2, disjoint), beside the generic preset 1 with the packaged dictionary
and the baselines. A summary table gives each app's MMTP bytes per message
against HTTP/2 and WebSocket + permessage-deflate.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from channel.corpus import HELDOUT_SEED, TRAIN_SEED, message_body_bytes
from channel.corpus_apps import generate_app_corpus
from channel.default_dictionary import load_default_dictionary
from channel.default_presets import register_default_presets
from channel.dicttrain import train_dictionary
from channel.presetbuild import build_preset
from channel.wire.presets import register_preset
from stress.baselines import baseline_codecs
from stress.baselines.common import WireCodec
from stress.baselines.mmtp import GENERIC_PRESET_ID, MmtpCodec
from stress.report import table

#: Dictionary and preset ids the in-process training uses (one pair per app).
FIRST_APP_ID = 100
WS_DEFLATE = "ws-deflate-json"


def app_codecs(
    app: str, index: int, args: argparse.Namespace
) -> tuple[list[WireCodec], dict[str, Any]]:
    """MMTP trained on ``app``'s training split, the generic MMTP, and the baselines."""
    train = list(generate_app_corpus(app, args.train_sessions, TRAIN_SEED, args.push_fraction))
    dict_id = FIRST_APP_ID + index
    dictionary = train_dictionary(
        (message_body_bytes(m) for m in train), dict_id, args.dict_size, threads=1
    )
    preset = build_preset(train, dict_id, app)
    register_preset(preset)
    mmtp: list[WireCodec] = [
        MmtpCodec(dictionary, preset.preset_id),
        MmtpCodec(load_default_dictionary(), GENERIC_PRESET_ID),
    ]
    trained = {
        "train_messages": len(train),
        "dictionary_bytes": len(dictionary.content),
        "preset": {
            "entries": len(preset.entries),
            "typed": [list(t) for t in preset.typed],
            "connection": list(preset.connection),
            "never_indexed": list(preset.never_indexed),
        },
    }
    return [*mmtp, *baseline_codecs()], trained


def summary(per_app: dict[str, dict[str, Any]]) -> str:
    rows = [
        ["app", "MMTP B/msg", "HTTP/2", "WS+deflate", "×HTTP/2", "×WS+deflate", "cold10 ×HTTP/2"]
    ]
    for app, result in per_app.items():
        codecs = result["codecs"]
        mmtp = next(iter(codecs.values()))
        http2 = codecs["http2-hpack-gzip"]
        ws = codecs[WS_DEFLATE]
        rows.append(
            [
                app,
                f"{mmtp['bytes_per_msg']:.1f}",
                f"{http2['bytes_per_msg']:.1f}",
                f"{ws['bytes_per_msg']:.1f}",
                f"{mmtp['bytes_per_msg'] / http2['bytes_per_msg']:.3f}",
                f"{mmtp['bytes_per_msg'] / ws['bytes_per_msg']:.3f}",
                f"{mmtp['cold']['bytes_per_msg'] / http2['cold']['bytes_per_msg']:.3f}",
            ]
        )
    return table(rows)


def run_apps(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every app of ``args.apps``; returns the JSON document's ``apps`` part."""
    from stress.wire_size import (
        REFERENCE,
        add_ratios,
        corpus_summary,
        group_sessions,
        measure,
        render_table,
    )

    register_default_presets()
    per_app: dict[str, dict[str, Any]] = {}
    for index, app in enumerate(args.apps.split(",")):
        codecs, trained = app_codecs(app, index, args)
        sessions = list(
            group_sessions(
                generate_app_corpus(app, args.sessions, HELDOUT_SEED, args.push_fraction)
            )
        )
        source = f"channel.corpus_apps({app}, n_sessions={args.sessions}, seed={HELDOUT_SEED})"
        results = {
            codec.name: measure(codec, sessions, args.cold, progress=not args.quiet)
            for codec in codecs
        }
        add_ratios(results, REFERENCE)
        per_app[app] = {
            "corpus": corpus_summary(sessions, source),
            "trained": trained,
            "codecs": results,
        }
        trained_on = f"trained on seed {TRAIN_SEED} ({trained['train_messages']:,} messages)"
        print(f"\napp {app}: {source}; {trained_on}")
        print(render_table(results, args.cold))
        sys.stdout.flush()
    print("\nper app (MMTP = the app's own preset and dictionary)")
    print(summary(per_app))
    return per_app
