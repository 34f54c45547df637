"""Connection states and the tables that drive them.

Two tables, in the style of h11's ``_state.py``: which frame types each role
may *receive* in each state, and which triggers move a role from one state
to the next. Anything not in a table is a STATE_ERROR.
"""

from __future__ import annotations

from enum import Enum

from channel.wire.errors import ErrorCode, LocalProtocolError, ProtocolError
from channel.wire.frames import FrameType


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class State(Enum):
    IDLE = "idle"  # client before HELLO
    AWAIT_HELLO = "await-hello"  # server before HELLO
    HELLO_SENT = "hello-sent"  # client waiting for HELLO_ACK (may pipeline requests)
    AUTHENTICATING = "authenticating"  # server has HELLO, has not answered yet
    OPEN = "open"
    CLOSING = "closing"  # a GOAWAY went one way or the other: no new streams
    CLOSED = "closed"


F = FrameType
_SERVER_OPEN = frozenset(
    {F.REQUEST, F.RESPONSE, F.ACK, F.PING, F.PONG, F.SETTINGS, F.GOAWAY, F.ERROR, F.CANCEL}
)
_CLIENT_OPEN = frozenset(
    {
        F.REQUEST,
        F.RESPONSE,
        F.PUSH,
        F.PING,
        F.PONG,
        F.SETTINGS,
        F.GOAWAY,
        F.ERROR,
        F.CANCEL,
        F.DICT,
    }
)

RECEIVABLE: dict[tuple[Role, State], frozenset[FrameType]] = {
    (Role.SERVER, State.AWAIT_HELLO): frozenset({F.HELLO}),
    # Requests pipelined behind HELLO are decoded (to keep HPACK in step) and
    # held by the server until it has verified the device.
    # PING and SETTINGS wait for HELLO_ACK: their answers may not overtake it.
    (Role.SERVER, State.AUTHENTICATING): frozenset({F.REQUEST, F.CANCEL, F.ERROR}),
    (Role.SERVER, State.OPEN): _SERVER_OPEN,
    (Role.SERVER, State.CLOSING): _SERVER_OPEN,
    # A server may refuse a connection (limits, draining) before the HELLO arrives.
    (Role.CLIENT, State.IDLE): frozenset({F.ERROR}),
    (Role.CLIENT, State.HELLO_SENT): frozenset({F.HELLO_ACK, F.ERROR}),
    (Role.CLIENT, State.OPEN): _CLIENT_OPEN,
    (Role.CLIENT, State.CLOSING): _CLIENT_OPEN,
}

TRANSITIONS: dict[tuple[Role, State, str], State] = {
    (Role.CLIENT, State.IDLE, "send_hello"): State.HELLO_SENT,
    (Role.CLIENT, State.HELLO_SENT, "recv_hello_ack"): State.OPEN,
    (Role.CLIENT, State.OPEN, "goaway"): State.CLOSING,
    (Role.CLIENT, State.CLOSING, "goaway"): State.CLOSING,
    (Role.SERVER, State.AWAIT_HELLO, "recv_hello"): State.AUTHENTICATING,
    (Role.SERVER, State.AUTHENTICATING, "accept"): State.OPEN,
    (Role.SERVER, State.OPEN, "goaway"): State.CLOSING,
    (Role.SERVER, State.CLOSING, "goaway"): State.CLOSING,
}

#: States in which a new stream may be started (pipelining behind HELLO included).
CAN_START_STREAM: dict[Role, frozenset[State]] = {
    Role.CLIENT: frozenset({State.HELLO_SENT, State.OPEN}),
    Role.SERVER: frozenset({State.OPEN}),
}


def next_state(role: Role, state: State, trigger: str, *, by_peer: bool) -> State:
    """Follow ``TRANSITIONS``; an impossible move is the peer's fault or ours."""
    try:
        return TRANSITIONS[(role, state, trigger)]
    except KeyError:
        message = f"{role.value} cannot {trigger} in state {state.value}"
        if by_peer:
            raise ProtocolError(ErrorCode.STATE_ERROR, message) from None
        raise LocalProtocolError(message) from None
