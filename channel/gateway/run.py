"""Running nodes as processes: signals, uvloop, ``--workers N`` with SO_REUSEPORT.

SIGTERM / SIGINT drain (GOAWAY with a jittered reconnect hint, in-flight calls
finish, then exit 0); SIGHUP reloads the [rpc] routes and [tls] files from the
config file (devices stay connected).
With several workers the parent only supervises: each child is a full node
on the same device port (the kernel spreads connections) and admin port
``admin_port + index``; signals to the parent are passed on to every child.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from channel.config import ConfigError, GatewayConfig, load_config
from channel.logs import fields, setup_logging

log = logging.getLogger("channel.run")

Announce = Callable[[Any], None]


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def serve_node(config: GatewayConfig, announce: Announce | None = None) -> int:
    from channel.gateway.node import GatewayNode

    node = GatewayNode(config)
    await node.start()
    tune_gc(config.server.gc_gen0_threshold)
    log.info("collector tuned", extra=fields(gc_threshold=list(gc.get_threshold())))
    if announce is not None:
        announce(node)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def reload() -> None:
        try:
            node.reload(load_config(config.source) if config.source != "defaults" else config)
        except (ConfigError, ValueError) as exc:
            log.error("reload refused", extra=fields(error=str(exc)))

    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    log.info("draining", extra=fields(node=node.node_id, connections=node.connection_count))
    await node.drain()
    await node.close()
    return 0


def announce_listening(node: Any) -> None:
    """One JSON line on stdout for tools (every listener's real port), a human summary on
    stderr."""
    info = node.listening_info()
    # One write per line: the workers of ``--workers N`` share stdout, and print() writes
    # the text and its newline apart when stdout is unbuffered (lines interleaved).
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    server = node.config.server
    lines = [
        f"Channel gateway {info['node']} ({info['engine']} engine) listening on "
        f"{server.host}:{info['port']} (TLS 1.3, ALPN mmtp/1); "
        f"admin http://{server.admin_host}:{info['admin_port']}/metrics",
        f"  admin actions need a key with scope admin: channel admin --url "
        f"http://{server.admin_host}:{info['admin_port']} routes",
    ]
    if info.get("mqtt_port") or info.get("mqtt_tcp_port"):
        parts = []
        if info.get("mqtt_port"):
            parts.append(f"{server.host}:{info['mqtt_port']} (TLS)")
        if info.get("mqtt_tcp_port"):
            parts.append(f"{server.host}:{info['mqtt_tcp_port']} (plain TCP)")
        lines.append(f"  MQTT 3.1.1/5.0 on {' and '.join(parts)}")
    if info["api_port"]:
        lines.append(
            f"  push API http://{node.config.api.host}:{info['api_port']}/v1 "
            f"(OpenAPI at /openapi.json; pushes in {node.config.push.backend})"
        )
    ca_cert, token_key = info["ca_cert"], info["dev_token_key"]
    if ca_cert:
        lines.append(f"  dev CA certificate (give it to devices): {ca_cert}")
    if token_key:
        lines.append(
            f"  dev token key: {token_key}\n"
            f"  try: channel token issue --key {token_key} --device d1 --user u1 "
            "--app demo > /tmp/d1.token\n"
            f"       channel device --port {info['port']} --ca {ca_cert} --device d1 "
            "--app demo --token-file /tmp/d1.token call channel.echo '{\"hi\":1}'"
        )
    print("\n".join(lines), file=sys.stderr, flush=True)


def tune_gc(gen0_threshold: int = 50_000) -> None:
    """Fewer, cheaper cyclic collections for a long-lived server process.

    Everything made at start-up (modules, config, TLS contexts, tables) is moved
    out of the collector's sight (``gc.freeze``), and the first generation is
    collected every ``gen0_threshold`` net allocations (``[server]
    gc_gen0_threshold``, default 50,000) instead of 700: a node allocates
    small short-lived objects per frame and per push, and with the defaults
    full collections over 100,000 sessions stalled the loop for tens of ms
    (stress/push.py measured p99 at half load 152 -> 57 ms with Redis). The second
    generation is collected every 10 first-generation collections (Python's
    default): at 50, up to 2.5 million young objects (a memory-backend node's
    message states at ~17,000 pushes/s) were scanned in one go, and acked unicast
    at half rate had p90 66-136 ms and p99 105-430 ms in ``stress.compare``
    (9.7-11 ms and 37-90 ms at 10).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0_threshold, 10, 1000)


def run_single(config: GatewayConfig, announce: Announce | None = None) -> int:
    setup_logging(config.log.level, config.log.json)
    uv = install_uvloop()
    log.info("starting", extra=fields(uvloop=uv, config=config.source, pid=os.getpid()))
    return asyncio.run(serve_node(config, announce))


def _worker_main(path: str | None, overrides: Mapping[str, Mapping[str, Any]], index: int) -> None:
    config = load_config(path, overrides=overrides)
    if config.server.admin_port:
        config.server.admin_port += index
    config.server.node_id = config.server.node_id or f"{os.uname().nodename}-w{index}"
    sys.exit(run_single(config, announce=announce_listening))


def run_workers(path: str | None, overrides: Mapping[str, Mapping[str, Any]], workers: int) -> int:
    """Start ``workers`` node processes on one port and supervise them."""
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(target=_worker_main, args=(path, overrides, i), name=f"channel-w{i}")
        for i in range(workers)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    status = 0
    for child in children:
        child.join()
        status = status or (child.exitcode or 0)
    return status
