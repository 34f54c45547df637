"""The seed corpus: MMTP frames real clients sent (and got) in real sessions.

``stress/fuzz/seeds.json`` is written by ``python -m stress.fuzz.capture``:
each session is one TLS connection of a real ``sdk_client.Client`` (or of
the wire core in client role) to a real gateway, recorded in plaintext by a
TLS-terminating proxy between them. Credentials are blanked in the file (the
token and ticket bytes zeroed, lengths kept); ``personal_hello`` puts fresh
ones, valid on the node under test, into a session's HELLO.

File layout::

    {"version": 1, "sessions": [{"label": "calls", "device_id": "fz-calls",
      "user_id": "fz-user", "app_id": "fuzz", "credential": "token",
      "client": ["<hex frame>", ...], "server": ["<hex frame>", ...]}, ...]}

``credential`` is ``token``, ``ticket`` or ``ticket+token``: what the
captured HELLO carried.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from channel.wire import FrameType, Hello, Limits
from channel.wire.frames import encode_frame
from channel.wire.hello import decode_hello, decode_hello_ack, encode_hello, encode_hello_ack
from stress.fuzz.frames import parse_frame

CORPUS_VERSION = 1
DEFAULT_CORPUS = Path(__file__).with_name("seeds.json")


@dataclass(frozen=True)
class SeedSession:
    label: str
    device_id: str
    user_id: str
    app_id: str
    credential: str
    client: tuple[bytes, ...]
    server: tuple[bytes, ...]

    @property
    def hello(self) -> Hello:
        frame = parse_frame(self.client[0])
        if frame is None or frame.frame_type is not FrameType.HELLO:
            raise ValueError(f"session {self.label}: the first client frame is not a HELLO")
        return decode_hello(frame.payload, Limits())

    @property
    def needs_ticket(self) -> bool:
        return "ticket" in self.credential

    @property
    def needs_token(self) -> bool:
        return "token" in self.credential


@dataclass(frozen=True)
class SeedCorpus:
    sessions: tuple[SeedSession, ...]

    def donors(self) -> tuple[bytes, ...]:
        """Every frame of every session, both directions: material for splicing."""
        return tuple(f for s in self.sessions for f in (*s.client, *s.server))

    def frame_types(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for session in self.sessions:
            for raw in session.client:
                frame = parse_frame(raw)
                kind = frame.frame_type if frame is not None else None
                counts[kind.name if kind is not None else "?"] += 1
        return counts

    def to_json(self) -> dict[str, object]:
        return {
            "version": CORPUS_VERSION,
            "sessions": [
                {
                    "label": s.label,
                    "device_id": s.device_id,
                    "user_id": s.user_id,
                    "app_id": s.app_id,
                    "credential": s.credential,
                    "client": [f.hex() for f in s.client],
                    "server": [f.hex() for f in s.server],
                }
                for s in self.sessions
            ],
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path = DEFAULT_CORPUS) -> SeedCorpus:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("version") != CORPUS_VERSION:
            raise ValueError(f"{path}: corpus version {doc.get('version')}, want {CORPUS_VERSION}")
        sessions = tuple(
            SeedSession(
                label=s["label"],
                device_id=s["device_id"],
                user_id=s["user_id"],
                app_id=s["app_id"],
                credential=s["credential"],
                client=tuple(bytes.fromhex(f) for f in s["client"]),
                server=tuple(bytes.fromhex(f) for f in s["server"]),
            )
            for s in doc["sessions"]
        )
        return cls(sessions)


def blank_credentials(raw: bytes) -> bytes:
    """A HELLO or HELLO_ACK frame with its token and ticket bytes zeroed (lengths kept)."""
    frame = parse_frame(raw)
    if frame is None:
        return raw
    if frame.frame_type is FrameType.HELLO:
        hello = decode_hello(frame.payload, Limits())
        hello = dataclasses.replace(
            hello, token=bytes(len(hello.token)), resume_ticket=bytes(len(hello.resume_ticket))
        )
        return encode_frame(FrameType.HELLO, 0, encode_hello(hello))
    if frame.frame_type is FrameType.HELLO_ACK:
        ack = decode_hello_ack(frame.payload)
        ack = dataclasses.replace(ack, resume_ticket=bytes(len(ack.resume_ticket)))
        return encode_frame(FrameType.HELLO_ACK, 0, encode_hello_ack(ack))
    return raw


def personal_hello(session: SeedSession, device_id: str, token: bytes, ticket: bytes) -> bytes:
    """The session's HELLO frame for ``device_id`` with live credentials.

    ``token`` is used when the captured HELLO carried one, ``ticket`` likewise;
    every other field stays as captured.
    """
    hello = dataclasses.replace(
        session.hello,
        device_id=device_id,
        token=token if session.needs_token else b"",
        resume_ticket=ticket if session.needs_ticket else b"",
    )
    return encode_frame(FrameType.HELLO, 0, encode_hello(hello))
