"""Real ``sartor serve`` and ``sartor worker`` subprocesses, for tests that need HTTP over a
socket, several processes, or a crash (SIGKILL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _SartorProcess(ABC):
    """A ``python -m sartor.cli ...`` child against ``database_url``: start, kill -9, stop."""

    what = "process"

    def __init__(self, database_url: str, home: Path, log_name: str, env: dict[str, str]) -> None:
        self.database_url = database_url
        self.home = home
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / log_name

    @abstractmethod
    def _args(self) -> list[str]:
        """The ``sartor`` command line."""

    @abstractmethod
    def _ready(self) -> bool:
        """Whether the child has started."""

    def start(self, timeout: float = 30.0) -> Any:
        env = {
            **os.environ,
            "SARTOR_DATABASE_URL": self.database_url,
            "SARTOR_HOME": str(self.home),
            "SARTOR_ENV": "test",
            "SARTOR_SECRET_KEY": "test-secret-key-0123456789",
            "SARTOR_RATE_LIMIT_EVENTS_PER_SECOND": "0",
            **self.env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sartor.cli", *self._args()],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited: {self.log.read_text()[-2000:]}")
            if self._ready():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.what} did not start: {self.log.read_text()[-2000:]}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flush, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class ServerProcess(_SartorProcess):
    """``sartor serve`` on 127.0.0.1:port; ready when ``/healthz`` answers 200."""

    what = "server"

    def __init__(self, database_url: str, home: Path, port: int | None = None, **env: str) -> None:
        super().__init__(database_url, home, "server.log", env)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _args(self) -> list[str]:
        return ["serve", "--port", str(self.port)]

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False


class WorkerProcess(_SartorProcess):
    """``sartor worker`` (a Redis Streams consumer); ready when it says it is consuming."""

    what = "worker"

    def __init__(self, database_url: str, home: Path, name: str, **env: str) -> None:
        super().__init__(database_url, home, f"worker-{name}.log", env)
        self.name = name

    def _args(self) -> list[str]:
        return ["worker", "--name", self.name]

    def _ready(self) -> bool:
        return b"consuming profile changes" in self.log.read_bytes()
