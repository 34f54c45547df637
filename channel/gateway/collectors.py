"""Prometheus collectors read at scrape time: plain counters kept where they pass.

Frames, bytes and push counts are incremented as ints on hot paths (every
push and ACK) and turned into metric families only when /metrics is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from channel.wire import BodyCodec, FrameType

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from channel.compression.service import CompressionService
    from channel.engine.native import NativeEngine
    from channel.metrics import GatewayMetrics
    from channel.mmtp.service import WireCounters
    from channel.push.delivery import NodeDelivery


def register_certificate_collector(registry: CollectorRegistry, cert_path: Path) -> None:
    """``channel_tls_certificate_expiry_timestamp_seconds``: when the device listener's
    certificate (the first of its chain file) expires, re-read when the file changes."""
    cache: dict[str, float] = {}

    class _CertificateCollector:
        def collect(self) -> Iterable[object]:
            from prometheus_client.core import GaugeMetricFamily

            gauge = GaugeMetricFamily(
                "channel_tls_certificate_expiry_timestamp_seconds",
                "Unix time the device listener's certificate expires",
                labels=["path"],
            )
            expires = _certificate_expiry(cert_path, cache)
            if expires is not None:
                gauge.add_metric([str(cert_path)], expires)
            return [gauge]

    registry.register(_CertificateCollector())  # type: ignore[arg-type]


def _certificate_expiry(path: Path, cache: dict[str, float]) -> float | None:
    try:
        stamp = f"{path.stat().st_mtime_ns}"
        if stamp not in cache:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(path.read_bytes())
            cache.clear()
            cache[stamp] = cert.not_valid_after_utc.timestamp()
        return cache[stamp]
    except (OSError, ValueError):
        return None


_SKIPPED_HELP = (
    "Bodies sent raw without trying zstd: their size class saved under"
    " [compression] compress_min_saving lately"
)


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
            skipped = CounterMetricFamily(
                "channel_body_compression_skipped",
                _SKIPPED_HELP,
            )
            skipped.add_metric([], codec.skipped_bodies)
            mmtp = CounterMetricFamily(
                "channel_bytes",
                "MMTP bytes to and from devices (inside TLS) by direction",
                labels=["direction"],
            )
            mmtp.add_metric(["in"], wire.bytes_in)
            mmtp.add_metric(["out"], wire.bytes_out)
            return [frames, frame_bytes, body, skipped, mmtp]

    registry.register(_WireCollector())  # type: ignore[arg-type]


def register_push_collector(
    registry: CollectorRegistry, delivery: Callable[[], NodeDelivery | None]
) -> None:
    class _PushCollector:
        def collect(self) -> Iterable[object]:
            from prometheus_client.core import (
                CounterMetricFamily,
                GaugeMetricFamily,
                HistogramMetricFamily,
            )

            from channel.push.redis.connection import ERRORS

            redis_errors = CounterMetricFamily(
                "channel_redis_errors",
                "Redis calls that failed after redis-py's retries, by error class",
                labels=["error"],
            )
            for error, count in sorted(ERRORS.items()):
                redis_errors.add_metric([error], count)
            d = delivery()
            if d is None:
                return [redis_errors]
            latency = d.delivery_latency
            return [
                redis_errors,
                HistogramMetricFamily(
                    "channel_push_delivery_seconds",
                    "Push accepted by the API -> written to its device on this node, for "
                    "devices online when it was routed (replays of queues not counted)",
                    buckets=latency.cumulative(),
                    sum_value=latency.total_s,
                ),
                GaugeMetricFamily(
                    "channel_pushes_unacked",
                    "Queued pushes written to this node's devices, awaiting their ACK",
                    value=d.unacked_total,
                ),
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
                    "channel_push_statuses_evicted",
                    "Memory backend: message statuses dropped before their time to hold "
                    "[push] memory_max_statuses (their look-up answers 404)",
                    value=getattr(d.backend.receipts, "evicted", 0),
                ),
                CounterMetricFamily(
                    "channel_inbox_resyncs",
                    "Times this node found Redis had trimmed inbox entries it had not read "
                    "(inbox_max_entries) and replayed its devices' queues",
                    value=d.inbox_resyncs,
                ),
            ]

    registry.register(_PushCollector())  # type: ignore[arg-type]


#: Engine figures that are levels, not running totals.
_NATIVE_GAUGES = frozenset(
    {
        "connections",
        "connections_mmtp",
        "connections_mqtt",
        "connections_accepted",
        "event_queue_bytes",
        "event_queue_events",
    }
)


def register_native_collector(metrics: GatewayMetrics, engine: NativeEngine) -> None:
    """The native engine's counters, read once per scrape from ``Engine.stats()``: the
    same MMTP frame and byte families as the Python engine's, and every engine figure
    as ``channel_engine_<name>`` (``_total`` for counters)."""

    def connections() -> float:
        return float(engine.stats().get("connections", 0))

    metrics.connections.set_function(connections)

    class _NativeCollector:
        def collect(self) -> Iterable[object]:
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

            stats = engine.stats()
            if not stats:
                return []
            frames = CounterMetricFamily(
                "channel_frames", "MMTP frames by direction and type", labels=["direction", "type"]
            )
            frame_bytes = CounterMetricFamily(
                "channel_frame_bytes",
                "MMTP frame bytes by direction and type",
                labels=["direction", "type"],
            )
            for direction in ("in", "out"):
                for name, value in stats.get(f"frames_{direction}", {}).items():
                    frames.add_metric([direction, name], value)
                for name, value in stats.get(f"frame_bytes_{direction}", {}).items():
                    frame_bytes.add_metric([direction, name], value)
            body = CounterMetricFamily(
                "channel_body_bytes",
                "Bodies sent: raw and as encoded (compression ratio)",
                labels=["stage"],
            )
            body.add_metric(["raw"], stats.get("body_bytes_raw", 0))
            body.add_metric(["wire"], stats.get("body_bytes_wire", 0))
            skipped = CounterMetricFamily("channel_body_compression_skipped", _SKIPPED_HELP)
            skipped.add_metric([], stats.get("body_compression_skipped", 0))
            mmtp = CounterMetricFamily(
                "channel_bytes",
                "MMTP bytes to and from devices (inside TLS) by direction",
                labels=["direction"],
            )
            mmtp.add_metric(["in"], sum(stats.get("frame_bytes_in", {}).values()))
            mmtp.add_metric(["out"], sum(stats.get("frame_bytes_out", {}).values()))
            refused = CounterMetricFamily(
                "channel_refused_connections",
                "Connections refused before the handshake (limits, draining)",
                labels=["reason"],
            )
            refused.add_metric(["UNAVAILABLE"], stats.get("refused_max_connections", 0))
            refused.add_metric(["RATE_LIMITED"], stats.get("refused_per_ip", 0))
            refused.add_metric(["SHUTTING_DOWN"], engine.refused_draining)
            refused.add_metric(["PROXY_UNTRUSTED"], stats.get("refused_proxy_untrusted", 0))
            refused.add_metric(["PROXY_INVALID"], stats.get("refused_proxy_invalid", 0))
            idle = CounterMetricFamily(
                "channel_idle_closed",
                "Connections closed for missing heartbeats",
                value=stats.get("idle_closed", 0),
            )
            slow = CounterMetricFamily(
                "channel_slow_consumers",
                "Connections closed for not reading",
                value=stats.get("slow_consumers", 0),
            )
            families: list[object] = [frames, frame_bytes, body, skipped, mmtp, refused, idle, slow]
            for name, value in sorted(stats.items()):
                if not isinstance(value, int):
                    continue
                if name in _NATIVE_GAUGES:
                    families.append(
                        GaugeMetricFamily(f"channel_engine_{name}", f"native engine: {name}", value)
                    )
                else:
                    families.append(
                        CounterMetricFamily(
                            f"channel_engine_{name}", f"native engine: {name}", value=value
                        )
                    )
            return families

    metrics.registry.register(_NativeCollector())  # type: ignore[arg-type]


def register_compression_collector(
    registry: CollectorRegistry,
    compression: CompressionService,
    engine_usage: Callable[[], dict[str, list[tuple[int, ...]]]] | None,
    deliveries: Callable[[], dict[str, int]],
) -> None:
    """Per app and dictionary id: bodies, raw and wire bytes each way (what share of an
    app's bodies a dictionary codes, and what it saves), deliveries asked and their
    outcome. ``engine_usage``: the native engine's counts (None: the Python engine's,
    kept by the service); ``deliveries``: the engine's DICT counters."""
    from channel.compression.service import usage_rows

    class _CompressionCollector:
        def collect(self) -> Iterable[object]:
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

            rows = usage_rows(compression.usage) if engine_usage is None else engine_usage()
            labels = ["app", "dictionary", "direction"]
            bodies = CounterMetricFamily(
                "channel_compression_bodies",
                "Message bodies by app and the dictionary that coded them (raw: uncompressed)",
                labels=labels,
            )
            raw = CounterMetricFamily(
                "channel_compression_raw_bytes", "Body bytes before coding", labels=labels
            )
            wire = CounterMetricFamily(
                "channel_compression_wire_bytes", "Body bytes on the wire", labels=labels
            )
            for app, app_rows in rows.items():
                for dict_id, *counts in app_rows:
                    name = "raw" if dict_id < 0 else str(dict_id)
                    for direction, (n, r, w) in (("out", counts[0:3]), ("in", counts[3:6])):
                        bodies.add_metric([app or "other", name, direction], n)
                        raw.add_metric([app or "other", name, direction], r)
                        wire.add_metric([app or "other", name, direction], w)
            asked = CounterMetricFamily(
                "channel_dictionary_deliveries_asked",
                "Dictionary deliveries the node asked of its engine, by app and dictionary",
                labels=["app", "dictionary"],
            )
            current = GaugeMetricFamily(
                "channel_dictionary_current", "Each app's current dictionary id", labels=["app"]
            )
            for app, state in compression.apps.items():
                current.add_metric([app], state.current)
                for dict_id, count in state.deliveries.items():
                    asked.add_metric([app, str(dict_id)], count)
            engine = CounterMetricFamily(
                "channel_dictionary_delivery",
                "Dictionary deliveries by outcome (started, done, skipped), chunks and bytes",
                labels=["counter"],
            )
            for name, value in deliveries().items():
                engine.add_metric([name], value)
            return [bodies, raw, wire, asked, current, engine]

    registry.register(_CompressionCollector())  # type: ignore[arg-type]
