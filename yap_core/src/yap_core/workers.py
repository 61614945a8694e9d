"""SERVER_WORKERS > 1: several server processes on one port and one engine.

One Python process runs out of CPU long before a small model on a big GPU
does: at 64 streams the event loop spends its whole core on vLLM's output
processing and the sockets (docs/gpu-results.md). So ``yap serve`` can run as a
supervisor with N workers, the way vLLM's own API server scales
(``--api-server-count``):

- The supervisor binds the port, asks the engine to ``share(N)`` (vLLM
  starts its one engine core here; the supervisor never touches the GPU),
  then starts N workers: ``yap serve --worker-spec ...`` children that
  ``attach`` their own engine object to the shared part. On Linux each worker
  gets its own listening socket on the port (SO_REUSEPORT: the kernel spreads
  new connections evenly by address hash; one shared socket would hand an
  idle burst of connections to whichever worker wakes first); elsewhere they
  share one socket.
- Each worker is a whole server (its own event loop, sessions, /healthz,
  /status with its index); a session lives in the worker that accepted its
  socket. MAX_CONCURRENT_CONNECTIONS holds for the deployment: a worker admits
  a socket while the total on the shared board (board.py) is under it, so a
  worker the kernel's hash favours is not refused while others have room.
- SIGTERM/SIGINT to the supervisor is passed on: every worker drains, then the
  shared engine stops. A second signal is passed on too (workers stop at
  once). A worker that exits on its own (crash, dead engine) stops the
  deployment with exit 1: the supervisor does not restart workers, the
  orchestrator restarts the service.
- Workers run in their own session (a terminal's Ctrl-C reaches only the
  supervisor, which drains them) and exit if the supervisor disappears.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import msgspec

from yap_core.board import Board
from yap_core.contracts import EngineShare
from yap_core.plugins import PluginHost
from yap_core.settings import Config, CoreSettings, SettingsError

_POLL_S = 0.1
_KILL_GRACE_S = 10.0  # after the drain timeout, before SIGKILL


class WorkerSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What the supervisor tells one worker (``--worker-spec``, JSON)."""

    index: int
    count: int
    fd: int  # the inherited listening socket
    parent_pid: int
    attachment: Any = None  # the engine's, from EngineShare.attachments
    board_fd: int  # the workers' shared counts (board.Board), inherited

    def label(self) -> str:
        return f"worker {self.index + 1}/{self.count}"


class ServeOptions(msgspec.Struct, kw_only=True, frozen=True):
    """The ``yap serve`` options a worker needs again (it binds nothing itself)."""

    host: str
    port: int
    certfile: str | None
    keyfile: str | None
    access_log: bool

    def worker_args(self) -> list[str]:
        args = ["--access-log" if self.access_log else "--no-access-log"]
        if self.certfile and self.keyfile:
            args += ["--certfile", self.certfile, "--keyfile", self.keyfile]
        return args


def decode_spec(raw: str) -> WorkerSpec:
    try:
        return msgspec.json.decode(raw, type=WorkerSpec)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SettingsError(f"--worker-spec (set by the SERVER_WORKERS supervisor, not by hand): {exc}") from None


def supervise(config: Config, settings: CoreSettings, options: ServeOptions, progress: Callable[[str], None]) -> int:
    """Run SERVER_WORKERS workers until a signal (exit 0 when all drained) or
    until one of them fails (exit 1)."""
    n = settings.server_workers
    engine = _build_engine(config, settings)
    if engine is not None and not (callable(getattr(engine, "share", None)) and callable(getattr(engine, "attach", None))):
        raise SettingsError(
            f"SERVER_WORKERS={n}: engine {settings.inference_engine!r} cannot be shared by several server "
            "processes (it has no share()/attach()); set SERVER_WORKERS=1"
        )
    socks = listen(options.host, options.port, n)
    board = Board.create(n)
    share: EngineShare | None = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if engine is not None:
            progress(f"supervisor: starting the shared {engine.name} engine for {n} workers")
            share = engine.share(n)  # type: ignore[attr-defined]
            if len(share.attachments) != n:
                raise RuntimeError(f"engine {engine.name!r} gave {len(share.attachments)} attachments for {n} workers")
        attachments = share.attachments if share is not None else [None] * n
        for i in range(n):
            sock = socks[i % len(socks)]
            spec = WorkerSpec(
                index=i, count=n, fd=sock.fileno(), parent_pid=os.getpid(), attachment=attachments[i], board_fd=board.fd
            )
            procs.append(start_worker(spec, options))
        # The workers hold the sockets now: a socket left open here would keep
        # taking the connections hashed to a worker that died.
        for sock in socks:
            sock.close()
        board.close()  # the workers hold it
        progress(f"supervisor: {n} workers (pids {', '.join(str(p.pid) for p in procs)}) on {options.host}:{options.port}")
        return _watch(procs, share, settings, progress)
    finally:
        _stop_all(procs, settings.drain_timeout_s + _KILL_GRACE_S)
        if share is not None:
            with contextlib.suppress(Exception):
                share.close()
        for sock in socks:
            sock.close()
        board.close()  # if no worker started


def listen(host: str, port: int, workers: int) -> list[socket.socket]:
    """Listening sockets for the workers: one each on Linux (SO_REUSEPORT),
    else one for all. Inheritable: the workers get them as file descriptors."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    per_worker = sys.platform.startswith("linux")
    socks: list[socket.socket] = []
    for _ in range(workers if per_worker else 1):
        sock = socket.create_server((host, port), family=family, backlog=2048, reuse_port=per_worker)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        sock.set_inheritable(True)
        port = sock.getsockname()[1]  # port 0: the others join the port the first one got
        socks.append(sock)
    return socks


def _build_engine(config: Config, settings: CoreSettings) -> Any:
    """The engine object alone (nothing loads): the supervisor needs only its share()."""
    if settings.deploy_mode == "tool":
        return None  # classifier only: each worker loads its own, nothing is shared
    host = PluginHost()
    host.load(settings.inference_engine)
    return host.engine_factory(settings.inference_engine)(config)


def start_worker(spec: WorkerSpec, options: ServeOptions, log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """One worker process; its output goes to ``log`` (default: the supervisor's)."""
    argv = [sys.executable, "-m", "yap_core.cli", "serve", *options.worker_args(),
            "--worker-spec", msgspec.json.encode(spec).decode()]
    # Own session: a terminal's Ctrl-C goes to the supervisor only, which drains the workers.
    fds = (spec.fd, spec.board_fd)
    return subprocess.Popen(argv, pass_fds=fds, start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT if log is not None else None)


def _watch(procs: list[subprocess.Popen[bytes]], share: EngineShare | None, settings: CoreSettings,
           progress: Callable[[str], None]) -> int:
    signals: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: signals.append(signum))
    ready = _ReadyWaiter(share)
    forwarded = 0
    while True:
        if len(signals) > forwarded:
            forwarded = len(signals)
            progress("supervisor: draining the workers" if forwarded == 1 else "supervisor: stopping the workers now")
            _signal_all(procs, signal.SIGTERM)
        codes = [p.poll() for p in procs]
        if forwarded:
            if all(c is not None for c in codes):
                return max((c for c in codes if c is not None), default=0)
        else:
            for i, code in enumerate(codes):
                if code is not None:
                    progress(f"supervisor: worker {i + 1}/{len(procs)} exited with {code}; stopping the others")
                    return 1
            if ready.error is not None:
                progress(f"supervisor: the shared engine failed to start: {ready.error}")
                return 1
            if ready.done_once():
                progress("supervisor: shared engine ready")
        time.sleep(_POLL_S)


class _ReadyWaiter:
    """EngineShare.wait_ready() blocks for the whole model load: a thread waits
    on it while the supervisor keeps watching signals and workers."""

    def __init__(self, share: EngineShare | None) -> None:
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._told = share is None
        if share is None:
            self._done.set()
            return
        threading.Thread(target=self._wait, args=(share,), name="engine-share-ready", daemon=True).start()

    def _wait(self, share: EngineShare) -> None:
        try:
            share.wait_ready()
        except BaseException as exc:  # reported by the supervisor loop
            self.error = exc
            return
        self._done.set()

    def done_once(self) -> bool:
        if self._told or not self._done.is_set():
            return False
        self._told = True
        return True


def _signal_all(procs: list[subprocess.Popen[bytes]], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)


def _stop_all(procs: list[subprocess.Popen[bytes]], seconds: float) -> None:
    """Drain whatever still runs (SIGTERM), then kill what outlives ``seconds``."""
    _signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    _signal_all(procs, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5.0)
