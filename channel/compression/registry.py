"""Where a fleet keeps each app's dictionaries and presets: files or Redis.

Per app (HELLO ``app_id``) the registry holds every dictionary ever published
for it (``.mmtpdict``, spec 10.7) and its presets (spec 9.3). An app's
*current* dictionary is its newest (largest id); older ones stay, so devices
holding them keep working. Dictionary and preset ids are unique across all
apps: a device's HELLO names ids, not apps.

* ``FileRegistry``: ``<dir>/<app>/dict-<id>.mmtpdict`` and
  ``<dir>/<app>/preset-<id>.json`` (one node, or a shared volume);
* ``RedisRegistry``: hashes ``<prefix>:comp:dicts:<app>`` and
  ``<prefix>:comp:presets:<app>`` (id -> file bytes), the set of apps, an id
  counter and a version the nodes poll (a fleet; single-key commands only, so
  Redis Cluster works).

Gateways poll ``version()`` and reload on a change; ``channel dict publish``
and the gateway's retraining job publish.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from channel.wire.dictionaries import Dictionary
from channel.wire.presets import Preset

#: App ids a registry accepts (they name files and Redis keys).
APP_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: Ids below this are the packaged ones (dictionary 1, presets 0-2) and never published.
FIRST_PUBLISHED_ID = 2
_DICT_FILE = re.compile(r"dict-(\d+)\.mmtpdict")
_PRESET_FILE = re.compile(r"preset-(\d+)\.json")


_NEXT_ID = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('INCR', KEYS[1])
"""


class RegistryError(ValueError):
    """A publish the registry refuses; the message says why."""


def check_app_id(app: str) -> str:
    if not APP_ID.fullmatch(app):
        raise RegistryError(f"app id {app!r} must be 1-128 characters of [A-Za-z0-9._-]")
    return app


@dataclass(frozen=True)
class AppArtifacts:
    """What the registry holds for one app."""

    dictionaries: tuple[Dictionary, ...] = ()
    presets: tuple[Preset, ...] = ()

    @property
    def current_dictionary(self) -> Dictionary | None:
        return max(self.dictionaries, key=lambda d: d.dict_id, default=None)


@dataclass(frozen=True)
class Snapshot:
    version: str
    apps: dict[str, AppArtifacts] = field(default_factory=dict)

    def all_ids(self) -> tuple[set[int], set[int]]:
        """(dictionary ids, preset ids) over every app."""
        dicts = {d.dict_id for a in self.apps.values() for d in a.dictionaries}
        presets = {p.preset_id for a in self.apps.values() for p in a.presets}
        return dicts, presets


class Registry(ABC):
    """See the module docstring."""

    @abstractmethod
    async def version(self) -> str:
        """Changes whenever anything was published."""

    @abstractmethod
    async def load(self) -> Snapshot: ...

    @abstractmethod
    async def _store_dictionary(self, app: str, dictionary: Dictionary) -> None: ...

    @abstractmethod
    async def _store_preset(self, app: str, preset: Preset) -> None: ...

    @abstractmethod
    async def next_dictionary_id(self) -> int:
        """A dictionary id no app has used (larger than every one published)."""

    @abstractmethod
    async def try_lock(self, name: str, ttl_s: float) -> bool:
        """Take a fleet-wide lock (retraining one app at a time); False if held."""

    async def publish_dictionary(self, app: str, dictionary: Dictionary) -> None:
        """Add ``dictionary`` to ``app``; it becomes the app's current one if its id is
        the app's largest. Refuses an id some app already holds with other content."""
        check_app_id(app)
        if dictionary.dict_id < FIRST_PUBLISHED_ID:
            raise RegistryError(f"dictionary id {dictionary.dict_id} is the packaged one")
        snapshot = await self.load()
        for other, artifacts in snapshot.apps.items():
            for held in artifacts.dictionaries:
                if held.dict_id == dictionary.dict_id and (
                    held.content != dictionary.content or other != app
                ):
                    raise RegistryError(
                        f"dictionary id {dictionary.dict_id} is already published for app "
                        f"{other!r}; ids are never reused (train it under another --id)"
                    )
        await self._store_dictionary(app, dictionary)

    async def publish_preset(self, app: str, preset: Preset) -> None:
        check_app_id(app)
        if preset.preset_id <= FIRST_PUBLISHED_ID:
            raise RegistryError(f"preset id {preset.preset_id} is a packaged one (0-2)")
        snapshot = await self.load()
        for other, artifacts in snapshot.apps.items():
            for held in artifacts.presets:
                if held.preset_id == preset.preset_id and (held != preset or other != app):
                    raise RegistryError(
                        f"preset id {preset.preset_id} is already published for app "
                        f"{other!r}; a published preset never changes (build it under another --id)"
                    )
        await self._store_preset(app, preset)


class FileRegistry(Registry):
    """``<dir>/<app>/dict-<id>.mmtpdict`` and ``<dir>/<app>/preset-<id>.json``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _listing(self) -> list[tuple[str, int, int]]:
        if not self.directory.is_dir():
            return []
        out = []
        for path in sorted(self.directory.glob("*/*")):
            if _DICT_FILE.fullmatch(path.name) or _PRESET_FILE.fullmatch(path.name):
                stat = path.stat()
                out.append((str(path.relative_to(self.directory)), stat.st_size, stat.st_mtime_ns))
        return out

    async def version(self) -> str:
        listing = await asyncio.to_thread(self._listing)
        return hashlib.sha256(repr(listing).encode()).hexdigest()[:16]

    def load_now(self) -> Snapshot:
        apps: dict[str, AppArtifacts] = {}
        listing = self._listing()
        for app_dir in sorted({p.split("/")[0] for p, _, _ in listing}):
            if not APP_ID.fullmatch(app_dir):
                continue
            folder = self.directory / app_dir
            dicts = [
                Dictionary.from_file_bytes(p.read_bytes())
                for p in sorted(folder.glob("dict-*.mmtpdict"))
                if _DICT_FILE.fullmatch(p.name)
            ]
            presets = [
                Preset.from_json(p.read_text(encoding="utf-8"))
                for p in sorted(folder.glob("preset-*.json"))
                if _PRESET_FILE.fullmatch(p.name)
            ]
            apps[app_dir] = AppArtifacts(
                tuple(sorted(dicts, key=lambda d: d.dict_id)),
                tuple(sorted(presets, key=lambda p: p.preset_id)),
            )
        return Snapshot(hashlib.sha256(repr(listing).encode()).hexdigest()[:16], apps)

    async def load(self) -> Snapshot:
        return await asyncio.to_thread(self.load_now)

    def _write(self, app: str, name: str, data: bytes) -> None:
        folder = self.directory / app
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / name)

    async def _store_dictionary(self, app: str, dictionary: Dictionary) -> None:
        name = f"dict-{dictionary.dict_id}.mmtpdict"
        await asyncio.to_thread(self._write, app, name, dictionary.to_file_bytes())

    async def _store_preset(self, app: str, preset: Preset) -> None:
        name = f"preset-{preset.preset_id}.json"
        await asyncio.to_thread(self._write, app, name, preset.to_json().encode())

    async def next_dictionary_id(self) -> int:
        snapshot = await self.load()
        dicts, _ = snapshot.all_ids()
        return max(dicts | {FIRST_PUBLISHED_ID - 1}) + 1

    async def try_lock(self, name: str, ttl_s: float) -> bool:
        return True  # one node per directory: nothing to race with


class RedisRegistry(Registry):
    """The fleet's registry in Redis (see the module docstring)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = f"{prefix}:comp"

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def version(self) -> str:
        value = await self.client.get(self._key("version"))
        return value.decode() if isinstance(value, bytes) else str(value or "0")

    async def load(self) -> Snapshot:
        version = await self.version()
        apps: dict[str, AppArtifacts] = {}
        for raw_app in sorted(await self.client.smembers(self._key("apps"))):
            app = raw_app.decode() if isinstance(raw_app, bytes) else str(raw_app)
            if not APP_ID.fullmatch(app):
                continue
            dicts = await self.client.hgetall(self._key("dicts", app))
            presets = await self.client.hgetall(self._key("presets", app))
            apps[app] = AppArtifacts(
                tuple(
                    sorted(
                        (Dictionary.from_file_bytes(v) for v in dicts.values()),
                        key=lambda d: d.dict_id,
                    )
                ),
                tuple(
                    sorted(
                        (Preset.from_json(v) for v in presets.values()),
                        key=lambda p: p.preset_id,
                    )
                ),
            )
        return Snapshot(version, apps)

    async def _store_dictionary(self, app: str, dictionary: Dictionary) -> None:
        await self.client.hset(
            self._key("dicts", app), str(dictionary.dict_id), dictionary.to_file_bytes()
        )
        await self._published(app)

    async def _store_preset(self, app: str, preset: Preset) -> None:
        await self.client.hset(
            self._key("presets", app), str(preset.preset_id), preset.to_json().encode()
        )
        await self._published(app)

    async def _published(self, app: str) -> None:
        await self.client.sadd(self._key("apps"), app)
        await self.client.incr(self._key("version"))

    async def next_dictionary_id(self) -> int:
        snapshot = await self.load()
        dicts, _ = snapshot.all_ids()
        floor = max(dicts | {FIRST_PUBLISHED_ID - 1})
        # Atomically: the counter starts above every id already published (files
        # copied in, say), then counts; two nodes never get the same id.
        value = await self.client.eval(_NEXT_ID, 1, self._key("next_dict_id"), floor)
        return int(value)

    async def try_lock(self, name: str, ttl_s: float) -> bool:
        taken = await self.client.set(
            self._key("lock", name), b"1", nx=True, px=max(1, int(ttl_s * 1000))
        )
        return bool(taken)
