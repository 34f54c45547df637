"""One MQTT connection: packets in, bytes out, a ``Session`` for the rest of Channel.

``MqttConnection`` is fed by an engine (``data_received`` for a byte stream,
``packets_received`` for whole packets) and writes through its
``MqttTransport``. It owns what is per connection: the parser, the CONNECT
handshake, keepalive, topic aliases, the inbound QoS 1/2 exchanges and the
outbound flow (``channel.mqtt.flow``). What a packet *means* for the node
(authentication, ACLs, routing, retained messages, the store) is asked of its
``MqttNode`` (``channel.mqtt.service``). Pushes, backend calls and ends come
through the ``Session`` interface (``channel.mqtt.outgoing``).

Packets that change state (PUBLISH, PUBREL, SUBSCRIBE, UNSUBSCRIBE) are handled
one after another by one task per connection, in the order they came:
a SUBSCRIBE is in force before the PUBLISH behind it is routed, and QoS 1
PUBACKs go out in order. Acknowledgements and PINGREQ are answered at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from channel.logs import fields
from channel.mqtt.auth import MqttIdentity, MqttRefused
from channel.mqtt.encoder import encode
from channel.mqtt.errors import MqttError, UnsupportedProtocolVersion
from channel.mqtt.messages import BrokerMessage, forwarded_properties
from channel.mqtt.outgoing import MqttNode, Outgoing
from channel.mqtt.packets import (
    PINGRESP,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from channel.mqtt.parser import Parser
from channel.mqtt.properties import NO_PROPERTIES, Properties
from channel.mqtt.reasons import MQTT_5, PacketType, ReasonCode
from channel.mqtt.transport import MqttTransport
from channel.sessions import Session

log = logging.getLogger("channel.mqtt")

_NEW, _CONNECTING, _OPEN, _CLOSED = 0, 1, 2, 3
#: A CONNECT is judged with this parser limit (the configured one applies after it).
_CONNECT_LIMIT_BYTES = 64 * 1024
#: Packets buffered behind a CONNECT while it is being accepted.
_MAX_EARLY_PACKETS = 1_000
#: A PUBACK's fixed header, with no reason code (packet id after it).
_PUBACK = b"\x40\x02"


class MqttConnection(Outgoing):
    """See the module docstring."""

    __slots__ = (
        "_accepting",
        "_aliases",
        "_early",
        "_inbound_unacked",
        "_parser",
        "_pending",
        "_state",
        "_worker",
        "connected_at",
    )

    def __init__(self, node: MqttNode, transport: MqttTransport) -> None:
        super().__init__(node, transport)
        self._parser = Parser(
            max_packet_size_bytes=min(node.config.max_packet_size_bytes, _CONNECT_LIMIT_BYTES)
        )
        self._state = _NEW
        self._aliases: dict[int, str] | None = None
        #: Packets that came behind the CONNECT while it was being accepted.
        self._early: list[Packet] | None = None
        self._accepting = False
        #: Packets to handle in order (``_work``).
        self._pending: deque[Packet] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._inbound_unacked = 0
        self.connected_at = time.monotonic()

    # ----------------------------------------------------------- front doors

    def data_received(self, data: bytes) -> None:
        """Bytes from the box (the Python engine)."""
        if self._state == _CLOSED:
            return
        try:
            packets = self._parser.feed(data)
        except MqttError as error:
            for packet in error.packets:
                self._dispatch(packet)  # type: ignore[arg-type]
            self._malformed(error)
            self.flush()
            return
        for packet in packets:
            self._dispatch(packet)
            if self._state == _CLOSED:
                break
        self.flush()

    def packets_received(self, packets: list[bytes]) -> None:
        """Whole packets from the box (the native engine frames them)."""
        self.data_received(b"".join(packets))

    def pubacks_received(
        self, packet_ids: list[int], sessions: list[Session | None], message_ids: list[str]
    ) -> None:
        """Bare PUBACKs (no reason code, packet id not 0) the native engine read, all
        the box sent in one read once its session was open: ``packets_received`` of
        their bytes, except that the tracked pushes they acknowledge are added to
        ``sessions``/``message_ids``, for the caller to report with other connections'
        (``acks_many``: one call per event batch, as MMTP ACKs)."""
        outbound = self.outbound
        if (
            self._state != _OPEN
            or not self._parser.between_packets
            or outbound.waiting  # each PUBACK frees room for what waits, in turn
            or log.isEnabledFor(logging.DEBUG)
        ):
            self.packets_received([_PUBACK + p.to_bytes(2, "big") for p in packet_ids])
            return
        self._node.metrics.packets_in[PacketType.PUBACK] += len(packet_ids)
        # What ``_dispatch`` and ``on_done`` do with a PUBACK when nothing waits (and
        # a PUBACK makes nothing wait), inline.
        done = outbound.inflight.pop
        for packet_id in packet_ids:
            sent = done(packet_id, None)
            if sent is None or sent.qos != 1 or not sent.message_id:
                continue
            if sent.tracked:
                sessions.append(self)
                message_ids.append(sent.message_id)
            else:
                self._ack(sent.message_id, False)
        self.flush()

    def connection_lost(self) -> None:
        """The connection is gone (the engine's word; once)."""
        if self._gone:
            return
        self._state = _CLOSED
        self._gone = True
        self._holder = None
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        self._pending.clear()
        self._early = None
        self.connection_gone()
        if not self._accepting:  # else ``_accept`` hands the session back when done
            self._node.connection_closed(self)

    # -------------------------------------------------------------- dispatch

    def _dispatch(self, packet: Packet) -> None:
        self._node.metrics.packet_in(packet.packet_type)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("in %s: %r", self.client_id or "?", packet)
        if isinstance(packet, Connect):
            self._on_connect(packet)
        elif self._state == _CONNECTING:
            early = self._early
            if early is None:
                early = self._early = []
            early.append(packet)
            if len(early) > _MAX_EARLY_PACKETS:
                self.close_now()
        elif isinstance(packet, Puback | Pubcomp):
            self.on_done(packet.packet_id, isinstance(packet, Pubcomp), packet.reason_code)
        elif isinstance(packet, Pubrec):
            self.on_pubrec(packet)
        elif isinstance(packet, Pingreq):
            self.send(encode(PINGRESP, self.version))
        elif isinstance(packet, Disconnect):
            if self._pending or self._worker is not None:
                self._queue(packet)  # after what came before it (a SUBSCRIBE, a PUBLISH)
            else:
                self._on_disconnect(packet)
        elif isinstance(packet, Publish):
            self._on_publish(packet)
        elif isinstance(packet, Pubrel | Subscribe | Unsubscribe):
            self._queue(packet)
        else:  # AUTH: no enhanced authentication was agreed
            self._protocol_error(ReasonCode.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")

    def _queue(self, packet: Packet) -> None:
        self._pending.append(packet)
        if self._worker is None and self._state == _OPEN:
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._pending and self._state == _OPEN:
                packet = self._pending.popleft()
                if isinstance(packet, Publish):
                    await self._publish(packet)
                elif isinstance(packet, Pubrel):
                    await self._pubrel(packet)
                elif isinstance(packet, Subscribe):
                    await self._subscribe(packet)
                elif isinstance(packet, Unsubscribe):
                    await self._unsubscribe(packet)
                elif isinstance(packet, Disconnect):
                    self._on_disconnect(packet)
                self.flush()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("mqtt packet handling failed", extra=fields(client=self.client_id))
            self._protocol_error(ReasonCode.UNSPECIFIED_ERROR, "server error")
            self.flush()
        finally:
            if self._worker is asyncio.current_task():
                self._worker = None

    # --------------------------------------------------------------- CONNECT

    def _on_connect(self, connect: Connect) -> None:
        version = self._parser.version or 0
        self.version = version
        if self._state != _NEW:
            self._protocol_error(ReasonCode.PROTOCOL_ERROR, "a second CONNECT")
            return
        self._state = _CONNECTING
        node = self._node
        try:
            identity = node.authenticate(connect, version, self._transport.client_cert_cn)
            will = self._will_of(connect, identity)
        except MqttRefused as refused:
            node.metrics.auth_failures[refused.reason_code.name] += 1
            log.info(
                "mqtt connect refused",
                extra=fields(client=connect.client_id, code=refused.reason_code.name),
            )
            self._refuse(refused.reason_code, refused.message)
            return
        self.identity = identity
        self.will = will
        self.will_delay_s = (
            connect.will.properties.will_delay_interval_s or 0 if connect.will is not None else 0
        )
        props = connect.properties
        self.set_client_limits(
            props.receive_maximum, props.maximum_packet_size, props.topic_alias_maximum
        )
        self._parser.max_packet_size_bytes = node.config.max_packet_size_bytes
        self._accepting = True
        asyncio.get_running_loop().create_task(self._accept(connect, identity))

    def _will_of(self, connect: Connect, identity: MqttIdentity) -> BrokerMessage | None:
        will = connect.will
        if will is None:
            return None
        if not self._node.may_publish(identity, will.topic):
            raise MqttRefused(
                ReasonCode.NOT_AUTHORIZED, f"may not publish a will on {will.topic!r}"
            )
        props = forwarded_properties(will.properties)
        if props.will_delay_interval_s is not None:
            fields_ = {name: getattr(props, name) for name in props.__slots__}
            fields_["will_delay_interval_s"] = None
            props = Properties(**fields_)
        expiry = will.properties.message_expiry_interval_s
        return BrokerMessage(
            will.topic, will.payload, will.qos, will.retain, props, identity.client_id,
            expires_at_ms=0 if expiry is None else int(time.time() * 1000) + expiry * 1000,
        )  # fmt: skip

    async def _accept(self, connect: Connect, identity: MqttIdentity) -> None:
        node = self._node
        try:
            present, record = await node.open_session(self, connect)
        except Exception:
            self._accepting = False
            log.exception("mqtt session store failed", extra=fields(client=identity.client_id))
            self._refuse(ReasonCode.SERVER_UNAVAILABLE, "session store unavailable; retry")
            return
        self._accepting = False
        self.generation = record.generation
        if present:
            closed_at_ms = record.disconnected_at_ms or int(time.time() * 1000)
            self.dup_before_ms = closed_at_ms + node.config.dup_clock_margin_ms
        if self._state != _CONNECTING:
            # The box went away meanwhile: give the session back at once.
            node.connection_closed(self)
            return
        self.subscriptions = dict(record.subscriptions)
        self.received = set(record.received)
        keepalive_s = node.keepalive_for(connect.keep_alive_s)
        self.keepalive_s = keepalive_s
        self.send(encode(self._connack(present, connect, identity, keepalive_s), self.version))
        self._transport.set_idle(keepalive_s * 1500)
        self._state = _OPEN
        self.hold_pushes()
        node.session_opened(self)
        for packet_id, message_id in record.released.items():
            self.outbound.restore_released(packet_id, message_id)
            self.send_inflight(encode(Pubrel(packet_id), self.version))
        early, self._early = self._early, None
        for packet in early or ():
            self._dispatch(packet)
        self.flush()

    def _connack(
        self, present: bool, connect: Connect, identity: MqttIdentity, keepalive_s: int
    ) -> Connack:
        if self.version != MQTT_5:
            return Connack(session_present=present)
        config = self._node.config
        asked = connect.properties.session_expiry_interval_s or 0
        return Connack(
            session_present=present,
            properties=Properties(
                session_expiry_interval_s=self.expiry_s if self.expiry_s != asked else None,
                assigned_client_identifier=identity.client_id if identity.assigned else None,
                server_keep_alive_s=keepalive_s if keepalive_s != connect.keep_alive_s else None,
                receive_maximum=config.receive_maximum,
                topic_alias_maximum=config.topic_alias_maximum or None,
                maximum_packet_size=config.max_packet_size_bytes,
                retain_available=True,
                wildcard_subscription_available=True,
                subscription_identifier_available=True,
                shared_subscription_available=True,
            ),
        )

    def _refuse(self, reason: ReasonCode, message: str) -> None:
        """Refuse a CONNECT: CONNACK with the reason (a 3.1.1 return code at level 4)."""
        props = Properties(reason_string=message[:200]) if self.version == MQTT_5 else NO_PROPERTIES
        version = self.version if self.version else 4
        self.send(encode(Connack(reason_code=reason, properties=props), version))
        self.close_now()

    # ------------------------------------------------------------ PUBLISH in

    def _on_publish(self, publish: Publish) -> None:
        if publish.qos:
            self._inbound_unacked += 1
            limit = (self._node.config.receive_maximum if self.version == MQTT_5
                     else self._node.config.max_pending_in)  # fmt: skip
            if self._inbound_unacked > limit:
                self._protocol_error(
                    ReasonCode.RECEIVE_MAXIMUM_EXCEEDED,
                    f"more than {limit} QoS 1/2 PUBLISHes unacknowledged",
                )
                return
        topic = self._resolve_alias(publish)
        if topic is None:
            return
        if topic is not publish.topic:
            publish = Publish(topic, publish.payload, publish.qos, publish.retain,
                              publish.packet_id, publish.dup, publish.properties)  # fmt: skip
        self._queue(publish)

    def _resolve_alias(self, publish: Publish) -> str | None:
        alias = publish.properties.topic_alias
        if alias is None:
            return publish.topic
        maximum = self._node.config.topic_alias_maximum
        if not 0 < alias <= maximum:
            self._protocol_error(ReasonCode.TOPIC_ALIAS_INVALID, f"topic alias {alias} > {maximum}")
            return None
        if publish.topic:
            if self._aliases is None:
                self._aliases = {}
            self._aliases[alias] = publish.topic
            return publish.topic
        topic = (self._aliases or {}).get(alias)
        if topic is None:
            self._protocol_error(ReasonCode.PROTOCOL_ERROR, f"topic alias {alias} was never set")
        return topic

    async def _publish(self, publish: Publish) -> None:
        packet_id = publish.packet_id
        if publish.qos == 2 and packet_id in self.received:
            self._inbound_unacked -= 1  # the same exchange, counted once
            self.send(encode(Pubrec(packet_id), self.version))  # already routed once
            return
        reason = await self._node.handle_publish(self, publish)
        if self._state != _OPEN:
            return
        if publish.qos == 1:
            self._inbound_unacked -= 1
            self.send(encode(Puback(packet_id, self._ack_reason(reason)), self.version))
        elif publish.qos == 2:
            if reason < 0x80:
                self.received.add(packet_id)
                await self._node.persist_received(self, packet_id, True)
            else:
                self._inbound_unacked -= 1
            self.send(encode(Pubrec(packet_id, self._ack_reason(reason)), self.version))

    def _ack_reason(self, reason: ReasonCode) -> ReasonCode:
        # 3.1.1 cannot refuse a PUBLISH: it is acknowledged (and was dropped).
        return reason if self.version == MQTT_5 else ReasonCode.SUCCESS

    async def _pubrel(self, pubrel: Pubrel) -> None:
        packet_id = pubrel.packet_id
        if packet_id in self.received:
            self.received.discard(packet_id)
            self._inbound_unacked -= 1
            await self._node.persist_received(self, packet_id, False)
            reason = ReasonCode.SUCCESS
        else:
            reason = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
        self.send(encode(Pubcomp(packet_id, self._ack_reason(reason)), self.version))

    # ------------------------------------------------------------ SUBSCRIBE

    async def _subscribe(self, packet: Subscribe) -> None:
        codes, retained = await self._node.handle_subscribe(self, packet)
        if self._state != _OPEN:
            return
        self.send(encode(Suback(packet.packet_id, tuple(codes)), self.version))
        for message, options in retained:
            self.send_retained(message, options)

    async def _unsubscribe(self, packet: Unsubscribe) -> None:
        codes = await self._node.handle_unsubscribe(self, packet.topic_filters)
        if self._state != _OPEN:
            return
        self.send(encode(Unsuback(packet.packet_id, tuple(codes)), self.version))

    # ------------------------------------------------------------- endings

    def _on_disconnect(self, packet: Disconnect) -> None:
        expiry = packet.properties.session_expiry_interval_s
        if expiry is not None:
            if self.expiry_s == 0 and expiry > 0:
                self._protocol_error(
                    ReasonCode.PROTOCOL_ERROR, "session expiry set after a CONNECT without one"
                )
                return
            self.expiry_s = min(expiry, self._node.config.max_session_expiry_s)
        if packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
            self.will = None
        self.close_now()

    def _malformed(self, error: MqttError) -> None:
        log.info(
            "mqtt protocol error",
            extra=fields(client=self.client_id, code=error.reason_code.name, error=error.message),
        )
        if self._state in (_NEW, _CONNECTING) and self.identity is None:
            if isinstance(error, UnsupportedProtocolVersion):
                self.version = 4  # answered as 3.1.1: the client may not read 5.0
            elif self._parser.version:
                self.version = self._parser.version
            self._node.metrics.protocol_errors[error.reason_code.name] += 1
            if self.version:
                self._refuse(error.reason_code, error.message)
            else:
                self.close_now()
            return
        self._protocol_error(error.reason_code, error.message)

    def _protocol_error(self, reason: ReasonCode, message: str) -> None:
        """End the connection for the box's fault: DISCONNECT with the reason at 5.0."""
        if self._state == _CLOSED:
            return
        self._node.metrics.protocol_errors[reason.name] += 1
        self.disconnect(reason, message)

    # -------------------------------------------------------------- inspection

    @property
    def open(self) -> bool:
        return self._state == _OPEN

    def close_now(self) -> None:
        """Close after what is written (no DISCONNECT)."""
        if self._state == _CLOSED:
            return
        self.flush()
        self._state = _CLOSED
        self._closing = True
        self._holder = None
        self._transport.close()
