"""Connection-scoped headers (spec section 9.11): sent once, re-attached to every request.

A client's headers that stay the same for a whole connection (identity, user
agent, a session cookie) cost bytes on every request even with HPACK: secrets
are never indexed, so a cookie travels whole each time. Instead the client
sends them once, in a *connection header block* (REQUEST flag ``CONN``), and
the server re-attaches them to every request of the connection, so what the
application (and the upstream behind the gateway) sees is unchanged.

A connection header block is an HPACK block decoded after the request's own
header block, with the same context. Its fields update the list in force:

* ``name: value`` fields *set* a name: every field of that name in the list
  is replaced by the block's fields of that name (several values: in order);
* a ``:drop`` field whose value is a name removes that name's fields.

The new list is the old list without the names the block sets or drops,
followed by the block's set fields in block order. The *effective* header
list of a request is its ``:op``, then the connection headers whose names
the request does not carry itself, then the request's own fields (HPACK,
then typed).
"""

from __future__ import annotations

from collections.abc import Sequence

from channel.wire.errors import ErrorCode, ProtocolError

Header = tuple[str, str]
DROP_HEADER = ":drop"


def apply_connection_update(
    current: tuple[Header, ...] | None, update: Sequence[Header]
) -> tuple[Header, ...] | None:
    """The list in force after a connection header block (None: empty)."""
    changed = {value if name == DROP_HEADER else name for name, value in update}
    kept = [field for field in current or () if field[0] not in changed]
    kept += [field for field in update if field[0] != DROP_HEADER]
    return tuple(kept) or None


def check_connection_update(update: Sequence[Header]) -> None:
    """A received block's fields: plain names, or ``:drop`` naming one (FIELD_ERROR)."""
    for name, value in update:
        if name == DROP_HEADER:
            if not value:
                raise ProtocolError(ErrorCode.FIELD_ERROR, ":drop names no header")
        elif name.startswith(":"):
            raise ProtocolError(ErrorCode.FIELD_ERROR, f"{name} in a connection header block")


def lift_connection_headers(
    headers: Sequence[Header], names: frozenset[str], current: tuple[Header, ...] | None
) -> tuple[tuple[Header, ...], tuple[Header, ...], tuple[Header, ...] | None]:
    """Split a request's headers for a client whose connection headers are ``names``.

    Returns (the request's own fields, the connection header block's fields
    (empty: nothing changed), the list in force afterwards). A name whose
    values differ from the list in force is set again; a name in force that
    this request does not carry is dropped, so the server re-attaches exactly
    what the request has.
    """
    own = tuple(field for field in headers if field[0] not in names)
    wanted = [field for field in headers if field[0] in names]
    update: list[Header] = []
    for name in dict.fromkeys(n for n, _ in (*(current or ()), *wanted)):
        now = [v for n, v in current or () if n == name]
        want = [v for n, v in wanted if n == name]
        if now == want:
            continue
        if want:
            update += ((name, value) for value in want)
        else:
            update.append((DROP_HEADER, name))
    if not update:
        return own, (), current
    return own, tuple(update), apply_connection_update(current, update)


def effective_request_headers(
    connection: tuple[Header, ...] | None, own: Sequence[Header]
) -> tuple[Header, ...]:
    """``:op`` (``own[0]``), the connection headers ``own`` does not override, then ``own[1:]``."""
    if not connection:
        return tuple(own)
    own_names = {name for name, _ in own}
    attached = tuple(field for field in connection if field[0] not in own_names)
    return (*own[:1], *attached, *own[1:])
