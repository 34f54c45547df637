"""MMTP policy above the engines: handshake, requests, calls (docs/architecture.md)."""
