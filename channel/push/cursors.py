"""Receipt stream cursors: the one grammar every ``ReceiptLog`` reads.

A cursor is what ``ReceiptLog.read`` returned last time, or a start:

* ``""`` or ``"$"`` — from now on; ``"0"`` — from the oldest receipt kept;
* ``<seq>`` — the memory store's cursors (a receipt sequence number);
* ``<ms>-<seq>`` — a Redis stream entry id; ``<ms>-<seq>#<n>`` — the first ``n``
  receipts of that entry were returned already.

Each number is 1..19 ASCII digits, so it always fits the 64 bits of a Redis
stream id: a cursor that matches ``RECEIPT_CURSOR_PATTERN`` never makes a store
fail. The OpenAPI document states this same pattern for ``GET /v1/receipts?after=``.
"""

from __future__ import annotations

import re

#: On ``$(?!\n)`` (the end of the text for Python's re and ECMA-262 alike) see
#: channel/push/requests.py.
RECEIPT_CURSOR_PATTERN = r"^(|\$|[0-9]{1,19}(-[0-9]{1,19})?(#[0-9]{1,9})?)$(?!\n)"
_CURSOR = re.compile(RECEIPT_CURSOR_PATTERN)
CURSOR_HELP = (
    'must be a cursor from an earlier answer ("<n>", "<ms>-<n>" or "<ms>-<n>#<k>", '
    'digits only), "0" for the oldest kept, or empty for from now on'
)


def is_receipt_cursor(text: str) -> bool:
    # fullmatch: the whole text, so a trailing newline (which $ tolerates) fails too.
    return _CURSOR.fullmatch(text) is not None


def cursor_sequence(cursor: str) -> int:
    """The leading number of a valid, non-empty cursor (the memory store's sequence)."""
    return int(cursor.partition("#")[0].partition("-")[0])
