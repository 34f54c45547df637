"""MQTT figures for ``/metrics``: plain counters where they pass, read at scrape time.

Counted as ints on the hot paths (every packet) and turned into Prometheus
families only when ``/metrics`` is read (``register``), like the MMTP frame
counters. Gauges that are sums over connections (QoS in flight, messages
waiting) are computed at scrape time from the live connections.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from channel.mqtt.reasons import PacketType


class MqttMetrics:
    def __init__(self) -> None:
        self.packets_in: Counter[int] = Counter()
        self.packets_out: Counter[int] = Counter()
        #: (in, out) packets by type only the native engine saw (the PUBLISHes it held
        #: and wrote, the PUBACKs of its pushes), read at scrape time (None: the Python
        #: engine, which sees them all).
        self.engine_packets: Callable[[], tuple[dict[int, int], dict[int, int]]] | None = None
        #: QoS 1 PUBLISHes the box refused (MQTT 5 PUBACK 0x80 or more), by reason.
        self.pushes_refused: Counter[str] = Counter()
        #: (in flight, waiting) of the pushes the native engine holds, read at scrape
        #: time (the engine's gauges; None: the Python engine, nothing held there).
        self.engine_pushes: Callable[[], tuple[int, int]] | None = None
        self.auth_failures: Counter[str] = Counter()
        self.protocol_errors: Counter[str] = Counter()
        self.publishes_in: Counter[int] = Counter()
        #: Box PUBLISHes refused by the ACL (MQTT 5: PUBACK 0x87; 3.1.1: dropped).
        self.publishes_denied = 0
        self.subscribes_denied = 0
        #: Deliveries routed to subscribers (queued or not), and those dropped because
        #: the subscriber's offline queue was full (oldest dropped: ``[push] queue_cap``).
        self.routed = 0
        self.queue_overflow_dropped = 0
        self.takeovers = 0
        self.wills_published = 0
        self.retained_refused = 0
        self.uplink_forwarded = 0
        self.uplink_failed = 0
        self.rpc_requests = 0
        self.rpc_calls = 0

    def packet_in(self, packet_type: int) -> None:
        self.packets_in[packet_type] += 1

    def register(self, registry: Any, connections: Callable[[], Iterable[Any]]) -> None:
        """Report on ``registry`` (prometheus); ``connections()`` gives the live ones."""
        metrics = self

        class _Collector:
            def collect(self) -> Iterable[object]:
                return metrics.families(list(connections()))

        registry.register(_Collector())

    def families(self, connections: list[Any]) -> list[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"channel_mqtt_{name}", text, value=value)

        packets = CounterMetricFamily(
            "channel_mqtt_packets",
            "MQTT packets by direction and type",
            labels=["direction", "type"],
        )
        engine_in, engine_out = self.engine_packets() if self.engine_packets else ({}, {})
        for packet_type in PacketType:
            packets.add_metric(
                ["in", packet_type.name],
                self.packets_in[packet_type] + engine_in.get(packet_type, 0),
            )
            packets.add_metric(
                ["out", packet_type.name],
                self.packets_out[packet_type] + engine_out.get(packet_type, 0),
            )
        refused = CounterMetricFamily(
            "channel_mqtt_pushes_refused",
            "QoS 1 PUBLISHes a box refused (MQTT 5 PUBACK 0x80 or more), by reason",
            labels=["reason"],
        )
        for reason, count in self.pushes_refused.items():
            refused.add_metric([reason], count)
        auth = CounterMetricFamily(
            "channel_mqtt_auth_failures", "Refused CONNECTs by reason", labels=["reason"]
        )
        for reason, count in self.auth_failures.items():
            auth.add_metric([reason], count)
        errors = CounterMetricFamily(
            "channel_mqtt_protocol_errors", "Connections ended for a box's fault", labels=["reason"]
        )
        for reason, count in self.protocol_errors.items():
            errors.add_metric([reason], count)
        by_version = GaugeMetricFamily(
            "channel_mqtt_connections",
            "Open MQTT connections by protocol level",
            labels=["version"],
        )
        levels: Counter[str] = Counter()
        inflight = waiting = 0
        for conn in connections:
            levels[{4: "3.1.1", 5: "5.0"}.get(conn.version, "connecting")] += 1
            inflight += len(conn.outbound.inflight)
            waiting += len(conn.outbound.waiting)
        if self.engine_pushes is not None:
            held_inflight, held_waiting = self.engine_pushes()
            inflight += held_inflight
            waiting += held_waiting
        for level, count in levels.items():
            by_version.add_metric([level], count)
        return [
            packets, refused, auth, errors, by_version,
            GaugeMetricFamily("channel_mqtt_inflight",
                              "Outbound QoS 1/2 PUBLISHes awaiting the box's acknowledgement",
                              value=inflight),
            GaugeMetricFamily("channel_mqtt_waiting",
                              "Outbound PUBLISHes waiting for room in flight",
                              value=waiting),
            counter("publishes_denied", "Box PUBLISHes refused by the ACL", self.publishes_denied),
            counter("subscribes_denied", "Subscriptions refused (ACL, quota)",
                    self.subscribes_denied),
            counter("routed", "Messages routed from publishers to subscribers", self.routed),
            counter("queue_overflow_dropped",
                    "Queued messages dropped (oldest first) because a session's offline queue "
                    "was full ([push] queue_cap)", self.queue_overflow_dropped),
            counter("takeovers", "Sessions taken over by a newer connection (0x8E)",
                    self.takeovers),
            counter("wills_published", "Will messages published", self.wills_published),
            counter("retained_refused", "Retained messages not kept (namespace full)",
                    self.retained_refused),
            counter("uplink_forwarded", "Box messages handed to backends (stream or RPC)",
                    self.uplink_forwarded),
            counter("uplink_failed", "Box messages backends did not take (not acknowledged)",
                    self.uplink_failed),
            counter("rpc_requests", "RPC requests from boxes", self.rpc_requests),
            counter("rpc_calls", "Backend calls to boxes", self.rpc_calls),
        ]  # fmt: skip
