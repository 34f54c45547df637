"""Routing a PUBLISH to its subscribers, anywhere in the fleet, through the push system.

``Broker.publish(message)``:

1. finds the subscribing sessions: the owner's record for a topic in a box's
   own namespace, the ``GlobalIndex`` for everything else; one member per
   shared subscription group (an online one if there is one);
2. looks them up in presence;
3. **queues first** what must survive (QoS 1 and 2 to any subscriber: its device
   queue, the same store and cap as pushes, oldest dropped when full), then
   routes one push per subscriber to the node that holds it (this node's are
   written at once); QoS 0 goes to online subscribers only, unqueued;
4. each subscriber's connection re-checks its own subscriptions as it writes
   (QoS, no-local, subscription identifiers), so a race with an UNSUBSCRIBE
   delivers nothing rather than something unwanted.

A subscriber that reconnects anywhere, or whose node died, finds its messages
in its queue (``NodeDelivery`` replays it on connect), exactly as an app finds
its pushes.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from channel.config import MqttConfig
from channel.mqtt.index import GlobalIndex
from channel.mqtt.matching import topic_matches
from channel.mqtt.messages import BrokerMessage
from channel.mqtt.metrics import MqttMetrics
from channel.mqtt.sessions import SessionRecord, namespace_owner, own_namespace
from channel.mqtt.store import MqttStore
from channel.mqtt.topics import split_shared
from channel.push import envelopes as env
from channel.push.delivery import NodeDelivery
from channel.push.model import QUIET, UNQUEUED, Presence, PushMessage, new_message_id
from channel.push.stores import PushBackend


@dataclass(slots=True)
class _Target:
    qos: int
    #: Known to be a session that outlives its connection (else: unknown or not).
    persistent: bool = False


class Broker:
    def __init__(
        self,
        config: MqttConfig,
        queue_cap: int,
        prefix: str,
        store: MqttStore,
        index: GlobalIndex,
        backend: PushBackend,
        delivery: NodeDelivery,
        metrics: MqttMetrics,
    ) -> None:
        self.config = config
        self.queue_cap = queue_cap
        self.prefix = prefix
        self.store = store
        self.index = index
        self.backend = backend
        self.delivery = delivery
        self.metrics = metrics

    async def publish(self, message: BrokerMessage) -> int:
        """Route ``message``; returns how many sessions it was routed to."""
        now = int(time.time() * 1000)
        targets, groups = await self._subscribers(message, now)
        members = {m for group in groups.values() for m, _ in group}
        # This node's own sessions are written to whatever presence says yet (a box that
        # just connected is here before its presence is written).
        local = self.delivery.registry.by_device
        presence = await self.backend.presence.lookup(
            sorted(c for c in {*targets, *members} if c not in local)
        )
        for group in groups.values():
            online = [(m, q) for m, q in group if m in presence or m in local]
            member, qos = random.choice(online or group)
            target = targets.setdefault(member, _Target(-1))
            target.qos = max(target.qos, qos)
        if not targets:
            return 0
        expires = message.expires_at_ms or now + self.config.queued_message_ttl_s * 1000
        queued_msg = self._push(message, now, expires, QUIET)
        loose_msg = self._push(message, now, expires, QUIET | UNQUEUED)
        to_queue: list[tuple[str, PushMessage]] = []
        to_route: list[tuple[str, PushMessage]] = []
        for client_id, target in targets.items():
            qos = min(message.qos, target.qos)
            reachable = client_id in local or client_id in presence
            if qos >= 1:
                to_queue.append((client_id, queued_msg))
                if reachable:
                    to_route.append((client_id, queued_msg))
            elif reachable:
                to_route.append((client_id, loose_msg))
        if to_queue:
            outcomes = await self.backend.queue.enqueue(to_queue, self.queue_cap)
            self.metrics.queue_overflow_dropped += sum(len(o.dropped) for o in outcomes)
        await self._route(to_route, presence)
        self.metrics.routed += len(targets)
        return len(targets)

    def _push(self, message: BrokerMessage, now: int, expires: int, flags: int) -> PushMessage:
        return PushMessage(
            message_id=_message_id(),
            body=message.payload,
            headers=(message.header(),),
            expires_at_ms=expires,
            accepted_at_ms=now,
            flags=flags,
        )

    async def _subscribers(
        self, message: BrokerMessage, now: int
    ) -> tuple[dict[str, _Target], dict[tuple[str, str], list[tuple[str, int]]]]:
        """Subscribers by client id, and shared groups' members (share, filter) → [(id, qos)]."""
        topic, origin = message.topic, message.origin
        targets: dict[str, _Target] = {}
        groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
        owner = namespace_owner(topic, self.prefix)
        if owner is not None:
            record = (await self.store.records([owner])).get(owner)
            if record is not None and not record.expired(now):
                qos = _own_match(record, topic, origin, own_namespace(owner, self.prefix))
                if qos >= 0:
                    targets[owner] = _Target(qos, record.expiry_s > 0)
        for entry in self.index.match(topic):
            if entry.expires_at_ms and entry.expires_at_ms <= now:
                continue
            share, inner = split_shared(entry.topic_filter)
            if share is not None:
                groups.setdefault((share, inner), []).append((entry.client_id, entry.options.qos))
                continue
            if entry.options.no_local and entry.client_id == origin:
                continue
            target = targets.setdefault(entry.client_id, _Target(-1))
            target.qos = max(target.qos, entry.options.qos)
        return targets, groups

    async def _route(
        self, items: list[tuple[str, PushMessage]], presence: dict[str, Presence]
    ) -> None:
        node_no = self.delivery.node_no
        here = self.delivery.registry.by_device
        local: list[tuple[str, PushMessage]] = []
        remote: dict[int, list[bytes]] = {}
        for client_id, push in items:
            where = presence.get(client_id)
            if client_id in here or (where is not None and where.node_no == node_no):
                local.append((client_id, push))
            elif where is not None:
                remote.setdefault(where.node_no, []).append(env.device_push(client_id, push))
        if local:
            self.delivery.deliver_now(local)
        for target_node, batch in remote.items():
            await self.backend.router.send(target_node, batch)


def _own_match(record: SessionRecord, topic: str, origin: str, namespace: str) -> int:
    """The highest QoS of the owner's own-namespace subscriptions matching ``topic``."""
    qos = -1
    for topic_filter, options in record.subscriptions.items():
        if not topic_filter.startswith(namespace):
            continue  # in the global index
        if options.no_local and record.client_id == origin:
            continue
        if topic_matches(topic_filter, topic):
            qos = max(qos, options.qos)
    return qos


def _message_id() -> str:
    return new_message_id()
