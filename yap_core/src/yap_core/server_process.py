"""A `yap serve` subprocess on loopback, for the soak harness, benchmarks and tests.

It starts the real CLI in a child process (so crashes, exit codes and memory are
the server's own), waits for `/healthz`, samples the child's RSS and stops it
with SIGTERM. Output goes to a log file, never a pipe, so a chatty server can
never block on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import psutil


class ServerStartError(RuntimeError):
    """The server exited or never became healthy; the message holds its log tail."""


class HttpAnswer(msgspec.Struct, kw_only=True):
    status: int
    body: Any  # decoded JSON, or the raw text when it is not JSON


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def yap_executable() -> str:
    """The `yap` script of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / "yap"
    return str(candidate) if candidate.exists() else "yap"


def http_get(url: str, headers: Mapping[str, str] | None = None, *, timeout: float = 10.0,
             context: ssl.SSLContext | None = None) -> HttpAnswer:
    """GET a URL; any status is an answer (4xx/5xx are not exceptions)."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode("utf-8", "replace")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    return HttpAnswer(status=status, body=body)


async def http_get_async(url: str, headers: Mapping[str, str] | None = None, *, seconds: float = 10.0,
                         context: ssl.SSLContext | None = None) -> HttpAnswer:
    # urllib in a worker thread: stdlib only, and TLS comes for free.
    return await asyncio.to_thread(http_get, url, headers, timeout=seconds, context=context)


class ServerProcess:
    """One `yap serve` child: `async with`, `with`, or start()/stop() (async) and
    start_sync()/stop_sync(). A plain Popen, so it is not tied to an event loop."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_path: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        scheme: str = "http",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.extra_args = extra_args
        self.scheme = scheme
        self.ssl_context = ssl_context
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        ws = "wss" if self.scheme == "https" else "ws"
        return f"{ws}://{self.host}:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def command(self) -> list[str]:
        return [yap_executable(), "serve", "--host", self.host, "--port", str(self.port), *self.extra_args]

    def launch(self) -> None:
        """Start the child without waiting for it to be healthy."""
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), env=self.env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def healthy(self) -> bool:
        try:
            return http_get(self.base_url + "/healthz", timeout=2.0, context=self.ssl_context).status == 200
        except OSError:
            return False  # not listening yet

    def start_sync(self, timeout: float = 300.0) -> None:
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise ServerStartError(f"server exited with {self.returncode}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.2)
        self.stop_sync()
        raise ServerStartError(f"server not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    async def start(self, seconds: float = 300.0) -> None:
        await asyncio.to_thread(self.start_sync, seconds)

    def rss(self) -> int:
        """Resident memory of the server and its child processes (SERVER_WORKERS
        workers, an engine's own process), in bytes; 0 once it has gone."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):  # a child that exited meanwhile
                total += proc.memory_info().rss
        return total

    def wait_exit_sync(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    async def wait_exit(self, seconds: float) -> int | None:
        deadline = time.monotonic() + seconds
        while self.returncode is None and time.monotonic() < deadline:  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(0.05)
        return self.returncode

    def stop_sync(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit_sync(timeout) is None:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    async def stop(self, seconds: float = 30.0) -> int | None:
        return await asyncio.to_thread(self.stop_sync, seconds)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    async def __aenter__(self) -> ServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> ServerProcess:
        self.start_sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_sync()
