"""Accepting pushes and answering about them: what the HTTP and Redis stream APIs call.

``accept`` is the whole write path of a push, batched over many requests:
give each a message id, resolve users to devices, **queue first** (the queue
is what makes delivery at-least-once), look presence up, route one inbox
entry per node, record statuses, and report at once what cannot be
delivered (ttl 0 to an offline device, a queue overflow, a collapsed older
message). Any node can accept a push for any device.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from channel.push import envelopes as env
from channel.push.model import (
    ONLINE_ONLY_GRACE_MS,
    AcceptResult,
    MessageStatus,
    Presence,
    PushMessage,
    PushRequest,
    PushStatus,
    Receipt,
    TargetKind,
    new_message_id,
    new_message_ids,
    now_ms,
)
from channel.push.stores import EnqueueOutcome, IdempotencyStore, PushBackend
from channel.rpc.model import RpcResponse
from channel.wire import ErrorCode

if TYPE_CHECKING:
    from channel.config import GatewayConfig
    from channel.push.delivery import NodeDelivery
    from channel.sessions import SessionRegistry


class PushService:
    def __init__(
        self,
        registry: SessionRegistry,
        backend: PushBackend,
        delivery: NodeDelivery,
        config: GatewayConfig,
    ) -> None:
        self.registry = registry
        self.backend = backend
        self.delivery = delivery
        self.config = config
        self.idempotency: IdempotencyStore = backend.idempotency

    # ----------------------------------------------------------------- push

    async def _user_devices(self, user_ids: Sequence[str]) -> dict[str, list[str]]:
        """The devices a push to each user is for: every device the user connected from
        within ``user_devices_ttl_s`` (offline ones get it through their queue), or,
        with that set to 0, the user's devices online now."""
        if not user_ids:
            return {}
        if self.config.push.user_devices_ttl_s > 0:
            return await self.backend.directory.known_devices(user_ids, now_ms() // 1000)
        # Concurrently: a batch of user pushes costs one round trip, not one per user
        # (the store bounds how many calls are in flight).
        found = await asyncio.gather(*(self.backend.presence.user_devices(u) for u in user_ids))
        return {
            user_id: [p.device_id for p in presences]
            for user_id, presences in zip(user_ids, found, strict=True)
        }

    async def accept(self, requests: Sequence[PushRequest]) -> list[AcceptResult]:
        device_kind = TargetKind.DEVICE
        for request in requests:
            target = request.target
            if target.kind is not device_kind or len(target.ids) != 1 or request.ttl_s <= 0:
                return await self._accept_any(requests)
        return await self._accept_unicast(requests)

    async def _accept_unicast(self, requests: Sequence[PushRequest]) -> list[AcceptResult]:
        """``accept`` for a batch of pushes each to one device and kept until delivered
        (ttl > 0): most of what the API sees. The same steps as ``_accept_any``, in
        the same order, without the per-message device lists, online-only look-ups
        and fan-out checks the other targets need."""
        backend = self.backend
        push = self.config.push
        now = now_ms()
        device_kind = TargetKind.DEVICE
        items: list[tuple[str, PushMessage]] = []
        statuses: list[tuple[str, str, int]] = []
        for request, message_id in zip(requests, new_message_ids(now, len(requests)), strict=True):
            device_id = request.target.ids[0]
            expires_at_ms = now + request.ttl_s * 1000
            items.append(
                (
                    device_id,
                    PushMessage(
                        message_id,
                        request.body,
                        request.headers,
                        expires_at_ms,
                        request.collapse_key,
                        request.priority,
                        now,
                    ),
                )
            )
            statuses.append((message_id, device_id, expires_at_ms))
        if backend.unicast is not None:
            outcomes, where = await backend.unicast.write(
                statuses, now, push.status_retention_s, items, push.queue_cap
            )
        else:
            await backend.receipts.create_for_devices(statuses, now, push.status_retention_s)
            outcomes = await backend.queue.enqueue(items, push.queue_cap)
            # Queued first, looked up second (see _accept_any).
            where = await backend.presence.lookup(sorted({device_id for device_id, _ in items}))
        receipts = self._queue_receipts(outcomes, now)
        by_node: dict[int, list[env.DevicePush]] = {}
        results: list[AcceptResult] = []
        for item in items:
            presence = where.get(item[0])
            if presence is None:
                results.append(AcceptResult(item[1].message_id, device_kind, 1, 0))
                continue
            node_batch = by_node.get(presence.node_no)
            if node_batch is None:
                by_node[presence.node_no] = [item]
            else:
                node_batch.append(item)
            results.append(AcceptResult(item[1].message_id, device_kind, 1, 1))
        await self._route(by_node)
        if receipts:
            await backend.receipts.record(receipts)
        return results

    async def _route(self, by_node: dict[int, list[env.DevicePush]]) -> None:
        """Queued pushes to the nodes their devices are on: this node's written here
        at once (``NodeDelivery.deliver_accepted``), the others' through their inbox."""
        delivery = self.delivery
        for node_no, batch in by_node.items():
            if delivery.is_here(node_no):
                delivery.deliver_accepted(batch)
            else:
                await self.backend.router.send(node_no, batch)

    @staticmethod
    def _queue_receipts(outcomes: Sequence[EnqueueOutcome], now: int) -> list[Receipt]:
        """Older messages a new one collapsed (revoked) or pushed out of a full queue."""
        receipts: list[Receipt] = []
        for outcome in outcomes:
            for old in outcome.replaced:
                receipts.append(
                    Receipt(old, PushStatus.REVOKED, outcome.device_id, now, "collapsed")
                )
            for old in outcome.dropped:
                receipts.append(
                    Receipt(old, PushStatus.FAILED, outcome.device_id, now, "queue_full")
                )
        return receipts

    async def _accept_any(self, requests: Sequence[PushRequest]) -> list[AcceptResult]:
        backend = self.backend
        push = self.config.push
        now = now_ms()
        messages: list[PushMessage] = []
        user_ids = sorted(
            {uid for r in requests if r.target.kind is TargetKind.USER for uid in r.target.ids}
        )
        user_devices = await self._user_devices(user_ids)
        per_message_devices: list[list[str]] = []
        user_kind, device_kind = TargetKind.USER, TargetKind.DEVICE
        for request in requests:
            target = request.target
            kind = target.kind
            ttl_s = request.ttl_s
            messages.append(
                PushMessage(
                    new_message_id(now),
                    request.body,
                    request.headers,
                    now + (ttl_s * 1000 if ttl_s > 0 else ONLINE_ONLY_GRACE_MS),
                    request.collapse_key,
                    request.priority,
                    now,
                    ttl_s == 0,
                    tuple(target.ids) if kind is user_kind else (),
                )
            )
            if kind is device_kind:
                ids = target.ids
                per_message_devices.append(list(dict.fromkeys(ids)) if len(ids) > 1 else [*ids])
            elif kind is user_kind:
                devices: list[str] = []
                for user_id in target.ids:
                    devices.extend(user_devices.get(user_id, ()))
                per_message_devices.append(list(dict.fromkeys(devices)))
            else:
                per_message_devices.append([])

        # Online-only messages are queued only for devices online now.
        online_only_targets = sorted(
            {
                d
                for m, ds in zip(messages, per_message_devices, strict=True)
                if m.online_only
                for d in ds
            }
        )
        online_now = (
            await backend.presence.lookup(online_only_targets) if online_only_targets else {}
        )
        receipts: list[Receipt] = []
        queue_items: list[tuple[str, PushMessage]] = []
        expired_now: list[list[str]] = []
        no_one: list[str] = []  # shared, never appended to
        for message, devices in zip(messages, per_message_devices, strict=True):
            if not message.online_only:
                if len(devices) == 1:  # one device (the usual push): no list built for it
                    queue_items.append((devices[0], message))
                else:
                    queue_items.extend([(device_id, message) for device_id in devices])
                expired_now.append(no_one)
                continue
            gone: list[str] = []
            for device_id in devices:
                if message.online_only and device_id not in online_now:
                    gone.append(device_id)
                    receipts.append(
                        Receipt(message.message_id, PushStatus.EXPIRED, device_id, now, "offline")
                    )
                else:
                    queue_items.append((device_id, message))
            expired_now.append(gone)

        accepted = PushStatus.ACCEPTED
        statuses = [
            MessageStatus(
                message.message_id,
                request.target.kind,
                now,
                message.expires_at_ms,
                dict.fromkeys(devices, accepted),
            )
            for message, request, devices in zip(
                messages, requests, per_message_devices, strict=True
            )
        ]
        await backend.receipts.create(statuses, push.status_retention_s)

        if queue_items:
            outcomes = await backend.queue.enqueue(queue_items, push.queue_cap)
            receipts.extend(self._queue_receipts(outcomes, now))
            # Queued first, looked up second: a device connecting meanwhile either
            # shows here or finds the message when its node reads its queue.
            where = await backend.presence.lookup(sorted({d for d, _ in queue_items}))
        else:
            where = {}
        by_node: dict[int, list[env.DevicePush]] = {}
        online_count: dict[str, int] = {}
        for item in queue_items:
            presence = where.get(item[0])
            if presence is None:
                continue
            message_id = item[1].message_id
            by_node.setdefault(presence.node_no, []).append(item)
            online_count[message_id] = online_count.get(message_id, 0) + 1
        await self._route(by_node)

        fanouts: list[bytes] = []
        for message, request in zip(messages, requests, strict=True):
            kind = request.target.kind
            if kind is device_kind or kind is user_kind:
                continue
            if kind is TargetKind.BROADCAST:
                fanouts.append(env.pack(env.BROADCAST, message.pack()))
            elif kind is TargetKind.TOPIC:
                for topic in request.target.ids:
                    fanouts.append(env.pack(env.TOPIC, topic, message.pack()))
        if fanouts:
            await backend.router.send_all(fanouts)
        if receipts:
            await backend.receipts.record(receipts)

        return [
            AcceptResult(
                message.message_id,
                request.target.kind,
                len(devices) - len(gone),
                online_count.get(message.message_id, 0),
                tuple(gone) if gone else (),
            )
            for message, request, devices, gone in zip(
                messages, requests, per_message_devices, expired_now, strict=True
            )
        ]

    # --------------------------------------------------------------- status

    async def status(self, message_id: str) -> dict[str, object] | None:
        status = await self.backend.receipts.status(message_id)
        return status.to_json(now_ms()) if status is not None else None

    async def revoke(self, message_id: str) -> dict[str, object] | None:
        status = await self.backend.receipts.status(message_id)
        if status is None:
            return None
        revoked: list[str] = []
        already: list[str] = []
        for device_id, state in status.devices.items():
            if state is PushStatus.ACCEPTED and await self.backend.queue.revoke(
                device_id, message_id
            ):
                revoked.append(device_id)
            else:
                already.append(device_id)
        at = now_ms()
        await self.backend.receipts.record(
            [Receipt(message_id, PushStatus.REVOKED, d, at, "revoked") for d in revoked]
        )
        return {"message_id": message_id, "revoked": revoked, "already_final": already}

    async def receipts(self, after: str, count: int, wait_ms: int) -> tuple[list[Receipt], str]:
        return await self.backend.receipts.read(after, count, wait_ms)

    # ------------------------------------------------------------- presence

    async def device_presence(self, device_id: str) -> Presence | None:
        found = (await self.backend.presence.lookup([device_id])).get(device_id)
        await self._know_nodes([found] if found else [])
        return found

    async def user_devices(self, user_id: str) -> list[Presence]:
        found = await self.backend.presence.user_devices(user_id)
        await self._know_nodes(found)
        return found

    async def _know_nodes(self, found: Sequence[Presence]) -> None:
        # A node that joined since the last lease tick is not in the cached names yet.
        if any(p.node_no not in self.delivery.node_names for p in found):
            self.delivery.node_names = await self.backend.presence.live_nodes()

    def node_name(self, node_no: int) -> str:
        return self.delivery.node_names.get(node_no, "")

    async def kick(self, device_id: str, reason: str) -> bool:
        presence = await self.device_presence(device_id)
        if presence is None:
            return False
        await self.backend.router.send(
            presence.node_no, [env.pack(env.KICK, device_id, reason or "kicked by the backend")]
        )
        return True

    async def call_device(
        self,
        device_id: str,
        op: str,
        body: bytes,
        headers: tuple[tuple[str, str], ...],
        timeout_s: float,
    ) -> RpcResponse:
        """Backend → device RPC, wherever the device is connected."""
        if device_id in self.registry.by_device:
            return await self.registry.call(device_id, op, body, headers, timeout_s)
        presence = await self.device_presence(device_id)
        if presence is None:
            return RpcResponse.error(ErrorCode.NOT_FOUND, f"device {device_id} is not online")
        if presence.node_no == self.delivery.node_no:
            return await self.registry.call(device_id, op, body, headers, timeout_s)
        return await self.delivery.call_remote(
            presence.node_no, device_id, op, body, headers, timeout_s
        )
