"""The Redis stream push API: backends ``XADD`` requests, read results as receipts.

A backend appends to ``[push] request_stream`` (default ``channel:push``)::

    XADD channel:push * push '{"device_id": "d1", "body": "hi", "ttl_s": 3600}' id req-17

Field ``push`` holds one request in the HTTP API's JSON (``POST /v1/push``);
``batch`` may hold ``{"messages": [...]}`` instead; ``id`` is the caller's
request id, echoed back. Every gateway node reads the stream in one consumer
group (``channel``), so each request is accepted exactly by one node, and
acknowledges it (``XACK``) only once accepted: a node killed mid-request leaves
it pending, and another node claims it after ``CLAIM_IDLE_MS``.

Results go to ``[push] receipt_stream`` next to delivery receipts, as entries
whose field ``r`` is a JSON list: ``{"request_id", "message_id", "status":
"accepted", ...}`` or ``{"request_id", "status": "rejected", "error": {"code",
"message", "field"}}``. Validation is the HTTP API's, word for word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from channel import fastjson
from channel.api.limits import MAX_PUSH_BODY_BYTES
from channel.logs import fields
from channel.push.redis.receipts import entries_for
from channel.push.requests import ValidationError, parse_push_request

if TYPE_CHECKING:
    from channel.config import GatewayConfig
    from channel.push.model import PushRequest
    from channel.push.service import PushService

log = logging.getLogger("channel.push.stream")

GROUP = "channel"
#: A request pending this long on a consumer (a node that died) is taken over.
CLAIM_IDLE_MS = 15_000
READ_COUNT = 500
BLOCK_MS = 1_000


class StreamApi:
    def __init__(
        self, service: PushService, client: Any, config: GatewayConfig, consumer: str
    ) -> None:
        self.service = service
        self.client = client
        self.config = config
        #: This node's name in the consumer group.
        self.consumer = consumer
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.handled = 0

    async def start(self) -> None:
        stream = self.config.push.request_stream
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists already
            await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            # The flag ends the loop after its current read (BLOCK_MS) even if the
            # cancel is swallowed inside redis-py (it can be, on Python 3.11).
            self._stopping = True
            self._task.cancel()
            await asyncio.wait([self._task], timeout=BLOCK_MS / 1000 + 2)
            self._task = None

    async def _run(self) -> None:
        stream = self.config.push.request_stream
        # Our own entries left pending by an earlier run of this node come first.
        cursor = "0"
        claim_every = 0
        while not self._stopping:
            try:
                if claim_every <= 0:
                    claim_every = 10
                    await self._claim_abandoned(stream)
                claim_every -= 1
                reply = await self.client.xreadgroup(
                    GROUP, self.consumer, {stream: cursor}, count=READ_COUNT, block=BLOCK_MS
                )
                entries = _entries(reply)
                if cursor == "0" and not entries:
                    cursor = ">"
                    continue
                if entries:
                    await self._handle(stream, entries)
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted empty: make the group again
                    with contextlib.suppress(ResponseError):
                        await self.client.xgroup_create(stream, GROUP, id="0", mkstream=True)
                    continue
                log.warning("request stream read failed", extra=fields(error=str(exc)))
                await asyncio.sleep(1.0)
            except Exception as exc:
                log.warning("request stream read failed", extra=fields(error=repr(exc)))
                await asyncio.sleep(1.0)

    async def _claim_abandoned(self, stream: str) -> None:
        reply = await self.client.xautoclaim(
            stream, GROUP, self.consumer, CLAIM_IDLE_MS, start_id="0-0", count=READ_COUNT
        )
        claimed = [(i, f) for i, f in reply[1] if f] if reply else []
        if claimed:
            log.info("took over abandoned push requests", extra=fields(count=len(claimed)))
            await self._handle(stream, claimed)

    async def _handle(self, stream: str, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        push = self.config.push
        requests: list[PushRequest] = []
        slots: list[tuple[str, int, int]] = []  # request id, first index, count
        results: list[dict[str, object]] = []
        rejected: dict[int, dict[str, object]] = {}
        for position, (_entry_id, raw) in enumerate(entries):
            entry = {_text(k): v for k, v in raw.items()}
            request_id = _text(entry.get("id", b""))
            try:
                parsed = _parse_entry(
                    entry,
                    push.default_ttl_s,
                    push.max_ttl_s,
                    # The HTTP API's limit: a body that fits one PUSH frame.
                    min(MAX_PUSH_BODY_BYTES, self.config.api.max_body_bytes),
                    self.config.api.max_batch,
                )
            except ValidationError as exc:
                rejected[position] = {
                    "request_id": request_id,
                    "status": "rejected",
                    "error": {
                        "code": "invalid_request",
                        "message": exc.message,
                        "field": exc.field,
                    },
                }
                slots.append((request_id, 0, 0))
                continue
            slots.append((request_id, len(requests), len(parsed)))
            requests.extend(parsed)
        accepted = await self.service.accept(requests) if requests else []
        for position, (request_id, first, count) in enumerate(slots):
            if position in rejected:
                results.append(rejected[position])
                continue
            for result in accepted[first : first + count]:
                results.append({"request_id": request_id, **result.to_json()})
        await self.client.xadd(
            push.receipt_stream,
            {"r": fastjson.dumps(results)},
            maxlen=entries_for(push.receipt_stream_maxlen, len(results)),
            approximate=True,
        )
        # Acknowledged only now: a node killed before this point leaves them pending.
        await self.client.xack(stream, GROUP, *[entry_id for entry_id, _ in entries])
        self.handled += len(entries)


def _parse_entry(
    entry: dict[str, Any], default_ttl_s: int, max_ttl_s: int, max_body: int, max_batch: int
) -> list[PushRequest]:
    if "push" in entry:
        return [
            parse_push_request(
                _json(entry["push"], "push"),
                default_ttl_s=default_ttl_s,
                max_ttl_s=max_ttl_s,
                max_body_bytes=max_body,
            )
        ]
    if "batch" in entry:
        batch = _json(entry["batch"], "batch")
        messages = batch.get("messages") if isinstance(batch, dict) else None
        if not isinstance(messages, list) or not 1 <= len(messages) <= max_batch:
            raise ValidationError("messages", f"a list of 1..{max_batch} push requests")
        return [
            parse_push_request(
                item,
                default_ttl_s=default_ttl_s,
                max_ttl_s=max_ttl_s,
                max_body_bytes=max_body,
                where=f"messages[{index}].",
            )
            for index, item in enumerate(messages)
        ]
    raise ValidationError("push", 'an entry needs a "push" (or "batch") field with JSON')


def _json(value: Any, name: str) -> Any:
    try:
        return fastjson.loads(value)
    except (ValueError, TypeError):
        raise ValidationError(name, "not valid JSON") from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3 shape
        return [e for items in reply.values() for e in (items[0] if items else [])]
    return [e for _stream, items in reply for e in items]
