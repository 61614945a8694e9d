"""``yap serve``: Hypercorn + the Starlette app, with start-up and drain.

Settings and plugins are checked before any model loads (one line, exit 2 via
``cli.main``). The socket is bound at once and /healthz answers 503
``starting`` while models load with progress output. SIGTERM (or Ctrl-C)
drains: new sockets are refused (1001), /healthz answers 503 ``draining``,
running turns may finish for DRAIN_TIMEOUT_S, then every socket is closed with
1001. If the engine dies (its ``stats()`` fails), /healthz turns ``unhealthy``
and the process exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol import ws_stream
from wsproto.extensions import Extension, PerMessageDeflate

from yap_core.accesslog import RedactingLogger
from yap_core.app import YapApp
from yap_core.connection import CLOSE_GOING_AWAY
from yap_core.runtime import Runtime
from yap_core.settings import Config, SettingsError, load_core
from yap_core.workers import ServeOptions, WorkerSpec, decode_spec, supervise

log = logging.getLogger("yap.server")

# Hypercorn cuts a frame this many times over WS_MAX_MESSAGE_BYTES while it
# arrives (1009, no error frame); frames between the limit and this cap are
# read whole and answered with `message_too_large` before the 1009 close.
HARD_FRAME_FACTOR = 4
HEALTH_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 10.0


def _progress_for(spec: WorkerSpec | None) -> Callable[[str], None]:
    prefix = "yap: " if spec is None else f"yap[{spec.label()}]: "

    def progress(line: str) -> None:
        click.echo(prefix + line, err=True)

    return progress


def hypercorn_config(
    host: str, port: int, certfile: str | None, keyfile: str | None, access_log: bool, max_message_bytes: int
) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.certfile = certfile
    config.keyfile = keyfile
    config.accesslog = "-" if access_log else None
    # The request line with its query string (api_key redacted by RedactingLogger).
    config.access_log_format = '%(h)s "%(R)s" %(s)s %(b)s %(L)ss "%(a)s"'
    config.errorlog = logging.getLogger("hypercorn.error")  # through the root handler, once
    config.logger_class = RedactingLogger
    config.websocket_max_message_size = max_message_bytes * HARD_FRAME_FACTOR
    config.graceful_timeout = 5.0
    return config


class _DeclinedDeflate(Extension):
    """permessage-deflate, declined in the handshake (see ``websocket_compression``)."""

    name = "permessage-deflate"

    def offer(self) -> bool:
        return False

    def accept(self, offer: str) -> None:
        return None


def websocket_compression(enabled: bool) -> None:
    """Hypercorn accepts every client's permessage-deflate offer: its
    handshake's extension list is fixed, with no setting (pgjones/hypercorn
    #307). Browsers and Python's websockets offer it by default, and on token
    frames of ~100 bytes it saves little: it cost the server 7-10 us of CPU a
    frame and ~100 KiB a socket (docs/benchmarks.md). So unless
    WS_PERMESSAGE_DEFLATE is set, the name Hypercorn's handshake builds the
    extension from gives one that declines; the client then sends and reads
    plain frames. Process-wide, set once before serving."""
    ws_stream.PerMessageDeflate = PerMessageDeflate if enabled else _DeclinedDeflate  # type: ignore[misc]


async def _watch_engine(runtime: Runtime) -> None:
    """Mark the runtime unhealthy when the engine stops answering."""
    engine = runtime.engine
    if engine is None:
        return
    while runtime.state in ("ready", "draining"):
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await runtime.engine_stats()
        except Exception as exc:
            runtime.mark_unhealthy(f"engine {engine.name} stopped answering: {type(exc).__name__}: {exc}")
            return
        await asyncio.sleep(HEALTH_INTERVAL_S)


async def _watch_supervisor(parent_pid: int, term: asyncio.Event) -> None:
    """A worker whose supervisor is gone (killed) drains and exits."""
    while os.getppid() == parent_pid:  # noqa: ASYNC110 (no event tells a child its parent died)
        await asyncio.sleep(HEALTH_INTERVAL_S)
    term.set()


async def run_server(app: YapApp, hconfig: HypercornConfig, progress: Callable[[str], None]) -> int:
    """Serve until SIGTERM/SIGINT (exit 0) or until the engine dies (exit 1)."""
    runtime = app.runtime
    stop_server = asyncio.Event()
    term = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, term.set)
    server = asyncio.create_task(hypercorn_serve(app.asgi, hconfig, shutdown_trigger=stop_server.wait, mode="asgi"))
    starting = asyncio.create_task(runtime.start(progress))
    watcher: asyncio.Task[None] | None = None
    orphan = None if runtime.worker is None else asyncio.create_task(_watch_supervisor(runtime.worker.parent_pid, term))
    term_wait = asyncio.create_task(term.wait())
    died = asyncio.create_task(runtime.stopped.wait())
    code = 0
    try:
        done, _ = await asyncio.wait({server, starting, term_wait}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done and starting.exception() is not None:
            exc = starting.exception()
            runtime.mark_unhealthy(f"start-up failed: {exc}")
            progress(f"start-up failed: {type(exc).__name__}: {exc}")
            return 1
        if server in done:
            progress(f"server stopped: {server.exception() or 'unexpectedly'}")
            return 1
        if starting in done:
            watcher = asyncio.create_task(_watch_engine(runtime))
            done, _ = await asyncio.wait({server, term_wait, died}, return_when=asyncio.FIRST_COMPLETED)
        if server in done:
            progress(f"server stopped: {server.exception() or 'unexpectedly'}")
            return 1
        if died in done:
            progress(f"unhealthy: {runtime.detail}; exiting")
            code = 1
            await app.close_all(1011, "server unhealthy")
            return code
        # Drain: refuse new sockets and turns, let running turns finish.
        runtime.state = "draining"
        runtime.detail = "shutting down"
        progress(f"draining: up to {runtime.settings.drain_timeout_s:g}s for {runtime.active_turns} running turn(s)")
        term.clear()
        term_wait = asyncio.create_task(term.wait())  # a second signal stops at once
        idle = asyncio.create_task(runtime.wait_turns_idle(runtime.settings.drain_timeout_s))
        await asyncio.wait({idle, term_wait}, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        await app.close_all(CLOSE_GOING_AWAY, "server shutting down")
        return code
    finally:
        for task in (starting, term_wait, died, watcher, orphan):
            if task is not None:
                task.cancel()
        stop_server.set()
        with contextlib.suppress(BaseException):
            await server
        with contextlib.suppress(Exception):
            await runtime.close()
        progress("stopped")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to bind.")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (PEM): serve wss://.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="TLS private key (PEM).")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Hypercorn access log (keys redacted).")
@click.option("--worker-spec", hidden=True, help="Set by the SERVER_WORKERS supervisor for its workers (JSON).")
def serve_command(
    host: str, port: int, certfile: str | None, keyfile: str | None, access_log: bool, worker_spec: str | None
) -> None:
    """Run the Yap server (WebSocket /ws, /healthz, /status)."""
    if (certfile is None) != (keyfile is None):
        raise click.UsageError("--certfile and --keyfile go together")
    config = Config.discover()
    settings = load_core(config)
    spec = decode_spec(worker_spec) if worker_spec else None
    progress = _progress_for(spec)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if spec is None else f"%(asctime)s %(levelname)s [w{spec.index + 1}] %(name)s: %(message)s"
    logging.basicConfig(level=settings.log_level.upper(), format=fmt)
    if settings.turn_timing_log:
        logging.getLogger("yap.timing").setLevel(logging.INFO)  # whatever LOG_LEVEL is
    if spec is None and settings.server_workers > 1:
        options = ServeOptions(host=host, port=port, certfile=certfile, keyfile=keyfile, access_log=access_log)
        sys.exit(supervise(config, settings, options, progress))
    runtime = Runtime(config, settings, worker=spec)  # plugins imported and built; nothing loaded yet
    app = YapApp(runtime)  # auth settings (TRUSTED_PROXIES ...) checked here
    hconfig = hypercorn_config(host, port, certfile, keyfile, access_log, settings.ws_max_message_bytes)
    websocket_compression(settings.ws_permessage_deflate)
    if spec is not None:
        hconfig.bind = [f"fd://{spec.fd}"]  # the supervisor's listening socket
    progress(
        f"deploy mode {settings.deploy_mode}: "
        + ", ".join(f"{kind} {name}" for kind, name in _selected(runtime))
    )
    sys.exit(_run_loop(settings.event_loop, run_server(app, hconfig, progress)))


def _run_loop(kind: str, main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on the EVENT_LOOP chosen. uvloop's C transports and
    scheduling cut the server's CPU per token frame and per turn (measured in
    docs/benchmarks.md), which is what limits it at 64 streams."""
    if kind == "asyncio":
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError as exc:
        main.close()
        raise SettingsError("EVENT_LOOP=uvloop but uvloop is not installed (no Windows build): install it or set EVENT_LOOP=asyncio") from exc
    return uvloop.run(main)


def _selected(runtime: Runtime) -> list[tuple[str, str]]:
    out = []
    if runtime.engine is not None:
        out.append(("engine", runtime.engine.name))
    if runtime.classifier is not None:
        out.append(("classifier", runtime.classifier.name))
    return out
