"""How bytes move: the Python engine (reference) and the native one (docs/architecture.md)."""
