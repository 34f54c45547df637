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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from channel.sessions import Session


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


class MqttHandler(Protocol):
    def data_received(self, data: bytes) -> None: ...

    def packets_received(self, packets: list[bytes]) -> None: ...

    def pubacks_received(
        self, packet_ids: list[int], sessions: list[Session | None], message_ids: list[str]
    ) -> None:
        """The tracked pushes acknowledged are added to ``sessions``/``message_ids``."""

    def connection_lost(self) -> None: ...


class MqttFront(Protocol):
    def opened(self, transport: MqttTransport) -> MqttHandler:
        """A new MQTT connection (TCP accepted, TLS done if any)."""
