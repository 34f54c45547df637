"""MQTT session state as the stores keep it: subscriptions and QoS 2 packet ids.

A session outlives its connection when it is persistent (3.1.1 clean session 0,
MQTT 5 session expiry > 0). What must survive a reconnect to another node or
the death of the node (``kill -9``) is kept in the MQTT store, beside the
device queue that holds the session's undelivered messages:

* the subscriptions (filter → ``SubOptions``);
* ``released``: outbound QoS 2 packet ids whose PUBREC came (the message left the
  queue) and whose PUBCOMP did not: PUBREL is sent again on reconnect;
* ``received``: inbound QoS 2 packet ids routed and PUBREC'd, awaiting PUBREL: a
  PUBLISH sent again with one of these ids is not routed twice;
* ``generation``: bumped by every CONNECT of the client id anywhere in the fleet.
  Writes carry the generation they were made under and are ignored once a newer
  connection took the session over, so a replaced connection never overwrites
  its successor's state, and a takeover notice meant for an older connection
  never ends a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from channel.mqtt.packets import RetainHandling, Subscription
from channel.mqtt.primitives import read_varint, varint_bytes


@dataclass(frozen=True, slots=True)
class SubOptions:
    """One subscription's options (``qos`` is its maximum QoS)."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    #: MQTT 5 subscription identifier (0: none).
    subscription_id: int = 0

    @classmethod
    def of(cls, sub: Subscription, subscription_id: int) -> SubOptions:
        return cls(sub.qos, sub.no_local, sub.retain_as_published, int(sub.retain_handling),
                   subscription_id)  # fmt: skip

    def pack(self) -> bytes:
        flags = (
            self.qos | self.no_local << 2 | self.retain_as_published << 3
            | self.retain_handling << 4
        )  # fmt: skip
        return bytes((flags,)) + (
            varint_bytes(self.subscription_id) if self.subscription_id else b""
        )

    @classmethod
    def unpack(cls, data: bytes) -> SubOptions:
        flags = data[0]
        sub_id = read_varint(data, 1)[0] if len(data) > 1 else 0
        return cls(flags & 3, bool(flags & 4), bool(flags & 8), (flags >> 4) & 3, sub_id)

    @property
    def send_retained_always(self) -> bool:
        return self.retain_handling == RetainHandling.SEND_ON_SUBSCRIBE


@dataclass(slots=True)
class SessionRecord:
    client_id: str
    generation: int = 0
    #: Seconds the session outlives its connection (0: it ends with it).
    expiry_s: int = 0
    #: When its last connection closed (unix ms; 0: connected, or never closed). In
    #: the record ``MqttStore.open`` returns: when the connection before it closed.
    disconnected_at_ms: int = 0
    subscriptions: dict[str, SubOptions] = field(default_factory=dict)
    released: dict[int, str] = field(default_factory=dict)
    received: set[int] = field(default_factory=set)

    def expired(self, now_ms: int) -> bool:
        return bool(self.disconnected_at_ms) and (
            now_ms >= self.disconnected_at_ms + self.expiry_s * 1000
        )


@dataclass(frozen=True, slots=True)
class GlobalEntry:
    """A subscription outside its client's own namespace (every node keeps them all)."""

    client_id: str
    topic_filter: str
    options: SubOptions
    #: The session's end if it is disconnected (unix ms; 0: connected).
    expires_at_ms: int = 0


def own_namespace(client_id: str, prefix: str) -> str:
    """The topics only this client's own record answers for: ``devices/<id>/``."""
    return f"{prefix}{client_id}/"


def namespace_owner(topic: str, prefix: str) -> str | None:
    """The client id whose namespace ``topic`` is in (``devices/<id>/...``), if any."""
    if not topic.startswith(prefix):
        return None
    owner, slash, _ = topic[len(prefix) :].partition("/")
    return owner if slash and owner else None
