"""The push API's and the admin port's HTTP servers against slow and greedy clients.

Real gateway nodes on port 0 and raw TCP clients: a slow-loris that sends its request
headers one byte at a time, an idle connection, a body that stops half way, and more
connections than ``[http]`` allows. Each must be answered (JSON) and closed within its
bound (``channel/httpserver.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from channel.config import ConfigError, load_config
from channel.httpserver import GuardedSite
from tests.gateway_harness import RunningGateway, gateway

HEADER_TIMEOUT_S = 1.0
#: How much later than its bound a close may come on a busy 2-core machine.
SLACK_S = 3.0
#: Each server, and a path on it that needs no key.
SERVERS = {"api": "/openapi.json", "admin": "/healthz"}


@asynccontextmanager
async def guarded(tmp_path: Path, **http: Any) -> AsyncIterator[RunningGateway]:
    limits = {"header_timeout_s": HEADER_TIMEOUT_S, "idle_timeout_s": 30.0, **http}
    async with gateway(tmp_path, http=limits) as gw:
        yield gw


def port_of(gw: RunningGateway, server: str) -> int:
    return gw.api_port if server == "api" else gw.admin_port


def gate_of(gw: RunningGateway, server: str) -> Any:
    runner: Any = gw.node._api if server == "api" else gw.node._admin
    (site,) = runner.sites
    assert isinstance(site, GuardedSite)
    return site.gate


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a server-side count to settle: a bounded poll, as no event tells the
    test when the server has seen a connection go."""
    async with asyncio.timeout(SLACK_S):
        while not condition():
            await asyncio.sleep(0.01)


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await reader.read(-1)


def error_of(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


async def slow_loris(port: int, path: str, period_s: float) -> tuple[bytes, float]:
    """Send a request's headers one byte every ``period_s`` (never finishing in time);
    return what the server answered and how long after the first byte it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Pad: {'a' * 200}\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def drip() -> None:
        for byte in request:
            writer.write(bytes([byte]))
            await asyncio.sleep(period_s)  # the attacker's pace, not a wait for an event

    dripping = asyncio.ensure_future(drip())
    try:
        answer = await until_closed(reader)
    finally:
        dripping.cancel()
        writer.close()
    return answer, loop.time() - started


@pytest.mark.parametrize("server", sorted(SERVERS))
async def test_slow_loris_connections_are_closed_within_the_header_timeout(
    tmp_path: Path, server: str
) -> None:
    async with guarded(tmp_path) as gw:
        port = port_of(gw, server)
        async with asyncio.timeout(HEADER_TIMEOUT_S + SLACK_S):
            results = await asyncio.gather(
                *(slow_loris(port, SERVERS[server], 0.25) for _ in range(40))
            )
        for answer, _ in results:
            status, error = error_of(answer)
            assert (status, error["code"]) == (408, "TIMEOUT")
            assert "header_timeout_s" in error["message"]
        # Every slot is given back once the clients have gone.
        gate = gate_of(gw, server)
        await until(lambda: gate.open == 0)


@pytest.mark.parametrize("server", sorted(SERVERS))
async def test_an_idle_connection_is_closed(tmp_path: Path, server: str) -> None:
    async with guarded(tmp_path, idle_timeout_s=1.0) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(gw, server))
        async with asyncio.timeout(1.0 + SLACK_S):
            assert await until_closed(reader) == b""
        writer.close()


async def test_a_body_that_stops_half_way_gets_408(tmp_path: Path) -> None:
    async with guarded(tmp_path, body_timeout_s=1.0) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.api_port)
        writer.write(
            b"POST /v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {gw.api_key}\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"device_id": '
        )
        async with asyncio.timeout(1.0 + SLACK_S):
            answer = await until_closed(reader)
        writer.close()
        status, error = error_of(answer)
        assert (status, error["code"]) == (408, "TIMEOUT")
        assert "body_timeout_s" in error["message"]


async def open_and_use(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keep-alive connection that has had one answer (so the server counts it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    return reader, writer


@pytest.mark.parametrize("server", sorted(SERVERS))
@pytest.mark.parametrize(
    ("limits", "status", "code"),
    [
        ({"max_connections": 100, "max_connections_per_ip": 3}, 429, "RATE_LIMITED"),
        ({"max_connections": 3, "max_connections_per_ip": 3}, 503, "UNAVAILABLE"),
    ],
)
async def test_connections_beyond_the_caps_are_refused(
    tmp_path: Path, server: str, limits: dict[str, int], status: int, code: str
) -> None:
    async with guarded(tmp_path, **limits) as gw:
        port, path = port_of(gw, server), SERVERS[server]
        held = [await open_and_use(port, path) for _ in range(3)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(SLACK_S):
            answer = await until_closed(reader)
        writer.close()
        assert error_of(answer)[0] == status and error_of(answer)[1]["code"] == code
        gate = gate_of(gw, server)
        assert (gate.open, gate.refused) == (3, 1)
        # One leaves: room for one more (the server learns of it asynchronously).
        held.pop()[1].close()
        await until(lambda: gate.open == 2)
        held.append(await open_and_use(port, path))
        for _, held_writer in held:
            held_writer.close()


@pytest.mark.parametrize(
    "setting",
    [
        "header_timeout_s = 0",
        "body_timeout_s = 4000",
        "idle_timeout_s = -1",
        "max_connections_per_ip = 0",
        "max_connections = 10\nmax_connections_per_ip = 11",
    ],
)
def test_bad_http_settings_are_named(tmp_path: Path, setting: str) -> None:
    config_file = tmp_path / "channel.toml"
    config_file.write_text(f"[http]\n{setting}\n")
    with pytest.raises(ConfigError, match=r"http[.:]"):
        load_config(config_file, environ={})
