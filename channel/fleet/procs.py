"""Processes of a local fleet: started in a host's namespace, logged to files, stopped.

``ip netns exec`` enters the namespace and then execs the command, so the pid
``Popen`` gets is the server's own (what ``kill -9`` must hit). Each process is
its own session (``start_new_session``): a Ctrl-C at the fleet command's terminal
reaches the fleet command only, which stops everything in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from channel.fleet.netns import FleetError, Host


class Proc:
    """One server process in a host's namespace, its output in ``log_path``."""

    def __init__(
        self,
        name: str,
        host: Host,
        args: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        stdout_path: Path | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.args = list(args)
        self.log_path = log_path
        self.stdout_path = stdout_path
        #: The whole environment of the process (None: this process's).
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        env = self.env if self.env is not None else dict(os.environ)
        with self.log_path.open("ab") as err:
            out = self.stdout_path.open("wb") if self.stdout_path else None
            try:
                self.popen = subprocess.Popen(
                    [*self.host.exec_prefix(), *self.args],
                    stdin=subprocess.DEVNULL,
                    stdout=out if out is not None else err,
                    stderr=err,
                    env=env,
                    start_new_session=True,
                )
            finally:
                if out is not None:
                    out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.running:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL (a crash, a lost host) and wait for it."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait ``timeout_s``, then SIGKILL; the exit code."""
        if self.popen is None:
            return None
        if self.running:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def wait(self, timeout_s: float) -> int | None:
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(self, found: Callable[[], object], what: str, timeout_s: float = 30.0) -> object:
        """Poll ``found()`` (a log line, a socket answering) until it returns something
        truthy; the process dying first or the deadline raise ``FleetError``."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = found()
            if result:
                return result
            if not self.running:
                raise FleetError(
                    f"{self.name} exited ({self.popen.returncode if self.popen else '?'}) "
                    f"before {what}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise FleetError(f"{self.name}: no {what} in {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_contains(self, text: str, path: Path | None = None) -> bool:
        try:
            return text in (path or self.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
