"""The MQTT front of a node: sessions, subscriptions, routing, RPC, wills.

One ``MqttService`` per node. For the engines it is the ``MqttFront``
(``opened(transport)`` → a connection); for connections it is their
``MqttNode``: it authenticates CONNECTs, opens and takes over sessions in the
MQTT store (fleet-wide: a takeover notice goes to the node that held the
box), applies the ACLs, keeps subscriptions (the box's record, the global
index, this node's local index), routes PUBLISHes (``channel.mqtt.routing``),
serves the RPC topics (``channel.mqtt.topicmap``) through the gateway's RPC
router, hands uplink messages to backends, and publishes wills.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence

from channel.config import GatewayConfig
from channel.logs import fields
from channel.mqtt.acl import TopicPatterns
from channel.mqtt.auth import MqttAuthenticator, MqttIdentity, MqttRefused
from channel.mqtt.connection import MqttConnection
from channel.mqtt.index import GlobalIndex, LocalIndex
from channel.mqtt.messages import BrokerMessage, RetainedMessage, forwarded_properties
from channel.mqtt.metrics import MqttMetrics
from channel.mqtt.outgoing import Outgoing, Retained
from channel.mqtt.packets import Connect, Publish, Subscribe
from channel.mqtt.properties import Properties
from channel.mqtt.reasons import MQTT_5, ReasonCode
from channel.mqtt.routing import Broker
from channel.mqtt.sessions import SessionRecord, SubOptions, own_namespace
from channel.mqtt.store import MqttStore
from channel.mqtt.topicmap import CALL_ANSWER, RpcTopic, TopicMap
from channel.mqtt.transport import MqttTransport
from channel.push import envelopes as env
from channel.push.delivery import NodeDelivery
from channel.push.model import QUIET, new_message_id
from channel.push.stores import PushBackend
from channel.rpc.model import RpcRequest, RpcResponse
from channel.sessions import Session, SessionRegistry
from channel.wire.errors import ErrorCode

log = logging.getLogger("channel.mqtt")

Upstream = Callable[[RpcRequest], Awaitable[RpcResponse]]

#: Inbox envelopes between nodes: a client's global subscriptions changed
#: ``[m, client id, [[filter, packed options or None], ...], expires_at_ms]``;
#: a newer connection took a session over ``[x, client id, generation]``.
GLOBAL = "m"
TAKEOVER = "x"


class MqttService:
    """See the module docstring."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        authenticator: MqttAuthenticator,
        registry: SessionRegistry,
        upstream: Upstream,
    ) -> None:
        self.config = config.mqtt
        self.queue_cap = config.push.queue_cap
        self.authenticator = authenticator
        self.registry = registry
        self.call_upstream = upstream
        self.metrics = MqttMetrics()
        self.topics = TopicMap(config.mqtt)
        mqtt = config.mqtt
        self.subscribe_allow = TopicPatterns(mqtt.subscribe_allow)
        self.subscribe_deny = TopicPatterns(mqtt.subscribe_deny)
        self.publish_allow = TopicPatterns(mqtt.publish_allow)
        self.publish_deny = TopicPatterns(mqtt.publish_deny)
        self.uplink = TopicPatterns(mqtt.uplink_topics)
        self.connections: set[MqttConnection] = set()
        self.index = GlobalIndex()
        self.local: LocalIndex[Outgoing] = LocalIndex()
        self._opened: set[Outgoing] = set()
        self._store: MqttStore | None = None
        self._broker: Broker | None = None
        self._backend: PushBackend | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.draining = False

    async def start(self, store: MqttStore, backend: PushBackend, delivery: NodeDelivery) -> None:
        self._store = store
        self._backend = backend
        self.index.load(await store.global_entries())
        self._broker = Broker(self.config, self.queue_cap, self.topics.prefix, store, self.index,
                              backend, delivery, self.metrics)  # fmt: skip
        delivery.topic_members = self._topic_members
        delivery.envelope_handlers[GLOBAL] = self._on_global
        delivery.envelope_handlers[TAKEOVER] = self._on_takeover

    @property
    def store(self) -> MqttStore:
        assert self._store is not None, "MqttService.start() first"
        return self._store

    @property
    def broker(self) -> Broker:
        assert self._broker is not None, "MqttService.start() first"
        return self._broker

    # ------------------------------------------------------------ the front

    def opened(self, transport: MqttTransport) -> MqttConnection:
        """A new connection from an engine (``MqttFront``)."""
        conn = MqttConnection(self, transport)
        self.connections.add(conn)
        return conn

    async def drain(self) -> None:
        """DISCONNECT every box (0x8B, or 0x9C with ``[mqtt] server_reference``)."""
        self.draining = True
        for conn in list(self.connections):
            conn.goaway(ErrorCode.SHUTTING_DOWN, 0, "node restarting")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    def drain_reason(self) -> tuple[ReasonCode, str | None]:
        if self.config.server_reference:
            return ReasonCode.USE_ANOTHER_SERVER, self.config.server_reference
        return ReasonCode.SERVER_SHUTTING_DOWN, None

    # ------------------------------------------------------------- sessions

    def authenticate(
        self, connect: Connect, version: int, client_cert_cn: str | None
    ) -> MqttIdentity:
        if self.draining:
            raise MqttRefused(ReasonCode.SERVER_UNAVAILABLE, "node is draining; connect elsewhere")
        return self.authenticator.authenticate(connect, version, client_cert_cn, time.time())

    def keepalive_for(self, asked_s: int) -> int:
        maximum = self.config.max_keepalive_s
        return maximum if asked_s == 0 or asked_s > maximum else asked_s

    def may_publish(self, identity: MqttIdentity, topic: str) -> bool:
        client, user = identity.client_id, identity.device.user_id
        return self.publish_allow.matches(topic, client, user) and not self.publish_deny.matches(
            topic, client, user
        )

    async def open_session(self, conn: Outgoing, connect: Connect) -> tuple[bool, SessionRecord]:
        assert conn.identity is not None
        client = conn.identity.client_id
        maximum = self.config.max_session_expiry_s
        if conn.version == MQTT_5:
            expiry = min(connect.properties.session_expiry_interval_s or 0, maximum)
        else:
            expiry = 0 if connect.clean_start else maximum
        conn.expiry_s = expiry
        now = _now_ms()
        present, record = await self.store.open(client, connect.clean_start, expiry, now)
        if present:
            own = own_namespace(client, self.topics.prefix)
            kept = {f: o for f, o in record.subscriptions.items() if not f.startswith(own)}
            if kept:
                await self._set_global(client, kept, 0)
        else:
            stale = self.index.filters_of(client)
            if stale:
                await self._set_global(client, dict.fromkeys(stale), 0)
            await self._purge_routed(client, now)
        await self._take_over(client, record.generation)
        return present, record

    async def _purge_routed(self, client: str, now: int) -> None:
        """A session that starts afresh does not get what was routed to an older one."""
        assert self._backend is not None
        queued, _ = await self._backend.queue.pending(client, now)
        stale = [(client, m.message_id, "") for m in queued if m.flags & QUIET]
        if stale:
            await self._backend.queue.remove(stale)

    async def _take_over(self, client: str, generation: int) -> None:
        """Tell the node holding an older connection of ``client`` to end it (0x8E);
        this node's own is ended when the new session registers."""
        assert self._backend is not None
        found = (await self._backend.presence.lookup([client])).get(client)
        node_no = self._broker.delivery.node_no if self._broker is not None else 0
        if found is not None and found.node_no != node_no:
            await self._backend.router.send(found.node_no, [env.pack(TAKEOVER, client, generation)])

    def _on_takeover(self, item: list[object]) -> None:
        _, client, generation = item
        session = self.registry.get(str(client))
        if isinstance(session, Outgoing) and session.generation < int(generation):  # type: ignore[call-overload]
            session.end(ErrorCode.SESSION_REPLACED, "the client connected again elsewhere")

    def session_opened(self, conn: Outgoing) -> None:
        self._opened.add(conn)
        self.registry.add(conn)
        self.local.add(conn, conn.subscriptions)

    def connection_closed(self, conn: Outgoing) -> None:
        if isinstance(conn, MqttConnection):
            self.connections.discard(conn)
        if not conn.generation:
            return
        if conn in self._opened:
            self._opened.discard(conn)
            self.local.remove(conn, conn.subscriptions)
            self.registry.remove(conn)
        self._spawn(self._close_session(conn))

    async def _close_session(self, conn: Outgoing) -> None:
        client, generation, expiry = conn.client_id, conn.generation, conn.expiry_s
        now = _now_ms()
        try:
            ours = await self.store.close(client, generation, expiry, now)
            if ours:
                own = own_namespace(client, self.topics.prefix)
                kept = {f: o for f, o in conn.subscriptions.items() if not f.startswith(own)}
                if kept:
                    if expiry:
                        await self._set_global(client, kept, now + expiry * 1000)
                    else:
                        await self._set_global(client, dict.fromkeys(kept), 0)
        except Exception:
            log.exception("mqtt session close failed", extra=fields(client=client))
        will = conn.will
        if will is not None:
            delay_s = min(conn.will_delay_s, expiry)
            if delay_s <= 0:
                await self._publish_will(will)
            else:
                await asyncio.sleep(delay_s)
                if await self.store.generation(client) == generation:
                    await self._publish_will(will)

    async def _publish_will(self, will: BrokerMessage) -> None:
        self.metrics.wills_published += 1
        try:
            if will.retain:
                await self._retain(will)
            await self.broker.publish(will)
        except Exception:
            log.exception("will not published", extra=fields(topic=will.topic))

    async def persist_received(self, conn: Outgoing, packet_id: int, present: bool) -> None:
        if conn.persistent:
            await self.store.receive(conn.client_id, conn.generation, packet_id, present)

    async def persist_released(
        self, conn: Outgoing, packet_id: int, message_id: str | None
    ) -> None:
        if conn.persistent:
            await self.store.release(conn.client_id, conn.generation, packet_id, message_id)

    # -------------------------------------------------------- subscriptions

    def _may_subscribe(self, conn: Outgoing, topic_filter: str) -> bool:
        client, user = conn.client_id, conn.device.user_id
        return self.subscribe_allow.covers(topic_filter, client, user) and not (
            self.subscribe_deny.covers(topic_filter, client, user)
        )

    def may_read(self, identity: MqttIdentity, topic: str) -> bool:
        """A message on ``topic`` may reach this box (``subscribe_deny`` also holds for
        topics a broader filter would let through)."""
        deny = self.subscribe_deny
        return not deny or not deny.matches(topic, identity.client_id, identity.device.user_id)

    def _refusal(self, conn: Outgoing, topic_filter: str, new: bool, own: str) -> ReasonCode | None:
        """Why a subscription is refused (ACL, quotas), or None."""
        if not self._may_subscribe(conn, topic_filter):
            return ReasonCode.NOT_AUTHORIZED
        config = self.config
        if new and len(conn.subscriptions) >= config.max_subscriptions_per_client:
            return ReasonCode.QUOTA_EXCEEDED
        if (
            new
            and not topic_filter.startswith(own)
            and len(self.index) >= config.max_global_subscriptions
        ):
            return ReasonCode.QUOTA_EXCEEDED
        return None

    async def handle_subscribe(
        self, conn: Outgoing, packet: Subscribe
    ) -> tuple[list[ReasonCode], Retained]:
        ids = packet.properties.subscription_identifiers
        sub_id = ids[0] if ids else 0
        own = own_namespace(conn.client_id, self.topics.prefix)
        codes: list[ReasonCode] = []
        changes: dict[str, SubOptions | None] = {}
        wanted: list[tuple[str, SubOptions]] = []
        for sub in packet.subscriptions:
            topic_filter = sub.topic_filter
            new = topic_filter not in conn.subscriptions
            code = self._refusal(conn, topic_filter, new, own) or ReasonCode(sub.qos)
            codes.append(code)
            if code >= 0x80:
                self.metrics.subscribes_denied += 1
                continue
            options = SubOptions.of(sub, sub_id)
            conn.subscriptions[topic_filter] = changes[topic_filter] = options
            if not topic_filter.startswith("$share/") and (
                options.retain_handling == 0 or (options.retain_handling == 1 and new)
            ):
                wanted.append((topic_filter, options))
        if changes:
            await self._save_subscriptions(conn, changes, own)
        retained: Retained = []
        assert conn.identity is not None
        for topic_filter, options in wanted:
            for topic, data in await self.store.retained(topic_filter):
                message = RetainedMessage.unpack(data)
                if message is not None and self.may_read(conn.identity, topic):
                    retained.append((message, options))
        return codes, retained

    async def handle_unsubscribe(
        self, conn: Outgoing, topic_filters: Sequence[str]
    ) -> list[ReasonCode]:
        codes = []
        changes: dict[str, SubOptions | None] = {}
        for topic_filter in topic_filters:
            if conn.subscriptions.pop(topic_filter, None) is None:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
            else:
                codes.append(ReasonCode.SUCCESS)
                changes[topic_filter] = None
        if changes:
            await self._save_subscriptions(
                conn, changes, own_namespace(conn.client_id, self.topics.prefix)
            )
        return codes

    async def _save_subscriptions(
        self, conn: Outgoing, changes: dict[str, SubOptions | None], own: str
    ) -> None:
        if conn in self._opened:
            self.local.remove(conn, [f for f, o in changes.items() if o is None])
            self.local.add(conn, [f for f, o in changes.items() if o is not None])
        await self.store.subscribe(conn.client_id, conn.generation, changes)
        glob = {f: o for f, o in changes.items() if not f.startswith(own)}
        if glob:
            await self._set_global(conn.client_id, glob, 0)

    async def _set_global(
        self, client: str, changes: Mapping[str, SubOptions | None], expires_at_ms: int
    ) -> None:
        self.index.apply(client, changes, expires_at_ms)
        await self.store.set_global(client, changes, expires_at_ms)
        assert self._backend is not None
        packed = [[f, None if o is None else o.pack()] for f, o in changes.items()]
        # Fresh: a node that joined since the last cached lease read loaded the
        # global subscriptions before this change was stored, or must get it here.
        envelope = env.pack(GLOBAL, client, packed, expires_at_ms)
        await self._backend.router.send_all([envelope], fresh=True)

    def _on_global(self, item: list[object]) -> None:
        _, client, changes, expires_at_ms = item
        self.index.apply(
            str(client),
            {str(f): None if o is None else SubOptions.unpack(bytes(o)) for f, o in changes},  # type: ignore[attr-defined]
            int(expires_at_ms),  # type: ignore[call-overload]
        )

    def _topic_members(self, push_topic: str) -> Iterable[Session]:
        return self.local.match(self.topics.fanout_topic(push_topic))

    # -------------------------------------------------------------- publish

    async def handle_publish(self, conn: Outgoing, publish: Publish) -> ReasonCode:
        self.metrics.publishes_in[publish.qos] += 1
        identity = conn.identity
        assert identity is not None
        topic = publish.topic
        rpc = self.topics.rpc_topic(topic)
        if rpc is not None:
            owner, what = rpc
            if owner != identity.client_id:
                self.metrics.publishes_denied += 1
                return ReasonCode.NOT_AUTHORIZED
            return self._rpc_topic(conn, publish, what)
        if not self.may_publish(identity, topic):
            self.metrics.publishes_denied += 1
            return ReasonCode.NOT_AUTHORIZED
        props = publish.properties
        if props.payload_format_indicator == 1 and not _utf8(publish.payload):
            return ReasonCode.PAYLOAD_FORMAT_INVALID
        expiry = props.message_expiry_interval_s
        message = BrokerMessage(
            topic, publish.payload, publish.qos, publish.retain, forwarded_properties(props),
            identity.client_id, 0 if expiry is None else _now_ms() + expiry * 1000,
        )  # fmt: skip
        if publish.retain:
            await self._retain(message)
        taken = False
        if self.uplink.matches(topic, identity.client_id, identity.device.user_id):
            if not await self._uplink(conn, message):
                if conn.version != MQTT_5:
                    conn.close_now()  # no PUBACK: the box sends it again after reconnecting
                return ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR
            taken = True
        routed = await self.broker.publish(message)
        return ReasonCode.SUCCESS if routed or taken else ReasonCode.NO_MATCHING_SUBSCRIBERS

    async def _retain(self, message: BrokerMessage) -> None:
        if not message.payload:
            await self.store.retain(message.topic, None, self.config.max_retained_per_namespace)
            return
        kept = await self.store.retain(
            message.topic,
            RetainedMessage.of(message).pack(),
            self.config.max_retained_per_namespace,
        )
        if not kept:
            self.metrics.retained_refused += 1

    async def _uplink(self, conn: Outgoing, message: BrokerMessage) -> bool:
        """Hand a box's message to the backends; True once they have it."""
        device = conn.device
        config = self.config
        try:
            redis = self._backend.redis if self._backend is not None else None
            if config.uplink_stream and redis is not None:
                await redis.xadd(
                    config.uplink_stream,
                    {"device_id": device.device_id, "user_id": device.user_id,
                     "topic": message.topic, "payload": message.payload,
                     "qos": message.qos, "message_id": new_message_id(), "at_ms": _now_ms()},
                    maxlen=config.uplink_stream_maxlen, approximate=True,
                )  # fmt: skip
                ok = True
            else:
                headers = (("mqtt-topic", message.topic), *message.properties.user_properties)
                request = RpcRequest(config.uplink_op, headers, message.payload, device)
                response = await self.call_upstream(request)
                ok = response.status == 0
                if not ok:
                    why = fields(
                        device=device.device_id, status=response.status, error=response.message
                    )
                    log.info("uplink refused", extra=why)
        except Exception as exc:
            log.warning("uplink failed", extra=fields(device=device.device_id, error=repr(exc)))
            ok = False
        if ok:
            self.metrics.uplink_forwarded += 1
        else:
            self.metrics.uplink_failed += 1
        return ok

    # ------------------------------------------------------------------ RPC

    def _rpc_topic(self, conn: Outgoing, publish: Publish, what: RpcTopic) -> ReasonCode:
        if what.kind == CALL_ANSWER:
            if not conn.on_call_answer(what.name, publish):
                return ReasonCode.NO_MATCHING_SUBSCRIBERS
            return ReasonCode.SUCCESS
        self.metrics.rpc_requests += 1
        self._spawn(self._serve_request(conn, publish, what))
        return ReasonCode.SUCCESS

    async def _serve_request(self, conn: Outgoing, publish: Publish, what: RpcTopic) -> None:
        props = publish.properties
        request = RpcRequest(what.name, props.user_properties, publish.payload, conn.device)
        try:
            response = await self.call_upstream(request)
        except Exception:
            log.exception("mqtt rpc failed", extra=fields(op=what.name))
            response = RpcResponse.error(ErrorCode.INTERNAL_ERROR, "gateway error")
        if conn.closed:
            return
        failed = response.status != 0
        if conn.version == MQTT_5 and props.response_topic:
            topic = props.response_topic
        elif what.correlation:
            topic = self.topics.answer_topic(
                conn.client_id, what.correlation, failed and conn.version != MQTT_5
            )
        else:
            return  # nobody asked for the answer
        body = response.body
        answer_props = Properties()
        if conn.version == MQTT_5:
            status = "0" if not failed else _code_name(response.status)
            extra = [("status", status)] + (
                [("message", response.message)] if response.message else []
            )
            answer_props = Properties(correlation_data=props.correlation_data,
                                      user_properties=(*response.headers, *extra))  # fmt: skip
        elif failed:
            body = json.dumps(
                {"code": _code_name(response.status), "message": response.message}
            ).encode()
        conn.send_answer(topic, body, min(publish.qos, 1), answer_props)

    # ----------------------------------------------------------------- topics

    def push_topic(self, device_id: str) -> str:
        return self.topics.push_topic(device_id)

    def fanout_topic(self, push_topic: str) -> str:
        return self.topics.fanout_topic(push_topic)

    def call_topic(self, device_id: str, op: str, token: str, version: int) -> str:
        return self.topics.call_topic(device_id, op, token, with_token=version != MQTT_5)

    def call_reply_topic(self, device_id: str, token: str) -> str:
        return self.topics.call_reply_topic(device_id, token)

    # ---------------------------------------------------------------- tasks

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _code_name(status: int) -> str:
    try:
        return ErrorCode(status).name
    except ValueError:
        return str(status)
