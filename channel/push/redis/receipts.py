"""Message statuses (one hash per message) and the receipt stream.

``{p}:s:{<message id>}``: ``t`` target kind, ``a`` accepted_at_ms, ``e``
expires_at_ms, ``n`` delivered count, ``d:<device>`` one status letter, ``p``
devices still accepted; it expires ``retention_s`` after the message does, or
``final_retention_ms`` after its last device reached a final status (the
receipt's time) if sooner.
A device's status leaves ``accepted`` once and the first final status stays (a
late "expired" does not overwrite "delivered", nor the other way round).

The receipt stream (``[push] receipt_stream``, one key) gets one entry per
``record`` call (per ``RECEIPTS_PER_ENTRY``): field ``r``, a JSON list of
``Receipt.to_json()``, so a backend in any language can read it. A read cursor
is a stream id, or ``<id>#<n>`` when only the first ``n`` receipts of entry
``<id>`` were returned.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from channel import fastjson
from channel.push.model import (
    MessageStatus,
    PushStatus,
    Receipt,
    TargetKind,
    drop_at_ms,
    now_ms,
)
from channel.push.redis import lua
from channel.push.redis.connection import (
    MAX_BLOCK_MS,
    Batch,
    Connection,
    pack_args,
    raise_if_cancelled,
)
from channel.push.redis.keys import Keys
from channel.push.redis.router import last_stream_id

RECEIPTS_PER_ENTRY = 1_000


def entries_for(max_receipts: int, per_entry: int) -> int:
    """The stream length (in entries, which Redis counts) that keeps about ``max_receipts``
    receipts when entries hold ``per_entry`` each, as this one does.

    A node writes one entry per flush, so an entry holds more receipts the busier the
    node is: a bound in entries alone let the stream grow with the push rate (1M entries
    of ~100 receipts each is ~10 GB). Entries of a steady rate are alike in size; when
    the rate falls, older, larger entries are kept a little longer than their share."""
    return max(1, max_receipts // max(1, per_entry))


_LETTER = {
    PushStatus.ACCEPTED: "a",
    PushStatus.DELIVERED: "d",
    PushStatus.EXPIRED: "e",
    PushStatus.REVOKED: "r",
    PushStatus.FAILED: "f",
}
_STATUS = {letter.encode(): status for status, letter in _LETTER.items()}


_VALUE = {status: status.value for status in PushStatus}


def _receipt_json(receipt: Receipt) -> dict[str, object]:
    """``receipt.to_json()``, the usual receipt (a device's, no reason) built at once."""
    if receipt.device_id and not receipt.reason:
        return {
            "message_id": receipt.message_id,
            "status": _VALUE[receipt.status],
            "at_ms": receipt.at_ms,
            "device_id": receipt.device_id,
        }
    return receipt.to_json()


def receipt_from_json(item: Mapping[str, Any]) -> Receipt:
    return Receipt(
        message_id=str(item["message_id"]),
        status=PushStatus(item["status"]),
        device_id=str(item.get("device_id", "")),
        at_ms=int(item.get("at_ms", 0)),
        reason=str(item.get("reason", "")),
    )


class RedisReceipts:
    def __init__(
        self, conn: Connection, keys: Keys, stream: str, maxlen: int, final_retention_ms: int
    ) -> None:
        self._conn = conn
        self._keys = keys
        self._stream = stream
        self._maxlen = maxlen
        self.final_retention_ms = final_retention_ms

    async def create(self, statuses: Sequence[MessageStatus], retention_s: int) -> None:
        if not statuses:
            return
        keys = [self._keys.status(status.message_id) for status in statuses]
        final_ms = self.final_retention_ms
        batch = Batch()
        for run in self._conn.groups(keys):
            args: list[str | int] = []
            for i in run:
                status = statuses[i]
                devices = status.devices
                args += (
                    status.target.value,
                    status.accepted_at_ms,
                    status.expires_at_ms,
                    drop_at_ms(status, retention_s, final_ms),
                    status.delivered_count,
                    len(devices),
                )
                for device_id, device_status in devices.items():
                    args += (device_id, _LETTER[device_status])
            batch.script(lua.STATUS_CREATE, [keys[i] for i in run], [pack_args(args)])
        await self._conn.run(batch)

    async def create_for_devices(
        self, pushes: Sequence[tuple[str, str, int]], accepted_at_ms: int, retention_s: int
    ) -> None:
        # STATUS_CREATE's arguments straight from the tuples: what ``create`` writes for
        # such a status (a device still accepted: kept ``retention_s`` past its expiry).
        if pushes:
            batch = self.create_for_devices_request(pushes, accepted_at_ms, retention_s)
            await self._conn.run(batch)

    def create_for_devices_request(
        self, pushes: Sequence[tuple[str, str, int]], accepted_at_ms: int, retention_s: int
    ) -> Batch:
        """``create_for_devices``'s commands."""
        keys = [self._keys.status(push[0]) for push in pushes]
        retention_ms = retention_s * 1000
        device, accepted = TargetKind.DEVICE.value, _LETTER[PushStatus.ACCEPTED]
        batch = Batch()
        for run in self._conn.groups(keys):
            args: list[str | int] = []
            for i in run:
                _, device_id, expires_at_ms = pushes[i]
                args += (
                    device,
                    accepted_at_ms,
                    expires_at_ms,
                    expires_at_ms + retention_ms,
                    0,
                    1,
                    device_id,
                    accepted,
                )
            batch.script(lua.STATUS_CREATE, [keys[i] for i in run], [pack_args(args)])
        return batch

    async def record(self, receipts: Sequence[Receipt]) -> None:
        batch = self.record_request(receipts)
        if batch:
            await self._conn.run(batch)

    def record_request(self, receipts: Sequence[Receipt]) -> Batch:
        """``record``'s commands (none for no receipts)."""
        # Accepted changes nothing.
        accepted = PushStatus.ACCEPTED
        changes = [r for r in receipts if r.status is not accepted]
        status_key = self._keys.status
        keys = [status_key(r.message_id) for r in changes]
        final_ms = self.final_retention_ms
        letters = _LETTER
        batch = Batch()
        for run in self._conn.groups(keys):
            args: list[str | int] = []
            for i in run:
                receipt = changes[i]
                args += (
                    receipt.device_id,
                    letters[receipt.status],
                    # final_drop_at_ms, inlined: a call per receipt is most of its cost.
                    (receipt.at_ms or now_ms()) + final_ms if final_ms > 0 else 0,
                )
            batch.script(lua.RECEIPT_RECORD, [keys[i] for i in run], [pack_args(args)])
        for start in range(0, len(receipts), RECEIPTS_PER_ENTRY):
            chunk = receipts[start : start + RECEIPTS_PER_ENTRY]
            entry = fastjson.dumps([_receipt_json(r) for r in chunk])
            maxlen = entries_for(self._maxlen, len(chunk))
            batch.add("xadd", self._stream, {"r": entry}, maxlen=maxlen, approximate=True)
        return batch

    async def add_delivered(self, counts: Mapping[str, int]) -> None:
        batch = Batch()
        for message_id, count in counts.items():
            if count:
                batch.script(lua.RECEIPT_ADD_DELIVERED, [self._keys.status(message_id)], [count])
        if batch:
            await self._conn.run(batch)

    async def status(self, message_id: str) -> MessageStatus | None:
        stored: dict[bytes, bytes] = await self._conn.one("hgetall", self._keys.status(message_id))
        if b"t" not in stored:
            return None
        return MessageStatus(
            message_id=message_id,
            target=TargetKind(stored[b"t"].decode()),
            accepted_at_ms=int(stored[b"a"]),
            expires_at_ms=int(stored[b"e"]),
            devices={
                field[2:].decode(): _STATUS[value]
                for field, value in stored.items()
                if field.startswith(b"d:")
            },
            delivered_count=int(stored.get(b"n", 0)),
        )

    async def read(self, after: str, count: int, block_ms: int) -> tuple[list[Receipt], str]:
        if after in ("", "$"):
            after = await last_stream_id(self._conn, self._stream)
        elif after == "0":
            after = "0-0"
        entry_id, _, skip = after.partition("#")
        if skip:
            # Part of an entry was returned: that entry again, without its first ``skip``.
            entries = await self._conn.one("xrange", self._stream, entry_id, "+", count=count)
            if entries:
                return self._take(entries, count, after)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            raise_if_cancelled()
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                reply = await self._conn.one("xread", {self._stream: entry_id}, count=count)
            else:
                reply = await self._conn.blocking_read(
                    self._stream, entry_id, count, min(left_ms, MAX_BLOCK_MS)
                )
            if reply:
                return self._take(reply[0][1], count, after)
            if left_ms <= MAX_BLOCK_MS:
                return [], after

    @staticmethod
    def _take(entries: list[Any], count: int, after: str) -> tuple[list[Receipt], str]:
        """Up to ``count`` receipts from stream entries; the cursor after the last one."""
        partial_id, _, skip = after.partition("#")
        out: list[Receipt] = []
        cursor = after
        for raw_id, entry in entries:
            entry_id = raw_id.decode()
            items: Any = fastjson.loads(entry[b"r"])
            if skip and entry_id == partial_id:
                items = items[int(skip) :]
                done = int(skip)
            else:
                done = 0
            room = count - len(out)
            if len(items) > room:
                out.extend(receipt_from_json(i) for i in items[:room])
                return out, f"{entry_id}#{done + room}"
            out.extend(receipt_from_json(i) for i in items)
            cursor = entry_id
            if len(out) == count:
                break
        return out, cursor
