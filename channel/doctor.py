"""``channel doctor``: is this host ready to run a node with this configuration?

Each check reads the host (``/proc/sys``, resource limits, memory) or reaches out
(Redis, upstreams) and says ``ok``, ``warn`` or ``FAIL``, what it found and, when
it is not ok, the fix. A FAIL means the node would break under its configured
load (too few file descriptors for ``max_connections``, an expired certificate,
Redis out of reach); a warning costs devices something (no TCP Fast Open, a
short accept backlog).

Memory per device comes from measurements (``stress/README.md``): an idle TLS
device costs ~4.4 KiB on the native engine and ~18 KiB on the Python one; a
device whose send buffer is full holds up to ``send_buffer_high_water_bytes``
more, and up to four times that before it is cut as a slow consumer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import resource
import socket
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from channel.config import GatewayConfig

OK, WARN, FAIL = "ok", "warn", "FAIL"
#: Idle memory per device, measured (stress/README.md, native_engine and connections).
IDLE_KIB_PER_DEVICE = {"native": 4.4, "python": 18.0}
#: File descriptors a node holds besides devices (Redis pools, upstreams, listeners).
FD_MARGIN = 1_024
#: The accept backlog the listeners ask for (the kernel caps it at somaxconn).
LISTEN_BACKLOG = 4_096
CERT_WARN_DAYS = 14
REACH_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


class Host:
    """Where the checks read the machine (a directory standing for ``/proc/sys`` in tests)."""

    def __init__(self, proc_sys: Path = Path("/proc/sys")) -> None:
        self.proc_sys = proc_sys

    def sysctl(self, name: str) -> str | None:
        try:
            return (self.proc_sys / name.replace(".", "/")).read_text().strip()
        except OSError:
            return None

    def nofile(self) -> tuple[int, int]:
        return resource.getrlimit(resource.RLIMIT_NOFILE)

    def mem_available_kib(self) -> int | None:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return None


# ------------------------------------------------------------------ host checks


def check_fd_limit(config: GatewayConfig, host: Host) -> Check:
    soft, hard = host.nofile()
    need = config.server.max_connections + FD_MARGIN
    detail = f"open files: soft {soft}, hard {hard}; server.max_connections needs {need}"
    if soft >= need:
        return Check("file descriptors", OK, detail)
    fix = (
        f"raise the limit to >= {need}: LimitNOFILE={need} in the systemd unit "
        f"(deploy/systemd/channel.service), `ulimit -n {need}` in a shell, or lower "
        "server.max_connections (a per-process limit: each of --workers N holds as many)"
    )
    status = WARN if hard >= need else FAIL
    if status == WARN:
        detail += " (the hard limit allows it: channel serve does not raise it itself)"
    return Check("file descriptors", status, detail, fix)


def check_somaxconn(host: Host) -> Check:
    value = host.sysctl("net.core.somaxconn")
    if value is None:
        return Check("accept backlog", WARN, "net.core.somaxconn unreadable", "")
    detail = f"net.core.somaxconn = {value}; listeners ask for {LISTEN_BACKLOG}"
    if int(value) >= LISTEN_BACKLOG:
        return Check("accept backlog", OK, detail)
    return Check(
        "accept backlog",
        WARN,
        detail + ": a reconnect storm overflows the queue and devices retry after a SYN timeout",
        f"sysctl -w net.core.somaxconn={LISTEN_BACKLOG} (and in /etc/sysctl.d/)",
    )


def check_fast_open(config: GatewayConfig, host: Host) -> Check:
    if config.server.tcp_fastopen_queue <= 0:
        return Check("TCP Fast Open", OK, "off (server.tcp_fastopen_queue = 0)")
    value = host.sysctl("net.ipv4.tcp_fastopen")
    if value is not None and int(value) & 0x2:
        return Check("TCP Fast Open", OK, f"net.ipv4.tcp_fastopen = {value} (server side on)")
    return Check(
        "TCP Fast Open",
        WARN,
        f"net.ipv4.tcp_fastopen = {value}: servers may not take data in the SYN; every "
        "reconnect costs devices one round trip more",
        "sysctl -w net.ipv4.tcp_fastopen=3 (and in /etc/sysctl.d/)",
    )


def check_port_range(config: GatewayConfig, host: Host) -> Check:
    value = host.sysctl("net.ipv4.ip_local_port_range")
    if value is None:
        return Check("ephemeral ports", WARN, "net.ipv4.ip_local_port_range unreadable")
    low, high = (int(x) for x in value.split())
    ports = high - low + 1
    detail = f"net.ipv4.ip_local_port_range = {low}-{high} ({ports} ports)"
    server = config.server
    if server.proxy_protocol and ports < server.max_connections:
        # A balancer's connections to this node come from its ports: one balancer
        # address holds at most this many to one node port.
        return Check(
            "ephemeral ports",
            WARN,
            detail + f": below server.max_connections ({server.max_connections}); on the "
            "balancer the same range caps its connections to one node",
            "on the balancer hosts: sysctl -w net.ipv4.ip_local_port_range='1024 65535', and "
            f"give each balancer >= {-(-server.max_connections // 64_511)} source addresses "
            "per node (HAProxy `source` per server line)",
        )
    if ports < 16_384:
        return Check(
            "ephemeral ports",
            WARN,
            detail + ": few for the node's own connections (Redis, upstreams)",
            "sysctl -w net.ipv4.ip_local_port_range='1024 65535'",
        )
    return Check("ephemeral ports", OK, detail)


def check_memory(config: GatewayConfig, host: Host) -> Check:
    engine = config.server.engine
    devices = config.server.max_connections
    idle_gib = devices * IDLE_KIB_PER_DEVICE[engine] / 1024 / 1024
    buffer_bytes = config.limits.send_buffer_high_water_bytes
    # Slow devices hold up to their high-water mark before reading stops; a few percent
    # of devices behind bad networks at once is what operators see.
    busy_gib = idle_gib + devices * 0.05 * buffer_bytes / 1024**3
    available = host.mem_available_kib()
    detail = (
        f"{devices} devices on the {engine} engine: ~{idle_gib:.2f} GiB idle "
        f"({IDLE_KIB_PER_DEVICE[engine]} KiB each, measured), ~{busy_gib:.2f} GiB if 5% "
        f"hold a full send buffer ({buffer_bytes // 1024} KiB)"
    )
    if available is None:
        return Check("memory per device", WARN, detail + "; MemAvailable unreadable")
    available_gib = available / 1024 / 1024
    detail += f"; {available_gib:.1f} GiB available"
    if idle_gib > available_gib:
        return Check(
            "memory per device",
            FAIL,
            detail,
            "lower server.max_connections, or use the native engine (4.4 KiB per idle device)",
        )
    if busy_gib > available_gib:
        return Check(
            "memory per device",
            WARN,
            detail,
            "lower limits.send_buffer_high_water_bytes or server.max_connections",
        )
    return Check("memory per device", OK, detail)


def check_certificate(config: GatewayConfig, now: dt.datetime | None = None) -> Check:
    from cryptography import x509

    now = now or dt.datetime.now(dt.UTC)
    if not config.tls.cert:
        return Check(
            "certificate",
            WARN,
            "no [tls] cert: a self-made dev certificate only devices given its CA accept",
            "set tls.cert and tls.key to a certificate from a CA your devices trust",
        )
    path = Path(config.tls.cert)
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return Check("certificate", FAIL, f"cannot read {path}: {exc}", "check tls.cert")
    left = cert.not_valid_after_utc - now
    detail = f"{path} expires {cert.not_valid_after_utc:%Y-%m-%d} ({left.days} days)"
    if left.total_seconds() <= 0:
        return Check("certificate", FAIL, detail + ": expired", "renew it, then restart")
    if left.days < CERT_WARN_DAYS:
        return Check("certificate", WARN, detail, "renew it within the next days")
    return Check("certificate", OK, detail)


def check_ticket_secret(config: GatewayConfig) -> Check:
    if config.auth.ticket_secret:
        return Check("resume tickets", OK, "auth.ticket_secret set (shared by the fleet)")
    if config.push.backend == "redis":
        return Check(
            "resume tickets",
            WARN,
            "no auth.ticket_secret: each node makes its own, so a device moved to another "
            "node (a drain, a failure) cannot resume and presents its token again",
            "set auth.ticket_secret (>= 32 bytes) to the same value on every node",
        )
    return Check("resume tickets", OK, "one node: a secret kept in the state directory")


# ------------------------------------------------------------- reachability


async def check_redis(config: GatewayConfig) -> Check:
    push = config.push
    if push.backend != "redis":
        return Check("redis", OK, "push.backend = memory (one node, no Redis)")
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    url = push.redis_url
    options = {"socket_timeout": REACH_TIMEOUT_S, "socket_connect_timeout": REACH_TIMEOUT_S}
    try:
        if push.redis_cluster:
            cluster = RedisCluster.from_url(url, **options)
            try:
                await asyncio.wait_for(cluster.initialize(), REACH_TIMEOUT_S * 2)
                info = await cluster.cluster_info()
            finally:
                await cluster.aclose()
            state = info.get("cluster_state") if isinstance(info, dict) else None
            if state != "ok":
                return Check("redis", FAIL, f"{url}: cluster_state {state}", "check the cluster")
            return Check("redis", OK, f"{url}: cluster_state ok")
        client = aioredis.Redis.from_url(url, **options)  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(client.ping(), REACH_TIMEOUT_S * 2)
        finally:
            await client.aclose()
        return Check("redis", OK, f"{url}: PING answered")
    except Exception as exc:
        return Check(
            "redis", FAIL, f"{url}: {type(exc).__name__}: {exc}", "check push.redis_url, firewall"
        )


async def check_upstreams(config: GatewayConfig) -> list[Check]:
    clusters = config.rpc.get("clusters", {}) if isinstance(config.rpc, dict) else {}
    checks = []
    for name, cluster in sorted(clusters.items()):
        for endpoint in cluster.get("endpoints", []):
            checks.append(await _reach(f"upstream {name}", str(endpoint)))
    if not checks:
        checks.append(Check("upstreams", OK, "no [rpc] clusters (calls answer NOT_FOUND)"))
    return checks


async def _reach(name: str, endpoint: str) -> Check:
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname, port), REACH_TIMEOUT_S
        )
        writer.close()
        return Check(name, OK, f"{endpoint}: TCP connect ok")
    except (OSError, TimeoutError, socket.gaierror) as exc:
        return Check(name, FAIL, f"{endpoint}: {exc or type(exc).__name__}", "check [rpc] clusters")


# ------------------------------------------------------------------- running


async def run_checks(config: GatewayConfig, host: Host | None = None) -> list[Check]:
    host = host or Host()
    checks = [
        check_fd_limit(config, host),
        check_somaxconn(host),
        check_fast_open(config, host),
        check_port_range(config, host),
        check_memory(config, host),
        check_certificate(config),
        check_ticket_secret(config),
    ]
    checks.append(await check_redis(config))
    checks.extend(await check_upstreams(config))
    return checks


def render(checks: list[Check], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(c) for c in checks], indent=2)
    lines = []
    for check in checks:
        lines.append(f"{check.status:<4}  {check.name}: {check.detail}")
        if check.fix and check.status != OK:
            lines.append(f"      fix: {check.fix}")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    return "\n".join(lines)
