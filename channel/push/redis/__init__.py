"""Redis push stores (``[push] backend = "redis"``): a fleet of nodes sharing one
Redis or a Redis Cluster (``[push] redis_cluster``).

The key layout is in ``keys``, the Lua scripts in ``lua``, connection policy
(timeouts, retries, bounded concurrency, pipelines) in ``connection``.
Requires Redis >= 7.0.
"""

from __future__ import annotations

from channel.config import PushConfig
from channel.push.redis.connection import Connection
from channel.push.redis.directory import RedisDirectory
from channel.push.redis.idempotency import RedisIdempotency
from channel.push.redis.keys import Keys
from channel.push.redis.presence import RedisPresence
from channel.push.redis.queue import RedisQueue
from channel.push.redis.receipts import RedisReceipts
from channel.push.redis.router import RedisRouter
from channel.push.redis.unicast import RedisUnicastWriter
from channel.push.stores import PushBackend
from channel.security.tlstickets import RedisTlsTickets

__all__ = [
    "RedisDirectory",
    "RedisIdempotency",
    "RedisPresence",
    "RedisQueue",
    "RedisReceipts",
    "RedisRouter",
    "RedisUnicastWriter",
    "redis_backend",
]


async def redis_backend(config: PushConfig) -> PushBackend:
    """The six stores on the Redis ``config`` names; reaches it once before returning.

    ``PushBackend.close()`` closes the clients (through ``presence.aclose``)."""
    conn = Connection(config)
    try:
        await conn.start()
    except BaseException:
        await conn.aclose()
        raise
    keys = Keys(config.key_prefix, config.presence_buckets, config.redis_key_memo_devices)
    presence = RedisPresence(conn, keys, config.redis_presence_memo_devices)
    queue = RedisQueue(conn, keys)
    receipts = RedisReceipts(
        conn,
        keys,
        config.receipt_stream,
        config.receipt_stream_maxlen,
        round(config.final_status_retention_s * 1000),
    )
    return PushBackend(
        redis=conn.blocking,
        connection=conn,
        name="redis",
        presence=presence,
        queue=queue,
        router=RedisRouter(
            conn,
            keys,
            presence,
            config.inbox_max_entries,
            config.redis_local_envelopes,
            config.redis_inbox_read_entries,
        ),
        receipts=receipts,
        unicast=RedisUnicastWriter(conn, queue, receipts, presence),
        idempotency=RedisIdempotency(conn, keys),
        directory=RedisDirectory(conn, keys, config.user_devices_ttl_s, config.user_devices_cap),
        tls_tickets=RedisTlsTickets(conn, config.key_prefix),
    )
