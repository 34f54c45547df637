"""Prometheus collectors read at scrape time: plain counters kept where they pass.

Frames, bytes and push counts are incremented as ints on hot paths (every
push and ACK) and turned into metric families only when /metrics is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from channel.wire import BodyCodec, FrameType

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from channel.mmtp.service import WireCounters
    from channel.push.delivery import NodeDelivery


def register_wire_collector(
    registry: CollectorRegistry, wire: WireCounters, codec: BodyCodec
) -> None:
    counters = wire.frames

    class _WireCollector:
        def collect(self) -> Iterable[object]:
            from prometheus_client.core import CounterMetricFamily

            frames = CounterMetricFamily(
                "channel_frames", "MMTP frames by direction and type", labels=["direction", "type"]
            )
            frame_bytes = CounterMetricFamily(
                "channel_frame_bytes",
                "MMTP frame bytes by direction and type",
                labels=["direction", "type"],
            )
            for frame_type in FrameType:
                name = frame_type.name
                frames.add_metric(["in", name], counters.received[frame_type])
                frames.add_metric(["out", name], counters.sent[frame_type])
                frame_bytes.add_metric(["in", name], counters.received_bytes[frame_type])
                frame_bytes.add_metric(["out", name], counters.sent_bytes[frame_type])
            body = CounterMetricFamily(
                "channel_body_bytes",
                "Bodies sent: raw and as encoded (compression ratio)",
                labels=["stage"],
            )
            body.add_metric(["raw"], codec.encoded_raw_bytes)
            body.add_metric(["wire"], codec.encoded_wire_bytes)
            mmtp = CounterMetricFamily(
                "channel_bytes",
                "MMTP bytes to and from devices (inside TLS) by direction",
                labels=["direction"],
            )
            mmtp.add_metric(["in"], wire.bytes_in)
            mmtp.add_metric(["out"], wire.bytes_out)
            return [frames, frame_bytes, body, mmtp]

    registry.register(_WireCollector())  # type: ignore[arg-type]


def register_push_collector(
    registry: CollectorRegistry, delivery: Callable[[], NodeDelivery | None]
) -> None:
    class _PushCollector:
        def collect(self) -> Iterable[object]:
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

            d = delivery()
            if d is None:
                return []
            return [
                CounterMetricFamily(
                    "channel_pushes_written",
                    "PUSH frames written to devices (unicast, fan-out, replays)",
                    value=d.pushes_written,
                ),
                GaugeMetricFamily(
                    "channel_fanout_pending",
                    "Broadcast and topic pushes going round this node's sessions",
                    value=d.fanout_pending,
                ),
                CounterMetricFamily(
                    "channel_user_directory_forgotten",
                    "Device directory entries this node's sweeps forgot (not seen in ttl)",
                    value=d.directory_forgotten,
                ),
                CounterMetricFamily(
                    "channel_fanout_writes",
                    "Session writes of broadcast and topic pushes (each carries every "
                    "fan-out push due to that session: fewer per push under load)",
                    value=d.fanout_writes,
                ),
                CounterMetricFamily(
                    "channel_inbox_resyncs",
                    "Times this node found Redis had trimmed inbox entries it had not read "
                    "(inbox_max_entries) and replayed its devices' queues",
                    value=d.inbox_resyncs,
                ),
            ]

    registry.register(_PushCollector())  # type: ignore[arg-type]
