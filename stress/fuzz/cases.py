"""What one fuzzed connection sends: a ``Case`` of rounds, built from one seed session.

A case is a pure function of the run's seed, its index and the lane's seed
sessions (the sessions with the lane's credentials), so a failure can be
rebuilt, and its bytes are saved with it anyway. Modes:

* ``auth-first``: the seed's HELLO (and maybe a few of its next frames)
  unchanged, then — once the gateway answered with HELLO_ACK — rounds of the
  seed's later frames, mutated, then generated frames, mutated;
* ``raw``: the same, but the HELLO is in the first round and may be mutated;
* ``stall``: like ``raw``, but the last round is cut at a random byte and
  nothing follows: the gateway must close the connection on its own
  (handshake or idle timeout).

Each round but a stall's last ends with what completes a frame left open
(``FrameTracker.padding``), then a PING with a random payload: a live
connection must answer it with a PONG, a broken one must be closed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from channel.wire import FrameType
from channel.wire.frames import FLAG_HEADERS, encode_frame
from channel.wire.headers import encode_context_free
from channel.wire.varint import encode_varint
from stress.fuzz.frames import FrameTracker
from stress.fuzz.mutate import Mutator, split_writes

#: Most rounds one connection gets (each with a PING probe at its end).
MAX_ROUNDS = 12
PROBE_PAYLOAD_BYTES = 8


class Mode(StrEnum):
    AUTH_FIRST = "auth-first"
    RAW = "raw"
    STALL = "stall"


@dataclass(frozen=True)
class LaneSeed:
    """A seed session's client frames, its HELLO carrying one lane's live credentials."""

    label: str
    frames: tuple[bytes, ...]


@dataclass(frozen=True)
class Round:
    writes: tuple[bytes, ...]
    #: Give the event loop a turn after write i (the gateway reads it on its own).
    yields: tuple[bool, ...]
    #: The PING payload whose PONG ends the round; b"" for a stall (wait for the close).
    probe: bytes
    frames: int
    mutated: int
    ops: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    index: int
    seed: str
    mode: Mode
    #: Sent unmutated first; with it the driver waits for HELLO_ACK (auth-first).
    opening: bytes
    rounds: tuple[Round, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "seed": self.seed,
            "mode": self.mode.value,
            "opening": self.opening.hex(),
            "rounds": [
                {
                    "writes": [w.hex() for w in r.writes],
                    "yields": list(r.yields),
                    "probe": r.probe.hex(),
                    "ops": list(r.ops),
                }
                for r in self.rounds
            ],
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Case:
        rounds = []
        for r in doc["rounds"]:  # type: ignore[attr-defined]
            writes = tuple(bytes.fromhex(w) for w in r["writes"])
            ops = tuple(r["ops"])
            rounds.append(Round(writes, tuple(r["yields"]), bytes.fromhex(r["probe"]), 0, 0, ops))
        return cls(
            int(doc["index"]),  # type: ignore[call-overload]
            str(doc["seed"]),
            Mode(str(doc["mode"])),
            bytes.fromhex(str(doc["opening"])),
            tuple(rounds),
        )


#: Valid SETTINGS a hostile device may still send: its limits at their minimum, or odd.
LIMIT_SETTINGS = (
    (1, 4096), (1, 65536), (2, 1024), (2, 1 << 20), (3, 1), (3, 1000), (4, 0), (4, 10),
    (4, 1 << 30), (5, 0), (5, 600), (6, 256), (6, 1 << 20), (9, 1), (77, 5),
)  # fmt: skip


def sustain_frame(rng: random.Random, stream_id: int) -> bytes:
    """A valid frame that needs no HPACK state: a context-free REQUEST, PING or SETTINGS."""
    kind = rng.choice((FrameType.REQUEST, FrameType.REQUEST, FrameType.PING, FrameType.SETTINGS))
    if kind is FrameType.PING:
        return encode_frame(kind, 0, rng.randbytes(rng.randint(0, 8)))
    if kind is FrameType.SETTINGS:
        pairs = rng.sample(LIMIT_SETTINGS, rng.randint(1, 3))
        payload = b"".join(encode_varint(k) + encode_varint(v) for k, v in pairs)
        return encode_frame(kind, 0, payload)
    op = rng.choice(
        ("channel.echo", "channel.subscribe", "account.get", "account.slow", "dead.call")
    )
    headers = [(":op", op), ("locale", rng.choice(("en-US", "zh-CN")))]
    if rng.random() < 0.3:
        headers.append(("x-stress-test", "1"))
    block = encode_context_free(headers)
    if op == "channel.subscribe":
        body = b'{"topics": ["public.news", "public.fz.a"]}'
    else:  # sometimes more than the limits a SETTINGS above allows in the answer
        body = rng.randbytes(rng.choice((0, 20, 2000, 70000)))
    payload = encode_varint(stream_id) + encode_varint(len(block)) + block + body
    return encode_frame(kind, FLAG_HEADERS, payload)


def _pipelined(frames: Sequence[bytes]) -> int:
    """How many of ``frames`` are REQUESTs in a row (what a client may send before HELLO_ACK)."""
    count = 0
    for raw in frames:
        if raw[0] >> 4 != FrameType.REQUEST:
            break
        count += 1
    return count


class CaseBuilder:
    """Builds case ``index`` of a run; ``stall_share`` of cases are stalls."""

    def __init__(
        self, mutator: Mutator, *, run_seed: int, max_frame_size: int, stall_share: float = 0.02
    ) -> None:
        self.mutator = mutator
        self.run_seed = run_seed
        self.max_frame_size = max_frame_size
        self.stall_share = stall_share

    def build(self, index: int, seeds: Sequence[LaneSeed]) -> Case:
        rng = random.Random(f"{self.run_seed}:{index}")
        seed = rng.choice(seeds)
        roll = rng.random()
        mode = (
            Mode.STALL if roll < self.stall_share else (Mode.AUTH_FIRST if roll < 0.6 else Mode.RAW)
        )
        frames = list(seed.frames)
        opening = b""
        if mode is Mode.AUTH_FIRST:
            # HELLO and the REQUESTs pipelined behind it, as the SDK sends them.
            kept = 1 + _pipelined(frames[1 : 1 + rng.choice((0, 0, 0, 1, 2))])
            opening, frames = b"".join(frames[:kept]), frames[kept:]
        tracker = FrameTracker(self.max_frame_size)
        tracker.feed(opening)
        rounds: list[Round] = []
        groups = self._groups(rng, frames)[:MAX_ROUNDS]
        for number, group in enumerate(groups, 1):
            last = number == len(groups)
            stall = mode is Mode.STALL and (last or rng.random() < 0.3)
            rounds.append(self._round(rng, group, tracker, stall=stall))
            if stall or tracker.dead:  # the gateway refuses the stream here: nothing follows
                break
        return Case(index, seed.label, mode, opening, tuple(rounds))

    def _groups(self, rng: random.Random, frames: list[bytes]) -> list[list[bytes]]:
        groups = []
        while frames:
            size = rng.choice((1, 1, 2, 3, 4))
            groups.append(frames[:size])
            frames = frames[size:]
        stream_id = 201  # above the seeds' own (fresh_stream_ids)
        for _ in range(rng.choice((0, 1, 2, 4, 8))):
            group = []
            for _ in range(rng.randint(1, 3)):
                group.append(sustain_frame(rng, stream_id))
                stream_id += 2
            groups.append(group)
        return groups or [[sustain_frame(rng, stream_id)]]

    def _round(
        self, rng: random.Random, group: list[bytes], tracker: FrameTracker, *, stall: bool
    ) -> Round:
        mutated = self.mutator.mutate(rng, group, rng.choice((1, 1, 1, 2, 3)))
        data = b"".join(mutated.frames)
        probe = b""
        if stall:
            data = data[: rng.randrange(len(data) + 1)] if rng.random() < 0.7 else data
            tracker.feed(data)
        else:
            tracker.feed(data)
            data += tracker.padding()
            probe = rng.randbytes(PROBE_PAYLOAD_BYTES)
            ping = encode_frame(FrameType.PING, 0, probe)
            tracker.feed(ping)
            data += ping
        writes = split_writes(rng, data) if data else []
        yields = tuple(rng.random() < 0.3 for _ in writes)
        return Round(
            tuple(writes), yields, probe, len(mutated.frames), mutated.mutated, tuple(mutated.ops)
        )
