"""Prometheus metrics of one gateway process (own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

RPC_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self, *, native_engine: bool = False) -> None:
        """``native_engine``: the connection counters (refused connections, idle and
        slow-consumer closes) are the Rust engine's, exported by its collector under the
        same names (``channel/gateway/collectors.py``), not counted here."""
        self.registry = CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds (read from
        # /proc at scrape time): what a node costs, beside what it does.
        ProcessCollector(registry=r)
        self.connections = Gauge("channel_connections", "Open device connections", registry=r)
        self.sessions = Gauge("channel_sessions", "Authenticated device sessions", registry=r)
        self.handshakes = Counter(
            "channel_handshakes_total",
            "Completed MMTP handshakes by kind (full, resumed)",
            ["kind"],
            registry=r,
        )
        self.fast_open_handshakes = Counter(
            "channel_tcp_fastopen_handshakes_total",
            "Completed handshakes whose TCP SYN carried the TLS ClientHello (TCP Fast Open)",
            registry=r,
        )
        self.auth_failures = Counter(
            "channel_auth_failures_total", "Refused HELLOs by error code", ["code"], registry=r
        )
        self.connection_errors = Counter(
            "channel_connection_errors_total",
            "Connections ended by an error, by code",
            ["code"],
            registry=r,
        )
        self.refused_connections: Counter | None = None
        if not native_engine:
            self.refused_connections = Counter(
                "channel_refused_connections_total",
                "Connections refused before the handshake (limits, draining)",
                ["reason"],
                registry=r,
            )
        # Frames, MMTP bytes and body bytes are counted as plain ints where they pass
        # (every push and ACK) and read at scrape time: GatewayNode._register_wire_collector.
        self.rpc_latency = Histogram(
            "channel_rpc_duration_seconds",
            "Device RPC latency through the gateway, by route and cluster",
            ["route", "cluster", "status"],
            buckets=RPC_BUCKETS_S,
            registry=r,
        )
        self.rpc_native_calls = Counter(
            "channel_rpc_native_calls_total",
            "Device RPCs the native engine answered itself (a 2xx from a plain route), "
            "also counted in channel_rpc_duration_seconds",
            registry=r,
        )
        self.stream_errors = Counter(
            "channel_stream_errors_total",
            "Stream errors sent to devices, by code",
            ["code"],
            registry=r,
        )
        self.idle_closed: Counter | None = None
        self.slow_consumers: Counter | None = None
        if not native_engine:
            self.idle_closed = Counter(
                "channel_idle_closed_total", "Connections closed for missing heartbeats", registry=r
            )
            self.slow_consumers = Counter(
                "channel_slow_consumers_total", "Connections closed for not reading", registry=r
            )
        self.early_data_requests = Counter(
            "channel_early_data_requests_total",
            "Requests that arrived as TLS early data: served (idempotent op) or refused "
            "with REFUSED_STREAM (the device sends them again after the handshake)",
            ["outcome"],
            registry=r,
        )
        self.input_budget_pauses = Counter(
            "channel_input_budget_pauses_total",
            "Times a device's input used its CPU budget and its reading was paused "
            "([limits] device_input_cpu_ms_per_s, device_input_burst_ms)",
            registry=r,
        )
