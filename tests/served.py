"""A real `yap serve` subprocess for synchronous (module-scoped) fixtures, and
a runner of `yap ...` commands as real subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from yap_core.server_process import free_port, http_get, yap_executable

API_KEY = "test-key-telemetry-clients"

# The scripted engine and classifier: instant, model-free, deterministic.
SCRIPTED = {
    "TEXT_API_KEY": API_KEY,
    "INFERENCE_ENGINE": "scripted",
    "TOOL_CLASSIFIER": "scripted",
    "DEPLOY_MODE": "both",
    "LOG_LEVEL": "INFO",
}


class Served:
    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.proc = proc
        self.log = log
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.base_url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log.read_text("utf-8", "replace")


@contextlib.contextmanager
def serve(env: Mapping[str, str], *, timeout: float = 120.0) -> Iterator[Served]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="yap-test-server-", suffix=".log")[1])
    full_env = {**os.environ, **SCRIPTED, **env}
    if "OTEL_EXPORTER_OTLP_ENDPOINT" not in env:  # a developer's own collector stays out of tests
        full_env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    with log.open("ab") as out:
        proc = subprocess.Popen([yap_executable(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                env=full_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    served = Served(port, proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{served.log_text()[-4000:]}")
            with contextlib.suppress(OSError):
                if http_get(served.base_url + "/healthz", timeout=2).status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout} s:\n{served.log_text()[-4000:]}")
            time.sleep(0.1)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.unlink(missing_ok=True)


def yap(args: Sequence[str], *, env: Mapping[str, str] | None = None, input: str | None = None,
        timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run `yap ARGS` as a real subprocess; output captured as text."""
    return subprocess.run([yap_executable(), *args], env={**os.environ, **(env or {})}, input=input,
                          capture_output=True, text=True, timeout=timeout, check=False)


def python() -> str:
    return sys.executable
