"""A real ``sartor serve`` in a subprocess, for tests that need HTTP over a socket or a crash."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``sartor serve`` on 127.0.0.1:port against ``database_url``; start, kill -9, restart."""

    def __init__(self, database_url: str, home: Path, port: int | None = None, **env: str) -> None:
        self.database_url = database_url
        self.home = home
        self.port = port or free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = {
            **os.environ,
            "SARTOR_DATABASE_URL": self.database_url,
            "SARTOR_HOME": str(self.home),
            "SARTOR_ENV": "test",
            "SARTOR_SECRET_KEY": "test-secret-key-0123456789",
            "SARTOR_RATE_LIMIT_EVENTS_PER_SECOND": "0",
            **self.env,
        }
        logfile = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sartor.cli", "serve", "--port", str(self.port)],
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

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


class WorkerProcess:
    """``sartor worker`` (Redis Streams consumer) against ``database_url``; start, kill -9."""

    def __init__(self, database_url: str, home: Path, name: str, **env: str) -> None:
        self.database_url = database_url
        self.home = home
        self.name = name
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / f"worker-{name}.log"

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        env = {
            **os.environ,
            "SARTOR_DATABASE_URL": self.database_url,
            "SARTOR_HOME": str(self.home),
            "SARTOR_ENV": "test",
            "SARTOR_SECRET_KEY": "test-secret-key-0123456789",
            **self.env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sartor.cli", "worker", "--name", self.name],
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-2000:]}")
            if b"consuming profile changes" in self.log.read_bytes():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"worker did not start: {self.log.read_text()[-2000:]}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, as in a crash."""
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
