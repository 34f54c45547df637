"""The ``Session`` side of an MQTT connection: pushes, backend calls, endings.

Push delivery and the RPC layer see a box as a ``channel.sessions.Session``:

* ``push``: a push to the device becomes a PUBLISH on its push topic
  (``[mqtt] push_topic``, ``push_qos``); a message routed from another box
  (``channel.mqtt.messages``) goes out on its own topic at the QoS of the
  box's matching subscription, with its subscription identifiers. Tracked
  pushes are acknowledged to the registry when the box PUBACKs (QoS 1) or
  PUBRECs (QoS 2: from then on the box owns the message), QoS 0 ones at once;
* ``push_fanout``: broadcast and topic pushes, encoded once per protocol level;
* ``call``: a backend → device RPC, as a PUBLISH on the call topic whose answer
  the box publishes on the reply topic;
* ``end`` / ``goaway``: DISCONNECT with the MQTT 5 reason (3.1.1: the connection
  just closes).

``MqttNode`` is what a connection needs from the node (``MqttService``),
named here so the service builds connections without an import circle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from abc import abstractmethod
from collections.abc import Coroutine, Sequence
from typing import Protocol

from channel.config import MqttConfig
from channel.mqtt.auth import MqttIdentity
from channel.mqtt.encoder import encode
from channel.mqtt.errors import LocalMqttError
from channel.mqtt.flow import Outbound, accepted_at_ms, stable_packet_id
from channel.mqtt.matching import topic_matches
from channel.mqtt.messages import BrokerMessage, RetainedMessage, broker_message_of
from channel.mqtt.metrics import MqttMetrics
from channel.mqtt.packets import Connect, Disconnect, Publish, Pubrec, Pubrel, Subscribe
from channel.mqtt.properties import NO_PROPERTIES, Properties
from channel.mqtt.publish import (
    encode_publish,
    prepare_publish,
    push_bytes,
    push_properties,
    topic_head,
)
from channel.mqtt.reasons import MQTT_5, ReasonCode
from channel.mqtt.sessions import SessionRecord, SubOptions
from channel.mqtt.topics import split_shared
from channel.mqtt.transport import MqttTransport, PushHolder
from channel.rpc.model import DeviceContext, RpcResponse
from channel.sessions import FanoutPush, Headers, Session, SessionRegistry
from channel.wire.errors import ErrorCode

log = logging.getLogger("channel.mqtt")

Retained = list[tuple[RetainedMessage, SubOptions]]

#: Session endings as MQTT 5 DISCONNECT reasons.
END_REASONS = {
    ErrorCode.SESSION_REPLACED: ReasonCode.SESSION_TAKEN_OVER,
    ErrorCode.KICKED: ReasonCode.ADMINISTRATIVE_ACTION,
    ErrorCode.SHUTTING_DOWN: ReasonCode.SERVER_SHUTTING_DOWN,
    ErrorCode.IDLE_TIMEOUT: ReasonCode.KEEP_ALIVE_TIMEOUT,
    ErrorCode.AUTH_EXPIRED: ReasonCode.NOT_AUTHORIZED,
    ErrorCode.SLOW_CONSUMER: ReasonCode.QUOTA_EXCEEDED,
}
#: Waiting PUBLISHes a connection holds, per in-flight slot, before it is a slow consumer.
WAITING_PER_SLOT = 20
#: Why a slow consumer is disconnected (the native engine's refusal says the same).
WAITING_OVERFLOW = "too many messages waiting for acknowledgements"


class MqttNode(Protocol):
    config: MqttConfig
    registry: SessionRegistry
    metrics: MqttMetrics

    def authenticate(
        self, connect: Connect, version: int, client_cert_cn: str | None
    ) -> MqttIdentity:
        """Verify a CONNECT; raises ``MqttRefused``."""

    def may_publish(self, identity: MqttIdentity, topic: str) -> bool: ...

    def may_read(self, identity: MqttIdentity, topic: str) -> bool: ...

    def keepalive_for(self, asked_s: int) -> int: ...

    async def open_session(self, conn: Outgoing, connect: Connect) -> tuple[bool, SessionRecord]:
        """Open (or take over) the session; sets ``conn.expiry_s``."""

    def session_opened(self, conn: Outgoing) -> None:
        """CONNACK went out: the connection is a session of the node now."""

    def connection_closed(self, conn: Outgoing) -> None:
        """The connection is gone (after ``open_session`` finished, if it was called)."""

    async def handle_publish(self, conn: Outgoing, publish: Publish) -> ReasonCode: ...

    async def handle_subscribe(
        self, conn: Outgoing, packet: Subscribe
    ) -> tuple[list[ReasonCode], Retained]: ...

    async def handle_unsubscribe(
        self, conn: Outgoing, topic_filters: Sequence[str]
    ) -> list[ReasonCode]: ...

    async def persist_received(self, conn: Outgoing, packet_id: int, present: bool) -> None: ...

    async def persist_released(
        self, conn: Outgoing, packet_id: int, message_id: str | None
    ) -> None: ...

    def push_topic(self, device_id: str) -> str: ...

    def fanout_topic(self, push_topic: str) -> str:
        """The MQTT topic of a topic push (``""``: a broadcast)."""

    def call_topic(self, device_id: str, op: str, token: str, version: int) -> str: ...

    def call_reply_topic(self, device_id: str, token: str) -> str: ...

    def drain_reason(self) -> tuple[ReasonCode, str | None]:
        """DISCONNECT reason (and server reference) when the node drains."""


class Outgoing(Session):
    """Everything of an MQTT connection that writes to the box; see the module doc."""

    __slots__ = (
        "_acked",
        "_alias_max",
        "_aliases_out",
        "_call_seq",
        "_calls",
        "_closing",
        "_counted",
        "_gone",
        "_holder",
        "_max_out_bytes",
        "_node",
        "_out",
        "_push_head",
        "_transport",
        "dup_before_ms",
        "expiry_s",
        "generation",
        "identity",
        "keepalive_s",
        "outbound",
        "received",
        "subscriptions",
        "version",
        "will",
        "will_delay_s",
    )

    protocol = "mqtt"

    def __init__(self, node: MqttNode, transport: MqttTransport) -> None:
        self._node = node
        self._transport = transport
        config = node.config
        self.version = 0
        self.identity: MqttIdentity | None = None
        self.generation = 0
        #: Seconds the session outlives the connection (0: it ends with it).
        self.expiry_s = 0
        #: Queued messages accepted before this (unix ms) may have gone to an earlier
        #: connection of the session: they go out with DUP set (0: a new session).
        self.dup_before_ms = 0
        self.keepalive_s = 0
        self.will: BrokerMessage | None = None
        self.will_delay_s = 0
        self.subscriptions: dict[str, SubOptions] = {}
        #: Inbound QoS 2 packet ids routed and PUBREC'd, awaiting PUBREL.
        self.received: set[int] = set()
        self.outbound = Outbound(
            config.max_inflight_out, config.max_inflight_out * WAITING_PER_SLOT
        )
        self._out: list[bytes] = []
        self._acked: list[str] | None = None
        self._counted: dict[str, int] | None = None
        self._calls: dict[str, asyncio.Future[RpcResponse]] | None = None
        self._call_seq = 0
        self._gone = False
        #: ``close_now`` was called: nothing more is written.
        self._closing = False
        self._max_out_bytes = 0
        #: Topic aliases we set towards the box (MQTT 5, up to its Topic Alias Maximum).
        self._alias_max = 0
        self._aliases_out: dict[str, int] | None = None
        #: The push topic as ``topic_head`` encodes it (made at the first push).
        self._push_head: bytes | None = None
        #: The engine holding this connection's QoS 1 pushes (``hold_pushes``), if any;
        #: None again once the connection closes (``push`` relies on it).
        self._holder: PushHolder | None = None

    # ------------------------------------------------------------- identity

    @property
    def device(self) -> DeviceContext:
        assert self.identity is not None
        return self.identity.device

    @property
    def device_id(self) -> str:
        return self.identity.client_id if self.identity is not None else ""

    @property
    def client_id(self) -> str:
        return self.device_id

    @property
    def expires_at(self) -> int:
        return self.identity.expires_at if self.identity is not None else 0

    @property
    def persistent(self) -> bool:
        return self.expiry_s > 0

    @property
    @abstractmethod
    def open(self) -> bool:
        """CONNACK went out and the connection is not closing."""

    @property
    def closed(self) -> bool:
        return self._gone or not self.open

    @property
    def connected(self) -> bool:
        return not self._gone

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "mqtt_version": {4: "3.1.1", 5: "5.0"}.get(self.version, ""),
            "keepalive_s": self.keepalive_s,
            "session_expiry_s": self.expiry_s,
            "subscriptions": sorted(self.subscriptions),
            **self._held_counts(),
            "peer_ip": self._transport.peer_ip,
            "tls": self._transport.tls,
        }

    def _held_counts(self) -> dict[str, int]:
        """``inflight`` / ``waiting``: what Python holds and, on the native engine,
        the pushes the engine holds for this connection."""
        inflight, waiting = len(self.outbound.inflight), len(self.outbound.waiting)
        holder = self._holder
        if holder is not None:
            held_inflight, held_waiting = holder.held()
            inflight += held_inflight
            waiting += held_waiting
        return {"inflight": inflight, "waiting": waiting}

    def set_client_limits(
        self,
        receive_maximum: int | None,
        maximum_packet_size: int | None,
        topic_alias_maximum: int | None = None,
    ) -> None:
        """What the box announced in CONNECT (MQTT 5)."""
        if receive_maximum:
            self.outbound.limit = min(self.outbound.limit, receive_maximum)
        self._max_out_bytes = maximum_packet_size or 0
        self._alias_max = topic_alias_maximum or 0

    # ---------------------------------------------------------------- output

    def send(self, data: bytes) -> None:
        """Queue one packet (written at ``flush``)."""
        self._node.metrics.packets_out[data[0] >> 4] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("out %s: %s", self.device_id or "?", data[:64].hex())
        self._out.append(data)

    def send_inflight(self, data: bytes) -> None:
        """``send`` for a QoS 1/2 PUBLISH (or a PUBREL sent again): where the engine
        holds the pushes, through its in-flight limit and packet ids, in order with
        what was queued before it."""
        holder = self._holder
        if holder is None:
            self.send(data)
            return
        # Counted by the engine when it goes out (it may wait for room first).
        if self._out:
            self._write_out()
        if not self._gone and not self._closing:
            holder.write_held(data)

    def _write_out(self) -> None:
        """What ``send`` queued, to the transport now (before a command to the holder)."""
        out, self._out = self._out, []
        if not self._gone and not self._closing:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def hold_pushes(self) -> None:
        """The session is open: on an engine that holds QoS 1 pushes (the native one),
        they go to it from now on (``channel.mqtt.transport.PushHolder``). Not with
        topic aliases towards the box or another push QoS: those stay here."""
        holder = self._transport.push_holder()
        node = self._node
        if holder is None or node.config.push_qos != 1 or self._alias_max:
            return
        try:
            head = topic_head(node.push_topic(self.device_id), self.version)
        except LocalMqttError:
            return  # each push is refused here, as without the engine
        outbound = self.outbound
        holder.hold_pushes(head, self.version == MQTT_5, outbound.limit, outbound.max_waiting,
                           self._max_out_bytes, self.dup_before_ms)  # fmt: skip
        self._holder = holder

    def push_refused(self, message_id: str, reason: str) -> None:
        """The engine holding pushes did not take one: too many waiting (a slow
        consumer: queued messages stay queued for its next connection), or one this
        box can never take (reported failed, as a refusal of ``push`` is)."""
        if reason == WAITING_OVERFLOW:
            self.end(ErrorCode.SLOW_CONSUMER, reason)
        else:
            self._node.registry.push_failed(self, message_id, reason, True)

    def flush(self) -> None:
        out = self._out
        if out and not self._gone and not self._closing:
            self._out = []
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        elif out:
            self._out = []
        acked, counted = self._acked, self._counted
        if acked:
            self._acked = None
            self._node.registry.acks(self, acked)
        if counted:
            self._counted = None
            self._node.registry.fanout_acks(counted)

    def _ack(self, message_id: str, tracked: bool) -> None:
        if not message_id:
            return
        if tracked:
            if self._acked is None:
                self._acked = []
            self._acked.append(message_id)
        else:
            if self._counted is None:
                self._counted = {}
            self._counted[message_id] = self._counted.get(message_id, 0) + 1

    def _encode(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        packet_id: int,
        retain: bool,
        props: Properties,
        dup: bool = False,
    ) -> bytes:
        """One PUBLISH as it goes out now: under a topic alias when the box allows them
        (decided here, in sending order, so an alias is always set before it is used)."""
        if self._alias_max:
            topic, props = self._aliased(topic, props)
        return encode_publish(topic, payload, qos, packet_id, version=self.version,
                              retain=retain, dup=dup, properties=props)  # fmt: skip

    def resent(self, message_id: str) -> bool:
        """A queued message may have been sent to an earlier connection of this session
        (MQTT 3.3.1.1: its PUBLISH goes out again with DUP set; DUP 0 says "first
        attempt"). Connections send nothing after they close, so a message accepted
        after the previous connection closed is new to the session; when that
        connection never closed (taken over, or its node killed), anything accepted
        before this one opened may have reached it. Nothing is written per message."""
        before_ms = self.dup_before_ms
        if not before_ms:
            return False
        accepted_ms = accepted_at_ms(message_id)
        # <=: both are whole ms, and a message sent in the ms its connection closed in
        # was accepted in that ms or before.
        return accepted_ms is None or accepted_ms <= before_ms

    def _aliased(self, topic: str, props: Properties) -> tuple[str, Properties]:
        aliases = self._aliases_out
        if aliases is None:
            aliases = self._aliases_out = {}
        alias = aliases.get(topic)
        if alias is not None:
            return "", _replace(props, topic_alias=alias)
        if len(aliases) < self._alias_max:
            alias = aliases[topic] = len(aliases) + 1
            return topic, _replace(props, topic_alias=alias)
        return topic, props

    def _publish_out(
        self,
        message_id: str,
        tracked: bool,
        stable: bool,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Properties,
    ) -> str | None:
        """Write (or queue behind the in-flight limit) one PUBLISH; why not, if never."""
        version = self.version
        if self._max_out_bytes:
            size = len(encode_publish(topic, payload, qos, 1 if qos else 0, version=version,
                                      retain=retain, properties=props))  # fmt: skip
            if size > self._max_out_bytes:
                return f"{size} bytes, over the box's maximum packet size {self._max_out_bytes}"
        if qos == 0:
            self.send(self._encode(topic, payload, 0, 0, retain, props))
            self._ack(message_id, tracked)
            return None

        dup = stable and self.resent(message_id)

        def build(packet_id: int) -> bytes:
            return self._encode(topic, payload, qos, packet_id, retain, props, dup)

        if not self.outbound.has_room():
            if not stable:
                return "the box is not taking messages fast enough"
            # Queued messages stay queued: the box gets them when it reconnects.
            self.end(ErrorCode.SLOW_CONSUMER, WAITING_OVERFLOW)
            return None
        data = self.outbound.offer(message_id, tracked, qos, build, stable)
        if data is not None:
            self.send_inflight(data)
        return None

    # ----------------------------------------------------------------- pushes

    def push(self, message_id: str, body: bytes, headers: Headers, tracked: bool) -> str | None:
        holder = self._holder
        if holder is not None and (not headers or broker_message_of(body, headers) is None):
            # Open (the holder goes when the connection closes): the engine builds the
            # PUBLISH and keeps it in flight (``hold_pushes``).
            if self._out:
                self._write_out()
            holder.push(message_id, headers, body, tracked)
            return None
        if self.closed or self.identity is None:
            return None
        message = broker_message_of(body, headers) if headers else None
        if message is not None:
            return self._deliver(message_id, tracked, message)
        node = self._node
        qos = node.config.push_qos
        if qos and not self._alias_max:
            return self._push_stable(message_id, tracked, body, headers, qos)
        props = NO_PROPERTIES
        if self.version == MQTT_5:
            props = Properties(user_properties=(("message-id", message_id), *headers))
        return self._publish_out(message_id, tracked, True, node.push_topic(self.device_id),
                                 body, qos, False, props)  # fmt: skip

    def _push_stable(
        self, message_id: str, tracked: bool, body: bytes, headers: Headers, qos: int
    ) -> str | None:
        """``_publish_out`` of a QoS 1/2 push on the push topic (no topic alias), in
        fewer steps: the topic is encoded once per connection, the packet once per push,
        and in the usual case (room in flight, nothing waiting) it goes out at once."""
        head = self._push_head
        if head is None:
            head = topic_head(self._node.push_topic(self.device_id), self.version)
            self._push_head = head
        packet_id = stable_packet_id(message_id)
        props = push_properties(message_id, headers) if self.version == MQTT_5 else b""
        dup = self.dup_before_ms != 0 and self.resent(message_id)
        data = push_bytes(head, body, qos, packet_id, dup, props)
        if self._max_out_bytes and len(data) > self._max_out_bytes:
            return f"{len(data)} bytes, over the box's maximum packet size {self._max_out_bytes}"
        outbound = self.outbound
        if not outbound.has_room():
            # Queued messages stay queued: the box gets them when it reconnects.
            self.end(ErrorCode.SLOW_CONSUMER, WAITING_OVERFLOW)
            return None
        if outbound.start_stable(message_id, tracked, qos, packet_id):
            self.send(data)
            return None

        def build(_packet_id: int) -> bytes:
            return data  # the stable id, always

        sent = outbound.offer(message_id, tracked, qos, build, True)
        if sent is not None:
            self.send(sent)
        return None

    def _deliver(self, message_id: str, tracked: bool, message: BrokerMessage) -> str | None:
        """A message routed from a publisher: on its topic, as this box subscribed."""
        assert self.identity is not None
        found = self.matching(message.topic, message.origin)
        if found is not None and not self._node.may_read(self.identity, message.topic):
            found = None
        remaining_s = None
        if message.expires_at_ms:
            remaining_s = math.ceil((message.expires_at_ms - time.time() * 1000) / 1000)
        if found is None or (remaining_s is not None and remaining_s <= 0):
            self._ack(message_id, tracked)  # nothing to deliver: done with it
            return None
        qos, sub_ids, retain_as_published = found
        props = message.properties
        if self.version == MQTT_5 and (sub_ids or remaining_s is not None):
            props = _with(props, sub_ids, remaining_s)
        elif self.version != MQTT_5:
            props = NO_PROPERTIES
        retain = message.retain and retain_as_published
        return self._publish_out(message_id, tracked, True, message.topic, message.payload,
                                 min(qos, message.qos), retain, props)  # fmt: skip

    def matching(self, topic: str, origin: str) -> tuple[int, tuple[int, ...], bool] | None:
        """(maximum QoS, subscription ids, retain-as-published) of this box's
        subscriptions matching ``topic``, or None (no-local ones skip its own)."""
        qos = -1
        sub_ids: list[int] = []
        keep_retain = False
        own = origin == self.device_id
        for topic_filter, options in self.subscriptions.items():
            if own and options.no_local:
                continue
            if not topic_matches(split_shared(topic_filter)[1], topic):
                continue
            qos = max(qos, options.qos)
            keep_retain = keep_retain or options.retain_as_published
            if options.subscription_id:
                sub_ids.append(options.subscription_id)
        return None if qos < 0 else (qos, tuple(sub_ids), keep_retain)

    def push_fanout(self, pushes: Sequence[FanoutPush]) -> int:
        if self.closed or self.identity is None:
            return 0
        written = 0
        push_qos = self._node.config.push_qos
        for push in pushes:
            topic = self._node.fanout_topic(push.topic)
            qos, sub_ids = push_qos, _NO_IDS
            if push.topic:
                found = self.matching(topic, "")
                if found is None or not self._node.may_read(self.identity, topic):
                    continue
                qos, sub_ids = min(found[0], push_qos), found[1]
            if sub_ids and self.version == MQTT_5:
                props = _with(_fanout_props(push), sub_ids, None)
                if self._publish_out(push.message_id, False, False, topic, push.body, qos,
                                     False, props) is None:  # fmt: skip
                    written += 1
                continue
            if self._fanout_prepared(push, topic, qos):
                written += 1
        return written

    def _fanout_prepared(self, push: FanoutPush, topic: str, qos: int) -> bool:
        version = self.version
        prepared = push.encoded(
            f"mqtt{version}q{qos}",
            lambda p: prepare_publish(topic, p.body, qos, version=version,
                                      properties=_fanout_props(p) if version == MQTT_5
                                      else NO_PROPERTIES),
        )  # fmt: skip
        if qos == 0:
            self.send(prepared.to_bytes())
            self._ack(push.message_id, False)
            return True
        if not self.outbound.has_room():
            return False
        data = self.outbound.offer(push.message_id, False, qos, prepared.to_bytes, False)
        if data is not None:
            self.send_inflight(data)
        return True

    def send_retained(self, message: RetainedMessage, options: SubOptions) -> None:
        """A retained message for a new subscription (retain flag set)."""
        props = message.properties
        remaining_s = None
        if message.expires_at_ms:
            remaining_s = math.ceil((message.expires_at_ms - time.time() * 1000) / 1000)
            if remaining_s <= 0:
                return
        if self.version == MQTT_5:
            sub_ids = (options.subscription_id,) if options.subscription_id else ()
            if sub_ids or remaining_s is not None:
                props = _with(props, sub_ids, remaining_s)
        else:
            props = NO_PROPERTIES
        self._publish_out("", False, False, message.topic, message.payload,
                          min(message.qos, options.qos), True, props)  # fmt: skip

    def send_answer(self, topic: str, body: bytes, qos: int, props: Properties) -> None:
        """An RPC answer (not queued: it is for this connection only)."""
        if self.closed:
            return
        if self.version != MQTT_5:
            props = NO_PROPERTIES
        self._publish_out("", False, False, topic, body, qos, False, props)
        self.flush()

    # ------------------------------------------------------------------- acks

    def on_done(self, packet_id: int, pubcomp: bool, reason: int = 0) -> None:
        """PUBACK (QoS 1) or PUBCOMP (QoS 2) from the box."""
        sent = self.outbound.done(packet_id)
        if sent is not None:
            if sent.qos == 1 and reason >= 0x80:
                self.refused_by_box(sent.message_id, sent.tracked, reason)
            elif sent.qos == 1:
                self._ack(sent.message_id, sent.tracked)
            elif pubcomp and self.persistent and sent.message_id:
                self._background(self._node.persist_released(self, packet_id, None))
        if self.outbound.waiting:
            self._send_ready()

    def refused_by_box(
        self, message_id: str, tracked: bool, reason: int, packet: str = "PUBACK"
    ) -> None:
        """The box answered a QoS 1 PUBLISH with a failure PUBACK (or a QoS 2 one with
        a failure PUBREC; MQTT 5, reason 0x80 or more): the exchange is over and the
        message is not sent again (MQTT-4.4.0-2), but it was not delivered. A queued
        push gets a FAILED receipt naming the reason and leaves the queue; nothing
        counts it as an ACK."""
        name = _reason_name(reason)
        self._node.metrics.pushes_refused[name] += 1
        if message_id and tracked:
            self._node.registry.push_failed(
                self, message_id, f"the box refused it: {packet} 0x{reason:02X} {name}", True
            )

    def on_pubrec(self, pubrec: Pubrec) -> None:
        packet_id = pubrec.packet_id
        sent = self.outbound.release(packet_id)
        if sent is None:
            self.send(encode(Pubrel(packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
                                    if self.version == MQTT_5 else ReasonCode.SUCCESS),
                             self.version))  # fmt: skip
            return
        if pubrec.reason_code >= 0x80:
            # The box refused the message (MQTT 5): the exchange ends here.
            self.outbound.done(packet_id)
            self.refused_by_box(sent.message_id, sent.tracked, pubrec.reason_code, "PUBREC")
            self._send_ready()
            return
        self.send(encode(Pubrel(packet_id), self.version))
        if sent.message_id and self.persistent:
            # Recorded before the queue lets go of it: PUBREL must survive a crash.
            message_id, tracked = sent.message_id, sent.tracked

            async def release() -> None:
                await self._node.persist_released(self, packet_id, message_id)
                self._ack(message_id, tracked)
                self.flush()

            self._background(release())
        else:
            self._ack(sent.message_id, sent.tracked)

    def _send_ready(self) -> None:
        for data in self.outbound.ready():
            self.send_inflight(data)

    def _background(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    # ------------------------------------------------------------------ calls

    async def call(self, op: str, body: bytes, headers: Headers, timeout_s: float) -> RpcResponse:
        if self.closed or self.identity is None:
            return RpcResponse.error(ErrorCode.UNAVAILABLE, "device is not connected here")
        node = self._node
        node.metrics.rpc_calls += 1
        self._call_seq += 1
        token = f"{self._call_seq:x}"
        props = NO_PROPERTIES
        if self.version == MQTT_5:
            props = Properties(
                response_topic=node.call_reply_topic(self.device_id, token),
                correlation_data=token.encode(),
                user_properties=headers,
            )
        topic = node.call_topic(self.device_id, op, token, self.version)
        future: asyncio.Future[RpcResponse] = asyncio.get_running_loop().create_future()
        if self._calls is None:
            self._calls = {}
        self._calls[token] = future
        refused = self._publish_out("", False, False, topic, body, 1, False, props)
        if refused is not None:
            self._calls.pop(token, None)
            return RpcResponse.error(ErrorCode.UNAVAILABLE, refused)
        self.flush()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return RpcResponse.error(ErrorCode.TIMEOUT, f"device did not answer in {timeout_s} s")
        finally:
            if self._calls is not None:
                self._calls.pop(token, None)

    def on_call_answer(self, token: str, publish: Publish) -> bool:
        """The box answered a call; False if no call waits under ``token``."""
        future = (self._calls or {}).get(token)
        if future is None or future.done():
            return False
        status = 0
        headers: list[tuple[str, str]] = []
        message = ""
        for name, value in publish.properties.user_properties:
            if name == "status":
                status = _status(value)
            elif name == "message":
                message = value
            else:
                headers.append((name, value))
        future.set_result(RpcResponse(status, tuple(headers), publish.payload, 0, message))
        return True

    # ---------------------------------------------------------------- endings

    def disconnect(self, reason: ReasonCode, message: str, reference: str | None = None) -> None:
        """DISCONNECT with ``reason`` (MQTT 5), then close."""
        if self.version == MQTT_5 and self.open:
            props = Properties(reason_string=message[:200] or None, server_reference=reference)
            self.send(encode(Disconnect(reason, props), MQTT_5))
        self.close_now()

    def end(self, code: ErrorCode, message: str) -> None:
        if code == ErrorCode.SESSION_REPLACED:
            self._node.metrics.takeovers += 1
        self.disconnect(END_REASONS.get(code, ReasonCode.UNSPECIFIED_ERROR), message)

    def goaway(self, code: ErrorCode, reconnect_after_ms: int, message: str) -> None:
        if code == ErrorCode.SHUTTING_DOWN:
            reason, reference = self._node.drain_reason()
            self.disconnect(reason, message, reference)
        else:
            self.end(code, message)

    def abort(self) -> None:
        self._gone = True
        self._holder = None
        self._transport.abort()

    @abstractmethod
    def close_now(self) -> None:
        """Close after what is written (no DISCONNECT)."""

    def connection_gone(self) -> None:
        """Fail the calls waiting for the box; drop what was not acknowledged."""
        calls, self._calls = self._calls, None
        for future in (calls or {}).values():
            if not future.done():
                future.set_result(RpcResponse.error(ErrorCode.UNAVAILABLE, "device went away"))
        self.outbound.clear()
        self._out = []


_TASKS: set[asyncio.Task[None]] = set()
_NO_IDS: tuple[int, ...] = ()


def _replace(props: Properties, **changes: object) -> Properties:
    fields = {name: getattr(props, name) for name in props.__slots__}
    fields.update(changes)
    return Properties(**fields)


def _with(props: Properties, sub_ids: tuple[int, ...], expiry_s: int | None) -> Properties:
    return _replace(props, subscription_identifiers=sub_ids, message_expiry_interval_s=expiry_s)


def _fanout_props(push: FanoutPush) -> Properties:
    return Properties(user_properties=(("message-id", push.message_id), *push.headers))


def _reason_name(reason: int) -> str:
    try:
        return ReasonCode(reason).name
    except ValueError:
        return f"0x{reason:02X}"


def _status(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return int(ErrorCode[value.upper()])
    except KeyError:
        return int(ErrorCode.UPSTREAM_ERROR)
