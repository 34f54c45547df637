"""Real Redis servers for tests: one server, a three-master cluster, throwaway servers.

Fixtures (registered for every test module through ``tests/conftest.py``):

* ``redis_server`` (session): one ``redis-server``; share it by giving each test
  its own key prefix rather than flushing.
* ``redis_cluster`` (session): three masters, no replicas, all 16384 slots.
* ``redis_factory`` (function): starts dedicated servers a test may stop,
  restart (same port, data lost) or break; all are stopped afterwards.

Servers never persist (``--save "" --appendonly no``), listen on 127.0.0.1 on
checked free ports below 32768, and are waited for by polling ``PING`` (or
``CLUSTER INFO``) with a bounded deadline, never by fixed sleeps.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis

START_TIMEOUT_S = 10.0
#: A cluster node's bus listens on its port + 10000: keep both below 32768.
CLUSTER_BUS_OFFSET = 10_000


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(low: int = 20_000, high: int = 32_768, *, with_bus: bool = False) -> int:
    """A free port in ``[low, high)`` (and its cluster bus port when ``with_bus``): checked."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(low, high)
        if _port_free(port) and (not with_bus or _port_free(port + CLUSTER_BUS_OFFSET)):
            return port
    raise RuntimeError(f"no free port in [{low}, {high})")


def _options(**values: str) -> list[str]:
    """Command-line options: ``cluster_enabled="yes"`` → ``--cluster-enabled yes``."""
    return [arg for name, value in values.items() for arg in ("--" + name.replace("_", "-"), value)]


class _LogWatch:
    """Copies a redis-server's stdout to its log file and tells when a line appears.

    Redis says "Ready to accept connections" and "Cluster state changed: ok" in its
    log: waiting for those lines waits for the event itself, not a polling loop.
    """

    def __init__(self, stream: IO[bytes], log: IO[bytes]) -> None:
        self._lines: list[bytes] = []
        self._changed = threading.Condition()
        self._open = True
        self._thread = threading.Thread(target=self._copy, args=(stream, log), daemon=True)
        self._thread.start()

    def _copy(self, stream: IO[bytes], log: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            log.write(line)
            log.flush()
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._open = False
            self._changed.notify_all()

    def wait_for(self, text: bytes, timeout_s: float, start: int = 0) -> int:
        """Block until a line (after line ``start``) contains ``text``; its index + 1."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for index in range(start, len(self._lines)):
                    if text in self._lines[index]:
                        return index + 1
                start = len(self._lines)
                left = deadline - time.monotonic()
                if not self._open:
                    raise RuntimeError(f"redis-server exited before {text!r}")
                if left <= 0:
                    raise TimeoutError(f"redis-server: no {text!r} in {timeout_s} s")
                self._changed.wait(left)

    def join(self) -> None:
        """After the process ended: the last lines are in the log file."""
        self._thread.join(5)


class RedisServer:
    """One ``redis-server`` process on a fixed port, which ``restart`` keeps."""

    def __init__(self, directory: Path, port: int | None = None, *extra: str) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client for set-up and inspection in tests."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("no redis-server: scripts/test.sh installs it (apt redis-server)")
        self.log = (self.directory / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                *_options(
                    port=str(self.port),
                    bind="127.0.0.1",
                    save="",
                    appendonly="no",
                    dir=str(self.directory),
                    daemonize="no",
                ),
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        self.watch = _LogWatch(self.proc.stdout, self.log)
        self.watch.wait_for(b"Ready to accept connections", START_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the server; its data is gone (nothing is persisted)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.watch.join()
        self.log.close()

    def restart(self) -> None:
        """Stop and start again on the same port, empty (a Redis that lost its data)."""
        self.stop()
        self.start()


class RedisCluster:
    """Three masters (no replicas) owning all slots between them."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for _ in range(masters):
            port = self._port()
            self.nodes.append(
                RedisServer(
                    directory / str(port),
                    port,
                    *_options(
                        cluster_enabled="yes",
                        cluster_config_file=f"nodes-{port}.conf",
                        cluster_node_timeout="5000",
                    ),
                )
            )

    def _port(self) -> int:
        taken = {node.port for node in getattr(self, "nodes", [])}
        while True:
            port = free_port(20_000, 32_768 - CLUSTER_BUS_OFFSET, with_bus=True)
            if port not in taken and port + CLUSTER_BUS_OFFSET not in taken:
                return port

    @property
    def url(self) -> str:
        """Any one node's URL: the cluster client discovers the others."""
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        create = ["redis-cli", "--cluster", "create", *addresses]
        subprocess.run(
            [*create, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
        )
        for node in self.nodes:
            node.watch.wait_for(b"Cluster state changed: ok", START_TIMEOUT_S)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class RedisFactory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: list[RedisServer] = []

    def __call__(self, *extra: str) -> RedisServer:
        server = RedisServer(self.directory / str(len(self.servers)), None, *extra)
        self.servers.append(server)
        server.start()
        return server


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    factory = RedisFactory(tmp_path)
    try:
        yield factory
    finally:
        for server in factory.servers:
            server.stop()
