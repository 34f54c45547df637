"""What every synthetic app of ``channel corpus`` shares: the session loop and helpers.

An app is a ``AppModel``: how a session (one app launch on one connection)
starts, which operations it calls (Zipf-weighted, launch calls first), what
each request and response carries, and which pushes arrive between calls.
The output format is ``channel/corpus.py``'s: one message per line, the
messages of a session contiguous, each response right after its request.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

Json = Any
Message = dict[str, Any]
Headers = list[list[str]]

_ZIPF_EXPONENT = 1.0


@dataclass
class Session:
    """Per-launch state an app keeps so a session's messages agree with each other."""

    rng: random.Random
    clock_ms: int
    #: App-specific identity and state (user id, tokens, cookies, last ids ...).
    facts: dict[str, Any] = field(default_factory=dict)

    def tick(self, low_ms: int, high_ms: int) -> int:
        self.clock_ms += self.rng.randint(low_ms, high_ms)
        return self.clock_ms


@dataclass(frozen=True)
class Operation:
    name: str
    request: Callable[[Session], Json]
    response: Callable[[Session], Json]


@dataclass(frozen=True)
class PushKind:
    topic: str
    weight: float
    body: Callable[[Session], Json]


class AppModel(Protocol):
    """One synthetic app."""

    name: str
    description: str
    operations: tuple[Operation, ...]
    launch_ops: tuple[str, ...]
    push_kinds: tuple[PushKind, ...]

    def new_session(self, rng: random.Random) -> Session: ...

    def request_headers(self, s: Session, op: Operation) -> Headers: ...

    def response_headers(self, s: Session, op: Operation, request: Headers) -> Headers: ...

    def response_envelope(self, s: Session, op: Operation, data: Json) -> tuple[int, Json]:
        """(MMTP status, body) of a response whose payload is ``data``."""
        ...

    def push_headers(self, s: Session, kind: PushKind) -> Headers: ...

    def push_message_id(self, s: Session) -> str:
        """Hex (the corpus format carries message ids as hex)."""
        ...


# ----------------------------------------------------------------------- helpers


def hex_digits(rng: random.Random, n: int, upper: bool = False) -> str:
    text = f"{rng.getrandbits(4 * n):0{n}x}"
    return text.upper() if upper else text


def uuid4(rng: random.Random, upper: bool = False) -> str:
    h = hex_digits(rng, 32)
    h = h[:12] + "4" + h[13:16] + "89ab"[rng.randrange(4)] + h[17:]
    text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return text.upper() if upper else text


def base62(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=n))


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.digits, k=n))


def weighted(rng: random.Random, pairs: tuple[tuple[Any, float], ...]) -> Any:
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs])[0]


def money(rng: random.Random, low: float, high: float, places: int = 2) -> float:
    value = low * (high / low) ** (rng.random() ** 1.6)
    return round(value, places)


# ------------------------------------------------------------------- generation


def _pushes_before_pair(rng: random.Random, pushes_per_pair: float) -> int:
    whole = int(pushes_per_pair)
    return whole + (1 if rng.random() < pushes_per_pair - whole else 0)


def session_messages(app: AppModel, s: Session, push_fraction: float) -> Iterator[Message]:
    r = s.rng
    pushes_per_pair = 2 * push_fraction / (1 - push_fraction)
    n_pairs = max(1, min(30, int(r.lognormvariate(1.9, 0.6))))
    by_name = {op.name: op for op in app.operations}
    weights = [1.0 / (rank**_ZIPF_EXPONENT) for rank in range(1, len(app.operations) + 1)]
    launch = [by_name[name] for name in app.launch_ops if r.random() < 0.8]
    chosen = r.choices(app.operations, weights=weights, k=max(0, n_pairs - len(launch)))
    push_weights = [k.weight for k in app.push_kinds]
    for op in (launch + chosen)[:n_pairs]:
        for _ in range(_pushes_before_pair(r, pushes_per_pair)):
            s.tick(200, 40_000)
            kind = r.choices(app.push_kinds, weights=push_weights)[0]
            yield {
                "kind": "push",
                "message_id": app.push_message_id(s),
                "topic": kind.topic,
                "headers": app.push_headers(s, kind),
                "body": kind.body(s),
            }
        s.tick(100, 20_000)
        headers = app.request_headers(s, op)
        yield {"kind": "request", "op": op.name, "headers": headers, "body": op.request(s)}
        s.tick(20, 600)
        status, body = app.response_envelope(s, op, op.response(s))
        yield {
            "kind": "response",
            "op": op.name,
            "status": status,
            "headers": app.response_headers(s, op, headers),
            "body": body,
        }


def generate(app: AppModel, n_sessions: int, seed: int, push_fraction: float) -> Iterator[Message]:
    if not 0.0 <= push_fraction < 1.0:
        raise ValueError(f"push_fraction must be in [0, 1), got {push_fraction}")
    rng = random.Random(f"{app.name}-{seed}")
    for index in range(n_sessions):
        session = app.new_session(rng)
        for message in session_messages(app, session, push_fraction):
            yield {"session": index, **message}
