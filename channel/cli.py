"""The ``channel`` command line.

Each command group lives in one ``_add_<group>_commands(subparsers)`` function
that registers its parsers and sets ``handler`` to a function taking the parsed
arguments and returning an exit code; new groups (``serve``, ``token``,
``device``) add one such function to ``_COMMAND_GROUPS``.

Exit codes: 0 success, 2 usage or input errors the user can fix (bad option,
missing file, bad JSONL line); the message goes to stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from channel import corpus, corpus_apps, dicttrain, presetbuild
from channel.admincli import add_admin_commands as _add_admin_commands
from channel.api import keys as api_keys
from channel.compression.cli import (
    RegistryCommandError,
    add_registry_dict_commands,
    add_registry_preset_commands,
)
from channel.fleet.cli import add_fleet_commands as _add_fleet_commands
from channel.security import tokens
from channel.wire.dictionaries import MAX_DICTIONARY_ID, Dictionary
from channel.wire.presets import Preset
from sdk_client.cli import add_device_commands as _add_device_commands

EXIT_OK = 0
EXIT_USAGE = 2
DICTIONARY_SUFFIX = ".mmtpdict"

Handler = Callable[[argparse.Namespace], int]
_SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(Exception):
    """An error the user can act on; ``main`` prints it and exits with 2."""


class _Status:
    """Progress lines on stderr; on a terminal, updates overwrite one line."""

    def __init__(self) -> None:
        self._live = sys.stderr.isatty()
        self._pending = False

    def update(self, text: str) -> None:
        if self._live:
            sys.stderr.write(f"\r{text}\x1b[K")
            sys.stderr.flush()
            self._pending = True

    def line(self, text: str) -> None:
        if self._pending:
            sys.stderr.write("\r\x1b[K")
            self._pending = False
        print(text, file=sys.stderr, flush=True)


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _dictionary_id(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_DICTIONARY_ID:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_DICTIONARY_ID}, got {value}")
    return value


def _dictionary_size(text: str) -> int:
    value = _positive_int(text)
    if value < dicttrain.MIN_DICT_SIZE_BYTES:
        raise argparse.ArgumentTypeError(
            f"must be at least {dicttrain.MIN_DICT_SIZE_BYTES} bytes, got {value}"
        )
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _write_atomically(path: Path, data: bytes) -> None:
    # A crash mid-write must not leave a truncated dictionary a server would load.
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        # mkstemp creates 0600; servers running as another user must read the file.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
        os.replace(tmp_name, path)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _read_dictionary(path: Path) -> Dictionary:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return Dictionary.from_file_bytes(data)
    except ValueError as exc:
        raise CommandError(f"{path}: {exc}") from exc


# --- channel dict ---------------------------------------------------------------


def next_dictionary_id(directory: Path) -> int:
    """One more than the largest id among ``directory``'s ``.mmtpdict`` files, or 1."""
    existing = sorted(directory.glob(f"*{DICTIONARY_SUFFIX}")) if directory.is_dir() else []
    ids = []
    for path in existing:
        try:
            ids.append(_read_dictionary(path).dict_id)
        except CommandError as exc:
            # Guessing past an unreadable file could reuse its id for new content.
            raise CommandError(f"{exc}; cannot choose a new id, pass --id explicitly") from None
    return max(ids, default=0) + 1


def _read_samples(paths: Sequence[Path], status: _Status) -> list[bytes]:
    samples: list[bytes] = []
    total_bytes = 0
    try:
        for path in paths:
            for sample in dicttrain.read_jsonl_samples(path):
                samples.append(sample)
                total_bytes += len(sample)
                if len(samples) % 5000 == 0:
                    status.update(f"read {len(samples):,} samples ({_megabytes(total_bytes)})...")
    except dicttrain.CorpusError as exc:
        raise CommandError(str(exc)) from exc
    status.line(f"read {len(samples):,} samples ({_megabytes(total_bytes)})")
    return samples


def _dict_train(args: argparse.Namespace) -> int:
    status = _Status()
    out: Path = args.out
    if not out.parent.is_dir():
        raise CommandError(f"output directory {out.parent} does not exist")
    dict_id = args.id if args.id is not None else next_dictionary_id(out.parent)
    samples = _read_samples(args.inputs, status)
    # Read the held-out file before training so a typo fails in seconds, not after it.
    heldout = _read_samples([args.eval], status) if args.eval is not None else None
    started_s = time.perf_counter()
    try:
        dictionary = dicttrain.train_dictionary(
            samples, dict_id, args.size, threads=args.threads, progress=status.line
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    status.line(
        f"trained {dicttrain.format_size(args.size)} dictionary "
        f"in {time.perf_counter() - started_s:.1f} s"
    )
    _write_atomically(out, dictionary.to_file_bytes())
    print(f"wrote {out}")
    _print_dictionary(dictionary)
    if heldout is not None:
        result = dicttrain.evaluate(dictionary, heldout)
        print(
            f"eval:    {result.samples:,} held-out bodies, {result.raw_bytes:,} B raw -> "
            f"{result.compressed_bytes_with_dict:,} B with dictionary "
            f"(ratio {result.ratio_with_dict:.3f}), "
            f"{result.compressed_bytes_without_dict:,} B without "
            f"(ratio {result.ratio_without_dict:.3f})"
        )
    return EXIT_OK


def _print_dictionary(dictionary: Dictionary) -> None:
    print(f"id:      {dictionary.dict_id}")
    print(f"size:    {len(dictionary.content):,} bytes")
    print(f"sha256:  {dictionary.sha256}")


def _dict_info(args: argparse.Namespace) -> int:
    _print_dictionary(_read_dictionary(args.path))
    return EXIT_OK


def _add_dict_commands(subparsers: _SubParsers) -> None:
    group = subparsers.add_parser(
        "dict",
        help="train and inspect zstd compression dictionaries (.mmtpdict)",
        description=(
            "Bodies on the wire are compressed one message at a time with a zstd dictionary "
            "both peers hold under the same id. These commands train such a dictionary from "
            "sample traffic and inspect dictionary files."
        ),
        epilog=(
            "examples:\n"
            "  channel dict train train.jsonl --out dicts/app-2.mmtpdict --eval heldout.jsonl\n"
            "  channel dict info channel/dictionaries/default-1.mmtpdict"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="dict_command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a dictionary from JSONL message samples",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            'Read every line\'s "body" from the JSONL inputs (the format of `channel corpus\n'
            "generate`), encode it as compact JSON and train a zstd dictionary on those\n"
            "bodies. Writes an .mmtpdict file (MMTP id + zstd dictionary)."
        ),
        epilog=(
            "example:\n"
            "  channel corpus generate --sessions 1250 --seed 1 --out train.jsonl\n"
            "  channel corpus generate --sessions 600 --seed 2 --out heldout.jsonl\n"
            "  channel dict train train.jsonl --id 2 --out dicts/app-2.mmtpdict "
            "--eval heldout.jsonl\n\n"
            "Ids are never reused for different content: a newer dictionary gets a larger id."
        ),
    )
    train.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT.jsonl",
        help='JSONL files of messages, one JSON object with a "body" per line',
    )
    train.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="PATH",
        help="where to write the .mmtpdict file (replaced atomically)",
    )
    train.add_argument(
        "--id",
        type=_dictionary_id,
        metavar="N",
        help="MMTP dictionary id (1..2^32-1); default: one more than the largest "
        "id among the .mmtpdict files in the output directory, or 1",
    )
    train.add_argument(
        "--size",
        type=_dictionary_size,
        default=dicttrain.DEFAULT_DICT_SIZE_BYTES,
        metavar="BYTES",
        help="dictionary size in bytes (default: %(default)s)",
    )
    train.add_argument(
        "--eval",
        type=Path,
        metavar="HELDOUT.jsonl",
        help="JSONL file NOT used for training; report bytes with and without "
        "the dictionary, compressed per message as on the wire",
    )
    train.add_argument(
        "--threads",
        type=_positive_int,
        default=dicttrain.DEFAULT_THREADS,
        metavar="N",
        help="threads for the parameter search; does not change the result (default: %(default)s)",
    )
    train.set_defaults(handler=_dict_train)

    info = commands.add_parser(
        "info",
        help="print a dictionary file's id, size and sha256",
        description="Print the id, content size and sha256 of an .mmtpdict file.",
        epilog="example:\n  channel dict info channel/dictionaries/default-1.mmtpdict",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument("path", type=Path, metavar="PATH", help="an .mmtpdict file")
    info.set_defaults(handler=_dict_info)
    add_registry_dict_commands(commands)


# --- channel corpus -------------------------------------------------------------


def _corpus_generate(args: argparse.Namespace) -> int:
    status = _Status()

    def report(sessions_done: int, messages: int) -> None:
        status.update(f"generated {sessions_done:,} sessions ({messages:,} messages)...")

    try:
        n_messages = corpus.write_corpus(
            args.out, args.sessions, args.seed, args.push_fraction, progress=report, app=args.app
        )
    except OSError as exc:
        raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    size_bytes = args.out.stat().st_size
    status.line(
        f"wrote {n_messages:,} messages in {args.sessions:,} sessions to {args.out} "
        f"({_megabytes(size_bytes)})"
    )
    return EXIT_OK


def _add_corpus_commands(subparsers: _SubParsers) -> None:
    group = subparsers.add_parser(
        "corpus",
        help="generate synthetic mobile RPC and push traffic",
        description=(
            "A synthetic, deterministic stand-in for a payment super-app's traffic: RPC "
            "requests, their responses and server pushes, grouped by session. Used to "
            "train dictionaries and by the wire-size benchmarks."
        ),
        epilog="example:\n  channel corpus generate --sessions 1250 --seed 1 --out train.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="corpus_command", metavar="COMMAND", required=True)
    generate = commands.add_parser(
        "generate",
        help="write a corpus as JSONL",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            'Write one JSON message per line: {"session", "kind": request|response|push,\n'
            '"op" or "message_id"+"topic", "headers", "body"}. The same seed always\n'
            "gives the same file; different seeds give disjoint samples, so train on one\n"
            f"seed (convention: {corpus.TRAIN_SEED}) and measure on another "
            f"({corpus.HELDOUT_SEED})."
        ),
        epilog=(
            "example (about 20,000 messages):\n"
            "  channel corpus generate --sessions 1250 --seed 1 --out train.jsonl"
        ),
    )
    generate.add_argument(
        "--sessions",
        type=_positive_int,
        required=True,
        metavar="N",
        help="number of sessions (app launches); each has ~16 messages",
    )
    generate.add_argument(
        "--seed", type=int, default=0, metavar="S", help="random seed (default: %(default)s)"
    )
    generate.add_argument(
        "--app",
        choices=corpus_apps.APP_NAMES,
        default=corpus_apps.DEFAULT_APP,
        help="which synthetic app: "
        + "; ".join(f"{name}: {corpus_apps.describe(name)}" for name in corpus_apps.APP_NAMES),
    )
    generate.add_argument(
        "--out", type=Path, required=True, metavar="PATH", help="JSONL file to write (overwritten)"
    )
    generate.add_argument(
        "--push-fraction",
        type=_fraction,
        default=corpus.DEFAULT_PUSH_FRACTION,
        metavar="F",
        help="expected share of pushes among all messages (default: "
        "%(default)s); the rest are request/response pairs",
    )
    generate.set_defaults(handler=_corpus_generate)


# --- channel preset -------------------------------------------------------------


def _preset_build(args: argparse.Namespace) -> int:
    status = _Status()
    messages: list[dict[str, object]] = []
    for path in args.inputs:
        messages.extend(_read_jsonl(path))
        status.update(f"read {len(messages):,} messages...")
    status.line(f"read {len(messages):,} messages from {len(args.inputs)} file(s)")
    try:
        built = presetbuild.build_preset(
            messages, args.id, args.name, args.max_bytes, max_change_share=args.max_change_share
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    _write_atomically(args.out, built.to_json().encode())
    status.line(
        f"wrote preset {built.preset_id} ({built.name!r}): {len(built.entries)} entries, "
        f"{built.table_bytes} table bytes -> {args.out}"
    )
    return EXIT_OK


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
    out: list[dict[str, object]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(item, dict):
            raise CommandError(f"{path}:{number}: expected a JSON object")
        out.append(item)
    return out


def _preset_info(args: argparse.Namespace) -> int:
    try:
        preset = Preset.from_json(args.path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read preset {args.path}: {exc}") from exc
    print(f"id:          {preset.preset_id}")
    print(f"name:        {preset.name}")
    print(f"entries:     {len(preset.entries)}")
    print(f"table bytes: {preset.table_bytes} (of 4096)")
    print(f"typed:       {', '.join(f'{n} ({k})' for n, k in preset.typed) or '-'}")
    print(f"connection:  {', '.join(preset.connection) or '-'}")
    print(f"never indexed: {', '.join(preset.never_indexed) or '-'}")
    return EXIT_OK


def _add_preset_commands(subparsers: _SubParsers) -> None:
    group = subparsers.add_parser(
        "preset",
        help="build and inspect HPACK preset header tables",
        description=(
            "A preset is a list of header fields both peers insert into their HPACK tables "
            "before the first message, chosen by id in HELLO, so even a fresh connection "
            "sends common headers and operation types as one-byte indices. Both the "
            "gateway and the SDK must register the same preset under the same id."
        ),
        epilog="example:\n  channel preset build train.jsonl --id 2 --name my-app --out app-2.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="preset_command", metavar="COMMAND", required=True)
    build = commands.add_parser(
        "build",
        help="build a preset from a JSONL traffic sample",
        description=(
            "Learn an app's headers from a sample of its traffic: connection-scoped names "
            "(on most requests, value rarely changing within a session: sent once per "
            "connection), typed "
            "fields (UUIDs, hex ids, timestamps, numbers, base64, W3C traceparent, "
            "templates for values of one shape with varying numbers or words, the echoed "
            "request id), "
            "never-indexed names (secret-looking or unique per message), and the most "
            "frequent :op values and header pairs HPACK would index that fit 3072 table "
            "bytes, most frequent last (dynamic index 62)."
        ),
        epilog="example:\n  channel preset build train.jsonl --id 2 --name my-app --out app-2.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("inputs", nargs="+", type=Path, metavar="INPUT.jsonl")
    build.add_argument("--id", type=_positive_int, required=True, help="preset id (>= 2)")
    build.add_argument("--name", default="app", help="a name for logs (default: %(default)s)")
    build.add_argument("--out", type=Path, required=True, metavar="PATH", help="JSON to write")
    build.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=3072,
        metavar="N",
        help="HPACK table bytes the preset may use, at most 3072 (default: %(default)s)",
    )
    build.add_argument(
        "--max-change-share",
        type=_share,
        default=presetbuild.CONNECTION_CHANGE_SHARE,
        metavar="X",
        help=(
            "a name is connection-scoped when its value changes within a session on at most "
            "this share of the requests carrying it, 0..1 (default: %(default)s)"
        ),
    )
    build.set_defaults(handler=_preset_build)
    info = commands.add_parser("info", help="show a preset file's id, name and size")
    info.add_argument("path", type=Path, metavar="PATH")
    info.set_defaults(handler=_preset_info)
    add_registry_preset_commands(commands)


# --- channel serve --------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from channel.config import ConfigError, load_config
    from channel.gateway.run import announce_listening, run_single, run_workers

    overrides = {
        "server": {
            "host": args.host,
            "port": args.port,
            "admin_port": args.admin_port,
            "workers": args.workers,
            "state_dir": args.state_dir,
            "engine": args.engine,
        },
        "log": {"level": args.log_level, "json": False if args.log_text else None},
        "api": {"port": args.api_port},
        "mqtt": {"port": args.mqtt_port, "tcp_port": args.mqtt_tcp_port},
    }
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        raise CommandError(str(exc)) from exc
    if config.server.workers > 1:
        if config.server.port == 0:
            raise CommandError("--workers > 1 needs a fixed --port (they share it)")
        return run_workers(args.config, overrides, config.server.workers)
    return run_single(config, announce=announce_listening)


def _add_serve_commands(subparsers: _SubParsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run a gateway node",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a Channel gateway node: devices connect over TLS 1.3 (ALPN mmtp/1) to the\n"
            "device port; Prometheus metrics, health and admin calls are on the admin port.\n\n"
            "With no --config it runs on embedded defaults: a dev CA and certificate and a\n"
            "token key pair are made under --state-dir (paths printed), presence is in\n"
            "memory, and RPC calls without a route get NOT_FOUND.\n\n"
            "Settings come from defaults < the TOML file < environment variables\n"
            "CHANNEL_<SECTION>__<KEY> (e.g. CHANNEL_SERVER__PORT=8443) < these flags.\n"
            "See channel/config.py for every key.\n\n"
            "Signals: SIGTERM/SIGINT drain (GOAWAY with a reconnect hint, calls in flight\n"
            "finish, then exit); SIGHUP reloads the [rpc] routes and [tls] files without\n"
            "dropping devices."
        ),
        epilog=(
            "examples:\n"
            "  channel serve                                # dev defaults on 127.0.0.1:8443\n"
            "  channel serve --config /etc/channel/channel.toml --workers 4\n"
            "  CHANNEL_LIMITS__MAX_FRAME_SIZE=65536 channel serve --port 0   # any free port"
        ),
    )
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve.add_argument("--host", help="device listener address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="device port, 0 = any free port (default 8443)")
    serve.add_argument("--admin-port", type=int, help="admin/metrics port, 0 = any (default 9100)")
    serve.add_argument("--api-port", type=int, help="HTTP push API port, 0 = any (default 8080)")
    serve.add_argument(
        "--mqtt-port", type=int, help="MQTT over TLS port, 0 = any free port (default 8883)"
    )
    serve.add_argument(
        "--mqtt-tcp-port",
        type=int,
        help="plain TCP MQTT port, 0 = any free port (default: off; for test rigs)",
    )
    serve.add_argument("--workers", type=_positive_int, help="processes sharing the port")
    serve.add_argument(
        "--engine",
        choices=["native", "python"],
        help="who moves the bytes: the Rust engine (default) or the Python reference",
    )
    serve.add_argument(
        "--state-dir", help="where dev certificates and keys live (default .channel)"
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-text", action="store_true", help="human-readable logs, not JSON")
    serve.set_defaults(handler=_serve)


# --- channel doctor -------------------------------------------------------------


def _doctor(args: argparse.Namespace) -> int:
    import asyncio

    from channel import doctor
    from channel.config import ConfigError, load_config

    try:
        config = load_config(args.config, overrides={"server": {"engine": args.engine}})
    except ConfigError as exc:
        raise CommandError(str(exc)) from exc
    checks = asyncio.run(doctor.run_checks(config))
    print(doctor.render(checks, args.json))
    return 1 if any(c.status == doctor.FAIL for c in checks) else EXIT_OK


def _add_doctor_commands(subparsers: _SubParsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check that this host can run a node with this configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Check what a node needs for many connections, each with its fix: open-file\n"
            "limit against server.max_connections, net.core.somaxconn, TCP Fast Open, the\n"
            "ephemeral port range (behind a balancer: its connections to this node), memory\n"
            "per device at the configured limits, the certificate's expiry, the fleet's\n"
            "ticket secret, and whether Redis and the [rpc] upstreams answer.\n\n"
            "Exit code 1 if a check FAILs (the node would break under its configured\n"
            "load), 0 otherwise (warnings cost devices something but work)."
        ),
        epilog=(
            "examples:\n"
            "  channel doctor --config /etc/channel/channel.toml\n"
            "  channel doctor --config channel.toml --json | jq '.[] | select(.status != \"ok\")'"
        ),
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--engine", choices=["native", "python"], help="override server.engine")
    parser.add_argument("--json", action="store_true", help="one JSON list of checks")
    parser.set_defaults(handler=_doctor)


# --- channel token --------------------------------------------------------------


def _token_key_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= tokens.MAX_KEY_ID:
        raise argparse.ArgumentTypeError(f"must be 0..{tokens.MAX_KEY_ID}, got {value}")
    return value


def _next_token_key_id(directory: Path) -> int:
    """One more than the largest ``token-<id>`` key id in ``directory``, or 1."""
    ids = [
        key_id
        for path in (directory.glob("token-*") if directory.is_dir() else ())
        if (key_id := tokens.key_id_from_path(path)) is not None
    ]
    key_id = max(ids, default=0) + 1
    if key_id > tokens.MAX_KEY_ID:
        raise CommandError(f"{directory} already uses key id {tokens.MAX_KEY_ID}; pass --id")
    return key_id


def _key_id_for(path: Path, explicit: int | None, kind: str) -> int:
    if explicit is not None:
        return explicit
    key_id = tokens.key_id_from_path(path)
    if key_id is None:
        raise CommandError(
            f"cannot tell the key id from the file name {path.name!r} "
            f"(expected token-<id>.{kind}); pass --key-id"
        )
    return key_id


def _utc(unix_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


def _token_keygen(args: argparse.Namespace) -> int:
    key_id = args.id if args.id is not None else _next_token_key_id(args.dir)
    try:
        private_path, public_path = tokens.generate_keypair(args.dir, key_id)
    except FileExistsError as exc:
        raise CommandError(f"{exc} (pass another --id)") from None
    except OSError as exc:
        raise CommandError(f"cannot write keys in {args.dir}: {exc.strerror or exc}") from None
    print(f"private: {private_path}")
    print(f"public:  {public_path}")
    print(
        f"key id {key_id}: keep {private_path.name} secret on the token issuer; copy "
        f"{public_path.name} into every gateway's token key directory",
        file=sys.stderr,
    )
    return EXIT_OK


def _token_issue(args: argparse.Namespace) -> int:
    key_id = _key_id_for(args.key, args.key_id, "key")
    try:
        private_key = tokens.load_private_key(args.key)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    now = int(time.time())
    try:
        claims = tokens.DeviceClaims(
            device_id=args.device,
            user_id=args.user,
            app_id=args.app,
            issued_at=now,
            expires_at=now + args.ttl,
            scopes=tuple(args.scope or ()),
        )
        token = tokens.TokenSigner(private_key, key_id).issue(claims)
    except ValueError as exc:
        raise CommandError(f"cannot issue token: {exc}") from None
    print(tokens.encode_token_text(token))
    print(
        f"token for device {claims.device_id!r} (user {claims.user_id!r}, app "
        f"{claims.app_id!r}), key id {key_id}, {len(token)} bytes, expires "
        f"{_utc(claims.expires_at)} (in {args.ttl} s)",
        file=sys.stderr,
    )
    return EXIT_OK


def _token_verifier(args: argparse.Namespace) -> tokens.TokenVerifier:
    try:
        if args.pub.is_dir():
            keys = tokens.load_verification_keys(args.pub)
            if not keys:
                raise CommandError(f"no token-<id>.pub files in {args.pub}")
            return tokens.TokenVerifier(keys)
        key_id = _key_id_for(args.pub, args.key_id, "pub")
        return tokens.TokenVerifier({key_id: tokens.load_public_key(args.pub)})
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _token_verify(args: argparse.Namespace) -> int:
    verifier = _token_verifier(args)
    text = sys.stdin.read() if args.token == "-" else args.token
    now = time.time()
    try:
        token = tokens.decode_token_text(text)
        claims = verifier.verify(token, device_id=args.device, app_id=args.app, now=now)
    except tokens.TokenError as exc:
        raise CommandError(f"token rejected: {exc}") from None
    print(f"device:  {claims.device_id}")
    print(f"user:    {claims.user_id}")
    print(f"app:     {claims.app_id or '(none)'}")
    print(f"scopes:  {' '.join(claims.scopes) or '(none)'}")
    print(f"key id:  {tokens.token_key_id(token)}")
    print(f"issued:  {_utc(claims.issued_at)} (unix {claims.issued_at})")
    print(
        f"expires: {_utc(claims.expires_at)} (unix {claims.expires_at}, "
        f"in {claims.expires_at - int(now)} s)"
    )
    print(f"size:    {len(token)} bytes")
    return EXIT_OK


def _add_token_commands(subparsers: _SubParsers) -> None:
    group = subparsers.add_parser(
        "token",
        help="create token keys, issue and verify device tokens",
        description=(
            "Devices authenticate with a token: their device id, user id, app id, expiry and\n"
            "scopes, signed with Ed25519 (about 140 bytes). Your auth service holds the\n"
            "private key (token-<id>.key) and issues tokens; gateways hold only the public\n"
            "keys (token-<id>.pub), so a gateway can check tokens but never mint them. The\n"
            "key id travels in the token, so several keys can be accepted while rotating."
        ),
        epilog=(
            "examples:\n"
            "  channel token keygen --dir keys\n"
            "  channel token issue --key keys/token-1.key --device dev-42 --user u-7 "
            "--app wallet > tok.txt\n"
            "  channel token verify --pub keys --device dev-42 --app wallet - < tok.txt"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="token_command", metavar="COMMAND", required=True)

    keygen = commands.add_parser(
        "keygen",
        help="write a new Ed25519 token key pair",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write DIR/token-<id>.key (PKCS8 PEM private key, mode 0600) and\n"
            "DIR/token-<id>.pub (public key) and print their paths. Existing files are\n"
            "never replaced: tokens already signed with a key would stop verifying."
        ),
        epilog=(
            "example (rotation: add key 2, give gateways both .pub files, switch the\n"
            "issuer to token-2.key, delete token-1.pub once old tokens expired):\n"
            "  channel token keygen --dir keys --id 2"
        ),
    )
    keygen.add_argument(
        "--dir", type=Path, required=True, metavar="DIR", help="directory for the key files"
    )
    keygen.add_argument(
        "--id",
        type=_token_key_id,
        metavar="N",
        help="key id 0..255; default: one more than the largest id in DIR, or 1",
    )
    keygen.set_defaults(handler=_token_keygen)

    issue = commands.add_parser(
        "issue",
        help="sign a token for a device and print it (base64url)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Sign a token with a private key and print it as base64url on stdout (nothing\n"
            "else goes to stdout; a summary goes to stderr). For development and tests;\n"
            "in production your auth service issues tokens with the same format\n"
            "(channel.security.tokens.TokenSigner)."
        ),
        epilog=(
            "example:\n"
            "  channel token issue --key keys/token-1.key --device dev-42 --user u-7 \\\n"
            "      --app wallet --ttl 86400 --scope rpc --scope push"
        ),
    )
    issue.add_argument(
        "--key", type=Path, required=True, metavar="PRIVATE.key", help="private key file"
    )
    issue.add_argument(
        "--key-id",
        type=_token_key_id,
        metavar="N",
        help="key id to put in the token; default: from the file name token-<id>.key",
    )
    issue.add_argument("--device", required=True, metavar="ID", help="device id (as in HELLO)")
    issue.add_argument("--user", required=True, metavar="ID", help="user id owning the device")
    issue.add_argument("--app", required=True, metavar="ID", help="app id (as in HELLO)")
    issue.add_argument(
        "--ttl",
        type=_positive_int,
        default=3600,
        metavar="SECONDS",
        help="lifetime from now (default: %(default)s)",
    )
    issue.add_argument(
        "--scope",
        action="append",
        metavar="S",
        help="a scope granted to the device; repeat for several (at most 16)",
    )
    issue.set_defaults(handler=_token_issue)

    verify = commands.add_parser(
        "verify",
        help="check a token and print its claims",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Check a token the way a gateway does (signature, device, app, expiry with\n"
            "30 s leeway) and print its claims. A rejected token prints the reason and the\n"
            "error code the gateway would send, and exits with 2."
        ),
        epilog=(
            "examples:\n"
            "  channel token verify --pub keys/token-1.pub --device dev-42 TOKEN\n"
            "  channel token issue ... | channel token verify --pub keys --device dev-42 -"
        ),
    )
    verify.add_argument(
        "--pub",
        type=Path,
        required=True,
        metavar="PATH",
        help="a public key file, or a directory of token-<id>.pub files",
    )
    verify.add_argument(
        "--key-id",
        type=_token_key_id,
        metavar="N",
        help="key id of a --pub file whose name is not token-<id>.pub",
    )
    verify.add_argument("--device", required=True, metavar="ID", help="the device presenting it")
    verify.add_argument("--app", metavar="ID", help="also require this app id")
    verify.add_argument("token", metavar="TOKEN", help="the base64url token, or - for stdin")
    verify.set_defaults(handler=_token_verify)


# --- channel apikey -------------------------------------------------------------


def _scope_list(text: str) -> list[str]:
    scopes = [s.strip() for s in text.replace("+", ",").split(",") if s.strip()]
    try:
        api_keys.check_scopes(scopes)
    except api_keys.ApiKeyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return scopes


def _apikey_new(args: argparse.Namespace) -> int:
    try:
        key, record = api_keys.new_api_key(args.id, args.scopes)
    except api_keys.ApiKeyError as exc:
        raise CommandError(str(exc)) from None
    print(f"key:    {key}")
    print(f"record: {record}")
    print(
        "Give the key to the backend that calls the API (Authorization: Bearer <key>); it is\n"
        "shown only this once and stored nowhere. Add the record to every gateway, e.g.\n"
        f'  [api]\n  keys = ["{record}"]\n'
        f"or CHANNEL_API__KEYS='[\"{record}\"]'. To revoke the key, delete its record.",
        file=sys.stderr,
    )
    return EXIT_OK


def _add_apikey_commands(subparsers: _SubParsers) -> None:
    scope_help = "\n".join(f"  {name:9} {what}" for name, what in api_keys.SCOPES.items())
    group = subparsers.add_parser(
        "apikey",
        help="make API keys for the HTTP push API",
        description=(
            "Backends call the HTTP push API (/v1/push, /v1/messages/..., /v1/devices/...)\n"
            "with an API key: Authorization: Bearer ck_<id>_<secret>. Gateways keep only a\n"
            "record per key in [api] keys (the key id, the SHA-256 of the key, its scopes),\n"
            "so a leaked config file grants nothing. The admin port's /admin/* takes keys\n"
            "with the admin scope from the same records. With no keys configured, a node\n"
            "makes a development key with every scope in <state_dir>/api/dev.key."
        ),
        epilog="example:\n  channel apikey new --id billing --scopes push,status",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = group.add_subparsers(dest="apikey_command", metavar="COMMAND", required=True)
    new = commands.add_parser(
        "new",
        help="make a new key and print it with its [api] keys record",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Make a random key (32 bytes) and print two lines on stdout:\n"
            "  key:    ck_<id>_<secret>      give this to the backend, once\n"
            "  record: <id>:<sha256>:<scopes>  put this in [api] keys on every gateway\n\n"
            f"scopes:\n{scope_help}\n  *         all of the above but admin"
        ),
        epilog=(
            "examples:\n"
            "  channel apikey new --id billing --scopes push,status\n"
            "  channel apikey new --id support --scopes presence,kick,rpc\n"
            "  channel apikey new --id ops --scopes '*'\n"
            "  channel apikey new --id ops-admin --scopes admin   # the admin port\n\n"
            "rotation: make a key with a new id, add its record, move the backend to it,\n"
            "then delete the old record."
        ),
    )
    new.add_argument(
        "--id",
        required=True,
        metavar="ID",
        help="key id, 1..64 of A-Z a-z 0-9 . - (shown in logs and errors; not secret)",
    )
    new.add_argument(
        "--scopes",
        required=True,
        type=_scope_list,
        metavar="S,S",
        help="comma-separated scopes: push, status, revoke, presence, kick, rpc, admin, or *",
    )
    new.set_defaults(handler=_apikey_new)


# --- entry point ----------------------------------------------------------------

_COMMAND_GROUPS: tuple[Callable[[_SubParsers], None], ...] = (
    _add_serve_commands,
    _add_corpus_commands,
    _add_dict_commands,
    _add_preset_commands,
    _add_token_commands,
    _add_apikey_commands,
    _add_admin_commands,
    _add_device_commands,
    _add_fleet_commands,
    _add_doctor_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="channel",
        description="Channel: a mobile long-connection gateway (MMTP over TLS, pushes, RPC, MQTT).",
        epilog=(
            "example:\n"
            "  channel corpus generate --sessions 1250 --seed 1 --out train.jsonl\n"
            "  channel dict train train.jsonl --out dicts/app-2.mmtpdict\n\n"
            "Run `channel COMMAND --help` for a command's options and an example."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_commands in _COMMAND_GROUPS:
        add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (``--help`` returns 0, usage errors 2)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits for --help and usage errors; return its code so callers
        # (tests, embedding tools) get an int like every other path.
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except (CommandError, RegistryCommandError) as exc:
        print(f"channel: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        # Point stdout at devnull so the interpreter's final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
