"""A real `yap serve` subprocess for synchronous (module-scoped) fixtures, and
a runner of `yap ...` commands as real subprocesses."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from yap_core.server_process import ServerProcess, yap_executable

API_KEY = "test-key-telemetry-clients"

# The scripted engine and classifier: instant, model-free, deterministic.
SCRIPTED = {
    "TEXT_API_KEY": API_KEY,
    "INFERENCE_ENGINE": "scripted",
    "TOOL_CLASSIFIER": "scripted",
    "DEPLOY_MODE": "both",
    "LOG_LEVEL": "INFO",
}


@contextlib.contextmanager
def serve(env: Mapping[str, str], *, timeout: float = 120.0) -> Iterator[ServerProcess]:
    """A healthy scripted server (``SCRIPTED`` plus ``env``), stopped and its log removed on exit."""
    log = Path(tempfile.mkstemp(prefix="yap-test-server-", suffix=".log")[1])
    server = ServerProcess({**SCRIPTED, **env}, log_path=log)
    if "OTEL_EXPORTER_OTLP_ENDPOINT" not in env:  # a developer's own collector stays out of tests
        server.env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    try:
        server.start_sync(timeout)
        yield server
    finally:
        server.stop_sync()
        log.unlink(missing_ok=True)


def yap(args: Sequence[str], *, env: Mapping[str, str] | None = None, input: str | None = None,
        timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run `yap ARGS` as a real subprocess; output captured as text."""
    return subprocess.run([yap_executable(), *args], env={**os.environ, **(env or {})}, input=input,
                          capture_output=True, text=True, timeout=timeout, check=False)

