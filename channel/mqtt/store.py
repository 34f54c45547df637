"""The MQTT store: sessions, the fleet's global subscriptions, retained messages.

One interface, two implementations like the push stores: ``MemoryMqttStore``
(this process; ``[push] backend = "memory"``) and ``RedisMqttStore``
(``channel.mqtt.redis_store``; a fleet, beside the push stores in the same
Redis). Offline messages are not here: they wait in the device queue
(``channel.push.stores.DeviceQueue``) like every push.

Retained messages are grouped by *namespace*, a topic's first two levels
(``devices/d1`` for ``devices/d1/status``): a SUBSCRIBE whose first two levels
are literal reads one namespace, one with a wildcard there reads them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from channel.mqtt.matching import topic_matches
from channel.mqtt.sessions import GlobalEntry, SessionRecord, SubOptions


def namespace_of(topic: str) -> str:
    """A topic's first two levels (the retained store's grouping)."""
    first, _, rest = topic.partition("/")
    second = rest.partition("/")[0]
    return f"{first}/{second}"


def filter_namespace(topic_filter: str) -> str | None:
    """The one namespace a filter can match, or None when it can match several."""
    levels = topic_filter.split("/")
    head = levels[:2]
    if any(level in ("+", "#") for level in head):
        return None
    if len(levels) == 1:
        return f"{levels[0]}/"
    return "/".join(head)


class MqttStore(Protocol):
    async def open(
        self, client_id: str, clean_start: bool, expiry_s: int, now_ms: int
    ) -> tuple[bool, SessionRecord]:
        """A CONNECT for ``client_id``: (session present, its record with a new generation).

        A clean start, or an expired session, starts from an empty record. The
        record's ``disconnected_at_ms`` is when the previous connection closed (0: it
        has not, or there was none)."""

    async def close(self, client_id: str, generation: int, expiry_s: int, now_ms: int) -> bool:
        """The connection of ``generation`` ended: the session ends now (``expiry_s``
        0) or lives ``expiry_s`` more. False (nothing done) if a newer connection
        has the session."""

    async def generation(self, client_id: str) -> int:
        """The session's current generation (0: no session)."""

    async def subscribe(
        self, client_id: str, generation: int, changes: Mapping[str, SubOptions | None]
    ) -> None:
        """Add / replace (options) or drop (None) subscriptions."""

    async def release(
        self, client_id: str, generation: int, packet_id: int, message_id: str | None
    ) -> None:
        """Record (message id) or clear (None) an outbound QoS 2 packet id awaiting PUBCOMP."""

    async def receive(self, client_id: str, generation: int, packet_id: int, present: bool) -> None:
        """Record or clear an inbound QoS 2 packet id awaiting PUBREL."""

    async def records(self, client_ids: Sequence[str]) -> dict[str, SessionRecord]:
        """Sessions by client id (absent: none), subscriptions included (for routing)."""

    async def global_entries(self) -> list[GlobalEntry]:
        """Every global subscription of the fleet (a node loads them at start)."""

    async def set_global(
        self, client_id: str, changes: Mapping[str, SubOptions | None], expires_at_ms: int
    ) -> None:
        """Write a client's global subscriptions (None: drop), each with the session's
        end (0 while connected)."""

    async def retain(self, topic: str, message: bytes | None, cap: int) -> bool:
        """Keep (or drop, None) the retained message of ``topic``. False: not kept, its
        namespace holds ``cap`` others."""

    async def retained(self, topic_filter: str) -> list[tuple[str, bytes]]:
        """(topic, message) of every retained message ``topic_filter`` matches."""


class MemoryMqttStore:
    """``MqttStore`` in this process (a restart forgets everything)."""

    def __init__(self) -> None:
        self._sessions: dict[str, SessionRecord] = {}
        self._global: dict[tuple[str, str], GlobalEntry] = {}
        self._retained: dict[str, dict[str, bytes]] = {}

    async def open(
        self, client_id: str, clean_start: bool, expiry_s: int, now_ms: int
    ) -> tuple[bool, SessionRecord]:
        old = self._sessions.get(client_id)
        # The generation outlives the session: fencing must hold across an expiry too.
        generation = (old.generation if old is not None else 0) + 1
        alive = old is not None and old.expiry_s > 0 and not old.expired(now_ms)
        present = alive and not clean_start
        record = old if present and old is not None else SessionRecord(client_id)
        closed_at_ms = old.disconnected_at_ms if old is not None else 0
        record.generation = generation
        record.expiry_s = expiry_s
        record.disconnected_at_ms = 0
        self._sessions[client_id] = record
        opened = _copy(record)
        opened.disconnected_at_ms = closed_at_ms
        return present, opened

    async def close(self, client_id: str, generation: int, expiry_s: int, now_ms: int) -> bool:
        record = self._sessions.get(client_id)
        if record is None or record.generation != generation:
            return False
        if expiry_s <= 0:
            # Kept as an empty record: its generation must still fence older writers.
            self._sessions[client_id] = SessionRecord(client_id, generation, 0, now_ms)
        else:
            record.expiry_s = expiry_s
            record.disconnected_at_ms = now_ms
        return True

    async def generation(self, client_id: str) -> int:
        record = self._sessions.get(client_id)
        return record.generation if record is not None else 0

    def _owned(self, client_id: str, generation: int) -> SessionRecord | None:
        record = self._sessions.get(client_id)
        return record if record is not None and record.generation == generation else None

    async def subscribe(
        self, client_id: str, generation: int, changes: Mapping[str, SubOptions | None]
    ) -> None:
        record = self._owned(client_id, generation)
        if record is None:
            return
        for topic_filter, options in changes.items():
            if options is None:
                record.subscriptions.pop(topic_filter, None)
            else:
                record.subscriptions[topic_filter] = options

    async def release(
        self, client_id: str, generation: int, packet_id: int, message_id: str | None
    ) -> None:
        record = self._owned(client_id, generation)
        if record is None:
            return
        if message_id is None:
            record.released.pop(packet_id, None)
        else:
            record.released[packet_id] = message_id

    async def receive(self, client_id: str, generation: int, packet_id: int, present: bool) -> None:
        record = self._owned(client_id, generation)
        if record is None:
            return
        if present:
            record.received.add(packet_id)
        else:
            record.received.discard(packet_id)

    async def records(self, client_ids: Sequence[str]) -> dict[str, SessionRecord]:
        found = {}
        for client_id in client_ids:
            record = self._sessions.get(client_id)
            if record is not None and record.subscriptions:
                found[client_id] = _copy(record)
        return found

    async def global_entries(self) -> list[GlobalEntry]:
        return list(self._global.values())

    async def set_global(
        self, client_id: str, changes: Mapping[str, SubOptions | None], expires_at_ms: int
    ) -> None:
        for topic_filter, options in changes.items():
            key = (client_id, topic_filter)
            if options is None:
                self._global.pop(key, None)
            else:
                self._global[key] = GlobalEntry(client_id, topic_filter, options, expires_at_ms)

    async def retain(self, topic: str, message: bytes | None, cap: int) -> bool:
        namespace = namespace_of(topic)
        kept = self._retained.get(namespace)
        if message is None:
            if kept is not None:
                kept.pop(topic, None)
                if not kept:
                    del self._retained[namespace]
            return True
        if kept is None:
            kept = self._retained[namespace] = {}
        if topic not in kept and len(kept) >= cap:
            return False
        kept[topic] = message
        return True

    async def retained(self, topic_filter: str) -> list[tuple[str, bytes]]:
        namespace = filter_namespace(topic_filter)
        if namespace is not None:
            groups = [self._retained.get(namespace, {})]
        else:
            groups = list(self._retained.values())
        return [
            (topic, message)
            for group in groups
            for topic, message in group.items()
            if topic_matches(topic_filter, topic)
        ]


def _copy(record: SessionRecord) -> SessionRecord:
    return SessionRecord(
        record.client_id,
        record.generation,
        record.expiry_s,
        record.disconnected_at_ms,
        dict(record.subscriptions),
        dict(record.released),
        set(record.received),
    )
