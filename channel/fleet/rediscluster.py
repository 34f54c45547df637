"""The fleet's Redis Cluster: three masters, each with a replica, on their own host.

They run in one namespace (the "redis" host) on ports 7000-7005, which are free
there by construction: nothing else runs in that namespace. Every server keeps
an append-only file (``appendonly yes``), as production must (the device queues
are the pushes not delivered yet), so a master restarted with SIGTERM (Redis 7
waits for its replicas, then writes the file) comes back with its data.

Faults the chaos test needs:

* ``restart_master()``: SIGTERM a master, start it again on the same port and
  files; it is back as a master, or as the replica of a replica that took over
  meanwhile (``cluster-node-timeout``).
* ``failover()``: ``CLUSTER FAILOVER`` on a replica: the coordinated hand-over an
  operator does before maintenance; the replica takes the master's slots once it
  has every write (no acknowledged write is lost).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from channel.fleet.netns import FleetError, Host
from channel.fleet.procs import Proc

FIRST_PORT = 7000
NODE_TIMEOUT_MS = 3000
START_TIMEOUT_S = 15.0


class RedisClusterFleet:
    def __init__(self, host: Host, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        self.host = host
        self.directory = directory
        self.ports = [FIRST_PORT + i for i in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.procs: dict[int, Proc] = {}

    @property
    def entry(self) -> tuple[str, int]:
        return self.host.address, self.ports[0]

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host=self.host.address, port=port, socket_timeout=5)

    # ---------------------------------------------------------------- start

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FleetError("no redis-server: apt-get install redis-server (scripts/test.sh)")
        for port in self.ports:
            self._start(port)
        addresses = [f"{self.host.address}:{port}" for port in self.ports]
        create = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if create.returncode != 0:
            raise FleetError(f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}")
        self.wait_healthy()

    def _start(self, port: int) -> None:
        directory = self.directory / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        proc = Proc(
            f"redis-{port}",
            self.host,
            [
                "redis-server",
                "--port", str(port),
                "--bind", self.host.address,
                "--protected-mode", "no",
                "--dir", str(directory),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                # Replicas sync at once (the default waits 5 s for others to join in).
                "--repl-diskless-sync-delay", "0",
                "--daemonize", "no",
            ],
            directory / "redis.log",
        )  # fmt: skip
        self.procs[port] = proc.start()
        proc.wait_for(lambda: proc.log_contains("Ready to accept connections"), "readiness")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop(10)

    # ------------------------------------------------------------- inspection

    def roles(self) -> dict[int, str]:
        """Each running server's role now ("master" / "slave"), from its own INFO."""
        roles = {}
        for port, proc in self.procs.items():
            if not proc.running:
                continue
            try:
                roles[port] = str(self.client(port).info("replication")["role"])
            except redis.RedisError:
                continue
        return roles

    def masters(self) -> list[int]:
        return sorted(p for p, role in self.roles().items() if role == "master")

    def replica_of(self, master_port: int) -> int:
        info = self.client(master_port).info("replication")
        for key, value in info.items():
            if key.startswith("slave") and isinstance(value, dict):
                return int(value["port"])
        raise FleetError(f"redis {master_port} has no replica connected")

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Until every server says cluster_state:ok and every master has its replicas."""
        deadline = time.monotonic() + timeout_s
        while True:
            problem = self._health_problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise FleetError(f"redis cluster not healthy in {timeout_s:.0f} s: {problem}")
            time.sleep(0.1)

    def _health_problem(self) -> str | None:
        masters = 0
        for port, proc in self.procs.items():
            if not proc.running:
                return f"{port} is not running"
            try:
                client = self.client(port)
                state = client.cluster("info")
                replication = client.info("replication")
            except redis.RedisError as exc:
                return f"{port}: {exc}"
            if state.get("cluster_state") != "ok":
                return f"{port}: cluster_state not ok"
            if replication["role"] == "master":
                masters += 1
                if int(replication.get("connected_slaves", 0)) < self.replicas:
                    return f"{port}: master without its replica"
            elif replication.get("master_link_status") != "up":
                return f"{port}: replica link down"
        if masters * (1 + self.replicas) != len(self.procs):
            return f"{masters} masters for {len(self.procs)} servers"
        return None

    # ---------------------------------------------------------------- faults

    def restart_master(self, port: int | None = None) -> int:
        """SIGTERM a master (the first by port unless given), start it again; its port."""
        port = port if port is not None else self.masters()[0]
        proc = self.procs[port]
        if proc.stop(20) not in (0, None):
            raise FleetError(f"redis {port} did not shut down cleanly:\n{proc.log_tail()}")
        self._start(port)
        return port

    def failover(self, master_port: int | None = None) -> tuple[int, int]:
        """Hand a master's slots to its replica (CLUSTER FAILOVER on the replica);
        (old master, new master) once the roles have swapped."""
        master_port = master_port if master_port is not None else self.masters()[0]
        replica = self.replica_of(master_port)
        self.client(replica).cluster("failover")
        deadline = time.monotonic() + 30
        while self.roles().get(replica) != "master":
            if time.monotonic() > deadline:
                raise FleetError(f"redis {replica} did not take over from {master_port}")
            time.sleep(0.05)
        return master_port, replica
