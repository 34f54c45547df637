"""The node side of pushes: presence, the inbox, replay on connect, acks, fan-out.

One ``NodeDelivery`` per gateway process. Its jobs:

* hold the node's lease and keep presence true: arrivals and departures are
  collapsed per device and written in one batch per flush, never one write
  per heartbeat; a lease renewal that finds the node forgotten (Redis
  restarted empty) writes every local device again;
* on connect, write the device's presence *before* reading its queue, so a
  push accepted meanwhile is either routed here or found in the queue (the
  API queues before it looks presence up) — no gap;
* read the node's inbox and write pushes to sessions, one write per session
  per inbox batch (frames coalesce under load); a push for a device that is
  no longer here is forwarded to where presence says it went, or left in its
  queue for the next connect;
* broadcast and topic pushes are built once (``FanoutPush``); an engine that
  fans out natively writes its share of an audience in one call, the other
  sessions are written by one cursor going round them, ``fanout_batch`` per event-loop
  turn; a fan-out that arrives mid-round rides in the same writes as those
  already going (``channel/push/fanout.py``), so under a stream of them each
  device gets one write per round, not one per push;
* ACKs become queue removals and DELIVERED receipts, batched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from channel.logs import fields
from channel.push import envelopes as env
from channel.push.fanout import FanoutRing
from channel.push.latency import LatencyHistogram
from channel.push.model import (
    QUIET,
    UNQUEUED,
    Presence,
    Priority,
    PushMessage,
    PushStatus,
    Receipt,
    now_ms,
)
from channel.push.stores import PushBackend, QueuedRef
from channel.push.topics import TopicForbidden, TopicRules
from channel.rpc.model import RpcResponse
from channel.sessions import FanoutEngine, FanoutPush, Session, SessionRegistry
from channel.wire import ErrorCode

if TYPE_CHECKING:
    from channel.config import GatewayConfig

log = logging.getLogger("channel.push")

_DELIVERED = PushStatus.DELIVERED
#: Batched writes (presence, acks) go out at least this often.
FLUSH_INTERVAL_S = 0.01
#: Topics one device may subscribe to on one connection.
MAX_TOPICS_PER_DEVICE = 64
#: Fan-outs going round the ring beyond which the node stops reading its inbox.
MAX_RING_PENDING = 256
#: What ``_Outstanding.message_ids`` holds, instead of a collapse key, for a message
#: routed between MQTT boxes (``PushMessage.flags``): no receipt on ACK, and for an
#: unqueued one (QoS 0) nothing to remove from the queue either.
_QUIET_MARK = "\x00q"
_UNQUEUED_MARK = "\x00u"

EnvelopeHandler = Callable[[list[object]], None]


@dataclass(slots=True)
class _Outstanding:
    """Queued pushes written to one connection and not yet acknowledged, and its topics."""

    #: message id -> its collapse key: on ACK the message is removed from the device
    #: queue (the key spares the store reading it). Fan-out pushes are not kept here:
    #: they are only counted when acknowledged. Dicts, not sets: one of these per
    #: connection, and an empty set costs 216 bytes, an empty dict 64
    #: (tests/test_session_footprint.py).
    message_ids: dict[str, str] = field(default_factory=dict)
    #: The session's device (read per ACK: the session's property was a Python call).
    device_id: str = ""
    #: Set while the queue is being replayed; pushes arriving meanwhile wait here.
    held: list[PushMessage] | None = None
    topics: dict[str, None] = field(default_factory=dict)


class NodeDelivery:
    def __init__(
        self,
        registry: SessionRegistry,
        backend: PushBackend,
        config: GatewayConfig,
        node_id: str,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.config = config.push
        self.node_id = node_id
        self.topic_rules = TopicRules(config.topics.allow)
        self.node_no = 0
        self.node_names: dict[int, str] = {}
        self._state: dict[Session, _Outstanding] = {}
        self._topics: dict[str, set[Session]] = {}
        # device id -> Presence to write (online) or (Presence, False) to clear.
        self._presence_changes: dict[str, tuple[Presence, bool]] = {}
        self._replays: list[Session] = []
        self._acked: list[QueuedRef] = []
        #: (device id, message id) of pushes acknowledged here lately, oldest first
        #: (``[push] recent_acks``): a copy arriving after the ACK is not written again.
        #: An OrderedDict, not a dict: popping a dict's first key again and again costs
        #: a scan over the deleted slots before it (~9 us per ACK at 8,192 entries).
        self._recent_acks: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._fanout_acks: Counter[str] = Counter()
        self._receipts: list[Receipt] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._calls: dict[str, asyncio.Future[RpcResponse]] = {}
        self._call_seq = 0
        self._flushed: list[asyncio.Future[None]] = []
        self._consumer: asyncio.Task[None] | None = None
        # Fan-outs for native engines waiting out fanout_linger_ms, and the timer.
        self._native_pending: list[tuple[FanoutEngine, FanoutPush, list[Session] | None]] = []
        self._native_timer: asyncio.TimerHandle | None = None
        #: Ready sessions the ring writes fan-outs to (their engine does not fan out).
        self._ring_sessions: dict[Session, None] = {}
        self._ring: FanoutRing[Session, FanoutPush] = FanoutRing(
            self._write_fanout, self._fanout_alive
        )
        self._ring_task: asyncio.Task[None] | None = None
        self._sweep_offset = 0
        self.pushes_written = 0
        #: Accepted (by any node's API) -> written to the device here, for pushes routed
        #: to a device online now (queue replays, which waited for a device, are not).
        self.delivery_latency = LatencyHistogram()
        #: Directory entries this node's sweeps forgot (devices not seen within the ttl).
        self.directory_forgotten = 0
        #: Times this node found inbox entries trimmed before it read them and replayed
        #: its devices' queues (``channel_inbox_resyncs_total``).
        self.inbox_resyncs = 0
        #: Session writes of fan-out pushes (``channel_fanout_writes_total``): against
        #: fan-out pushes written, how many frames each write carried.
        self.fanout_writes = 0
        #: Sessions a topic push reaches besides those subscribed through
        #: ``subscribe`` (the MQTT front's subscribers), set by the node.
        self.topic_members: Callable[[str], Iterable[Session]] | None = None
        #: Inbox envelope kinds other layers handle (the MQTT front's), by kind.
        self.envelope_handlers: dict[str, EnvelopeHandler] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.node_no = await self.backend.presence.join(self.node_id, self.config.lease_ms)
        self.node_names = await self.backend.presence.live_nodes()
        loop = asyncio.get_running_loop()
        self._consumer = await self._start_consumer()
        self._tasks = [
            loop.create_task(self._flush_forever()),
            loop.create_task(self._lease_forever()),
        ]
        log.info("push delivery started", extra=fields(node_no=self.node_no))

    async def stop(self) -> None:
        """Flush what is pending, give up the lease and the inbox."""
        with contextlib.suppress(Exception):
            await self._flush_once()
        if self._consumer is not None:
            self._tasks.append(self._consumer)
            self._consumer = None
        if self._ring_task is not None:
            self._tasks.append(self._ring_task)
            self._ring_task = None
        for task in self._tasks:
            task.cancel()
        # Bounded: on Python 3.11 redis-py's send can swallow a cancel that lands as
        # it finishes; a task that missed it must not hold the node's shutdown.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=3.0)
        self._tasks = []
        with contextlib.suppress(Exception):
            await self.backend.presence.leave(self.node_no)
            await self.backend.router.drop_inbox(self.node_no)

    async def _start_consumer(self) -> asyncio.Task[None]:
        ready = asyncio.Event()
        inbox = self.backend.router.inbox(self.node_no, ready)
        loop = asyncio.get_running_loop()
        # The first read registers the inbox: what is sent from then on is read. Wait for
        # it, so what the node loads after starting (the MQTT front's global
        # subscriptions) and what it is sent later leave no gap between them.
        first = loop.create_task(_first(inbox))
        waiting = loop.create_task(ready.wait())
        await asyncio.wait([first, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        return loop.create_task(self._consume(inbox, first))

    async def _rejoin(self) -> None:
        """Take a new node number (and inbox) and write every local device again.

        Called when the store lost this node (Redis restarted empty, or the lease
        lapsed): another node may have been given the old number meanwhile, so
        keeping it could mix two nodes' devices. Pushes routed to the old inbox
        are still in their devices' queues."""
        old = self.node_no
        self.node_no = await self.backend.presence.join(self.node_id, self.config.lease_ms)
        if self._consumer is not None:
            self._consumer.cancel()
        self._consumer = await self._start_consumer()
        sessions = [s for s in self.registry.by_device.values() if s in self._state]
        await self.backend.presence.set_online([self._presence_of(s) for s in sessions])
        # Pushes accepted while this node was unknown were queued, not routed: read
        # every local device's queue again (after the presence write, as on connect).
        self._replay_everyone()
        log.warning(
            "presence was lost (store restarted?); rejoined and wrote it again",
            extra=fields(old_node_no=old, node_no=self.node_no),
        )

    def _replay_everyone(self) -> None:
        """Read every local device's queue again, as on connect (what is already on a
        connection is not written twice): for pushes that were queued but whose routing
        to this node was lost."""
        for session in self.registry.by_device.values():
            state = self._state.get(session)
            if state is not None and state.held is None:
                state.held = []
                self._replays.append(session)
        self._wake.set()

    # ------------------------------------------------------------- sessions

    def _presence_of(self, session: Session) -> Presence:
        device = session.device
        return Presence(device.device_id, device.user_id, self.node_no, int(time.time()))

    def session_ready(self, session: Session) -> None:
        """A device authenticated here: record presence, then replay its queue."""
        self._state[session] = _Outstanding(device_id=session.device_id, held=[])
        if session.fanout_engine is None:
            self._ring_sessions[session] = None
        self._presence_changes[session.device_id] = (self._presence_of(session), True)
        self._replays.append(session)
        self._wake.set()

    def session_closed(self, session: Session) -> None:
        state = self._state.pop(session, None)
        if state is None:
            return
        self._ring_sessions.pop(session, None)
        for topic in state.topics:
            self._leave_topic(session, topic)
        if session.device_id not in self.registry.by_device:
            self._presence_changes[session.device_id] = (self._presence_of(session), False)
            self._wake.set()

    def acks(self, session: Session, message_ids: Sequence[str]) -> None:
        """The device acknowledged queued pushes: remove them, report them delivered."""
        self.acks_many([session] * len(message_ids), message_ids)

    def acks_many(self, sessions: Sequence[Session | None], message_ids: Sequence[str]) -> None:
        """ACKs of many devices in one go (``message_ids[i]`` from ``sessions[i]``; None:
        a connection gone meanwhile). One pass, one clock read for the whole batch.

        With ``[push] recent_acks`` > 0 each ACK is remembered: a push can reach a
        connection twice (the queue replay on connect reads it while its routed copy is
        on the way, or it is forwarded from the node the box just left), and once
        acknowledged its queue entry goes, so the later copy would be a second
        delivery; this bounded memory turns it away (``_write``)."""
        at = now_ms()
        states = self._state
        acked, receipts, delivered = self._acked.append, self._receipts.append, _DELIVERED
        # Recent ACKs are remembered inline and trimmed once per batch (a call per ACK
        # was a few % of a node's CPU under unicast load).
        cap = self.config.recent_acks
        recent = self._recent_acks if cap > 0 else None
        last: Session | None = None
        outstanding: dict[str, str] = {}
        device_id = ""
        for session, message_id in zip(sessions, message_ids, strict=True):
            if session is not last:
                last = session
                state = states.get(session) if session is not None else None
                if state is None:
                    outstanding, device_id = {}, ""
                else:
                    outstanding, device_id = state.message_ids, state.device_id
            collapse_key = outstanding.pop(message_id, None)
            if collapse_key is None:
                continue
            if recent is not None:
                recent[(device_id, message_id)] = None
            if collapse_key == _QUIET_MARK:
                acked((device_id, message_id, ""))
                continue
            if collapse_key == _UNQUEUED_MARK:
                continue
            acked((device_id, message_id, collapse_key))
            receipts(Receipt(message_id, delivered, device_id, at))
        if recent is not None:
            trim = recent.popitem
            for _ in range(len(recent) - cap):
                trim(last=False)
        self._wake.set()

    def fanout_acks(self, counts: dict[str, int]) -> None:
        """Devices acknowledged broadcast and topic pushes: only counted."""
        self._fanout_acks.update(counts)
        self._wake.set()

    def push_failed(
        self, session: Session, message_id: str, reason: str, permanent: bool = True
    ) -> None:
        """A queued push the engine did not write: one this device can never take (its
        limits: reported failed and dropped), or, not ``permanent``, one it cannot take
        now (too many unacknowledged): left in the queue for the next connection."""
        state = self._state.get(session)
        mark = state.message_ids.pop(message_id, None) if state is not None else None
        if not permanent or mark == _UNQUEUED_MARK:
            return
        if mark == _QUIET_MARK:
            self._acked.append((session.device_id, message_id, ""))
        else:
            self._fail(session, message_id, reason)
        self._wake.set()

    # --------------------------------------------------------------- topics

    def _local(self, device_id: str) -> tuple[Session, _Outstanding] | None:
        """The device's session on this node, if it has one that takes pushes."""
        session = self.registry.by_device.get(device_id)
        state = self._state.get(session) if session is not None else None
        return (session, state) if session is not None and state is not None else None

    def _leave_topic(self, session: Session, topic: str) -> None:
        members = self._topics.get(topic)
        if members is not None:
            members.discard(session)
            if not members:
                del self._topics[topic]

    def subscribe(self, device_id: str, topics: Sequence[str]) -> int:
        """Add topics to the device's session; ``TopicForbidden`` (nothing added) when
        ``[topics] allow`` does not let this device have one of them."""
        local = self._local(device_id)
        if local is None:
            return 0
        session, state = local
        device = session.device
        for topic in topics:
            if not self.topic_rules.allows(
                topic, device_id=device.device_id, user_id=device.user_id, app_id=device.app_id
            ):
                raise TopicForbidden(
                    f"this device may not subscribe to {topic!r} "
                    f"(allowed: {self.topic_rules.describe() or 'no topics'})"
                )
        for topic in topics:
            if topic in state.topics:
                continue
            if len(state.topics) >= MAX_TOPICS_PER_DEVICE:
                raise ValueError(f"at most {MAX_TOPICS_PER_DEVICE} topics per device")
            state.topics[topic] = None
            self._topics.setdefault(topic, set()).add(session)
        return len(state.topics)

    def unsubscribe(self, device_id: str, topics: Iterable[str]) -> int:
        local = self._local(device_id)
        if local is None:
            return 0
        session, state = local
        for topic in topics:
            state.topics.pop(topic, None)
            self._leave_topic(session, topic)
        return len(state.topics)

    # --------------------------------------------------------------- writing

    def _write(
        self,
        session: Session,
        message: PushMessage,
        state: _Outstanding | None = None,
        device_id: str = "",
    ) -> bool:
        """Queue one queued (tracked) PUSH on a session (no flush). False if it cannot
        take it. ``state`` and ``device_id``, when the caller has them: the session's
        (saves two look-ups per push on the inbox path)."""
        if state is None:
            state = self._state.get(session)
            if state is None:
                return False
        if session.closed:
            return False
        message_id = message.message_id
        outstanding = state.message_ids
        if message_id in outstanding:
            return True  # already on this connection, not yet acknowledged
        if not device_id:
            device_id = session.device_id
        recent = self._recent_acks
        if recent and (device_id, message_id) in recent:
            return True  # acknowledged already: a late copy
        if message.target_users and session.device.user_id not in message.target_users:
            # A user push queued for a device that has changed hands since: never shown.
            self._fail(session, message_id, "device signed in as another user")
            return True
        refused = session.push(message_id, message.body, message.wire_headers(), True)
        if refused is not None:
            # Too large for this device's limits: it will never fit; say so once.
            if message.flags & UNQUEUED:
                pass
            elif message.flags & QUIET:
                self._acked.append((device_id, message_id, ""))
            else:
                self._fail(session, message_id, refused)
            return True
        if message_id not in outstanding:  # a QoS 0 push may be acked already
            outstanding[message_id] = _outstanding_mark(message)
        self.pushes_written += 1
        return True

    @property
    def unacked_total(self) -> int:
        """Queued pushes written to this node's devices and not acknowledged yet."""
        return sum(len(state.message_ids) for state in self._state.values())

    def deliver_now(self, items: Sequence[tuple[str, PushMessage]]) -> None:
        """Write pushes to devices of this node now, as if from the inbox (the MQTT
        front routes messages between local boxes without an inbox round trip);
        devices no longer here are forwarded to their node."""
        touched: set[Session] = set()
        forward: list[tuple[str, PushMessage]] = []
        self._deliver_many(items, touched, forward, now_ms())
        self._written(touched, forward)

    def is_here(self, node_no: int) -> bool:
        """``node_no`` is this node's, once it has joined (``deliver_accepted``)."""
        return node_no == self.node_no and node_no != 0

    def deliver_accepted(self, items: Sequence[tuple[str, PushMessage]]) -> None:
        """Queued pushes the API accepted here for devices of this node (``is_here``),
        written as this node's inbox would write them, without the round trip through
        the store's inbox: high-priority ones first, the rest in order, one write per
        session; devices gone meanwhile are forwarded to their node. The queue holds
        every one of them either way (delivery is at-least-once through it)."""
        touched: set[Session] = set()
        forward: list[tuple[str, PushMessage]] = []
        at_ms = now_ms()
        high = Priority.HIGH
        for item in items:
            if item[1].priority is high:
                self._deliver_many(
                    [i for i in items if i[1].priority is high], touched, forward, at_ms
                )
                items = [i for i in items if i[1].priority is not high]
                break
        self._deliver_many(items, touched, forward, at_ms)
        # Flushed at the end of this loop turn, not now: the native engine takes what
        # every request of the turn wrote in one batch (a flush now would hand it each
        # request's pushes on their own and step aside for it each time).
        if touched:
            asyncio.get_running_loop().call_soon(_flush_sessions, touched)
        self._forward_soon(forward)

    def _written(self, touched: set[Session], forward: list[tuple[str, PushMessage]]) -> None:
        _flush_sessions(touched)
        self._forward_soon(forward)

    def _forward_soon(self, forward: list[tuple[str, PushMessage]]) -> None:
        if forward:
            task = asyncio.get_running_loop().create_task(self._forward(forward))
            self._tasks.append(task)
            task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _fail(self, session: Session, message_id: str, reason: str) -> None:
        """Report a queued push this device will never get, and drop it from its queue."""
        self._receipts.append(
            Receipt(message_id, PushStatus.FAILED, session.device_id, now_ms(), reason)
        )
        self._acked.append((session.device_id, message_id))
        self._wake.set()  # else the receipt waits for whatever wakes the flush next

    def _deliver_many(
        self,
        items: Sequence[tuple[str, PushMessage]],
        touched: set[Session],
        forward: list[tuple[str, PushMessage]],
        at_ms: int,
    ) -> None:
        """Write pushes to the sessions of their devices here (touched: flush them);
        a device not here is left in ``forward`` for its node. The usual push, a plain
        queued one (no MQTT flags, no user check) new to its connection, is written
        inline; anything else goes through ``_write`` (six Python calls per push)."""
        by_device, states, recent = self.registry.by_device, self._state, self._recent_acks
        add, high = touched.add, Priority.HIGH
        ages: dict[int, int] = {}  # accepted at (ms) -> pushes written: one clock per batch
        # A batch's pushes were mostly accepted in the same ms: counted as a run, into
        # ages only when the time changes (a dict update per push was ~3 % of this loop).
        run_at_ms, run = -1, 0  # -1: no run yet (0 is "no acceptance time")
        written = 0
        for device_id, message in items:
            session = by_device.get(device_id)
            state = states.get(session) if session is not None else None
            if session is None or state is None:
                forward.append((device_id, message))
                continue
            if at_ms >= message.expires_at_ms:
                continue  # reported when the queue is next read
            if state.held is not None:
                state.held.append(message)
                continue
            message_id = message.message_id
            outstanding = state.message_ids
            if (
                message.flags
                or message.target_users
                or message_id in outstanding
                or session.closed
                or (recent and (device_id, message_id) in recent)
            ):
                if not self._write(session, message, state, device_id):
                    continue
            else:
                # Refusals (too large for the device) come back from the engine as
                # push_failed; the Python engine's session answers them here.
                headers = (
                    message.wire_headers()
                    if message.collapse_key or message.priority is high
                    else message.headers
                )
                refused = session.push(message_id, message.body, headers, True)
                if refused is not None:
                    self._fail(session, message_id, refused)
                else:
                    if message_id not in outstanding:  # see _write
                        outstanding[message_id] = message.collapse_key
                    written += 1
            add(session)
            accepted_at_ms = message.accepted_at_ms
            if accepted_at_ms == run_at_ms:
                run += 1
            elif accepted_at_ms:
                if run:
                    ages[run_at_ms] = ages.get(run_at_ms, 0) + run
                run_at_ms, run = accepted_at_ms, 1
        if run:
            ages[run_at_ms] = ages.get(run_at_ms, 0) + run
        self.pushes_written += written
        observe = self.delivery_latency.observe_many
        for accepted_at_ms, count in ages.items():
            observe((at_ms - accepted_at_ms) / 1000, count)

    async def _forward(self, items: list[tuple[str, PushMessage]]) -> None:
        """Pushes for devices that left: send them on to their new node, if any."""
        found = await self.backend.presence.lookup([device for device, _ in items])
        by_node: dict[int, list[env.Envelope]] = {}
        for item in items:
            where = found.get(item[0])
            if where is not None and where.node_no != self.node_no:
                by_node.setdefault(where.node_no, []).append(item)
        for node_no, batch in by_node.items():
            await self.backend.router.send(node_no, batch)

    # ----------------------------------------------------------------- inbox

    async def _consume(self, inbox: object, first: asyncio.Task[list[env.Envelope]]) -> None:
        batch = await first
        while True:
            try:
                await self._handle_batch(batch)
            except Exception:
                log.exception("inbox batch failed")
            batch = await anext(inbox)  # type: ignore[call-overload]

    async def _handle_batch(self, batch: list[env.Envelope]) -> None:
        at_ms = now_ms()  # one clock read per batch: a batch is handled in one go
        touched: set[Session] = set()
        forward: list[tuple[str, PushMessage]] = []
        fanouts: list[tuple[str, PushMessage]] = []
        normal: list[tuple[str, PushMessage]] = []
        for raw in batch:
            if isinstance(raw, tuple):  # an unpacked device push (env.DevicePush)
                message = raw[1]
                if message.priority is Priority.HIGH:
                    self._deliver_many([raw], touched, forward, at_ms)
                else:
                    normal.append(raw)
                continue
            try:
                item = env.unpack(raw)
                kind = item[0]
                if kind == env.DEVICE:
                    message = PushMessage.unpack(item[2])  # type: ignore[arg-type]
                    if message.priority is Priority.HIGH:
                        self._deliver_many([(str(item[1]), message)], touched, forward, at_ms)
                    else:
                        normal.append((str(item[1]), message))
                elif kind == env.BROADCAST:
                    fanouts.append(("", PushMessage.unpack(item[1])))  # type: ignore[arg-type]
                elif kind == env.TOPIC:
                    fanouts.append((str(item[1]), PushMessage.unpack(item[2])))  # type: ignore[arg-type]
                elif kind == env.KICK:
                    self._kick(str(item[1]), str(item[2]))
                elif kind == env.CALL:
                    self._serve_call(item)
                elif kind == env.REPLY:
                    self._on_reply(item)
                elif kind == env.RESYNC:
                    self.inbox_resyncs += 1
                    self._replay_everyone()
                elif str(kind) in self.envelope_handlers:
                    self.envelope_handlers[str(kind)](item)
            except Exception:
                log.exception("bad inbox envelope")
        # High-priority pushes were written as they came; normal ones follow them,
        # in arrival order, in the same write per session.
        if normal:
            self._deliver_many(normal, touched, forward, at_ms)
        for session in touched:
            session.flush()
        if forward:
            await self._forward(forward)
        if fanouts:
            await self._fan_out(fanouts)

    async def _fan_out(self, fanouts: list[tuple[str, PushMessage]]) -> None:
        """Broadcast / topic pushes, each built once (``FanoutPush``: every protocol
        encodes it once for all its sessions). Engines that fan out natively get their
        share of every audience in one call; the other sessions are written by the
        fan-out ring (``channel/push/fanout.py``) in slices of ``fanout_batch`` per
        loop turn."""
        at = now_ms()
        pushes = [
            (topic, FanoutPush(m.message_id, m.body, m.wire_headers(), topic))
            for topic, m in fanouts
            if not m.expired(at)
        ]
        if not pushes:
            return
        # While the ring is idle, a topic with at most one slice of ring subscribers is
        # written now (several in one batch coalesce per session); everything else
        # joins the ring, behind what is already going round (fan-outs keep their order).
        small: dict[Session, list[FanoutPush]] = {}
        everyone: list[Session] | None = None
        for topic, push in pushes:
            if topic:
                members: Iterable[Session] = self._topics.get(topic, ())
                if self.topic_members is not None:
                    members = {*members, *self.topic_members(topic)}
                ring_members = self._fan_out_natively(push, members)
                if not ring_members:
                    continue
                if not self._ring.pending and len(ring_members) <= self.config.fanout_batch:
                    for session in ring_members:
                        small.setdefault(session, []).append(push)
                    continue
                audience: frozenset[Session] | None = frozenset(ring_members)
            else:
                for engine in self.registry.fanout_engines:
                    self._native_fanout(engine, push, None)
                audience = None
            if everyone is None:
                everyone = [s for s in self._ring_sessions if s in self._state]
            if everyone:
                self._ring.join(push, everyone, audience)
        for session, entries in small.items():
            if self._fanout_alive(session):
                self._write_fanout(session, entries)
        if self._ring.pending and (self._ring_task is None or self._ring_task.done()):
            linger_s = self.config.fanout_linger_ms / 1000
            self._ring_task = asyncio.get_running_loop().create_task(self._run_ring(linger_s))
        # Backpressure: stop reading the inbox while the ring is this far behind.
        while self._ring.pending > MAX_RING_PENDING and self._ring_task is not None:
            await asyncio.wait([self._ring_task], timeout=0.05)

    def _fan_out_natively(self, push: FanoutPush, members: Iterable[Session]) -> list[Session]:
        """Hand a topic push to the engines that fan out natively, one call each with
        their subscribers; returns the subscribers the ring must write to."""
        ring: list[Session] = []
        native: dict[FanoutEngine, list[Session]] = {}
        for session in members:
            engine = session.fanout_engine
            if engine is None:
                ring.append(session)
            else:
                native.setdefault(engine, []).append(session)
        for engine, group in native.items():
            self._native_fanout(engine, push, group)
        return ring

    def _native_fanout(
        self, engine: FanoutEngine, push: FanoutPush, group: list[Session] | None
    ) -> None:
        """One push for an engine that fans out itself. With ``fanout_linger_ms``, fan-outs
        arriving within the linger go down together, so the engine writes each device
        once for all of them (as the ring does for the other sessions)."""
        linger_s = self.config.fanout_linger_ms / 1000
        if linger_s <= 0:
            self.pushes_written += engine.fanout([push], group)
            return
        self._native_pending.append((engine, push, group))
        if self._native_timer is None:
            loop = asyncio.get_running_loop()
            self._native_timer = loop.call_later(linger_s, self._flush_native_fanout)

    def _flush_native_fanout(self) -> None:
        self._native_timer = None
        pending, self._native_pending = self._native_pending, []
        for engine, push, group in pending:
            self.pushes_written += engine.fanout([push], group)

    @property
    def fanout_pending(self) -> int:
        """Fan-out pushes going round the ring now."""
        return self._ring.pending

    async def _run_ring(self, linger_s: float = 0.0) -> None:
        if linger_s > 0:
            # Fan-outs arriving meanwhile join at the same position: one write each.
            await asyncio.sleep(linger_s)
        step = self.config.fanout_batch
        while self._ring.step(step):
            await asyncio.sleep(0)

    def _fanout_alive(self, session: Session) -> bool:
        return session in self._state and not session.closed

    def _write_fanout(self, session: Session, pushes: Sequence[FanoutPush]) -> None:
        """One session's share of fan-outs, one flush."""
        written = session.push_fanout(pushes)
        if written:
            self.pushes_written += written
            self.fanout_writes += 1
            session.flush()

    # ---------------------------------------------------------------- flushes

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_once()
            except Exception:
                log.exception("push flush failed; retrying")
                await asyncio.sleep(0.2)
                self._wake.set()
            # Let more work gather: one batch per interval under load.
            await asyncio.sleep(FLUSH_INTERVAL_S)

    def wait_flushed(self) -> asyncio.Future[None]:
        """Done once everything pending now (presence, replays, acks) is written."""
        future = asyncio.get_running_loop().create_future()
        self._flushed.append(future)
        self._wake.set()
        return future

    async def _flush_once(self) -> None:
        backend = self.backend
        waiters, self._flushed = self._flushed, []
        try:
            await self._write_pending(backend)
        except BaseException:
            self._flushed = waiters + self._flushed
            raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _write_pending(self, backend: PushBackend) -> None:
        changes, self._presence_changes = self._presence_changes, {}
        replays, self._replays = self._replays, []
        if changes:
            online = [p for p, up in changes.values() if up]
            offline = [p for p, up in changes.values() if not up]
            try:
                if offline:
                    await backend.presence.set_offline(offline)
                if online:
                    if self.config.user_devices_ttl_s > 0:
                        # Independent writes: one round trip's wait, not two.
                        await asyncio.gather(
                            backend.presence.set_online(online),
                            backend.directory.remember(online),
                        )
                    else:
                        await backend.presence.set_online(online)
            except Exception:
                # Try again with the next flush (newer changes for a device win).
                for device_id, change in changes.items():
                    self._presence_changes.setdefault(device_id, change)
                self._replays = replays + self._replays
                raise
        if replays:
            await self._replay(replays)
        acked, self._acked = self._acked, []
        receipts, self._receipts = self._receipts, []
        counts, self._fanout_acks = self._fanout_acks, Counter()
        if backend.unicast is not None and (acked or receipts):
            await backend.unicast.acknowledged(acked, receipts)
        else:
            if acked:
                await backend.queue.remove(acked)
            if receipts:
                await backend.receipts.record(receipts)
        if counts:
            await backend.receipts.add_delivered(dict(counts))

    async def _replay(self, sessions: list[Session]) -> None:
        live = [s for s in sessions if s in self._state and not s.closed]
        now = now_ms()
        try:
            found = await self.backend.queue.pending_many([s.device_id for s in live], now)
        except Exception:
            # Read again at the next flush: the sessions keep holding what arrives,
            # so a device never starts without its queue.
            self._replays = live + self._replays
            raise
        for session in live:
            state = self._state.get(session)
            if state is None:
                continue
            held, state.held = state.held or [], None
            queued, expired = found.get(session.device_id, ([], []))
            for message in expired:
                if message.flags & QUIET:
                    continue  # routed between boxes: no status to report
                self._receipts.append(
                    Receipt(message.message_id, PushStatus.EXPIRED, session.device_id, now, "ttl")
                )
            for message in (*queued, *held):
                self._write(session, message)
            session.flush()

    async def _lease_forever(self) -> None:
        period_s = self.config.lease_ms / 3000
        while True:
            await asyncio.sleep(period_s)
            try:
                known = await self.backend.presence.renew(
                    self.node_no, self.node_id, self.config.lease_ms
                )
                if not known:
                    await self._rejoin()
                self.node_names = await self.backend.presence.live_nodes()
            except Exception as exc:
                log.warning("lease renewal failed", extra=fields(error=repr(exc)))
                continue
            try:
                await self._sweep_directory(period_s)
            except Exception as exc:
                log.warning("device directory sweep failed", extra=fields(error=repr(exc)))

    async def _sweep_directory(self, period_s: float) -> None:
        """This node's share of the directory sweep: the live nodes split the buckets,
        and each goes through its share once per ``user_devices_sweep_s``."""
        config = self.config
        if config.user_devices_ttl_s <= 0 or config.user_devices_sweep_s <= 0:
            return
        directory = self.backend.directory
        first, count = sweep_window(
            directory.buckets,
            sorted(self.node_names),
            self.node_no,
            self._sweep_offset,
            period_s / config.user_devices_sweep_s,
        )
        self._sweep_offset += count
        self.directory_forgotten += await directory.sweep(first, count, int(time.time()))

    # ------------------------------------------------------ kicks and calls

    def _kick(self, device_id: str, reason: str) -> None:
        session = self.registry.by_device.get(device_id)
        if session is not None:
            session.end(ErrorCode.KICKED, reason or "kicked by the backend")

    def _serve_call(self, item: list[object]) -> None:
        _, device_id, call_id, reply_node, op, body, headers, timeout_ms = item
        pairs = tuple((str(n), str(v)) for n, v in headers)  # type: ignore[attr-defined]

        async def run() -> None:
            response = await self.registry.call(
                str(device_id),
                str(op),
                bytes(body),
                pairs,
                int(timeout_ms) / 1000,  # type: ignore[arg-type,call-overload]
            )
            reply = env.pack(
                env.REPLY,
                call_id,
                response.status,
                [list(h) for h in response.headers],
                response.body,
                response.message,
            )
            await self.backend.router.send(int(reply_node), [reply])  # type: ignore[call-overload]

        asyncio.get_running_loop().create_task(run())

    def _on_reply(self, item: list[object]) -> None:
        _, call_id, status, headers, body, message = item
        future = self._calls.pop(str(call_id), None)
        if future is not None and not future.done():
            pairs = tuple((str(n), str(v)) for n, v in headers)  # type: ignore[attr-defined]
            future.set_result(RpcResponse(int(status), pairs, bytes(body), 0, str(message)))  # type: ignore[call-overload,arg-type]

    async def call_remote(
        self,
        node_no: int,
        device_id: str,
        op: str,
        body: bytes,
        headers: tuple[tuple[str, str], ...],
        timeout_s: float,
    ) -> RpcResponse:
        self._call_seq += 1
        call_id = f"{self.node_no}.{self._call_seq}"
        future: asyncio.Future[RpcResponse] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        envelope = env.pack(
            env.CALL,
            device_id,
            call_id,
            self.node_no,
            op,
            body,
            [list(h) for h in headers],
            int(timeout_s * 1000),
        )
        try:
            await self.backend.router.send(node_no, [envelope])
            # The remote node enforces the device timeout; this one covers the trip.
            return await asyncio.wait_for(future, timeout_s + 2.0)
        except TimeoutError:
            return RpcResponse.error(ErrorCode.TIMEOUT, f"no answer in {timeout_s} s")
        finally:
            self._calls.pop(call_id, None)

    # ------------------------------------------------------------ inspection

    def unacked(self, session: Session) -> int:
        """Queued pushes written to this session and not acknowledged yet."""
        state = self._state.get(session)
        return len(state.message_ids) if state is not None else 0


def _flush_sessions(sessions: Iterable[Session]) -> None:
    """``flush()`` each session, or once per ``flush_group``: sessions of one group
    share what a flush hands on (the native engine's batch of commands), so the first
    flush of the group does what the others would."""
    flushed: set[object] = set()
    for session in sessions:
        group = session.flush_group
        if group is None:
            session.flush()
        elif group not in flushed:
            flushed.add(group)
            session.flush()


def _outstanding_mark(message: PushMessage) -> str:
    if message.flags & UNQUEUED:
        return _UNQUEUED_MARK
    if message.flags & QUIET:
        return _QUIET_MARK
    return message.collapse_key


def sweep_window(
    buckets: int, nodes: Sequence[int], node_no: int, offset: int, fraction: float
) -> tuple[int, int]:
    """The buckets one node sweeps this tick: the live nodes split ``buckets`` into equal
    shares by rank; a node walks its share from ``offset``, ``fraction`` of it per tick
    (at least one bucket), and starts over at its end. Returns (first bucket, count);
    count is 0 for a node with no share (more nodes than buckets)."""
    ranked = list(nodes) or [node_no]
    rank = ranked.index(node_no) if node_no in ranked else 0
    share = -(-buckets // len(ranked))
    start = rank * share
    share = min(share, buckets - start)  # the last share may be short, or empty
    if share <= 0:
        return 0, 0
    position = offset % share
    per_tick = max(1, math.ceil(share * fraction))
    return start + position, min(per_tick, share - position)


async def _first(inbox: object) -> list[env.Envelope]:
    return await anext(inbox)  # type: ignore[call-overload,no-any-return]
