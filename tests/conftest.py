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


# ------------------------------------------------------------------ engines
#
# Modules marked ``pytestmark = pytest.mark.both_engines`` run every test once per
# engine (``[server] engine``: the native Rust engine and the Python reference), as
# aiohttp runs its tests over its C and Python parsers. The engine reaches in-process
# gateways (tests/gateway_harness.py) and ``channel serve`` subprocesses alike through
# ``CHANNEL_SERVER__ENGINE``. ``@pytest.mark.engine_only("python")`` keeps a test to one
# engine (it inspects that engine's internals). ``--engines native`` narrows a run.

ENGINES = ("native", "python")
ENGINE_ENV = "CHANNEL_SERVER__ENGINE"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engines",
        default=",".join(ENGINES),
        help="engines the both_engines tests run on (default: native,python)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_engines: run each test on every gateway engine")
    config.addinivalue_line("markers", "engine_only(name): run this test on one engine only")
    config.addinivalue_line(
        "markers", "local_envelopes(n): [push] redis_local_envelopes of the backend under test"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_engines") is None:
        return
    chosen = [e for e in metafunc.config.getoption("--engines").split(",") if e]
    only = metafunc.definition.get_closest_marker("engine_only")
    if only is not None:
        chosen = [e for e in chosen if e == only.args[0]]
    metafunc.parametrize("gateway_engine", chosen, indirect=True)


@pytest.fixture(autouse=True)
def gateway_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The engine gateways started by this test run on (native unless parametrized)."""
    name = str(getattr(request, "param", "native"))
    monkeypatch.setenv(ENGINE_ENV, name)
    return name
