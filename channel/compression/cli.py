"""``channel dict publish|list|retrain`` and ``channel preset publish``: the registry.

The registry is the fleet's store of each app's dictionaries and presets
(``channel/compression/registry.py``): the directory ``[compression] dir``
(default ``<state_dir>/compression``) or Redis (``[compression] registry =
"redis"``), read from ``--config`` like ``channel serve`` (environment
overrides included) or given as ``--registry-dir``. Running gateways pick up
what is published within ``reload_interval_s`` and deliver a new current
dictionary to the app's connected devices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from channel.compression.registry import FileRegistry, RedisRegistry, Registry, RegistryError
from channel.compression.trainer import retrain
from channel.config import ConfigError, load_config
from channel.dicttrain import DEFAULT_DICT_SIZE_BYTES, CorpusError
from channel.wire.dictionaries import Dictionary
from channel.wire.presets import Preset

_SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
T = TypeVar("T")


class RegistryCommandError(Exception):
    """A user-facing failure: printed as ``channel: error: ...`` with exit status 2."""


def _registry(args: argparse.Namespace) -> Registry:
    if args.registry_dir is not None:
        return FileRegistry(args.registry_dir)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise RegistryCommandError(str(exc)) from exc
    comp = config.compression
    if comp.registry == "redis":
        from redis.asyncio import Redis
        from redis.asyncio.cluster import RedisCluster

        push = config.push
        client: Any = (
            RedisCluster.from_url(push.redis_url)
            if push.redis_cluster
            else Redis.from_url(push.redis_url)
        )
        return RedisRegistry(client, push.key_prefix)
    return FileRegistry(Path(comp.dir) if comp.dir else config.state_dir / "compression")


def _run(args: argparse.Namespace, work: Callable[[Registry], Awaitable[T]]) -> T:
    async def main() -> T:
        registry = _registry(args)
        try:
            return await work(registry)
        finally:
            client = getattr(registry, "client", None)
            if client is not None:
                await client.aclose()

    try:
        return asyncio.run(main())
    except RegistryError as exc:
        raise RegistryCommandError(str(exc)) from exc
    except OSError as exc:
        raise RegistryCommandError(f"registry: {exc}") from exc


def _publish_dict(args: argparse.Namespace) -> int:
    try:
        dictionary = Dictionary.from_file_bytes(args.path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RegistryCommandError(f"cannot read {args.path}: {exc}") from exc

    async def work(registry: Registry) -> None:
        await registry.publish_dictionary(args.app, dictionary)

    _run(args, work)
    print(
        f"published dictionary {dictionary.dict_id} for app {args.app} ({dictionary.sha256[:16]})"
    )
    return 0


def _publish_preset(args: argparse.Namespace) -> int:
    try:
        preset = Preset.from_json(args.path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RegistryCommandError(f"cannot read {args.path}: {exc}") from exc

    async def work(registry: Registry) -> None:
        await registry.publish_preset(args.app, preset)

    _run(args, work)
    print(f"published preset {preset.preset_id} ({preset.name!r}) for app {args.app}")
    return 0


def _list(args: argparse.Namespace) -> int:
    snapshot = _run(args, lambda registry: registry.load())
    out: dict[str, Any] = {"version": snapshot.version, "apps": {}}
    for app, artifacts in snapshot.apps.items():
        if args.app and app != args.app:
            continue
        current = artifacts.current_dictionary
        out["apps"][app] = {
            "current_dictionary": current.dict_id if current else None,
            "dictionaries": [
                {"id": d.dict_id, "bytes": len(d.content), "sha256": d.sha256}
                for d in artifacts.dictionaries
            ],
            "presets": [
                {
                    "id": p.preset_id,
                    "name": p.name,
                    "entries": len(p.entries),
                    "typed": len(p.typed),
                }
                for p in artifacts.presets
            ],
        }
    print(json.dumps(out, indent=2))
    return 0


def _read_sample_bodies(paths: list[Path]) -> list[tuple[int, bytes]]:
    """(device key, body) from JSONL messages; the session stands for the device."""
    from channel.compression.sampler import device_key
    from channel.corpus import message_body_bytes

    samples: list[tuple[int, bytes]] = []
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise RegistryCommandError(f"cannot read {path}: {exc.strerror or exc}") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                message = json.loads(line)
                body = message_body_bytes(message)
            except (ValueError, KeyError, TypeError) as exc:
                raise RegistryCommandError(
                    f"{path}:{number}: not a corpus message ({exc})"
                ) from exc
            samples.append((device_key(f"{path}:{message.get('session', number)}"), body))
    return samples


def _retrain(args: argparse.Namespace) -> int:
    samples = _read_sample_bodies(args.samples)

    async def work(registry: Registry) -> str:
        snapshot = await registry.load()
        artifacts = snapshot.apps.get(args.app)
        current = artifacts.current_dictionary if artifacts else None
        new_id = await registry.next_dictionary_id()
        try:
            verdict = await asyncio.to_thread(retrain, samples, current, new_id, args.size)
        except (ValueError, CorpusError) as exc:
            raise RegistryError(str(exc)) from exc
        if not verdict.pays(args.min_saving) or args.dry_run:
            why = "dry run" if args.dry_run else f"saves less than {args.min_saving:.0%}"
            return f"{verdict.describe()}: not published ({why})"
        await registry.publish_dictionary(args.app, verdict.candidate)
        return f"{verdict.describe()}: published as dictionary {verdict.candidate.dict_id}"

    print(_run(args, work))
    return 0


def _registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the gateway's config (its [compression])"
    )
    parser.add_argument(
        "--registry-dir",
        type=Path,
        metavar="DIR",
        help="a files registry directory (instead of --config)",
    )
    parser.add_argument("--app", required=True, help="the app id (HELLO app_id)")


def add_registry_dict_commands(commands: _SubParsers) -> None:
    """``channel dict publish``, ``list``, ``retrain``."""
    publish = commands.add_parser(
        "publish",
        help="publish a dictionary for an app (it becomes current if its id is the largest)",
        description=__doc__.split("\n\n")[1],
        epilog="example:\n  channel dict publish dicts/chirp-12.mmtpdict --app com.example.chirp "
        "--config channel.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    publish.add_argument("path", type=Path, metavar="FILE.mmtpdict")
    _registry_options(publish)
    publish.set_defaults(handler=_publish_dict)
    listing = commands.add_parser("list", help="what the registry holds, per app")
    listing.add_argument("--config", type=Path, metavar="FILE")
    listing.add_argument("--registry-dir", type=Path, metavar="DIR")
    listing.add_argument("--app", default="", help="one app only")
    listing.set_defaults(handler=_list)
    retrain_cmd = commands.add_parser(
        "retrain",
        help="train a candidate on samples, publish it only if it beats the current one",
        description=(
            "Split the samples by session (device), train a candidate on 80 %, compress the\n"
            "other 20 % one body at a time with it and with the app's current dictionary,\n"
            "and publish the candidate under a new id only if it saves at least --min-saving."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    retrain_cmd.add_argument("samples", nargs="+", type=Path, metavar="SAMPLES.jsonl")
    _registry_options(retrain_cmd)
    retrain_cmd.add_argument("--min-saving", type=float, default=0.03, help="default 0.03")
    retrain_cmd.add_argument("--size", type=int, default=DEFAULT_DICT_SIZE_BYTES, help="bytes")
    retrain_cmd.add_argument("--dry-run", action="store_true", help="evaluate, publish nothing")
    retrain_cmd.set_defaults(handler=_retrain)


def add_registry_preset_commands(commands: _SubParsers) -> None:
    """``channel preset publish``."""
    publish = commands.add_parser(
        "publish",
        help="publish a preset for an app (gateways accept HELLOs naming it)",
        epilog="example:\n  channel preset publish chirp-21.json --app com.example.chirp "
        "--config channel.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    publish.add_argument("path", type=Path, metavar="FILE.json")
    _registry_options(publish)
    publish.set_defaults(handler=_publish_preset)
