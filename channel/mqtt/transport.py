"""What an engine gives an MQTT connection, and what it calls on it.

Two engines carry MQTT (``docs/architecture.md``). Each calls
``MqttFront.opened(transport)`` for a new connection and then the returned
handler's ``data_received`` (the Python engine: a byte stream) or
``packets_received`` (the native engine: whole packets, fixed header included,
already checked against the packet size limit; and ``pubacks_received`` for a read
of bare PUBACKs only, as packet ids, once the session is open), and
``connection_lost`` once.

The transport is what the connection writes through: ``write`` (one or more
whole packets), ``close`` (after what was written), ``abort`` (now),
``set_idle`` (the keepalive deadline: no byte from the box for this long ends
the connection; 0 = none; until it is first called the engine's CONNECT
deadline applies; the native engine also answers PINGREQ itself from then on).

``push_holder`` is the engine's offer to hold the connection's QoS 1 pushes
(the native engine; None: the Python engine): once ``hold_pushes`` is called, a
push is one ``push`` call (the engine builds the PUBLISH under the message's stable
packet id, keeps it in flight within the limit, resolves its PUBACK and reports the
ACK in its batched form, or refuses it with ``push_refused``), and every other
QoS 1/2 PUBLISH of the connection goes through ``write_held``, so that packet ids
and the in-flight limit are shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from channel.sessions import Headers, Session


class MqttTransport(Protocol):
    @property
    def peer_ip(self) -> str: ...

    @property
    def client_cert_cn(self) -> str | None:
        """The common name of the box's verified TLS client certificate, if any."""

    @property
    def tls(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def set_idle(self, timeout_ms: int) -> None: ...

    def push_holder(self) -> PushHolder | None: ...


class PushHolder(Protocol):
    def hold_pushes(
        self,
        head: bytes,
        mqtt5: bool,
        limit: int,
        max_waiting: int,
        max_packet_bytes: int,
        dup_before_ms: int,
    ) -> None:
        """From now on the engine holds this connection's QoS 1 pushes: ``head`` is the
        push topic (``topic_head``), the rest as ``Outbound`` and ``Outgoing.resent``."""

    def push(self, message_id: str, headers: Headers, body: bytes, tracked: bool) -> None: ...

    def write_held(self, data: bytes) -> None:
        """A QoS 1/2 PUBLISH (or a PUBREL sent again) within the engine's limit."""

    def held(self) -> tuple[int, int]:
        """(in flight, waiting) of the pushes the engine holds for this connection."""


class MqttHandler(Protocol):
    def data_received(self, data: bytes) -> None: ...

    def packets_received(self, packets: list[bytes]) -> None: ...

    def pubacks_received(
        self, packet_ids: list[int], sessions: list[Session | None], message_ids: list[str]
    ) -> None:
        """The tracked pushes acknowledged are added to ``sessions``/``message_ids``."""

    def push_refused(self, message_id: str, reason: str) -> None:
        """The engine holding pushes did not take one (``PushHolder``)."""

    def refused_by_box(self, message_id: str, tracked: bool, reason: int) -> None:
        """The box answered a held push with PUBACK ``reason`` (0x80 or more)."""

    def connection_lost(self) -> None: ...


class MqttFront(Protocol):
    def opened(self, transport: MqttTransport) -> MqttHandler:
        """A new MQTT connection (TCP accepted, TLS done if any)."""
