"""Limits of the HTTP push API that are not configuration (``[api]`` holds the rest)."""

from __future__ import annotations

import re

#: Longest a ``GET /v1/receipts`` long poll may wait.
MAX_RECEIPT_WAIT_MS = 30_000
MAX_RECEIPT_COUNT = 1_000
DEFAULT_RECEIPT_COUNT = 100
#: ``POST /v1/devices/{id}/rpc`` without ``timeout_ms`` waits this long (capped by config).
DEFAULT_RPC_TIMEOUT_MS = 10_000
MAX_IDEMPOTENCY_KEY_CHARS = 128
#: A push body must fit one PUSH frame to a device with default limits
#: (``max_frame_size`` 256 KiB), with room left for its headers.
MAX_PUSH_BODY_BYTES = 256 * 1024 - 8 * 1024

#: Printable ASCII, space included (the OpenAPI document states the same pattern; on
#: ``$(?!\n)`` see channel/push/requests.py).
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]+$(?!\n)"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def check_idempotency_key(value: str) -> bool:
    return 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_CHARS and bool(_IDEMPOTENCY_KEY.fullmatch(value))
