"""Shared pieces of the wire-size baselines: the codec protocol, per-connection identity,
request/response correlation and small helpers (compact JSON, gzip-if-smaller, HTTP dates).

A *message* is one line of the corpus (see ``stress/README.md``)::

    {"session": 3, "kind": "request",  "op": "...", "headers": [[k, v], ...], "body": {...}}
    {"session": 3, "kind": "response", "op": "...", "status": 0, "headers": [...], "body": {...}}
    {"session": 3, "kind": "push", "message_id": "<24 hex>", "topic": "...", "headers": [...],
     "body": {...}}
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
import random
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from channel.security.tokens import DeviceClaims, TokenSigner

Msg = dict[str, Any]

KINDS: tuple[str, ...] = ("request", "response", "push")

#: gzip level used by every baseline that compresses bodies.
GZIP_LEVEL = 6

#: First instant of the synthetic per-session clock used when a message has no ``ts`` header.
_EPOCH_S = 1_764_000_000


class RoundTripError(AssertionError):
    """The receiver side did not get back what the sender encoded."""


def check(cond: bool, what: str) -> None:
    """Like ``assert`` but survives ``python -O``."""
    if not cond:
        raise RoundTripError(what)


@runtime_checkable
class WireSession(Protocol):
    """One connection's worth of state (both ends of it)."""

    def setup_bytes(self) -> int:
        """Bytes spent before the first message (preface/handshake/CONNECT/upgrade), both
        directions."""
        ...

    def encode(self, msg: Msg) -> bytes:
        """Bytes this message costs on the wire (what is handed to TLS), sender side."""
        ...

    def decode(self, data: bytes, msg: Msg) -> None:
        """Receiver side: parse ``data`` fully and check it round-trips the message."""
        ...


@runtime_checkable
class WireCodec(Protocol):
    name: str

    def new_session(self) -> WireSession: ...


# --------------------------------------------------------------------------- message helpers


def json_compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def body_bytes(msg: Msg) -> bytes:
    """The corpus' canonical body encoding: compact UTF-8 JSON."""
    return json_compact(msg.get("body"))


def app_headers(msg: Msg) -> list[tuple[str, str]]:
    """The message's app-level headers as (lower-case name, str value) pairs."""
    return [(str(k).lower(), str(v)) for k, v in msg.get("headers") or ()]


def app_headers_dict(msg: Msg) -> dict[str, str]:
    return dict(app_headers(msg))


#: Headers the HTTP baselines derive from the framing; an app header may not override them.
PROTOCOL_OWNED = frozenset({"content-length", "content-encoding", "host", "transfer-encoding"})


def merge_headers(base: list[tuple[str, str]], app: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Protocol headers + app headers. An app header that names a header the protocol already
    sends (``content-type``, say) *is* that header: its value replaces the protocol's default
    in place instead of being sent twice."""
    out = list(base)
    index = {k: i for i, (k, _) in enumerate(out)}
    for k, v in app:
        if k in PROTOCOL_OWNED or k.startswith(":"):
            raise ValueError(f"app header {k!r} collides with a framing header")
        i = index.pop(k, None)
        if i is None:
            out.append((k, v))
        else:
            out[i] = (k, v)
    return out


def check_app_headers(received: list[tuple[str, str]], msg: Msg, proto: str) -> None:
    """Every app header of ``msg`` must be among ``received`` (as many times as sent)."""
    got = Counter((k.lower(), v) for k, v in received)
    for pair, n in Counter(app_headers(msg)).items():
        if got[pair] < n:
            raise RoundTripError(f"{proto}: app header {pair!r} lost")


def check_body(body: Any, msg: Msg, proto: str) -> None:
    check(body == msg.get("body"), f"{proto}: body mismatch for {msg.get('kind')}")


def gzip_if_smaller(data: bytes, level: int = GZIP_LEVEL) -> tuple[bytes, bool]:
    """gzip ``data`` (deterministic header, mtime 0) and keep it only when that is smaller."""
    packed = gzip.compress(data, compresslevel=level, mtime=0)
    if len(packed) < len(data):
        return packed, True
    return data, False


def message_time_s(msg: Msg, fallback_s: int) -> int:
    """Unix seconds of the message: its ``ts`` app header (s or ms) when present."""
    for k, v in msg.get("headers") or ():
        if str(k).lower() == "ts":
            try:
                t = int(float(v))
            except (TypeError, ValueError):
                break
            return t // 1000 if t > 10**11 else t
    return fallback_s


class SessionClock:
    """Wall clock of one connection, for ``date:`` response headers."""

    def __init__(self) -> None:
        self._now = _EPOCH_S

    def date_for(self, msg: Msg) -> str:
        self._now = max(self._now, message_time_s(msg, self._now))
        s = formatdate(self._now, usegmt=True)
        self._now += 1  # a message without ts advances the clock a little
        return s


# --------------------------------------------------------------------------- identity


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class SessionIdentity:
    """What a device sends to identify itself. MMTP sends it once per connection; HTTP baselines
    send it with every request. Deterministic per session index so every codec (including the
    MMTP one) can use the very same values."""

    device_id: str
    app_id: str
    app_version: str
    platform: str
    os_version: str
    user_agent: str
    token: str
    host: str = "api.wallet.example.com"

    @property
    def authorization(self) -> str:
        return f"Bearer {self.token}"

    @property
    def device_token(self) -> bytes:
        """The credential an MMTP device sends in HELLO: a Channel device token's bytes
        (spec 7.2, "Token bytes"), issued for this device with the JWT's subject, issue
        and expiry times, signed by a fixed benchmark key. The JWT stands for what an
        HTTP app sends as its own bearer credential."""
        claims = json.loads(_b64url_decode(self.token.split(".")[1]))
        return _benchmark_signer().issue(
            DeviceClaims(
                device_id=self.device_id,
                user_id=claims["sub"],
                app_id=self.app_id,
                issued_at=claims["iat"],
                expires_at=claims["exp"],
            )
        )

    @classmethod
    def for_index(cls, index: int) -> SessionIdentity:
        rng = random.Random(f"wire-size-identity-{index}")
        device_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        app_id = "com.example.wallet"
        app_version = f"8.{rng.randint(10, 14)}.{rng.randint(0, 9)}"
        build = app_version.replace(".", "") + "0"
        if rng.random() < 0.6:
            platform = "android"
            os_version = rng.choice(["12", "13", "14", "15"])
            model = rng.choice(["Pixel 8", "SM-S918B", "SM-A546E", "2201117TG", "CPH2451"])
            user_agent = (
                f"Wallet/{app_version} (Linux; Android {os_version}; {model}; "
                f"Build/{build}) okhttp/4.12.0"
            )
        else:
            platform = "ios"
            os_version = rng.choice(["16.7.8", "17.4.1", "17.5.1", "18.0"])
            model = rng.choice(["iPhone14,5", "iPhone15,2", "iPhone16,1"])
            user_agent = (
                f"Wallet/{app_version} ({app_id}; build:{build}; iOS {os_version}; {model}) "
                "Alamofire/5.8.1"
            )
        # A realistic HS256 JWT: 169 characters.
        jwt_header = _b64url(b'{"alg":"HS256","typ":"JWT"}')
        iat = _EPOCH_S + rng.randint(0, 86_400)
        claims = {
            "sub": f"2088{rng.randint(10**11, 10**12 - 1)}",
            "iat": iat,
            "exp": iat + 3600,
            "v": 2,
        }
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signature = _b64url(rng.randbytes(32))
        token = f"{jwt_header}.{payload}.{signature}"
        return cls(device_id, app_id, app_version, platform, os_version, user_agent, token)

    def http_headers(self) -> list[tuple[str, str]]:
        """Identity headers each stateless HTTP request carries (names lower-case)."""
        return [
            ("authorization", self.authorization),
            ("x-device-id", self.device_id),
            ("x-app-id", self.app_id),
            ("x-app-version", self.app_version),
            ("x-platform", self.platform),
            ("user-agent", self.user_agent),
        ]


@functools.cache
def _benchmark_signer() -> TokenSigner:
    seed = hashlib.sha256(b"wire-size-benchmark-token-key").digest()
    return TokenSigner(Ed25519PrivateKey.from_private_bytes(seed), key_id=1)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class IdentitySource:
    """Hands out one identity per new session, in order (codec instances are independent)."""

    def __init__(self) -> None:
        self._next = 0

    def next(self) -> SessionIdentity:
        ident = SessionIdentity.for_index(self._next)
        self._next += 1
        return ident


# --------------------------------------------------------------------------- correlation


@dataclass
class RequestTracker:
    """Correlates responses with requests: a response answers the oldest outstanding request
    with the same op. ``key`` is whatever the protocol correlates with (id, stream id)."""

    _by_op: dict[str, deque[int]] = field(default_factory=dict)
    _op_of: dict[int, str] = field(default_factory=dict)
    orphans: int = 0  # responses that had no outstanding request

    def opened(self, op: str, key: int) -> None:
        self._by_op.setdefault(op, deque()).append(key)
        self._op_of[key] = op

    def answer(self, op: str) -> int | None:
        """Key of the request a response for ``op`` answers (None if there is none)."""
        q = self._by_op.get(op)
        if not q:
            return None
        return q.popleft()

    def op_of(self, key: int) -> str | None:
        """Receiver side: which op the request with ``key`` was (forgets it)."""
        return self._op_of.pop(key, None)


class Counter16:
    """MQTT-style packet ids: 1..65535, wrapping."""

    def __init__(self) -> None:
        self._n = 0

    def next(self) -> int:
        self._n = self._n % 0xFFFF + 1
        return self._n
