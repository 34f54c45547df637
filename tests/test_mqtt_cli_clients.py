"""Boxes that are not Python: mosquitto_sub / mosquitto_pub / mosquitto_rr and mqtt.js, over
TLS with a device token, at MQTT 3.1.1 and 5.0.

The mosquitto clients come from Debian's ``mosquitto-clients``, mqtt.js from ``.tools/node``
(``scripts/test.sh`` installs both). Without them the tests skip, except on CI (``CI`` set),
where a missing tool fails the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from mqtt_harness import token_password

from channel.mqtt import MQTT_3_1_1, MQTT_5
from tests.gateway_harness import RunningGateway, gateway
from tests.rpc_upstream import upstream_farm
from tests.test_mqtt_push import api_node

pytestmark = pytest.mark.both_engines

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / ".tools" / "node" / "node_modules"
WAIT_S = 20.0
CI = bool(os.environ.get("CI"))

MOSQUITTO = pytest.mark.skipif(
    shutil.which("mosquitto_sub") is None and not CI, reason="mosquitto clients not installed"
)
MQTTJS = pytest.mark.skipif(
    (shutil.which("node") is None or not (NODE_MODULES / "mqtt").is_dir()) and not CI,
    reason="node / mqtt.js not installed (scripts/test.sh installs them)",
)
VERSIONS = [MQTT_3_1_1, MQTT_5]


def _mosquitto_args(gw: RunningGateway, device_id: str, version: int) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(gw.mqtt_port), "--cafile", str(gw.ca_cert),
            "-V", "mqttv5" if version == MQTT_5 else "mqttv311", "-i", device_id,
            "-u", device_id, "-P", token_password(gw, device_id)]  # fmt: skip


async def _line(stream: asyncio.StreamReader) -> str:
    async with asyncio.timeout(WAIT_S):
        line = await stream.readline()
    assert line, "the client exited"
    return line.decode().rstrip("\n")


async def _until(stream: asyncio.StreamReader, marker: str) -> str:
    while True:
        line = await _line(stream)
        if marker in line:
            return line


@MOSQUITTO
@pytest.mark.parametrize("version", VERSIONS)
async def test_mosquitto_sub_gets_a_push(tmp_path: Path, version: int) -> None:
    async with api_node(tmp_path) as (gw, api):
        sub = await asyncio.create_subprocess_exec(
            # stdbuf: line-buffered stdout, so its "SUBACK" debug line is read when printed
            "stdbuf", "-oL", "mosquitto_sub", *_mosquitto_args(gw, "till-m", version),
            "-t", "devices/till-m/#",
            "-q", "1", "-C", "1", "-v", "-d", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert sub.stdout is not None
        await _until(sub.stdout, "SUBACK")  # -d: the debug line once it is subscribed
        _, accepted = await api.post("/v1/push", {"device_id": "till-m", "body": "hello till"})
        assert await _until(sub.stdout, "hello till") == "devices/till-m/push hello till"
        async with asyncio.timeout(WAIT_S):
            assert await sub.wait() == 0
        await api.status(accepted["message_id"], "till-m", "delivered")


@MOSQUITTO
@pytest.mark.parametrize("version", VERSIONS)
async def test_mosquitto_rr_calls_through_the_gateway(tmp_path: Path, version: int) -> None:
    async with gateway(tmp_path) as gw:
        if version == MQTT_5:  # Response Topic and Correlation Data
            topics = ["-t", "devices/till-r/req/channel.echo", "-e", "devices/till-r/answers"]
        else:  # the 3.1.1 convention: the correlation is the last topic level
            topics = ["-t", "devices/till-r/req/channel.echo/c1", "-e", "devices/till-r/res/c1"]
        rr = await asyncio.create_subprocess_exec(
            "mosquitto_rr", *_mosquitto_args(gw, "till-r", version), *topics,
            "-m", "ping from the till", "-W", "15", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(WAIT_S):
            out, _ = await rr.communicate()
        assert rr.returncode == 0
        assert out.decode().strip() == "ping from the till"


@MOSQUITTO
async def test_mosquitto_pub_uplink_reaches_a_backend(tmp_path: Path) -> None:
    async with upstream_farm() as farm:
        sink = await farm.start("sink")
        rpc = {"clusters": {"sink": {"endpoints": [sink.url]}},
               "routes": [{"match": "mqtt.uplink", "cluster": "sink"}]}  # fmt: skip
        async with gateway(tmp_path, rpc=rpc) as gw:
            pub = await asyncio.create_subprocess_exec(
                "mosquitto_pub", *_mosquitto_args(gw, "till-p", MQTT_5), "-t",
                "devices/till-p/up/sales", "-q", "1", "-m", '{"sale": 3}',
            )  # fmt: skip
            async with asyncio.timeout(WAIT_S):
                assert await pub.wait() == 0  # mosquitto_pub waits for the PUBACK
            assert [(h.op, h.body) for h in sink.hits] == [("mqtt.uplink", b'{"sale": 3}')]


class JsBox:
    """mqtt.js in a node process (tests/mqttjs_box.js), spoken to line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, gw: RunningGateway, device_id: str, version: int) -> JsBox:
        options = {"port": gw.mqtt_port, "ca": str(gw.ca_cert), "id": device_id,
                   "password": token_password(gw, device_id), "version": version,
                   "subscribe": f"devices/{device_id}/#"}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            "node", str(ROOT / "tests" / "mqttjs_box.js"), json.dumps(options),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        )  # fmt: skip
        box = cls(proc)
        assert (await box.event())["event"] == "ready"
        return box

    async def event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        event: dict[str, Any] = json.loads(await _line(self.proc.stdout))
        assert event["event"] != "error", event
        return event

    async def command(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    async def end(self) -> None:
        await self.command({"end": True})
        async with asyncio.timeout(WAIT_S):
            assert await self.proc.wait() == 0


@MQTTJS
@pytest.mark.parametrize("version", VERSIONS)
async def test_mqtt_js_gets_pushes_and_calls_through_the_gateway(
    tmp_path: Path, version: int
) -> None:
    async with api_node(tmp_path) as (gw, api):
        box = await JsBox.start(gw, "till-js", version)
        _, accepted = await api.post("/v1/push", {"device_id": "till-js", "body": "from api",
                                                  "headers": {"kind": "note"}})  # fmt: skip
        message = await box.event()
        assert (message["topic"], message["payload"], message["qos"]) == (
            "devices/till-js/push", "from api", 1)  # fmt: skip
        if version == MQTT_5:
            assert message["userProperties"]["kind"] == "note"
        await api.status(accepted["message_id"], "till-js", "delivered")
        if version == MQTT_5:
            request = {"topic": "devices/till-js/req/channel.echo", "payload": "echo me",
                       "qos": 1, "responseTopic": "devices/till-js/answers",
                       "correlationData": "r1"}  # fmt: skip
        else:
            request = {"topic": "devices/till-js/req/channel.echo/r1", "payload": "echo me",
                       "qos": 1}  # fmt: skip
        await box.command({"publish": request})
        events = [await box.event(), await box.event()]  # the PUBACK and the answer, any order
        answer = next(e for e in events if e["event"] == "message")
        assert answer["payload"] == "echo me"
        assert answer["topic"] == ("devices/till-js/answers" if version == MQTT_5
                                   else "devices/till-js/res/r1")  # fmt: skip
        if version == MQTT_5:
            assert answer["correlationData"] == "r1"
        await box.end()
