"""`yap soak`: many flaky clients against one server, with the invariants checked.

Bounded in time (`--duration`) and count (`--sessions`, `--max-actions`), loopback
only, and it stops by itself. By default it starts its own `yap serve` child
(`--engine scripted` or `hf`) so it knows the server's PID and can follow its
memory; `--url` points it at a running server instead.

Each of `--sessions` client tasks holds one socket at a time and does random
actions (turns, barge-ins, cancels, pings, malformed and oversized frames,
abrupt disconnects, `end`), reconnecting when its socket ends. `--slow-readers`
more clients ask for long replies and never read. Checked throughout and at
the end (see docs/reliability.md): every turn ends in exactly one of
done/cancelled/error unless its socket was cut; no frame carries another
turn's or session's id; slow readers are closed by the server; once clients
are gone `/status` shows no active turns or connections and the engine no
running request; server RSS is reported before, at peak and after.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import msgspec

from yap_core.server_process import ServerProcess, http_get_async
from yap_core.soak_client import (
    ACTIONS,
    EXPECTED_CLOSE,
    SoakSocket,
    SocketClosed,
    Unexpected,
    utterance,
)
from yap_core.soak_ledger import SocketLedger, Tally
from yap_core.wsclient import new_id, open_ws

MiB = 1024 * 1024


class SoakOptions(msgspec.Struct, kw_only=True, frozen=True):
    sessions: int = 200
    duration_s: float = 60.0
    max_actions: int = 1000  # per client task, whichever of this and duration comes first
    slow_readers: int = 10
    seed: int = 1
    max_tokens: int = 24  # each turn asks for 1..max_tokens tokens
    think_ms: float = 50.0  # pause between a client's actions, 0..think_ms
    frame_timeout_s: float = 60.0  # a turn showing no frame for this long is a violation
    settle_timeout_s: float = 30.0  # how long /status may take to show zero after the clients go
    max_message_bytes: int = 65536
    max_rss_growth_mib: float = 200.0  # RSS after minus before that counts as a leak
    rounds: int = 2  # client phases against the same server (memory must plateau)
    max_round_growth_mib: float = 16.0  # RSS growth of the last round over the one before


class SlowReport(msgspec.Struct, kw_only=True):
    readers: int = 0
    closed_by_server: int = 0
    close_codes: dict[str, int] = {}
    frames_read_max: int = 0  # most frames one slow reader found when it finally read


class MemoryReport(msgspec.Struct, kw_only=True):
    before_mib: float = 0.0
    peak_mib: float = 0.0
    after_mib: float = 0.0
    after_rounds_mib: list[float] = []  # RSS once quiet after each round


class SoakReport(msgspec.Struct, kw_only=True):
    options: SoakOptions
    engine: str
    elapsed_s: float
    frames: int
    turns: int
    turns_per_s: float
    endings: dict[str, int]
    errors: dict[str, int]
    closes: dict[str, int]
    actions: dict[str, int]
    slow: SlowReport
    memory: MemoryReport | None
    status_after: dict[str, Any]
    engine_running_after: int | None
    violations: int
    violation_samples: list[str]

    @property
    def ok(self) -> bool:
        return self.violations == 0


class Target(msgspec.Struct, kw_only=True):
    ws_url: str
    base_url: str
    api_key: str
    server: Any = None  # ServerProcess when the harness started it


# --- status ---------------------------------------------------------------------


def engine_running(status: dict[str, Any]) -> int | None:
    """The engine's running-request count from /status, where the server
    exposes it; with SERVER_WORKERS, every worker's requests in its engine."""
    workers = status.get("workers")
    if isinstance(workers, list):
        return sum(int(w.get("engine_requests", 0)) for w in workers)
    engine = status.get("engine")
    if isinstance(engine, dict):
        stats = engine.get("stats")
        if isinstance(stats, dict) and isinstance(stats.get("running"), int):
            return int(stats["running"])
    return None


async def fetch_status(target: Target) -> dict[str, Any]:
    answer = await http_get_async(target.base_url + "/status", {"X-API-Key": target.api_key})
    if answer.status != 200 or not isinstance(answer.body, dict):
        raise Unexpected(f"/status answered {answer.status}: {str(answer.body)[:200]}")
    return answer.body


async def wait_settled(target: Target, tally: Tally, within_s: float) -> dict[str, Any]:
    """Poll /status until nothing runs and nobody is connected; not within `within_s` is a violation."""
    deadline = time.monotonic() + within_s
    status: dict[str, Any] = {}
    while True:
        status = await fetch_status(target)
        active = status.get("connections", {}).get("active")
        quiet = status.get("active_turns") == 0 and active == 0 and engine_running(status) in (0, None)
        if quiet:
            return status
        if time.monotonic() > deadline:
            tally.violation(
                f"server not quiet {within_s:.0f}s after the clients left: active_turns="
                f"{status.get('active_turns')} connections={active} engine_running={engine_running(status)}"
            )
            return status
        await asyncio.sleep(0.25)


async def watch(target: Target, options: SoakOptions, tally: Tally, memory: MemoryReport, stop: asyncio.Event) -> None:
    """During the run: /status keeps answering within sane bounds; RSS peak is tracked."""
    bound = options.sessions * 2 + options.slow_readers * SLOW_READER_SESSIONS
    next_status = 0.0
    while not stop.is_set():
        if target.server is not None:
            memory.peak_mib = max(memory.peak_mib, target.server.rss() / MiB)
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + 2.0
            try:
                status = await fetch_status(target)
                if not 0 <= int(status.get("active_turns", -1)) <= bound:
                    tally.violation(f"/status active_turns out of bounds: {status.get('active_turns')}")
            except (OSError, Unexpected, ValueError) as exc:
                tally.violation(f"/status failed during the run: {exc}")
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass


# --- clients ------------------------------------------------------------------------


async def client_task(index: int, target: Target, options: SoakOptions, tally: Tally, deadline: float) -> None:
    rng = random.Random(options.seed * 1_000_003 + index)
    names = list(ACTIONS)
    weights = [ACTIONS[n][0] for n in names]
    actions = 0
    generation = 0
    while time.monotonic() < deadline and actions < options.max_actions:
        generation += 1
        ledger = SocketLedger(tally, f"client{index}.{generation}")
        try:
            ws = await open_ws(target.ws_url, target.api_key, open_timeout=30.0)
        except (OSError, TimeoutError, Exception) as exc:  # noqa: BLE001 - any failure to connect is recorded
            tally.violation(f"client{index}: connect failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.5)
            continue
        sock = SoakSocket(ws, ledger, rng, frame_timeout=options.frame_timeout_s, max_tokens=options.max_tokens,
                          max_message_bytes=options.max_message_bytes)
        name = "begin"
        cut = False
        try:
            await sock.begin()
            while time.monotonic() < deadline and actions < options.max_actions:
                await asyncio.sleep(rng.uniform(0, options.think_ms) / 1000.0)
                name = rng.choices(names, weights)[0]
                actions += 1
                tally.actions[name] += 1
                await ACTIONS[name][1](sock)
            await ws.close()
        except SocketClosed as closed:
            cut = True
            tally.closes[str(closed.code)] += 1
            if name not in EXPECTED_CLOSE:
                tally.violation(f"client{index}: socket closed ({closed.code}) during {name}")
            elif EXPECTED_CLOSE[name] is not None and closed.code != EXPECTED_CLOSE[name]:
                tally.violation(f"client{index}: {name} closed with {closed.code}, expected {EXPECTED_CLOSE[name]}")
        except Unexpected as exc:
            cut = True
            tally.violation(f"client{index}: during {name}: {exc}")
            ws.transport.abort()
        finally:
            ledger.close(cut=cut)


def small_buffer_socket(host: str, port: int) -> socket.socket:
    """A connected TCP socket with a tiny receive buffer, so a reader that stops
    reading backs up into the server quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.setblocking(False)
    return sock


SLOW_READER_SESSIONS = 700
SLOW_READER_GRACE_S = 90.0
GIVE_UP_LINE = "client stopped reading"  # the server's warning when it drops a slow reader


async def slow_reader(index: int, target: Target, options: SoakOptions, report: SlowReport, tally: Tally,
                      deadline: float) -> None:
    """A phone app that froze: it asks for many replies at once (one turn on each of
    many sessions, so none barges another), then neither reads nor sends until the
    run ends. The server must let it go; reading at the end shows how."""
    rng = random.Random(options.seed * 7919 + index)
    host_port = target.ws_url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    ws = await open_ws(target.ws_url, target.api_key, open_timeout=30.0, sock=small_buffer_socket(host, int(port)))
    report.readers += 1
    try:
        for _ in range(SLOW_READER_SESSIONS):
            # Replies as long as the server allows (CHAT_MAX_OUT): the most output per frame sent.
            await ws.send(msgspec.json.encode({"type": "start", "session_id": new_id(), "payload": {
                "chat_prompt": "You are long-winded.", "user_utterance": utterance(rng)}}).decode())
    except Exception:  # noqa: BLE001 - dropped already: reading below tells how
        pass
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))
    # On a loaded machine the replies may not have outgrown the buffers yet: when the
    # harness runs the server it can see it give up (its log line) and waits for that.
    if target.server is not None:
        limit = time.monotonic() + SLOW_READER_GRACE_S
        while target.server.log_text().count(GIVE_UP_LINE) < report.readers and time.monotonic() < limit:  # noqa: ASYNC110
            await asyncio.sleep(0.5)  # polling another process's log
    frames = 0
    code: int | None = None
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10.0)
            frames += 1
    except TimeoutError:
        tally.violation(f"slow reader {index}: still open after the run: the server never let it go")
        ws.transport.abort()
        code = -1
    except Exception as exc:  # noqa: BLE001 - ConnectionClosed and friends
        rcvd = getattr(exc, "rcvd", None)
        code = rcvd.code if rcvd is not None else None
        report.closed_by_server += 1
    report.frames_read_max = max(report.frames_read_max, frames)
    report.close_codes[str(code)] = report.close_codes.get(str(code), 0) + 1


# --- the run ------------------------------------------------------------------------------


async def run_soak(target: Target, options: SoakOptions, engine: str) -> SoakReport:
    tally = Tally()
    slow = SlowReport()
    memory = MemoryReport() if target.server is not None else None
    if memory is not None:
        memory.before_mib = memory.peak_mib = target.server.rss() / MiB
    started = time.monotonic()
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(target, options, tally, memory or MemoryReport(), stop))
    status: dict[str, Any] = {}
    # Several rounds against one server: memory that keeps growing from round to
    # round is a leak; memory that plateaus is the allocator keeping its arenas.
    for round_index in range(options.rounds):
        deadline = time.monotonic() + options.duration_s
        seed = round_index * 100_000
        tasks = [client_task(seed + i, target, options, tally, deadline) for i in range(options.sessions)]
        tasks += [slow_reader(seed + i, target, options, slow, tally, deadline) for i in range(options.slow_readers)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                tally.violation(f"client task crashed: {type(result).__name__}: {result}")
        status = await wait_settled(target, tally, options.settle_timeout_s)
        if memory is not None:
            await asyncio.sleep(1.0)
            memory.after_rounds_mib.append(round(target.server.rss() / MiB, 1))
    elapsed = time.monotonic() - started
    stop.set()
    await watcher
    if slow.readers and slow.closed_by_server < slow.readers:
        tally.violation(f"{slow.readers - slow.closed_by_server} slow reader(s) were not closed by the server")
    if memory is not None:
        memory.after_mib = memory.after_rounds_mib[-1]
        memory.peak_mib = max(memory.peak_mib, memory.after_mib)
        if memory.after_mib - memory.before_mib > options.max_rss_growth_mib:
            tally.violation(f"server RSS grew {memory.after_mib - memory.before_mib:.0f} MiB and stayed")
        rounds = memory.after_rounds_mib
        if len(rounds) >= 2 and rounds[-1] - rounds[-2] > options.max_round_growth_mib:
            tally.violation(f"server RSS still growing in the last round: {rounds} MiB")
    return SoakReport(
        options=options,
        engine=engine,
        elapsed_s=round(elapsed, 2),
        frames=tally.frames,
        turns=tally.turns_started,
        turns_per_s=round(tally.turns_started / elapsed, 1) if elapsed else 0.0,
        endings=dict(tally.endings),
        errors=dict(tally.errors),
        closes=dict(tally.closes),
        actions=dict(tally.actions),
        slow=slow,
        memory=memory,
        status_after=status,
        engine_running_after=engine_running(status),
        violations=tally.violations,
        violation_samples=tally.samples,
    )


def server_env(engine: str, options: SoakOptions, api_key: str, extra: dict[str, str]) -> dict[str, str]:
    """Settings of the server the harness starts: sized for the run, limits that
    would only measure themselves turned off."""
    env = {
        "TEXT_API_KEY": api_key,
        "INFERENCE_ENGINE": engine,
        "DEPLOY_MODE": "chat",
        "MAX_CONCURRENT_CONNECTIONS": str(options.sessions * 2 + options.slow_readers + 16),
        "WS_MAX_MESSAGES_PER_WINDOW": "0",
        "WS_MAX_CANCELS_PER_WINDOW": "0",
        "WS_MAX_MESSAGE_BYTES": str(options.max_message_bytes),
        # Small enough that a reader who never reads trips it within the run.
        "WS_SEND_QUEUE_MAX": "64",
        "LOG_LEVEL": "WARNING",
    }
    if engine == "scripted":
        # 1 ms a token: turns last long enough for cancels and barge-ins to land mid-stream.
        env["SCRIPTED_TOKEN_DELAY_MS"] = "1"
    env.update(extra)
    return env


async def soak_with_server(engine: str, options: SoakOptions, extra_env: dict[str, str], log_path: Path) -> SoakReport:
    api_key = "soak-" + new_id()
    server = ServerProcess(server_env(engine, options, api_key, extra_env), log_path=log_path)
    await server.start()
    target = Target(ws_url=server.ws_url, base_url=server.base_url, api_key=api_key, server=server)
    try:
        report = await run_soak(target, options, engine)
    finally:
        code = await server.stop()
    if code not in (0, None):
        report.violations += 1
        report.violation_samples.append(f"server exited {code} on SIGTERM; log tail:\n{server.log_tail(1500)}")
    return report


def print_report(report: SoakReport) -> None:
    o = report.options
    click.echo(f"yap soak: engine={report.engine} sessions={o.sessions} slow_readers={o.slow_readers} "
               f"rounds={o.rounds}x{o.duration_s:g}s elapsed={report.elapsed_s}s seed={o.seed}")
    click.echo(f"  turns {report.turns} ({report.turns_per_s}/s), frames {report.frames}")
    click.echo(f"  endings {report.endings}")
    click.echo(f"  errors {report.errors}")
    click.echo(f"  closes {report.closes}")
    click.echo(f"  slow readers: {report.slow.closed_by_server}/{report.slow.readers} closed by the server, "
               f"codes {report.slow.close_codes}, most frames left unread {report.slow.frames_read_max}")
    if report.memory:
        m = report.memory
        click.echo(f"  server RSS MiB: before {m.before_mib:.1f}, peak {m.peak_mib:.1f}, after {m.after_mib:.1f} "
                   f"(after each round: {m.after_rounds_mib})")
    click.echo(f"  after: active_turns={report.status_after.get('active_turns')} "
               f"connections={report.status_after.get('connections', {}).get('active')} "
               f"engine_running={report.engine_running_after}")
    click.echo(f"  violations: {report.violations}")
    for sample in report.violation_samples:
        click.echo(f"    - {sample}")


@click.command("soak")
@click.option("--engine", default="scripted", show_default=True, help="Engine of the server the harness starts.")
@click.option("--url", default=None, help="Soak a running server instead (ws://127.0.0.1:PORT/ws); needs --api-key.")
@click.option("--api-key", envvar="TEXT_API_KEY", default=None, help="Key for --url (default: $TEXT_API_KEY).")
@click.option("--sessions", default=200, show_default=True, type=click.IntRange(1, 5000),
              help="Concurrent client tasks, one socket each at a time.")
@click.option("--duration", "duration_s", default=60.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds of each round.")
@click.option("--max-actions", default=1000, show_default=True, type=click.IntRange(1),
              help="Most actions of one client task (the run stops at whichever bound comes first).")
@click.option("--slow-readers", default=10, show_default=True, type=click.IntRange(0, 500),
              help="Clients per round that ask for 700 replies and never read.")
@click.option("--max-tokens", default=24, show_default=True, type=click.IntRange(1),
              help="Each turn asks for 1..N tokens (sampling.max_tokens).")
@click.option("--think-ms", default=50.0, show_default=True, type=click.FloatRange(0),
              help="Random pause before each action, 0..N ms.")
@click.option("--frame-timeout", "frame_timeout_s", default=60.0, show_default=True, type=click.FloatRange(1),
              help="A turn showing no frame for this long is a violation.")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1, 100),
              help="Client phases of --duration each against one server; RSS must plateau.")
@click.option("--max-rss-growth-mib", default=200.0, show_default=True, type=click.FloatRange(0),
              help="RSS after the run minus before that counts as a leak.")
@click.option("--max-round-growth-mib", default=16.0, show_default=True, type=click.FloatRange(0),
              help="RSS growth of the last round over the one before that counts as a leak.")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--server-env", "server_env_pairs", multiple=True, metavar="NAME=VALUE",
              help="Extra setting for the started server (repeatable).")
@click.option("--log", "log_path", default=None, type=click.Path(dir_okay=False), help="Server log file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def soak_command(engine: str, url: str | None, api_key: str | None, sessions: int, duration_s: float,
                 max_actions: int, slow_readers: int, max_tokens: int, think_ms: float, frame_timeout_s: float,
                 rounds: int, max_rss_growth_mib: float, max_round_growth_mib: float, seed: int, server_env_pairs: tuple[str, ...], log_path: str | None, as_json: bool) -> None:
    """Soak a server with flaky clients and check that nothing is lost or leaked."""
    options = SoakOptions(sessions=sessions, duration_s=duration_s, max_actions=max_actions,
                          slow_readers=slow_readers, seed=seed, max_tokens=max_tokens, think_ms=think_ms,
                          frame_timeout_s=frame_timeout_s, rounds=rounds, max_rss_growth_mib=max_rss_growth_mib,
                          max_round_growth_mib=max_round_growth_mib)
    extra: dict[str, str] = {}
    for pair in server_env_pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r}: expected NAME=VALUE", param_hint="--server-env")
        extra[name] = value
    if url is not None:
        if not url.startswith("ws://127.") and not url.startswith("ws://localhost"):
            raise click.BadParameter("the soak harness only talks to loopback", param_hint="--url")
        if not api_key:
            raise click.BadParameter("--url needs --api-key or TEXT_API_KEY", param_hint="--api-key")
        base = "http://" + url.split("//", 1)[1].rsplit("/ws", 1)[0]
        target = Target(ws_url=url, base_url=base, api_key=api_key)
        report = asyncio.run(run_soak(target, options, engine="(external)"))
    else:
        path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="yap-soak-")) / "server.log"
        report = asyncio.run(soak_with_server(engine, options, extra, path))
        if not as_json:
            click.echo(f"server log: {path}")
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
    else:
        print_report(report)
    sys.exit(0 if report.ok else 1)
