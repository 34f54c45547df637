"""TLS 1.3 early data through a real gateway, from a real TLS client that sends it.

Python's ``ssl`` cannot send early data, so the device is the Rust client
``native/engine/examples/first_response.rs`` (rustls, ``enable_early_data``), built
here with cargo. Spec section 8.5: early data is accepted only on a single-use ticket,
and a request in it is served only if its op is idempotent; any other gets
``REFUSED_STREAM`` unprocessed and the client sends it again after the handshake.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import RunningGateway, gateway, http_upstream
from test_gateway_rpc import Upstream, route

from channel.wire import ErrorCode

pytestmark = pytest.mark.both_engines

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "target" / "debug" / "examples" / "first_response"


@pytest.fixture(scope="module")
def early_client() -> Path:
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not installed: the early-data client is Rust")
    subprocess.run(
        ["cargo", "build", "-q", "-p", "channel-engine", "--example", "first_response"],
        cwd=ROOT,
        check=True,
    )
    return CLIENT


async def run_client(
    client: Path, gw: RunningGateway, tmp_path: Path, command: str, *args: str, port: str = ""
) -> Any:
    token = tmp_path / "token"
    token.write_bytes(gw.token("phone"))
    argv = [str(client), command, port or str(gw.port), str(gw.ca_cert), "phone", str(token)]
    proc = await asyncio.create_subprocess_exec(
        *argv, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    return json.loads(stdout)


async def test_early_data_serves_idempotent_ops_once_and_refuses_the_rest(
    tmp_path: Path, early_client: Path
) -> None:
    account = Upstream("account")
    async with http_upstream({"/rpc/{op}": account.handle}) as url:
        rpc = {
            "clusters": {"account": {"endpoints": [url]}},
            "routes": [route("account.", "account", idempotent_ops=["account.balance.get"])],
        }
        tls = {"early_data_max_bytes": 16384}
        async with gateway(tmp_path, rpc=rpc, tls=tls) as gw:
            ops = ("account.balance.get", "account.transfer", "channel.echo")
            result = await run_client(early_client, gw, tmp_path, "early", *ops)
            first, early, replay = result["first"], result["early"], result["replay"]
            assert not first["resumed"]
            answers = {a["op"]: a for a in early["answers"]}
            # Every call is answered, whatever the engine: a device sees no difference.
            assert all(a["status"] == 0 and a["error"] == 0 for a in answers.values())
            calls = [c["op"] for c in account.calls]
            if gw.node.engine.name == "python":
                # Python's ssl has no early data: resumption without it, nothing refused.
                assert not early["early_accepted"]
                assert not any(a["retried"] for a in answers.values())
                assert sorted(calls) == ["account.balance.get", "account.transfer"]
                return
            assert early["resumed"] and early["early_accepted"] and early["early_sent"] > 0
            # Served from early data: the idempotent route op and channel.echo. Refused
            # unprocessed and sent again after the handshake: the transfer.
            assert not answers["account.balance.get"]["retried"]
            assert not answers["channel.echo"]["retried"]
            assert answers["account.transfer"]["retried"]
            # The replay of the first flight: the ticket was taken, the early data is
            # never read, so the upstream saw each call exactly once.
            assert replay["bytes_sent"] > 0
            assert sorted(calls) == ["account.balance.get", "account.transfer"]
            stats = gw.node.engine.stats()
            assert stats["early_data_accepted"] == 1
            assert stats["early_data_offered"] == 2  # the visit and its replay
            assert stats["tls_ticket_lookups"] == 2
            metrics = gw.node.metrics.early_data_requests
            assert metrics.labels("served")._value.get() == 2
            assert metrics.labels("refused")._value.get() == 1
            refused = gw.node.metrics.stream_errors.labels(ErrorCode.REFUSED_STREAM.name)
            assert refused._value.get() == 1


async def test_early_data_tickets_live_in_redis_and_resume_on_another_node(
    tmp_path: Path, early_client: Path, redis_server: Any, gateway_engine: str
) -> None:
    if gateway_engine != "native":
        pytest.skip("TLS early data is the native engine's")
    # Two nodes of one fleet: the same ticket secret and Redis (and, in a test, one
    # state dir, so one dev CA and token key).
    sections: dict[str, dict[str, Any]] = {
        "push": {"backend": "redis", "redis_url": redis_server.url, "key_prefix": "early"},
        "tls": {"early_data_max_bytes": 16384},
        "auth": {"ticket_secret": "the fleet's ticket secret, 32 bytes or more"},
    }
    async with gateway(tmp_path, **sections) as a, gateway(tmp_path, **sections) as b:
        ports = f"{a.port}/{b.port}"
        result = await run_client(
            early_client, a, tmp_path, "early", "channel.echo", "channel.subscribe", port=ports
        )
        early = result["early"]
        # The ticket node a issued was taken from Redis by node b: resumed, early data.
        assert early["resumed"] and early["early_accepted"]
        answers = {x["op"]: x for x in early["answers"]}
        assert not answers["channel.echo"]["retried"]
        assert answers["channel.subscribe"]["retried"]  # not idempotent: again, after
        assert all(x["error"] == 0 for x in early["answers"])
        # Replayed to node a: the ticket is gone fleet-wide; nothing is read there.
        assert a.node.engine.stats()["early_data_accepted"] == 0
        assert a.node.engine.stats()["tls_ticket_lookups"] == 1
        assert b.node.engine.stats()["early_data_accepted"] == 1
