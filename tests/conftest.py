"""Test-session set-up shared by every test module.

The gateway runs on uvloop in production, so asyncio tests run there too
(uvloop's TLS transport differs from asyncio's in ways that matter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a Linux dependency
    uvloop = None

#: Real Redis fixtures: redis_server, redis_cluster, redis_factory.
pytest_plugins = ["tests.redis_servers"]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if uvloop is not None:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
