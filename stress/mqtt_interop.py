"""Run the Eclipse Paho MQTT interoperability suite against ``channel serve``.

The suite (``eclipse/paho.mqtt.testing``, folder ``interoperability/``:
``client_test.py`` for MQTT 3.1.1, ``client_test5.py`` for 5.0, and the
``mqtt/`` client and format packages they import) is not part of Channel and
nothing here fetches it: give its path. This script starts a gateway with the
configuration the suite needs (``INTEROP_TOML``, documented in
``docs/mqtt.md``: the plain TCP listener on, anonymous clients with any client
id, an open ACL but ``test/nosubscribe``, a 60 s keepalive ceiling), runs both
files, and prints and writes how many tests passed.

The 3.1.1 file cannot be told a port (``unittest.main()`` refuses the ``-p`` its
own option parser takes), so the plain TCP listener is on 1883 unless
``--tcp-port`` says otherwise; the 5.0 file is told the port.

    python -m stress.mqtt_interop --suite /path/to/paho.mqtt.testing/interoperability
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from stress.machine import machine_info

#: What the suite needs of the gateway (and nothing a deployment should copy).
INTEROP_TOML = """\
[server]
reuse_port = false              # a stray listener on the port fails the start, not the tests

[mqtt]
allow_anonymous = true          # the suite connects without credentials
subscribe_allow = ["#"]         # ...to topics like TopicA, /TopicA, $share/...
publish_allow = ["#"]
subscribe_deny = ["test/nosubscribe"]   # the suite's subscribe-failure topic
uplink_topics = []
max_keepalive_s = 60            # test_server_keep_alive expects 60
"""

SUITES = (("3.1.1", "client_test.py", False), ("5.0", "client_test5.py", True))


@dataclass
class SuiteResult:
    level: str
    ran: int
    failed: int
    errors: int
    failing: list[str]
    seconds: float

    @property
    def passed(self) -> int:
        return self.ran - self.failed - self.errors


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener does
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_gateway(
    state: Path, tcp_port: int, engine: str
) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    config = state / "interop.toml"
    config.write_text(INTEROP_TOML)
    args = [sys.executable, "-m", "channel", "serve", "--config", str(config),
            "--state-dir", str(state), "--port", "0", "--admin-port", "0", "--api-port", "0",
            "--mqtt-port", "0", "--mqtt-tcp-port", str(tcp_port),
            "--engine", engine, "--log-level", "warning"]  # fmt: skip
    log = (state / "gateway.log").open("wb")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        line = proc.stdout.readline() if ready else b""
        if not line:
            break
        info = json.loads(line)
        if info.get("event") == "listening":
            return proc, info
    proc.kill()
    raise SystemExit(f"the gateway did not start; see {state / 'gateway.log'}")


def run_suite(suite: Path, level: str, name: str, port: int, with_port: bool) -> SuiteResult:
    args = [sys.executable, name] + (["-p", str(port)] if with_port else [])
    env = {**os.environ, "PYTHONPATH": str(suite)}
    started = time.monotonic()
    done = subprocess.run(args, cwd=suite, env=env, capture_output=True, text=True, timeout=1800)
    output = done.stdout + done.stderr
    (suite.parent / f"interop-{level}.log").write_text(output)
    ran = int(m.group(1)) if (m := re.search(r"Ran (\d+) tests?", output)) else 0
    failed = int(m.group(1)) if (m := re.search(r"failures=(\d+)", output)) else 0
    errors = int(m.group(1)) if (m := re.search(r"errors=(\d+)", output)) else 0
    failing = sorted(set(re.findall(r"^(?:FAIL|ERROR): (\w+)", output, re.MULTILINE)))
    return SuiteResult(level, ran, failed, errors, failing, round(time.monotonic() - started, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, required=True, help="the interoperability/ folder")
    parser.add_argument("--tcp-port", type=int, default=1883, help="plain TCP MQTT port")
    parser.add_argument("--only", choices=["3.1.1", "5.0"], help="run one of the two files")
    parser.add_argument("--engine", choices=["native", "python"], default="native")
    parser.add_argument("--json", type=Path, default=Path("stress/results/mqtt_interop.json"))
    args = parser.parse_args(argv)
    suite = args.suite.resolve()
    if not (suite / "client_test.py").exists() or not (suite / "mqtt").is_dir():
        raise SystemExit(f"{suite}: not the suite's interoperability/ folder")
    if not _free(args.tcp_port):
        raise SystemExit(f"port {args.tcp_port} is taken (the 3.1.1 file can only use 1883)")
    results: list[SuiteResult] = []
    with tempfile.TemporaryDirectory(prefix="channel-interop-") as tmp:
        proc, info = start_gateway(Path(tmp), args.tcp_port, args.engine)
        try:
            port = int(str(info["mqtt_tcp_port"]))
            for level, name, with_port in SUITES:
                if args.only in (None, level):
                    results.append(run_suite(suite, level, name, port, with_port))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"engine {args.engine}")
    print(f"{'level':<7} {'passed':>7} {'of':>4}  failing")
    for r in results:
        print(f"{r.level:<7} {r.passed:>7} {r.ran:>4}  {', '.join(r.failing) or '-'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine_info(),
        "engine": args.engine,
        "results": [asdict(r) for r in results],
    }
    args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(r.passed == r.ran and r.ran for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
