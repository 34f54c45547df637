"""Channel: a mobile long-connection gateway (MMTP over TLS 1.3, pushes, RPC, MQTT)."""

__version__ = "0.1.0"
