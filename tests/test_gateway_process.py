"""``channel serve`` as a real process: signals, drain, reload, several workers."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from raw_device import RawDevice

from channel.security.tokens import DeviceClaims, TokenSigner, load_private_key
from channel.wire import ErrorCode, GoAwayReceived, Hello, HelloAccepted, ResponseReceived

pytestmark = pytest.mark.both_engines


def free_port_below_32768() -> int:
    """A port for listeners that must be fixed (workers share it): checked, not assumed."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


class ServeProcess:
    def __init__(self, state_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        # Its raw devices hold no dictionary and count the frames behind HELLO_ACK: no
        # DICT deliveries (tests/gateway_harness.py does the same).
        quiet = {"CHANNEL_COMPRESSION__DICT_BUDGET_BYTES": "0"}
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **quiet, **(env or {})}
        if "--mqtt-port" not in args and "CHANNEL_MQTT__PORT" not in env:
            args = (*args, "--mqtt-port", "0")  # never the fixed default port 8883 in tests
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "channel",
                "serve",
                "--state-dir",
                str(state_dir),
                "--log-text",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.listening: list[dict[str, object]] = []
        self._log = b""

    def wait_listening(self, count: int = 1, timeout_s: float = 30) -> list[dict[str, object]]:
        """Read the nodes' JSON lines until ``count`` say they listen (bounded wait)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while len(self.listening) < count:
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                self.proc.kill()
                raise AssertionError(f"no listening line within {timeout_s} s: {self.stderr()}")
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"serve exited: {self.stderr()}")
            info = json.loads(line)
            if info.get("event") == "listening":
                self.listening.append(info)
        return self.listening

    def wait_log(self, text: str, timeout_s: float = 30) -> str:
        """Read log lines (stderr) until one contains ``text`` (bounded wait)."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()  # read unbuffered: select sees what is left
        deadline = time.monotonic() + timeout_s
        while True:
            lines = self._log.split(b"\n")
            self._log = lines.pop()
            for at, line in enumerate(lines):
                if text.encode() in line:
                    self._log = b"\n".join([*lines[at + 1 :], self._log])
                    return line.decode(errors="replace")
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no log line with {text!r} within {timeout_s} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"serve exited before logging {text!r}")
            self._log += chunk

    def stderr(self, timeout_s: float = 2.0) -> str:
        """What the node logged so far, read for at most ``timeout_s``: worker processes
        may outlive the parent and keep the pipe open, so reading to EOF could hang."""
        assert self.proc.stderr is not None
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stderr.fileno()
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def token_for(info: dict[str, object], device_id: str) -> bytes:
    signer = TokenSigner(load_private_key(Path(str(info["dev_token_key"]))), 1)
    now = int(time.time())
    return signer.issue(DeviceClaims(device_id, "u1", "demo", now + 600, now))


async def connect(info: dict[str, object], device_id: str) -> RawDevice:
    device = await RawDevice.connect(int(str(info["port"])), Path(str(info["ca_cert"])))
    await device.send_hello(
        Hello(device_id=device_id, app_id="demo", token=token_for(info, device_id))
    )
    (accepted,) = await device.events()
    assert isinstance(accepted, HelloAccepted)
    return device


async def test_sigterm_drains_with_goaway_and_exits_zero(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path, "--port", "0", "--admin-port", "0", "--api-port", "0")
    try:
        (info,) = await asyncio.to_thread(serve.wait_listening)
        device = await connect(info, "d1")
        echo = device.conn.send_request("channel.echo", b"before")
        await device.flush()
        (answer,) = await device.events()
        assert isinstance(answer, ResponseReceived) and answer.stream_id == echo
        serve.proc.send_signal(signal.SIGTERM)
        (goaway,) = await device.events(10)
        assert isinstance(goaway, GoAwayReceived) and goaway.code == ErrorCode.SHUTTING_DOWN
        assert goaway.reconnect_after_ms >= 2000
        assert await device.closed_by_peer(10)
        assert await asyncio.to_thread(serve.proc.wait, 30) == 0
        assert "drained" in serve.stderr()
    finally:
        serve.stop()


async def test_workers_share_one_port_and_each_drains(tmp_path: Path) -> None:
    port = free_port_below_32768()
    serve = ServeProcess(
        tmp_path, "--port", str(port), "--admin-port", "0", "--api-port", "0", "--workers", "2"
    )
    try:
        # Each worker process prints its own line once it listens.
        listening = await asyncio.to_thread(serve.wait_listening, 2)
        assert {int(str(i["port"])) for i in listening} == {port}
        assert len({i["pid"] for i in listening}) == 2
        devices = [await connect(listening[0], f"w{i}") for i in range(12)]
        for device in devices:
            device.conn.send_request("channel.echo", b"x")
            await device.flush()
            (answer,) = await device.events()
            assert isinstance(answer, ResponseReceived) and answer.status == 0
        # The kernel spread the devices over both workers (all 12 on one: p = 1/2048).
        counts = []
        for info in listening:
            url = f"http://127.0.0.1:{info['admin_port']}/readyz"
            async with aiohttp.ClientSession() as http, http.get(url) as reply:
                counts.append((await reply.json())["sessions"])
        assert sum(counts) == 12 and min(counts) > 0, counts
        serve.proc.send_signal(signal.SIGTERM)
        for device in devices:
            (goaway,) = await device.events(10)
            assert isinstance(goaway, GoAwayReceived)
        assert await asyncio.to_thread(serve.proc.wait, 30) == 0
    finally:
        serve.stop()


async def test_rolling_restart_loses_no_call_and_resumes_the_session(tmp_path: Path) -> None:
    """docs/operations.md's procedure: start the new process on the same port, SIGTERM
    the old one; a device calling all along sees every call answered and resumes."""
    from sdk_client import Backoff, Client

    port = free_port_below_32768()
    args = ("--port", str(port), "--admin-port", "0", "--api-port", "0")
    # Eight callers in a tight loop would (rightly) hit the per-device rate limit.
    env = {"CHANNEL_LIMITS__REQUESTS_PER_SECOND": "100000", "CHANNEL_LIMITS__REQUEST_BURST": "1000"}
    old = ServeProcess(tmp_path, *args, env=env)
    new: ServeProcess | None = None
    try:
        (info,) = await asyncio.to_thread(old.wait_listening)
        client = Client(
            "127.0.0.1",
            port,
            device_id="roller",
            token=token_for(info, "roller"),
            ca_file=Path(str(info["ca_cert"])),
            app_id="demo",
            backoff=Backoff(initial_s=0.05, max_s=0.5),
        )
        await client.connect()
        first_session = client.session_id
        answered = 0
        progress = asyncio.Condition()
        stop = asyncio.Event()

        async def keep_calling(worker: int) -> None:
            nonlocal answered
            n = 0
            while not stop.is_set():
                body = f"{worker}-{n}".encode()
                response = await client.call("channel.echo", body, timeout=10)
                assert response.body == body
                async with progress:
                    answered += 1
                    progress.notify_all()
                n += 1

        async def until_answered(count: int) -> None:
            async with progress:
                await asyncio.wait_for(progress.wait_for(lambda: answered >= count), 30)

        callers = [asyncio.create_task(keep_calling(w)) for w in range(8)]
        await until_answered(200)
        new = ServeProcess(tmp_path, *args, env=env)
        await asyncio.to_thread(new.wait_listening)
        old.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(old.proc.wait, 30) == 0
        await until_answered(answered + 200)  # calls keep flowing through the new node
        stop.set()
        await asyncio.gather(*callers)  # any failed call would raise here
        assert client.resumed and client.session_id == first_session
        assert client.stats.connects == 2 and client.stats.call_errors == 0
        await client.close()
    finally:
        old.stop()
        if new is not None:
            new.stop()


CERTS = Path(__file__).resolve().parent.parent / "native" / "engine" / "tests" / "certs"


async def test_sighup_reloads_the_certificate_without_dropping_devices(tmp_path: Path) -> None:
    config_file = tmp_path / "channel.toml"

    def use(name: str) -> None:
        config_file.write_text(f'[tls]\ncert = "{CERTS / name}.pem"\nkey = "{CERTS / name}.key"\n')

    def peer(device: RawDevice) -> bytes:
        der = device.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert isinstance(der, bytes)
        return der

    async def hello_device(info: dict[str, object], device_id: str) -> RawDevice:
        device = await RawDevice.connect(int(str(info["port"])), CERTS / "ca.pem")
        await device.send_hello(
            Hello(device_id=device_id, app_id="demo", token=token_for(info, device_id))
        )
        (accepted,) = await device.events()
        assert isinstance(accepted, HelloAccepted)
        return device

    def der(name: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert((CERTS / f"{name}.pem").read_text())

    use("server")
    serve = ServeProcess(
        tmp_path,
        "--config",
        str(config_file),
        "--port",
        "0",
        "--admin-port",
        "0",
        "--api-port",
        "0",
    )
    try:
        (info,) = await asyncio.to_thread(serve.wait_listening)
        first = await hello_device(info, "first")
        assert peer(first) == der("server")
        use("server2")
        serve.proc.send_signal(signal.SIGHUP)
        line = await asyncio.to_thread(serve.wait_log, "channel.node: reloaded")
        assert "server2.pem" in line
        second = await hello_device(info, "second")
        assert peer(second) == der("server2")
        # A key that does not match is refused in the log; the node keeps server2.
        config_file.write_text(
            f'[tls]\ncert = "{CERTS / "server.pem"}"\nkey = "{CERTS / "server2.key"}"\n'
        )
        serve.proc.send_signal(signal.SIGHUP)
        await asyncio.to_thread(serve.wait_log, "reload refused")
        third = await hello_device(info, "third")
        assert peer(third) == der("server2")
        for device in (first, second, third):
            echo = device.conn.send_request("channel.echo", b"alive")
            await device.flush()
            (answer,) = await device.events()
            assert isinstance(answer, ResponseReceived) and answer.stream_id == echo
            await device.close()
    finally:
        serve.stop()


async def test_gc_gen0_threshold_applies_to_the_serving_process(tmp_path: Path) -> None:
    serve = ServeProcess(
        tmp_path,
        "--port",
        "0",
        "--admin-port",
        "0",
        env={"CHANNEL_SERVER__GC_GEN0_THRESHOLD": "123457"},
    )
    try:
        await asyncio.to_thread(serve.wait_listening)
        line = await asyncio.to_thread(serve.wait_log, "collector tuned")
        # The second generation every 10 first-generation collections, not 50: 50 let
        # millions of young objects pile up and stalled the loop for 100-400 ms.
        assert re.search(r"123457,\s*10,\s*1000", line), line
    finally:
        serve.stop()


def test_gc_gen0_threshold_out_of_range_is_refused(tmp_path: Path) -> None:
    from channel.config import ConfigError, load_config

    config_file = tmp_path / "channel.toml"
    config_file.write_text("[server]\ngc_gen0_threshold = 10\n")
    with pytest.raises(ConfigError, match=r"server\.gc_gen0_threshold"):
        load_config(config_file, environ={})
    assert load_config(None, environ={}).server.gc_gen0_threshold == 50_000
