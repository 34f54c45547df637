"""The admin port: ``/admin/*`` needs an API key with the ``admin`` scope.

Real gateway nodes (port 0), a real HTTP client, the real ``channel admin`` CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from channel.admincli import KEY_ENV
from channel.api.keys import new_api_key
from channel.cli import main
from channel.wire import Hello, HelloAccepted, ResponseReceived
from tests.gateway_harness import RunningGateway, gateway
from tests.raw_device import RawDevice
from tests.test_push_e2e import online

pytestmark = pytest.mark.both_engines

ADMIN_ACTIONS = [
    ("POST", "/admin/reload"),
    ("GET", "/admin/routes"),
    ("GET", "/admin/devices/d1"),
    ("GET", "/admin/nothing-here"),
    ("GET", "/not-a-route"),
]


async def admin(
    gw: RunningGateway, method: str, path: str, key: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"http://127.0.0.1:{gw.admin_port}{path}"
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers) as reply,
    ):
        body = await reply.json(content_type=None) if path != "/metrics" else await reply.text()
        return reply.status, body


async def test_admin_actions_need_a_key_with_the_admin_scope(tmp_path: Path) -> None:
    admin_key, admin_record = new_api_key("ops-admin", ["admin"])
    all_key, all_record = new_api_key("backend", ["*"])
    keys = {"keys": [admin_record, all_record], "port": 0}
    async with gateway(tmp_path, api=keys) as gw, online(gw, "d1"):
        for method, path in ADMIN_ACTIONS:
            status, body = await admin(gw, method, path)
            assert (status, body["error"]["code"]) == (401, "AUTH_REQUIRED"), path
            status, body = await admin(gw, method, path, "ck_ops-admin_" + "A" * 43)
            assert (status, body["error"]["code"]) == (401, "AUTH_INVALID"), path
            # A key for everything on the push API is not an admin key.
            status, body = await admin(gw, method, path, all_key)
            assert (status, body["error"]["code"]) == (403, "FORBIDDEN"), path
            assert "'admin'" in body["error"]["message"]
        status, routes = await admin(gw, "GET", "/admin/routes", admin_key)
        assert status == 200 and "routes" in routes
        status, device = await admin(gw, "GET", "/admin/devices/d1", admin_key)
        assert status == 200 and device["online"] is True and device["user_id"] == "u1"
        status, body = await admin(gw, "POST", "/admin/reload", admin_key)
        assert (status, body["error"]["code"]) == (409, "CONFLICT")  # no config file
        status, body = await admin(gw, "GET", "/not-a-route", admin_key)
        assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
        # Metrics and health stay open (the defaults).
        assert (await admin(gw, "GET", "/metrics"))[0] == 200
        assert (await admin(gw, "GET", "/healthz"))[0] == 200
        assert (await admin(gw, "GET", "/readyz"))[0] == 200


async def test_metrics_and_health_can_be_closed_too(tmp_path: Path) -> None:
    closed = {"open_metrics": False, "open_health": False}
    async with gateway(tmp_path, admin=closed) as gw:
        for path in ("/metrics", "/healthz", "/readyz"):
            assert (await admin(gw, "GET", path))[0] == 401, path
            assert (await admin(gw, "GET", path, gw.api_key))[0] == 200, path


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_cli_admin_uses_the_dev_key_or_the_one_it_is_given(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    async with gateway(tmp_path) as gw, online(gw, "d7"):
        url = f"http://127.0.0.1:{gw.admin_port}"
        state = str(gw.node.config.state_dir)
        code, out, _ = await asyncio.to_thread(
            run_cli, "admin", "--url", url, "--state-dir", state, "device", "d7"
        )
        assert code == 0 and '"online": true' in out
        code, out, _ = await asyncio.to_thread(
            run_cli, "admin", "--url", url, "--state-dir", state, "routes"
        )
        assert code == 0 and '"routes"' in out
        # No key at all: the node's refusal, on stderr, exit 1.
        code, _, err = await asyncio.to_thread(
            run_cli, "admin", "--url", url, "--state-dir", str(tmp_path / "none"), "reload"
        )
        assert code == 1 and "AUTH_REQUIRED" in err
        key_file = tmp_path / "wrong.key"
        key_file.write_text(new_api_key("other", ["admin"])[0])
        code, _, err = await asyncio.to_thread(
            run_cli, "admin", "--url", url, "--key-file", str(key_file), "routes"
        )
        assert code == 1 and "AUTH_INVALID" in err
        monkeypatch.setenv(KEY_ENV, gw.api_key)
        code, out, _ = await asyncio.to_thread(
            run_cli, "admin", "--url", url, "--state-dir", str(tmp_path / "none"), "routes"
        )
        assert code == 0 and '"clusters"' in out


CERTS = Path(__file__).resolve().parent.parent / "native" / "engine" / "tests" / "certs"


def peer_certificate(device: RawDevice) -> bytes:
    der = device.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert isinstance(der, bytes)
    return der


def leaf_der(name: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert((CERTS / f"{name}.pem").read_text())


async def echo(device: RawDevice, body: bytes) -> bytes:
    stream_id = device.conn.send_request("channel.echo", body)
    await device.flush()
    (answer,) = await device.events()
    assert isinstance(answer, ResponseReceived) and answer.stream_id == stream_id
    return answer.body


async def hello_device(gw: RunningGateway, device_id: str, ca: Path) -> RawDevice:
    device = await RawDevice.connect(gw.port, ca)
    await device.send_hello(Hello(device_id=device_id, app_id="demo", token=gw.token(device_id)))
    (accepted,) = await device.events()
    assert isinstance(accepted, HelloAccepted)
    return device


def tls_section(cert: Path, key: Path) -> str:
    return f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'


async def test_reload_swaps_the_certificate_for_new_devices_and_keeps_open_ones(
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "channel.toml"
    async with gateway(tmp_path) as gw:
        gw.node.config.source = str(config_file)
        before = await hello_device(gw, "before", gw.ca_cert)  # the dev certificate
        config_file.write_text(tls_section(CERTS / "server2.pem", CERTS / "server2.key"))
        status, body = await admin(gw, "POST", "/admin/reload", gw.api_key)
        assert status == 200, body
        fingerprint = hashlib.sha256(leaf_der("server2")).hexdigest()
        assert body["tls"]["cert"] == str(CERTS / "server2.pem")
        assert body["tls"]["sha256"].replace(":", "").lower() == fingerprint
        assert body["tls"]["subject"] == "CN=localhost"
        after = await hello_device(gw, "after", CERTS / "ca.pem")
        assert peer_certificate(after) == leaf_der("server2")
        # The device from before keeps its connection (and its certificate).
        assert peer_certificate(before) != leaf_der("server2")
        assert await echo(before, b"still here") == b"still here"
        # A bad file is refused with the reason, and nothing changes.
        garbage = tmp_path / "garbage.pem"
        garbage.write_text(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
        )
        cases = [
            (tls_section(garbage, CERTS / "server2.key"), str(garbage)),
            (tls_section(CERTS / "server.pem", CERTS / "server2.key"), "server2.key"),
            (tls_section(tmp_path / "missing.pem", CERTS / "server.key"), "missing.pem"),
            # A good certificate with a bad route: the certificate is not taken either.
            (
                tls_section(CERTS / "server.pem", CERTS / "server.key")
                + '[[rpc.routes]]\nmatch = "x."\n',
                "rpc",
            ),
        ]
        for text, named in cases:
            config_file.write_text(text)
            status, body = await admin(gw, "POST", "/admin/reload", gw.api_key)
            assert (status, body["error"]["code"]) == (400, "BAD_REQUEST"), body
            assert named in body["error"]["message"], body
            newer = await hello_device(gw, "newer", CERTS / "ca.pem")
            assert peer_certificate(newer) == leaf_der("server2")
            await newer.close()
        assert await echo(before, b"and here") == b"and here"
        assert await echo(after, b"both") == b"both"
        assert gw.node.connection_count == 2
        for device in (before, after):
            await device.close()
