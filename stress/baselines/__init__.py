"""Wire-size baselines: the protocols MMTP is measured against (see ``stress/README.md``)."""

from __future__ import annotations

from .common import WireCodec, WireSession
from .http1 import Http1Codec
from .http2 import Http2Codec
from .mqtt import MqttCodec
from .websocket import WebSocketCodec

__all__ = ["WireCodec", "WireSession", "baseline_codecs"]


def baseline_codecs() -> list[WireCodec]:
    """Fresh instances of every baseline, HTTP/2 (the reference column) first."""
    return [
        Http2Codec(),
        Http1Codec(),
        WebSocketCodec(deflate=False),
        WebSocketCodec(deflate=True),
        MqttCodec(),
    ]
