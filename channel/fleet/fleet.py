"""A local fleet, made and torn down by itself: the way operators run Channel, on one box.

Hosts (network namespaces on one bridge, ``netns.py``), each with an address of
its own:

* ``n0`` … ``nN-1``: one ``channel serve`` each (``deploy/fleet/node.toml.in``),
  device port 8443, MQTT over TLS 8883, plain TCP MQTT 1883 (the bridge is a trusted
  network), admin 9100, push API 8080, sharing one TLS certificate, token key, ticket
  secret and API key (made under the run's directory);
* ``lb``: HAProxy (``deploy/fleet/haproxy.cfg.in``): devices on 8443 and MQTT boxes
  on 8883 passed through to the nodes (TLS untouched) and plain MQTT on 1883, each
  with a PROXY v2 header, the push API on 8080,
  its own metrics on 8404; a node is in rotation while its ``/readyz`` says 200;
* ``redis``: a Redis Cluster of three masters and three replicas (``rediscluster.py``);
* ``prom``: Prometheus on 9090 (``deploy/fleet/prometheus.yml.in``) scraping every
  node and HAProxy, with the alert rules of ``deploy/prometheus/alerts.yml``.

Fixed ports are free by construction: each host is a namespace of its own.
Devices and tools on this machine reach every host through the bridge.

``Fleet`` is a context manager: leaving it (normally, on an exception, on
Ctrl-C) stops every process and removes the namespaces and the bridge; what a
run killed with SIGKILL leaves is reaped by the next (``netns.reap_stale``).
"""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from channel.api.keys import ADMIN_SCOPE, new_api_key
from channel.fleet.netns import FleetError, Host, Network, reap_stale
from channel.fleet.procs import Proc
from channel.fleet.rediscluster import RedisClusterFleet
from channel.security.devcert import ensure_dev_certificates, ensure_dev_token_keys
from channel.security.tokens import DeviceClaims, TokenSigner, load_private_key

DEVICE_PORT = 8443
MQTT_PORT = 8883
#: Plain TCP MQTT: on in the local fleet (its own bridge, a trusted network), off by default.
MQTT_TCP_PORT = 1883
ADMIN_PORT = 9100
API_PORT = 8080
HAPROXY_STATS_PORT = 8404
PROMETHEUS_PORT = 9090
#: The gateway engines a fleet's nodes may run (both read HAProxy's PROXY v2 header).
ENGINES = ("native", "python")
#: The repository's deploy/ directory: the templates the fleet renders.
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"


@dataclass
class FleetSettings:
    nodes: int = 3
    #: The gateways' engine: "native" (the default, as in production) or "python"; both
    #: read the balancer's PROXY header.
    engine: str = "native"
    drain_timeout_s: float = 10.0
    lease_ms: int = 2_000
    reconnect_after_ms: int = 500
    prometheus: bool = True
    scrape_interval: str = "2s"
    #: An HTTP upstream on this machine (listening on its bridge address, or on all) for
    #: ops starting "app.": the nodes reach it at the bridge address on this port.
    rpc_upstream_port: int = 0
    #: Where logs and state go (None: a temporary directory, removed unless keep_dir).
    directory: Path | None = None
    keep_dir: bool = False
    #: The command that runs a node (an upgrade may name another build's).
    serve_command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "channel"])
    log_level: str = "info"
    haproxy_maxconn: int = 8_000


@dataclass
class FleetNode:
    index: int
    host: Host
    generation: int = 0
    proc: Proc | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host.address}:{ADMIN_PORT}"


class Fleet:
    def __init__(self, settings: FleetSettings | None = None) -> None:
        self.settings = settings or FleetSettings()
        if self.settings.nodes < 1:
            raise FleetError("a fleet needs at least one node")
        if self.settings.engine not in ENGINES:
            raise FleetError(f"engine: {self.settings.engine!r} is not one of {ENGINES}")
        self.network = Network()
        self._own_dir = self.settings.directory is None
        self.directory = self.settings.directory or Path(
            tempfile.mkdtemp(prefix=f"channel-fleet-{self.network.run_id}-")
        )
        self.shared = self.directory / "shared"
        self.nodes: list[FleetNode] = []
        self.redis: RedisClusterFleet | None = None
        self.haproxy: Proc | None = None
        self.prometheus: Proc | None = None
        self.api_key = ""
        self._api_key_record = ""
        self._ticket_secret = secrets.token_hex(32)
        self._signer: TokenSigner | None = None
        self._closed = False

    # ------------------------------------------------------------ addresses

    @property
    def lb(self) -> Host:
        return self.network.hosts["lb"]

    @property
    def device_endpoint(self) -> tuple[str, int]:
        """Where devices connect: the balancer."""
        return self.lb.address, DEVICE_PORT

    @property
    def mqtt_endpoint(self) -> tuple[str, int]:
        """Where MQTT boxes connect (MQTT over TLS): the balancer."""
        return self.lb.address, MQTT_PORT

    @property
    def mqtt_tcp_endpoint(self) -> tuple[str, int]:
        """Where MQTT boxes connect over plain TCP (no TLS): the balancer."""
        return self.lb.address, MQTT_TCP_PORT

    @property
    def api_url(self) -> str:
        """The push API, through the balancer."""
        return f"http://{self.lb.address}:{API_PORT}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.network.hosts['prom'].address}:{PROMETHEUS_PORT}"

    @property
    def machine_address(self) -> str:
        """This machine's address on the fleet's bridge (for upstreams tests run)."""
        return self.network.gateway_address

    @property
    def ca_cert(self) -> Path:
        return self.shared / "tls" / "ca.pem"

    def token(self, device_id: str, *, user_id: str = "", app_id: str = "fleet") -> bytes:
        if self._signer is None:
            self._signer = TokenSigner(load_private_key(self.shared / "keys" / "token-1.key"), 1)
        now = int(time.time())
        claims = DeviceClaims(
            device_id=device_id,
            user_id=user_id or f"u-{device_id}",
            app_id=app_id,
            expires_at=now + 86_400,
            issued_at=now,
        )
        return self._signer.issue(claims)

    # ---------------------------------------------------------------- start

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Fleet:
        reap_stale()
        self.network.create()
        for name in ("lb", "redis", "prom"):
            self.network.add_host(name)
        for index in range(self.settings.nodes):
            self.nodes.append(FleetNode(index, self.network.add_host(f"n{index}")))
        self._make_shared_state()
        self.redis = RedisClusterFleet(self.network.hosts["redis"], self.directory / "redis")
        self.redis.start()
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            self._wait_listening(node)
        self._start_haproxy()
        self.wait_in_rotation({n.name for n in self.nodes})
        if self.settings.prometheus:
            self._start_prometheus()
        return self

    def _make_shared_state(self) -> None:
        """What every node of a fleet shares: certificate, token key, API key (every
        scope, the admin port's too: the fleet's user is its operator)."""
        ensure_dev_certificates(self.shared / "tls")
        ensure_dev_token_keys(self.shared / "keys")
        self.api_key, self._api_key_record = new_api_key("fleet", ["*", ADMIN_SCOPE])
        (self.shared / "api.key").write_text(self.api_key + "\n", encoding="utf-8")
        os.chmod(self.shared / "api.key", 0o600)

    def node_config(self, node: FleetNode) -> Path:
        rpc = ""
        if self.settings.rpc_upstream_port:
            upstream = f"http://{self.machine_address}:{self.settings.rpc_upstream_port}"
            rpc = (
                "[rpc.clusters.app]\n"
                f'endpoints = ["{upstream}"]\n'
                "timeout_ms = 5000\n\n"
                '[[rpc.routes]]\nmatch = "app."\ncluster = "app"\n'
            )
        redis = self.redis
        assert redis is not None
        text = _render(
            "fleet/node.toml.in",
            device_port=DEVICE_PORT,
            mqtt_port=MQTT_PORT,
            mqtt_tcp_port=MQTT_TCP_PORT,
            admin_port=ADMIN_PORT,
            api_port=API_PORT,
            engine=self.settings.engine,
            balancer=self.lb.address,
            drain_timeout_s=self.settings.drain_timeout_s,
            reconnect_after_ms=self.settings.reconnect_after_ms,
            shared=self.shared,
            ticket_secret=self._ticket_secret,
            redis_host=redis.entry[0],
            redis_port=redis.entry[1],
            key_prefix=f"f{self.network.run_id}",
            lease_ms=self.settings.lease_ms,
            api_key_record=self._api_key_record,
            rpc=rpc,
        )
        path = self.directory / f"{node.name}.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def _spawn(self, node: FleetNode) -> None:
        node.generation += 1
        state = self.directory / f"{node.name}-g{node.generation}"
        state.mkdir(parents=True, exist_ok=True)
        # The node's settings are its config file, not the caller's CHANNEL_ variables.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHANNEL_")}
        env["CHANNEL_SERVER__NODE_ID"] = f"{node.name}-g{node.generation}"
        proc = Proc(
            f"{node.name}-g{node.generation}",
            node.host,
            [
                *self.settings.serve_command,
                "serve",
                "--config", str(self.node_config(node)),
                "--state-dir", str(state),
                "--log-level", self.settings.log_level,
            ],
            state / "node.log",
            env=env,
            stdout_path=state / "node.stdout",
        )  # fmt: skip
        node.proc = proc.start()
        node.info = {}

    def _wait_listening(self, node: FleetNode, timeout_s: float = 60.0) -> None:
        proc = node.proc
        assert proc is not None and proc.stdout_path is not None
        stdout = proc.stdout_path

        def listening() -> dict[str, Any] | None:
            import json

            try:
                lines = stdout.read_text(encoding="utf-8").split("\n")[:-1]
            except OSError:
                return None
            for line in lines:
                try:
                    info = json.loads(line)
                except ValueError:
                    continue
                if isinstance(info, dict) and info.get("event") == "listening":
                    return info
            return None

        info = proc.wait_for(listening, "'listening' line", timeout_s)
        assert isinstance(info, dict)
        node.info = info

    def _start_haproxy(self) -> None:
        if shutil.which("haproxy") is None:
            raise FleetError("no haproxy: apt-get install haproxy (scripts/test.sh does)")
        servers = [(n.name, n.host.address) for n in self.nodes]
        text = _render(
            "fleet/haproxy.cfg.in",
            run_dir=self.directory,
            maxconn=self.settings.haproxy_maxconn,
            device_port=DEVICE_PORT,
            mqtt_port=MQTT_PORT,
            mqtt_tcp_port=MQTT_TCP_PORT,
            api_port=API_PORT,
            admin_port=ADMIN_PORT,
            stats_port=HAPROXY_STATS_PORT,
            device_servers="\n".join(f"    server {n} {a}:{DEVICE_PORT}" for n, a in servers),
            mqtt_servers="\n".join(f"    server {n} {a}:{MQTT_PORT}" for n, a in servers),
            mqtt_tcp_servers="\n".join(f"    server {n} {a}:{MQTT_TCP_PORT}" for n, a in servers),
            api_servers="\n".join(f"    server {n} {a}:{API_PORT}" for n, a in servers),
        )
        config = self.directory / "haproxy.cfg"
        config.write_text(text, encoding="utf-8")
        check = Proc("haproxy-check", self.lb, ["haproxy", "-c", "-f", str(config)],
                     self.directory / "haproxy-check.log").start()  # fmt: skip
        if check.wait(30) != 0:
            raise FleetError(f"haproxy -c refused {config}:\n{check.log_tail()}")
        self.haproxy = Proc(
            "haproxy",
            self.lb,
            ["haproxy", "-db", "-f", str(config)],
            self.directory / "haproxy.log",
        ).start()
        sock = self.directory / "haproxy.sock"
        self.haproxy.wait_for(sock.exists, "stats socket", 15)

    def _start_prometheus(self) -> None:
        if shutil.which("prometheus") is None:
            raise FleetError("no prometheus: apt-get install prometheus (scripts/test.sh does)")
        host = self.network.hosts["prom"]
        targets = ", ".join(f"'{n.host.address}:{ADMIN_PORT}'" for n in self.nodes)
        text = _render(
            "fleet/prometheus.yml.in",
            scrape_interval=self.settings.scrape_interval,
            rules=DEPLOY_DIR / "prometheus" / "alerts.yml",
            node_targets=targets,
            haproxy_target=f"'{self.lb.address}:{HAPROXY_STATS_PORT}'",
        )
        config = self.directory / "prometheus.yml"
        config.write_text(text, encoding="utf-8")
        self.prometheus = Proc(
            "prometheus",
            host,
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'prometheus-data'}",
                f"--web.listen-address=:{PROMETHEUS_PORT}",
                "--web.enable-lifecycle",
            ],
            self.directory / "prometheus.log",
        ).start()
        self.prometheus.wait_for(
            lambda: (
                self.prometheus is not None
                and self.prometheus.log_contains("Server is ready to receive web requests")
            ),
            "readiness",
            60,
        )

    # ---------------------------------------------------------- the balancer

    def haproxy_status(self, backend: str = "gateways") -> dict[str, str]:
        """Each server's state in a backend as HAProxy sees it ("UP", "DOWN", ...)."""
        text = self._haproxy_command("show stat")
        rows = csv.reader(io.StringIO(text.lstrip("# ")))
        header = next(rows, [])
        if "status" not in header:
            return {}
        name, server, status = (
            header.index("pxname"),
            header.index("svname"),
            header.index("status"),
        )
        return {
            row[server]: row[status]
            for row in rows
            if len(row) > status
            and row[name] == backend
            and row[server] not in ("FRONTEND", "BACKEND")
        }

    def _haproxy_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.directory / "haproxy.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def wait_in_rotation(self, names: set[str], timeout_s: float = 30.0) -> None:
        """Until HAProxy has exactly the nodes ``names`` UP (devices, MQTT and API)."""
        deadline = time.monotonic() + timeout_s
        while True:
            up = {
                # "UP 1/2" is a server not confirmed by a check yet (or failing one).
                backend: {n for n, s in self.haproxy_status(backend).items() if s == "UP"}
                for backend in ("gateways", "mqtt_gateways", "mqtt_tcp_gateways", "push_api")
            }
            if all(found == names for found in up.values()):
                return
            if time.monotonic() > deadline:
                raise FleetError(f"HAProxy has {up} in rotation, expected {sorted(names)}")
            time.sleep(0.1)

    # ---------------------------------------------------------------- faults

    def kill_node(self, index: int) -> None:
        """SIGKILL a node (a crash, a lost host): no drain, no GOAWAY."""
        proc = self.nodes[index].proc
        assert proc is not None
        proc.kill()

    def start_node(self, index: int, timeout_s: float = 60.0) -> None:
        """Start node ``index`` again (a new generation) and wait until it listens."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.running:
            raise FleetError(f"{node.name} is still running")
        self._spawn(node)
        self._wait_listening(node, timeout_s)

    def upgrade_node(self, index: int) -> float:
        """Replace node ``index``: SIGTERM (drain: /readyz 503, GOAWAY, calls finish),
        wait for it to exit, start the new process, wait until HAProxy has it in
        rotation again. Returns the seconds it was out of rotation."""
        node = self.nodes[index]
        proc = node.proc
        assert proc is not None
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.wait(self.settings.drain_timeout_s + 15)
        if code != 0:
            raise FleetError(f"{node.name} exited with {code} after SIGTERM:\n{proc.log_tail()}")
        self.start_node(index)
        self.wait_in_rotation({n.name for n in self.nodes if n.proc and n.proc.running})
        return time.monotonic() - started

    def partition_from_redis(self, index: int) -> None:
        """Cut node ``index`` off from Redis (its packets to Redis vanish)."""
        self.network.partition(self.nodes[index].name, [self.network.hosts["redis"].address])

    def heal(self, index: int) -> None:
        self.network.heal(self.nodes[index].name)

    # ------------------------------------------------------------- inspection

    def admin_get(self, index: int, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
        url = self.nodes[index].admin_url + path
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric_sum(self, name: str, labels: str = "") -> float:
        """A metric summed over every running node (``labels``: e.g. 'kind="resumed"')."""
        total = 0.0
        prefix = f"{name}{{{labels}}}" if labels else name
        for node in self.nodes:
            if node.proc is None or not node.proc.running:
                continue
            try:
                _, text = self.admin_get(node.index, "/metrics")
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(prefix + " ") or (not labels and line.startswith(name + "{")):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def describe(self) -> str:
        """What a person needs to use the fleet: addresses and commands."""
        lb, port = self.device_endpoint
        lines = [
            f"fleet {self.network.run_id}: {len(self.nodes)} nodes, bridge {self.network.bridge} "
            f"({self.network.subnet}), files in {self.directory}",
            f"  devices:     {lb}:{port} (HAProxy, TLS passed through, PROXY v2 to the nodes)",
            f"  MQTT boxes:  {self.mqtt_endpoint[0]}:{MQTT_PORT} (HAProxy, MQTT over TLS passed "
            "through, PROXY v2; token as password)",
            f"  MQTT (TCP):  {self.mqtt_tcp_endpoint[0]}:{MQTT_TCP_PORT} (HAProxy, plain TCP, "
            "PROXY v2: for trusted networks only)",
            f"  push API:    {self.api_url}  (key in {self.shared / 'api.key'})",
            f"  HAProxy:     http://{lb}:{HAPROXY_STATS_PORT}/stats",
        ]
        if self.prometheus is not None:
            lines.append(f"  Prometheus:  {self.prometheus_url}")
        redis = self.redis
        if redis is not None:
            lines.append(
                f"  Redis:       {redis.entry[0]}:{redis.ports[0]}-{redis.ports[-1]} (cluster)"
            )
        for node in self.nodes:
            lines.append(f"  {node.name}: {node.host.address} (netns {node.host.netns}), "
                         f"admin {node.admin_url}/metrics")  # fmt: skip
        lines.append(
            f"  try: channel device --host {lb} --port {port} --ca {self.ca_cert} --device d1 "
            f"--app fleet --token-file <(channel token issue --key {self.shared}/keys/token-1.key "
            "--device d1 --user u1 --app fleet) call channel.echo '{\"hi\":1}'"
        )
        return "\n".join(lines)

    # ---------------------------------------------------------------- stop

    def close(self) -> None:
        """Stop every process, remove the namespaces and the bridge (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            procs = [n.proc for n in self.nodes if n.proc is not None]
            for proc in procs:
                proc.signal(signal.SIGKILL)
            for extra in (self.haproxy, self.prometheus):
                if extra is not None:
                    extra.stop(5)
            if self.redis is not None:
                for proc in self.redis.procs.values():
                    proc.signal(signal.SIGKILL)
            for proc in procs:
                proc.wait(10)
        finally:
            self.network.destroy()
            if self._own_dir and not self.settings.keep_dir:
                shutil.rmtree(self.directory, ignore_errors=True)


def _render(template: str, **values: object) -> str:
    path = DEPLOY_DIR / template
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(
            f"cannot read {path}: the fleet runs from a checkout of the repository ({exc})"
        ) from None

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise FleetError(f"{path}: no value for ${{{name}}}")
        return str(values[name])

    return re.sub(r"\$\{([a-z_]+)\}", value, text)
