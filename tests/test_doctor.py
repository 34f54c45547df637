"""``channel doctor``: each check on a real host, real Redis, real sockets and real
certificates; sysctls from a directory standing for /proc/sys where a value this
machine has cannot be changed by a test."""

from __future__ import annotations

import datetime as dt
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gateway_harness import http_upstream
from redis_servers import free_port

from channel import doctor
from channel.config import load_config


def config(**sections: Any) -> Any:
    rpc = sections.pop("rpc", {})
    loaded = load_config(None, environ={}, overrides=sections)
    loaded.rpc = rpc
    return loaded


def fake_proc(tmp_path: Path, **values: str) -> doctor.Host:
    for name, value in values.items():
        path = tmp_path / "sys" / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return doctor.Host(tmp_path / "sys")


def run_doctor(*args: str, nofile: int | None = None) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run(
        [sys.executable, "-m", "channel", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_too_few_file_descriptors_fail_with_the_fix(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[server]\nmax_connections = 100000\n")
    result = run_doctor("--config", str(toml), nofile=4096)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  file descriptors: open files: soft 4096" in result.stdout
    assert "LimitNOFILE=101024" in result.stdout
    toml.write_text("[server]\nmax_connections = 2000\n")
    result = run_doctor("--config", str(toml), "--json", nofile=4096)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["file descriptors"]["status"] == "ok"


def test_kernel_settings_each_say_what_to_set(tmp_path: Path) -> None:
    host = fake_proc(
        tmp_path,
        net__core__somaxconn="128",
        net__ipv4__tcp_fastopen="1",
        net__ipv4__ip_local_port_range="32768\t60999",
    )
    backlog = doctor.check_somaxconn(host)
    assert backlog.status == "warn" and "net.core.somaxconn=4096" in backlog.fix
    tfo = doctor.check_fast_open(config(), host)
    assert tfo.status == "warn" and "tcp_fastopen=3" in tfo.fix
    behind_lb = config(
        server={
            "engine": "python",
            "proxy_protocol": True,
            "proxy_trusted": ["10.0.0.2"],
            "max_connections": 100_000,
        }
    )
    ports = doctor.check_port_range(behind_lb, host)
    assert ports.status == "warn" and ">= 2 source addresses" in ports.fix, ports
    assert doctor.check_port_range(config(), host).status == "ok"
    good = fake_proc(
        tmp_path / "good",
        net__core__somaxconn="65535",
        net__ipv4__tcp_fastopen="3",
        net__ipv4__ip_local_port_range="1024 65535",
    )
    assert doctor.check_somaxconn(good).status == "ok"
    assert doctor.check_fast_open(config(), good).status == "ok"
    # 64,511 ports still hold fewer than 100,000 connections from one balancer address.
    assert doctor.check_port_range(behind_lb, good).status == "warn"
    behind_lb.server.max_connections = 50_000
    assert doctor.check_port_range(behind_lb, good).status == "ok"


def test_memory_for_the_configured_devices(tmp_path: Path) -> None:
    host = doctor.Host()
    fits = doctor.check_memory(config(server={"max_connections": 1000}), host)
    assert fits.status == "ok" and "4.4 KiB each" in fits.detail
    huge = doctor.check_memory(
        config(server={"max_connections": 2_000_000_000, "engine": "python"}), host
    )
    assert huge.status == "FAIL" and "native engine" in huge.fix


def certificate(tmp_path: Path, days: float) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / f"cert-{days}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(b"")
    return path


def test_certificate_expiry(tmp_path: Path) -> None:
    def check(days: float) -> doctor.Check:
        path = certificate(tmp_path, days)
        return doctor.check_certificate(
            config(tls={"cert": str(path), "key": str(tmp_path / "key.pem")})
        )

    assert check(-1).status == "FAIL" and "expired" in check(-1).detail
    assert check(3).status == "warn"
    assert check(90).status == "ok"
    assert doctor.check_certificate(config()).status == "warn"  # the dev certificate


async def test_redis_and_upstreams_are_reached(
    tmp_path: Path, redis_server: Any, redis_cluster: Any
) -> None:
    single = config(push={"backend": "redis", "redis_url": redis_server.url})
    assert (await doctor.check_redis(single)).status == "ok"
    cluster = config(
        push={"backend": "redis", "redis_url": redis_cluster.url, "redis_cluster": True}
    )
    found = await doctor.check_redis(cluster)
    assert found.status == "ok" and "cluster_state ok" in found.detail
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    down = await doctor.check_redis(config(push={"backend": "redis", "redis_url": nobody}))
    assert down.status == "FAIL" and "push.redis_url" in down.fix

    async def answer(request: Any) -> Any:
        from aiohttp import web

        return web.Response(text="ok")

    async with http_upstream({"/rpc/{op}": answer}) as url:
        closed = f"http://127.0.0.1:{free_port()}"
        rpc = {"clusters": {"up": {"endpoints": [url]}, "down": {"endpoints": [closed]}}}
        checks = {c.name: c for c in await doctor.check_upstreams(config(rpc=rpc))}
    assert checks["upstream up"].status == "ok"
    assert checks["upstream down"].status == "FAIL"
