"""The servers compared: Mosquitto 2.x and ``channel serve`` (an engine, MMTP or MQTT).

Both listen on loopback, TLS 1.3 only, with a dev certificate of the same kind
(ECDSA P-256 leaf from ``channel.security.devcert``). A ``Server`` says where devices
connect (``port``), which pid to measure, and how its devices are named and logged in.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from stress.compare.procs import ProcError, Reaper, raise_nofile
from stress.gateway_proc import GatewayProcess

MOSQUITTO = "mosquitto"


def mosquitto_binary() -> str | None:
    return shutil.which(MOSQUITTO) or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )


def mosquitto_version() -> str:
    binary = mosquitto_binary()
    if binary is None:
        return "missing"
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def native_engine_selectable() -> bool:
    """``[server] engine`` exists (the native engine is wired into ``channel serve``)."""
    from channel.config import ServerConfig

    return "engine" in {f.name for f in dataclasses.fields(ServerConfig)}


def mqtt_front_available() -> bool:
    """``channel serve`` has an ``[mqtt]`` section (the MQTT front has landed)."""
    from channel.config import GatewayConfig

    return "mqtt" in {f.name for f in dataclasses.fields(GatewayConfig)}


def _free_port() -> int:
    """A port below the ephemeral range that nothing holds right now (Mosquitto cannot
    listen on port 0 and tell us the port; a clash is retried by ``Mosquitto``)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(10_000, 32_768)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ProcError("no free port below 32768")


class Mosquitto:
    """``mosquitto -c`` with one TLS 1.3 listener, persistence off, QoS 1 defaults."""

    name = "mosquitto"
    protocol = "mqtt"

    def __init__(self, reaper: Reaper, workdir: Path, cert: Path, key: Path) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise ProcError("mosquitto is not installed (scripts/test.sh installs it)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "mosquitto.log"
        for _ in range(5):
            self.port = _free_port()
            conf = workdir / "mosquitto.conf"
            conf.write_text(
                # Run as whoever we are: started as root, Mosquitto would switch to the
                # user "mosquitto", which cannot read our certificate's directory.
                f"""user {pwd.getpwuid(os.getuid()).pw_name}
per_listener_settings false
allow_anonymous true
persistence false
max_connections -1
# No QoS 1 message is dropped for a full queue (the default drops past 1,000 per
# client), as Channel drops none: the publisher's PUBACK does not wait for delivery.
max_queued_messages 0
# Nagle off, as Channel's sockets (uvloop, the native engine) have it: with it on, a
# lone PUBACK or PUBLISH waited ~40 ms for the peer's delayed ACK (p50 100 ms at half load).
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
listener {self.port} 127.0.0.1
protocol mqtt
certfile {cert}
keyfile {key}
tls_version tlsv1.3
""",
                encoding="utf-8",
            )
            with self.log.open("wb") as err:
                self.proc = reaper.add(
                    subprocess.Popen(
                        [binary, "-c", str(conf)],
                        stdin=subprocess.DEVNULL,
                        stdout=err,
                        stderr=err,
                        preexec_fn=raise_nofile,
                    )
                )
            if self._wait_listening():
                return
        raise ProcError(f"mosquitto did not start:\n{self.log.read_text(errors='replace')[-2000:]}")

    def _wait_listening(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return True
            time.sleep(0.05)
        self.proc.kill()
        return False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gateway_settings(
    devices: int, engine: str, *, backend: str = "memory", redis_url: str = "", mqtt: bool = False
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "server": {
            "max_connections": devices + 1000,
            "max_connections_per_ip": devices + 1000,
            "handshake_timeout_s": 120.0,
        },
        "heartbeat": {"interval_s": 600, "max_s": 600},
        "push": {"backend": backend},
        "api": {"port": 0},
    }
    if native_engine_selectable():
        settings["server"]["engine"] = engine
    if backend == "redis":
        settings["push"]["redis_url"] = redis_url
        settings["push"]["presence_buckets"] = max(16, devices // 64)
    if mqtt:
        settings["mqtt"] = {"port": 0}
    return settings


class Channel:
    """``channel serve`` on free ports (``stress.gateway_proc.GatewayProcess``)."""

    def __init__(
        self,
        reaper: Reaper,
        workdir: Path,
        *,
        engine: str,
        protocol: str,
        devices: int,
        backend: str = "memory",
        redis_url: str = "",
        config_toml: str | None = None,
        extra_settings: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.engine = engine
        self.protocol = protocol
        self.name = f"channel-{engine}" + ("-mqtt" if protocol == "mqtt" else "")
        settings = gateway_settings(
            devices, engine, backend=backend, redis_url=redis_url, mqtt=protocol == "mqtt"
        )
        for section, values in (extra_settings or {}).items():
            settings.setdefault(section, {}).update(values)
        self.gateway = GatewayProcess(
            state_dir=workdir, settings=settings, config_toml=config_toml, name=self.name
        )
        reaper.cleanups.append(self.gateway.stop)
        self.gateway.start()
        if protocol == "mqtt" and not self.gateway.info.get("mqtt_port"):
            raise ProcError(f"{self.name}: no mqtt_port in its listening line: {self.gateway.info}")

    @property
    def pid(self) -> int:
        return self.gateway.pid

    @property
    def port(self) -> int:
        if self.protocol == "mqtt":
            return int(self.gateway.info["mqtt_port"])
        return self.gateway.port

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.info['api_port']}"

    @property
    def api_key(self) -> str:
        return (self.gateway.state_dir / "api" / "dev.key").read_text(encoding="ascii").strip()

    def token(self, device_id: str) -> bytes:
        return self.gateway.token(device_id, app_id="bench", ttl_s=86_400)

    def connections(self) -> int:
        return int(self.gateway.readyz().get("connections", 0))

    def stop(self) -> None:
        self.gateway.stop()
