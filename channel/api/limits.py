"""Limits of the HTTP push API that are not configuration (``[api]`` holds the rest)."""

from __future__ import annotations

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
