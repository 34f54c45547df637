"""Per-app compression on a gateway node: dictionaries and presets, delivery, retraining.

One ``CompressionService`` per node. It loads every app's dictionaries and
presets from the registry (files or Redis) into the node's body codec and
preset table (ids are unique across apps, so one codec serves every app),
tells each device its app's current dictionary in HELLO_ACK and asks the
engine to deliver it when the HELLO did not list it, polls the registry and
hands newly published dictionaries to the engines (which deliver them to
connected devices of that app, without a reconnect), keeps per-app body
usage counters (the Python engine's; the native engine keeps its own),
samples bodies of opted-in apps and retrains their dictionaries.

Apps without a dictionary of their own use the packaged dictionary 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from channel.compression.registry import FileRegistry, RedisRegistry, Registry, Snapshot
from channel.compression.sampler import BodySampler
from channel.compression.trainer import Verdict, retrain
from channel.config import CompressionConfig, PushConfig
from channel.logs import fields
from channel.wire import BodyCodec, Dictionary, Hello
from channel.wire.body import BodyUsage
from channel.wire.presets import Preset, known_presets, preset_by_id, register_preset

log = logging.getLogger("channel.compression")

#: The usage row of devices whose app has no dictionary or preset of its own.
OTHER_APPS = ""


class CompressionListener(Protocol):
    """An engine, told of what the registry published while the node runs."""

    def dictionary_published(self, app_id: str, dictionary: Dictionary) -> None:
        """Hold ``dictionary`` and deliver it to the app's connected devices."""

    def preset_published(self, preset: Preset) -> None:
        """Accept HELLOs naming ``preset`` from now on."""


@dataclass
class AppState:
    """What the node knows of one app."""

    dictionary_ids: list[int] = field(default_factory=list)
    preset_ids: list[int] = field(default_factory=list)
    #: Deliveries asked of the engines, by dictionary id.
    deliveries: dict[int, int] = field(default_factory=dict)
    last_retrain: str = ""

    @property
    def current(self) -> int:
        return max(self.dictionary_ids, default=0)


class CompressionService:
    """See the module docstring."""

    def __init__(
        self,
        config: CompressionConfig,
        *,
        state_dir: Path,
        push: PushConfig,
        body_codec: BodyCodec,
        default_dictionary_id: int,
        registry: Registry | None = None,
    ) -> None:
        self.config = config
        self.body_codec = body_codec
        self.default_dictionary_id = default_dictionary_id
        self._state_dir = state_dir
        self._push = push
        self.registry = registry
        self.apps: dict[str, AppState] = {}
        self.listeners: list[CompressionListener] = []
        self.usage: dict[str, BodyUsage] = {OTHER_APPS: BodyUsage()}
        self.sampler = BodySampler(
            frozenset(config.sample_apps),
            fraction=config.sample_fraction,
            max_bodies=config.sample_max_bodies,
            max_body_bytes=config.sample_max_body_bytes,
            per_device=config.sample_per_device,
            rng=random.Random(),
        )
        for app in config.sample_apps:
            self.usage.setdefault(app, BodyUsage())
        self._version = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.reload_errors = 0
        self.published = 0

    # ------------------------------------------------------------------ start

    def _make_registry(self) -> Registry:
        if self.config.registry == "redis":
            from redis.asyncio import Redis
            from redis.asyncio.cluster import RedisCluster

            client: Any
            if self._push.redis_cluster:
                client = RedisCluster.from_url(self._push.redis_url, socket_timeout=5)
            else:
                client = Redis.from_url(self._push.redis_url, socket_timeout=5)
            return RedisRegistry(client, self._push.key_prefix)
        directory = Path(self.config.dir) if self.config.dir else self._state_dir / "compression"
        return FileRegistry(directory)

    async def load(self) -> None:
        """Read the registry once (before the engines are built: they start with it)."""
        if self.registry is None:
            self.registry = self._make_registry()
        snapshot = await self.registry.load()
        self._apply(snapshot, announce=False)

    def start(self) -> None:
        """Poll the registry and, if any app is sampled, retrain on a schedule."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._poll_forever()))
        if self.config.sample_apps and self.config.retrain_interval_s > 0:
            self._tasks.append(loop.create_task(self._retrain_forever()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        client = getattr(self.registry, "client", None)
        if client is not None:
            await client.aclose()

    # -------------------------------------------------------------- registry

    def _apply(self, snapshot: Snapshot, *, announce: bool) -> None:
        self._version = snapshot.version
        store = self.body_codec.dictionaries
        for app, artifacts in snapshot.apps.items():
            state = self.apps.setdefault(app, AppState())
            self.usage.setdefault(app, BodyUsage())
            for preset in artifacts.presets:
                if preset.preset_id in known_presets() and preset_by_id(preset.preset_id) == preset:
                    continue
                try:
                    register_preset(preset)
                except ValueError as exc:
                    log.warning("preset refused", extra=fields(app=app, error=str(exc)))
                    continue
                state.preset_ids.append(preset.preset_id)
                if announce:
                    for listener in self.listeners:
                        listener.preset_published(preset)
            before = state.current
            for dictionary in artifacts.dictionaries:
                if dictionary.dict_id in store:
                    if dictionary.dict_id not in state.dictionary_ids:
                        state.dictionary_ids.append(dictionary.dict_id)
                    continue
                try:
                    store.add(dictionary)
                except ValueError as exc:
                    log.warning("dictionary refused", extra=fields(app=app, error=str(exc)))
                    continue
                state.dictionary_ids.append(dictionary.dict_id)
            current = state.current
            if announce and current > before:
                published = store.get(current)
                assert published is not None
                log.info(
                    "dictionary published",
                    extra=fields(app=app, dictionary=current, replaces=before),
                )
                for listener in self.listeners:
                    listener.dictionary_published(app, published)

    async def reload(self) -> bool:
        """Apply what was published since the last look; True if anything was."""
        assert self.registry is not None
        version = await self.registry.version()
        if version == self._version:
            return False
        self._apply(await self.registry.load(), announce=True)
        return True

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.reload_errors += 1
                log.warning("compression registry unreadable", extra=fields(error=str(exc)))

    # ------------------------------------------------------------- handshake

    def current_dictionary(self, app_id: str) -> int:
        """The dictionary a device of ``app_id`` should use (announced in HELLO_ACK)."""
        state = self.apps.get(app_id)
        if state is not None and state.current:
            return state.current
        return self.default_dictionary_id

    def dictionary_to_deliver(self, hello: Hello) -> Dictionary | None:
        """The app's current dictionary if the HELLO does not list it (then deliver it)."""
        current = self.current_dictionary(hello.app_id)
        if not current or current in hello.dictionaries or self.config.dict_budget_bytes <= 0:
            return None
        return self.body_codec.dictionaries.get(current)

    def delivering(self, app_id: str, dict_id: int, devices: int) -> None:
        """An engine asked for ``devices`` deliveries (metrics)."""
        state = self.apps.setdefault(app_id, AppState()) if app_id in self.usage else None
        if state is not None:
            state.deliveries[dict_id] = state.deliveries.get(dict_id, 0) + devices

    def usage_for(self, app_id: str) -> BodyUsage:
        """Where the bodies of a device of ``app_id`` are counted (bounded: known apps)."""
        return self.usage.get(app_id) or self.usage[OTHER_APPS]

    def usage_apps(self) -> list[str]:
        return sorted(app for app in self.usage if app != OTHER_APPS)

    # -------------------------------------------------------------- sampling

    def sample(self, app_id: str, device_id: str, body: bytes, *, drawn: bool = False) -> None:
        if self.sampler.apps:
            self.sampler.offer(app_id, device_id, body, drawn=drawn)

    async def retrain_app(self, app_id: str) -> Verdict | None:
        """Train on the app's samples; publish the candidate if it saves enough."""
        assert self.registry is not None
        samples = self.sampler.take(app_id)
        state = self.apps.setdefault(app_id, AppState())
        if len(samples) < self.config.retrain_min_samples:
            state.last_retrain = f"{len(samples)} samples, {self.config.retrain_min_samples} needed"
            return None
        if not await self.registry.try_lock(f"retrain:{app_id}", self.config.retrain_interval_s):
            state.last_retrain = "another node is retraining"
            return None
        current = self.body_codec.dictionaries.get(self.current_dictionary(app_id))
        new_id = await self.registry.next_dictionary_id()
        verdict = await asyncio.to_thread(
            retrain, samples, current, new_id, self.config.dict_size_bytes
        )
        published = verdict.pays(self.config.retrain_min_saving)
        if published:
            await self.registry.publish_dictionary(app_id, verdict.candidate)
            self.published += 1
            await self.reload()
        state.last_retrain = verdict.describe() + (" -> published" if published else " -> kept")
        log.info("dictionary retrained", extra=fields(app=app_id, verdict=state.last_retrain))
        return verdict

    async def _retrain_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.retrain_interval_s)
            for app in self.config.sample_apps:
                try:
                    await self.retrain_app(app)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("retraining failed", extra=fields(app=app, error=str(exc)))

    # ----------------------------------------------------------------- views

    def describe(
        self, engine_usage: Callable[[], dict[str, list[tuple[int, ...]]]] | None = None
    ) -> dict[str, Any]:
        """Per app: dictionaries (current last), presets, deliveries, retraining and usage
        by dictionary id (bodies, raw and wire bytes each way): ``/admin/compression``."""
        usage = usage_rows(self.usage) if engine_usage is None else engine_usage()
        apps: dict[str, Any] = {}
        for app in sorted(set(self.apps) | set(usage) | {OTHER_APPS}):
            state = self.apps.get(app, AppState())
            apps[app] = {
                "current_dictionary": self.current_dictionary(app),
                "dictionaries": sorted(state.dictionary_ids),
                "presets": sorted(state.preset_ids),
                "deliveries": {str(k): v for k, v in sorted(state.deliveries.items())},
                "sampled": app in self.sampler.apps,
                "samples": self.sampler.count(app),
                "last_retrain": state.last_retrain,
                "usage": usage_view(usage.get(app, [])),
            }
        return {
            "registry": self.config.registry,
            "version": self._version,
            "at": int(time.time()),
            "apps": apps,
        }


def usage_rows(usage: dict[str, BodyUsage]) -> dict[str, list[tuple[int, ...]]]:
    """``BodyUsage`` objects as the native engine's ``usage()`` reports them."""
    return {
        app: [(dict_id, *row) for dict_id, row in sorted(u.by_dictionary.items())]
        for app, u in usage.items()
        if u.by_dictionary
    }


def usage_view(rows: list[tuple[int, ...]]) -> list[dict[str, Any]]:
    """Each dictionary's share of the app's bodies and the bytes it saved."""
    bodies = sum(r[1] + r[4] for r in rows)
    out = []
    for dict_id, sent, sent_raw, sent_wire, received, received_raw, received_wire in rows:
        out.append(
            {
                "dictionary": "raw" if dict_id < 0 else dict_id,
                "bodies": sent + received,
                "share": (sent + received) / bodies if bodies else 0.0,
                "raw_bytes": sent_raw + received_raw,
                "wire_bytes": sent_wire + received_wire,
                "saved_bytes": sent_raw + received_raw - sent_wire - received_wire,
            }
        )
    return out
