"""MQTT boxes in the fleet runs: QoS 1, persistent sessions, through the balancer's 8883.

Each ``MqttBox`` is an MQTT 5 client on the project's own codec (asyncio, no
thread per box) with a session that outlives its connections (Session Expiry
Interval, clean start only on its first CONNECT). It reconnects through HAProxy
whenever its connection ends (a node killed, a node refusing while cut off
from Redis), as a till does, and PUBACKs every PUBLISH as soon as it has read it.

Pushes reach it on ``devices/<id>/push`` with the push's id as the ``message-id``
user property. Its application de-duplicates the way MQTT's DUP flag allows: a
copy with DUP 1 of a message it has seen is dropped; anything else is handed on,
so a repeat **without** DUP reaches the application and counts as a duplicate.
Every copy is tallied too (``wire_repeats``: MQTT's at-least-once at work).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from channel.mqtt import (
    MQTT_5,
    Connack,
    Connect,
    Disconnect,
    MqttError,
    Parser,
    Properties,
    Puback,
    Publish,
    ReasonCode,
    Role,
    encode,
)

#: The session outlives a connection this long (well beyond a run's outages).
SESSION_EXPIRY_S = 600
#: A CONNECT unanswered this long is abandoned and tried again.
CONNECT_TIMEOUT_S = 5.0


#: The name the fleet's certificate is made for (boxes reach it through the balancer's address).
SERVER_NAME = "localhost"


def box_tls_context(ca: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(str(ca))
    return context


@dataclass
class BoxStats:
    connects: int = 0
    #: CONNACKs with Session Present after the first connection.
    sessions_present: int = 0
    refused: int = 0
    #: Copies beyond a message's first, and how many of those had DUP set.
    wire_repeats: int = 0
    repeats_with_dup: int = 0
    #: First copies that came with DUP 1 (the earlier copy died in flight).
    first_with_dup: int = 0


class MqttBox:
    """One box (see the module doc); ``received`` counts what its application got."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        box_id: str,
        password: bytes,
        received: Counter[str],
    ) -> None:
        self.host, self.port, self.context = host, port, context
        self.box_id = box_id
        self.password = password
        self.received = received
        self.stats = BoxStats()
        self.seen: set[str] = set()
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.write(encode(Disconnect(), MQTT_5))
                writer.close()

    async def _run(self) -> None:
        delay_s = 0.1
        while True:
            try:
                await self._session()
                delay_s = 0.1
            except (OSError, EOFError, MqttError, TimeoutError, ssl.SSLError):
                pass
            finally:
                self.connected.clear()
                writer, self._writer = self._writer, None
                if writer is not None:
                    writer.transport.abort()
            await asyncio.sleep(delay_s)
            delay_s = min(1.0, delay_s * 2)

    async def _session(self) -> None:
        """One connection: CONNECT, then PUBLISHes until it ends."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host, self.port, ssl=self.context, server_hostname=SERVER_NAME
            ),
            CONNECT_TIMEOUT_S,
        )
        self._writer = writer
        first = self.stats.connects == 0
        connect = Connect(
            self.box_id,
            clean_start=first,
            keep_alive_s=0,  # the gateway gives its longest; a run is shorter
            username=self.box_id,
            password=self.password,
            properties=Properties(session_expiry_interval_s=SESSION_EXPIRY_S),
        )
        writer.write(encode(connect, MQTT_5))
        parser = Parser(Role.CLIENT, MQTT_5, max_packet_size_bytes=1 << 20)
        pending: list[Any] = []
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            while not pending:
                data = await reader.read(65536)
                if not data:
                    raise EOFError
                pending.extend(parser.feed(data))
        connack = pending.pop(0)
        if not isinstance(connack, Connack) or connack.reason_code != ReasonCode.SUCCESS:
            self.stats.refused += 1
            return
        self.stats.connects += 1
        if connack.session_present and not first:
            self.stats.sessions_present += 1
        self.connected.set()
        while True:
            acks = [self._on_packet(p) for p in pending]
            pending = []
            out = b"".join(a for a in acks if a)
            if out:
                writer.write(out)
            data = await reader.read(65536)
            if not data:
                return
            pending = parser.feed(data)

    def _on_packet(self, packet: Any) -> bytes:
        if isinstance(packet, Disconnect):
            raise EOFError("server DISCONNECT")
        if not isinstance(packet, Publish):
            return b""
        message_id = dict(packet.properties.user_properties).get("message-id", "")
        stats = self.stats
        if message_id in self.seen:
            stats.wire_repeats += 1
            if packet.dup:
                stats.repeats_with_dup += 1
            else:
                self.received[message_id] += 1  # the application sees it again
        else:
            self.seen.add(message_id)
            self.received[message_id] += 1
            if packet.dup:
                stats.first_with_dup += 1
        return encode(Puback(packet.packet_id), MQTT_5) if packet.qos else b""


def box_totals(boxes: list[MqttBox]) -> dict[str, int]:
    """The boxes' counters summed (reconnects: connections after each box's first)."""
    totals: Counter[str] = Counter()
    for box in boxes:
        stats = box.stats
        totals["reconnects"] += max(0, stats.connects - 1)
        totals["sessions_present"] += stats.sessions_present
        totals["refused_connacks"] += stats.refused
        totals["wire_repeats"] += stats.wire_repeats
        totals["repeats_with_dup"] += stats.repeats_with_dup
        totals["first_copies_with_dup"] += stats.first_with_dup
    return dict(totals)
