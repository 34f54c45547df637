"""Single-use TLS tickets (TLS early data): each redeemed once, in memory and in Redis
(a real server and a real cluster)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from channel.config import ConfigError, PushConfig, load_config
from channel.push.redis.connection import Connection
from channel.security.tlstickets import MemoryTlsTickets, RedisTlsTickets


async def test_memory_tickets_are_taken_once_bounded_and_expire() -> None:
    store = MemoryTlsTickets(max_entries=3)
    await store.put_many([(b"a" * 32, b"state-a"), (b"b" * 32, b"state-b")], ttl_s=60)
    assert await store.take(b"a" * 32) == b"state-a"
    assert await store.take(b"a" * 32) is None  # a replay finds it gone
    await store.put_many([(bytes([i]) * 32, b"s") for i in range(5)], ttl_s=60)
    assert len(store) == 3  # the oldest dropped first ("b" among them)
    assert await store.take(b"b" * 32) is None
    assert await store.take(bytes([4]) * 32) == b"s"
    await store.put_many([(b"c" * 32, b"state-c")], ttl_s=0)
    assert await store.take(b"c" * 32) is None  # expired


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> tuple[str, bool]:
    name = "redis_server" if request.param == "redis" else "redis_cluster"
    return request.getfixturevalue(name).url, request.param == "cluster"


async def test_redis_tickets_live_their_ttl_and_one_take_wins(redis_url: tuple[str, bool]) -> None:
    url, cluster = redis_url
    conn = Connection(PushConfig(redis_url=url, redis_cluster=cluster))
    await conn.start()
    try:
        store = RedisTlsTickets(conn, f"t{uuid.uuid4().hex[:6]}")
        tickets = [(os.urandom(32), os.urandom(150)) for _ in range(20)]
        await store.put_many(tickets, ttl_s=7200)
        first_id, first_state = tickets[0]
        ttl_ms = await conn.one("pttl", store.key(first_id))
        assert 7_000_000 < ttl_ms <= 7_200_000
        # Two nodes presenting the same ticket at once (a replay racing the device):
        # GETDEL lets exactly one of them have it.
        results = await asyncio.gather(*(store.take(first_id) for _ in range(8)))
        assert sorted(results, key=lambda r: r is None) == [first_state] + [None] * 7
        for ticket_id, state in tickets[1:]:
            assert await store.take(ticket_id) == state
        assert await store.take(os.urandom(32)) is None
    finally:
        await conn.aclose()


def test_early_data_settings_are_checked() -> None:
    for tls, named in [
        ({"early_data_max_bytes": 100}, "tls.early_data_max_bytes"),
        ({"early_data_max_bytes": 70_000}, "tls.early_data_max_bytes"),
        ({"ticket_store_timeout_ms": 0}, "tls.ticket_store_timeout_ms"),
        ({"ticket_store_max_entries": 0}, "tls.ticket_store_max_entries"),
    ]:
        with pytest.raises(ConfigError, match=named):
            load_config(None, environ={}, overrides={"tls": tls})
    config = load_config(None, environ={"CHANNEL_TLS__EARLY_DATA_MAX_BYTES": "16384"})
    assert config.tls.early_data_max_bytes == 16384
    assert load_config(None, environ={}).tls.early_data_max_bytes == 0  # off by default
