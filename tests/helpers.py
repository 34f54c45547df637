"""Shared helpers for the wire-core tests: an in-memory connection pair, frame
decoding of ``data_to_send()`` output, and a small real trained zstd dictionary.

In the style of h11's ``ConnectionPair``: no sockets, bytes move between two
sans-I/O ``Connection`` objects only when a test asks them to.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import zstandard

from channel.wire import (
    BodyCodec,
    Connection,
    Dictionary,
    DictionaryStore,
    Event,
    Hello,
    HelloAccepted,
    HelloReceived,
    Limits,
    Role,
)
from channel.wire.frames import FrameParser, FrameType, RawFrame
from channel.wire.messages import ErrorPayload, decode_error

#: Dictionary id used by ``trained_dictionary()`` unless told otherwise.
TEST_DICT_ID = 7

#: A parser limit large enough for anything a test produces.
_BIG = 1 << 40


def parse_frames(data: bytes) -> list[RawFrame]:
    """Split bytes produced by ``data_to_send()`` into frames (all must be complete)."""
    parser = FrameParser(_BIG)
    frames = parser.feed(data)
    assert parser.buffered_bytes == 0, "trailing partial frame"
    return frames


def connection_error(data: bytes) -> ErrorPayload:
    """The ERROR frame on stream 0 that must end ``data`` (what a failed peer queued)."""
    frames = parse_frames(data)
    assert frames, "nothing was queued"
    last = frames[-1]
    assert last.frame_type is FrameType.ERROR, f"last frame is {last.frame_type.name}"
    error = decode_error(last.payload)
    assert error.stream_id == 0, f"ERROR on stream {error.stream_id}, not 0"
    return error


class ConnectionPair:
    """A client and a server ``Connection`` joined in memory."""

    def __init__(
        self,
        *,
        client_limits: Limits | None = None,
        server_limits: Limits | None = None,
        client_codec: BodyCodec | None = None,
        server_codec: BodyCodec | None = None,
        client_table_cap: int = 4096,
        server_table_cap: int = 4096,
    ) -> None:
        self.client = Connection(
            Role.CLIENT,
            limits=client_limits,
            body_codec=client_codec,
            encoder_table_size_cap=client_table_cap,
        )
        self.server = Connection(
            Role.SERVER,
            limits=server_limits,
            body_codec=server_codec,
            encoder_table_size_cap=server_table_cap,
        )

    def client_to_server(self) -> list[Event]:
        """Move everything the client queued to the server; return the server's events."""
        return self.server.receive_data(self.client.data_to_send())

    def server_to_client(self) -> list[Event]:
        """Move everything the server queued to the client; return the client's events."""
        return self.client.receive_data(self.server.data_to_send())

    def handshake(
        self,
        hello: Hello | None = None,
        accept_kwargs: Mapping[str, Any] | None = None,
        *,
        pipeline_dictionary: int = 0,
    ) -> tuple[HelloReceived, HelloAccepted]:
        """HELLO then HELLO_ACK; both sides end OPEN. Returns the two handshake events."""
        self.client.send_hello(
            hello or Hello(device_id="device-1"), pipeline_dictionary=pipeline_dictionary
        )
        server_events = self.client_to_server()
        assert len(server_events) == 1 and isinstance(server_events[0], HelloReceived)
        self.server.accept(**dict(accept_kwargs or {}))
        client_events = self.server_to_client()
        assert len(client_events) == 1 and isinstance(client_events[0], HelloAccepted)
        return server_events[0], client_events[0]


# ------------------------------------------------------------------ dictionaries


def sample_json(rng: random.Random, index: int) -> bytes:
    """One synthetic mobile-API JSON message (push payloads, RPC answers)."""
    kind = rng.choice(["chat", "order", "news", "system"])
    message: dict[str, Any] = {
        "type": kind,
        "id": f"msg-{index:06d}",
        "ts": 1_700_000_000_000 + rng.randrange(10**9),
        "user": {"id": rng.randrange(10**6), "name": rng.choice(["alice", "bob", "carol"])},
        "priority": rng.choice(["high", "normal"]),
    }
    if kind == "chat":
        message["text"] = rng.choice(["hello there", "on my way", "see you soon", "ok"])
        message["conversation"] = f"conv-{rng.randrange(1000)}"
    elif kind == "order":
        message["order"] = {
            "status": rng.choice(["paid", "shipped", "delivered"]),
            "amount": round(rng.uniform(1, 500), 2),
            "currency": "USD",
        }
    elif kind == "news":
        message["title"] = rng.choice(["Market update", "Weather alert", "Sports"])
        message["url"] = f"https://news.example.com/a/{rng.randrange(10**5)}"
    else:
        message["action"] = rng.choice(["logout", "refresh", "upgrade"])
    return json.dumps(message, separators=(",", ":")).encode()


@cache
def _trained_content(zstd_dict_id: int) -> bytes:
    rng = random.Random(20240601)
    samples = [sample_json(rng, i) for i in range(400)]
    trained = zstandard.train_dictionary(4096, samples, dict_id=zstd_dict_id, level=3)
    return trained.as_bytes()


def trained_dictionary(dict_id: int = TEST_DICT_ID) -> Dictionary:
    """A small (4 KiB) real zstd dictionary trained on ``sample_json`` messages."""
    return Dictionary(dict_id, _trained_content(dict_id))


def make_codec(dictionaries: Iterable[Dictionary] | None = None) -> BodyCodec:
    """A ``BodyCodec`` holding ``dictionaries`` (default: the trained test dictionary)."""
    if dictionaries is None:
        dictionaries = [trained_dictionary()]
    return BodyCodec(DictionaryStore(dictionaries))
