"""Hosts of a local fleet: network namespaces on one bridge, each with its own address.

One ``Network`` per fleet run. It picks a /24 that no interface or route of this
machine uses (under a lock, so runs started together get different ones), makes
a bridge holding the subnet's first address in the root namespace (the machine
itself: devices, tests and tools reach every host through it) and, per host, a
namespace joined to the bridge by a veth pair, with the next address. Every name
carries the run's id (``chf<id>``), so parallel runs never collide, and a record
in ``/run/channel-fleet/<id>.json`` names the owner process and what it made:
``reap_stale()`` removes what a run killed with SIGKILL left behind.

Hosts have no default route: nothing in them reaches beyond the bridge.
``partition()`` blackholes a host's routes to other addresses (a network
partition: packets vanish, connections hang until their timeouts) and ``heal()``
removes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import random
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("channel.fleet")

RECORDS_DIR = Path("/run/channel-fleet")
#: Where subnets are picked from: 10.200.0.0/24 .. 10.254.255.0/24.
_SECOND_OCTETS = range(200, 255)


class FleetError(RuntimeError):
    """The fleet could not be made or run; the message says what and why."""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (``ip ...``); a failure raises ``FleetError`` with its stderr."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise FleetError(f"{' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


@dataclass
class Host:
    """One namespace: ``name`` in the fleet ("n0", "lb"), its netns and address."""

    name: str
    netns: str
    address: str
    veth: str

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


@dataclass
class Network:
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)
    subnet: ipaddress.IPv4Network | None = None
    _partitions: dict[str, list[str]] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"chf{self.run_id}"

    @property
    def gateway_address(self) -> str:
        """The root namespace's address on the bridge (this machine, as hosts see it)."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    @property
    def record_path(self) -> Path:
        return RECORDS_DIR / f"{self.run_id}.json"

    # ---------------------------------------------------------------- making

    def create(self) -> None:
        check_root()
        RECORDS_DIR.mkdir(parents=True, exist_ok=True)
        with _lock():
            self.subnet = _free_subnet()
            self._write_record()
            run("ip", "link", "add", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        assert self.subnet is not None, "create() first"
        index = len(self.hosts) + 2
        host = Host(
            name,
            f"chf-{self.run_id}-{name}",
            str(self.subnet.network_address + index),
            f"chf{self.run_id}v{index}",
        )
        self.hosts[name] = host
        self._write_record()
        inner = f"chf{self.run_id}i{index}"
        run("ip", "netns", "add", host.netns)
        run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", inner)
        run("ip", "link", "set", host.veth, "master", self.bridge, "up")
        run("ip", "link", "set", inner, "netns", host.netns)
        in_ns = host.exec_prefix()
        run(*in_ns, "ip", "link", "set", inner, "name", "eth0")
        run(*in_ns, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
        run(*in_ns, "ip", "link", "set", "eth0", "up")
        run(*in_ns, "ip", "link", "set", "lo", "up")
        return host

    # ------------------------------------------------------------- partitions

    def partition(self, name: str, addresses: list[str]) -> None:
        """Cut host ``name`` off from ``addresses``: its packets to them are dropped."""
        host = self.hosts[name]
        for address in addresses:
            run(*host.exec_prefix(), "ip", "route", "add", "blackhole", f"{address}/32")
        self._partitions.setdefault(name, []).extend(addresses)

    def heal(self, name: str) -> None:
        host = self.hosts[name]
        for address in self._partitions.pop(name, []):
            run(*host.exec_prefix(), "ip", "route", "del", "blackhole", f"{address}/32")

    # -------------------------------------------------------------- tearing down

    def destroy(self) -> None:
        """Kill whatever still runs in the hosts, delete them and the bridge."""
        hosts = self.hosts.values()
        _destroy(self.bridge, [h.netns for h in hosts], [h.veth for h in hosts])
        with contextlib.suppress(FileNotFoundError):
            self.record_path.unlink()

    def _write_record(self) -> None:
        record = {
            "pid": os.getpid(),
            "bridge": self.bridge,
            "subnet": str(self.subnet),
            "netns": [h.netns for h in self.hosts.values()],
            "veths": [h.veth for h in self.hosts.values()],
        }
        self.record_path.write_text(json.dumps(record), encoding="utf-8")


def _destroy(bridge: str, namespaces: list[str], veths: list[str]) -> None:
    # The kernel frees a deleted namespace (and its end of a veth pair) asynchronously:
    # the pairs are deleted from this end first, so nothing of the run outlives this call.
    for veth in veths:
        run("ip", "link", "del", veth, check=False)
    for netns in namespaces:
        pids = run("ip", "netns", "pids", netns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        # Deleting the namespace deletes its end of the veth pair, and so the pair.
        run("ip", "netns", "del", netns, check=False)
    run("ip", "link", "del", bridge, check=False)


def reap_stale() -> list[str]:
    """Remove what fleets whose owner process is gone left behind; their run ids."""
    if not RECORDS_DIR.is_dir():
        return []
    reaped = []
    for path in RECORDS_DIR.glob("*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if _alive(int(record.get("pid", 0))):
            continue
        _destroy(
            str(record["bridge"]),
            [str(n) for n in record.get("netns", [])],
            [str(v) for v in record.get("veths", [])],
        )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        reaped.append(path.stem)
    return reaped


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_root() -> None:
    if os.geteuid() != 0:
        raise FleetError("the fleet makes network namespaces and a bridge: run it as root")
    if run("ip", "-V", check=False).returncode != 0:
        raise FleetError("no `ip` command: apt-get install iproute2")


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    fd = os.open(RECORDS_DIR / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200-254.x.0 that overlaps no address or route on this machine."""
    used = _used_networks()
    rng = random.Random()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(
            f"10.{rng.choice(_SECOND_OCTETS)}.{rng.randrange(256)}.0/24"
        )
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise FleetError("no free /24 in 10.200.0.0-10.254.255.0 for the fleet's bridge")


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for line in run("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        words = line.split()
        if "inet" in words:
            used.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    for line in run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable", "blackhole"):
            continue
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(first, strict=False))
    return used
