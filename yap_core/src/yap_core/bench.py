"""``yap bench``: the latency benchmark a voice team lives by.

Drives ``-n`` sessions, ``-c`` at a time, each on its own socket (as a voice
agent holds one per user), for ``--turns`` turns, and reports per turn: tool-call
latency, time to first token, to the first 3 words, to the first sentence and
to the end; average and p50/p90/p95/p99, with the first turn of each
conversation apart (it pays the prefill). Modes: ``closed`` (a new session as
soon as a slot frees), ``burst`` (waves of ``-c`` sessions whose turns fire at
the same instant), ``poisson`` (sessions arrive at ``--rate`` per second, at
most ``-c`` open). One process and one event loop drive every session; the
client's own CPU and event-loop lag are reported so one can see it is not the
bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import click
import msgspec
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from yap_core.client import Target, target_options
from yap_core.latency_stats import Summary, fmt_ms, ms, summarize
from yap_core.wsclient import ProtocolError, Turn, YapConnection, new_id

Mode = Literal["closed", "burst", "poisson"]
METRICS = ("toolcall_ms", "ttft_ms", "first_3_words_ms", "first_sentence_ms", "total_ms")
LABELS = {
    "toolcall_ms": "toolcall",
    "ttft_ms": "first token",
    "first_3_words_ms": "first 3 words",
    "first_sentence_ms": "first sentence",
    "total_ms": "total",
}

DEFAULT_UTTERANCES = (
    "Hey, how's it going today?",
    "Can you give me a quick tip for sleeping better?",
    "What's a good name for a grey cat?",
    "Tell me something interesting about the moon.",
    "Could you look at my screen and tell me what this error means?",
    "I'm bored. Any ideas for a rainy afternoon?",
    "How do I make a simple tomato sauce?",
    "What's the difference between a frog and a toad?",
)


class BenchConfig(msgspec.Struct, kw_only=True, frozen=True):
    server: str
    sessions: int
    concurrency: int
    turns: int
    mode: Mode
    rate: float | None
    max_tokens: int | None
    prefill: bool
    think_ms: float
    seed: int


class TurnRecord(msgspec.Struct, kw_only=True):
    session: int
    turn: int  # 0 = the first turn of its conversation
    end: str  # done, cancelled, error, closed, timeout, connect_failed
    error: str | None = None
    started_s: float = 0.0  # since the benchmark began
    toolcall_ms: float | None = None
    ttft_ms: float | None = None
    first_3_words_ms: float | None = None
    first_sentence_ms: float | None = None
    total_ms: float | None = None
    tokens: int = 0
    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    server_ttft_ms: float | None = None  # usage.ttft_ms as the server measured it


class ClientLoad(msgspec.Struct, kw_only=True):
    cpu_percent: float  # of one core, over the run
    loop_lag: Summary  # ms an asyncio sleep overshot: high means the client is the bottleneck


class BenchReport(msgspec.Struct, kw_only=True):
    config: BenchConfig
    date_utc: str
    machine: str
    wall_s: float
    turns_ok: int
    turns_failed: int
    failures: dict[str, int]
    turns_per_s: float
    token_frames_per_s: float
    first_turn: dict[str, Summary]
    later_turns: dict[str, Summary]
    all_turns: dict[str, Summary]
    connect_ms: Summary
    prefill_ms: Summary
    client: ClientLoad
    turns: list[TurnRecord]


def record_of(session: int, index: int, started: float, turn: Turn) -> TurnRecord:
    usage = turn.usage or {}
    return TurnRecord(
        session=session, turn=index, end=turn.end, started_s=started,
        error=(turn.error or {}).get("code") if turn.end == "error" else (None if turn.end == "done" else turn.end),
        toolcall_ms=ms(turn.toolcall_s), ttft_ms=ms(turn.first_token_s),
        first_3_words_ms=ms(turn.first_3_words_s), first_sentence_ms=ms(turn.first_sentence_s),
        total_ms=ms(turn.total_s), tokens=turn.tokens,
        prompt_tokens=usage.get("prompt_tokens"), cached_prompt_tokens=usage.get("cached_prompt_tokens"),
        server_ttft_ms=usage.get("ttft_ms"),
    )


class Bench:
    """One benchmark run: its sessions, their records, and the client's own load."""

    def __init__(self, cfg: BenchConfig, target: Target, utterances: Sequence[str],
                 on_turn: Callable[[], None] = lambda: None) -> None:
        self.cfg = cfg
        self.target = target
        self.utterances = list(utterances)
        self.on_turn = on_turn
        self.records: list[TurnRecord] = []
        self.connects: list[float | None] = []
        self.prefills: list[float | None] = []
        self.lags: list[float] = []
        self.t0 = 0.0

    async def run(self) -> BenchReport:
        proc_times = os.times()
        self.t0 = time.perf_counter()
        monitor = asyncio.create_task(self._watch_loop())
        try:
            if self.cfg.mode == "burst":
                await self._burst()
            else:
                await self._open_loop()
        finally:
            monitor.cancel()
        wall = time.perf_counter() - self.t0
        cpu = sum(os.times()[:2]) - sum(proc_times[:2])
        return self._report(wall, 100.0 * cpu / wall)

    # --- scheduling ------------------------------------------------------------
    async def _open_loop(self) -> None:
        slots = asyncio.Semaphore(self.cfg.concurrency)
        rng = random.Random(self.cfg.seed)

        async def one(i: int) -> None:
            async with slots:
                await self._session(i, None)

        tasks = []
        for i in range(self.cfg.sessions):
            if self.cfg.mode == "poisson" and i:
                await asyncio.sleep(rng.expovariate(self.cfg.rate or 1.0))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)

    async def _burst(self) -> None:
        for start in range(0, self.cfg.sessions, self.cfg.concurrency):
            wave = range(start, min(start + self.cfg.concurrency, self.cfg.sessions))
            barrier = asyncio.Barrier(len(wave))
            await asyncio.gather(*(self._session(i, barrier) for i in wave))

    async def _watch_loop(self, period: float = 0.01) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(period)
            self.lags.append((time.perf_counter() - t - period) * 1000.0)

    # --- one session -------------------------------------------------------------
    async def _session(self, i: int, barrier: asyncio.Barrier | None) -> None:
        t = time.perf_counter()
        try:
            conn = await self.target.connect()
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:  # a failed session, not a crash
            self.connects.append(None)
            self._fail_all(i, f"connect_failed: {type(exc).__name__}")
            if barrier is not None:
                await _leave(barrier, self.cfg.turns)
            return
        self.connects.append((time.perf_counter() - t) * 1000.0)
        try:
            await self._turns(conn, i, barrier)
        finally:
            await conn.close()

    async def _turns(self, conn: YapConnection, i: int, barrier: asyncio.Barrier | None) -> None:
        sid = new_id()
        sampling = {"max_tokens": self.cfg.max_tokens} if self.cfg.max_tokens else {}
        if self.cfg.prefill:
            try:
                ready = await conn.turn("start", sid, {"sampling": sampling} if sampling else {}, wait_s=self.target.timeout)
            except (ProtocolError, ConnectionClosed):
                ready = Turn(request_id="", end="closed")
            self.prefills.append(ms(ready.total_s) if ready.end == "ready" else None)
        for k in range(self.cfg.turns):
            if barrier is not None:
                await barrier.wait()
            utterance = self.utterances[(i + k) % len(self.utterances)]
            kind = "message" if (k or self.cfg.prefill) else "start"
            payload: dict[str, Any] = {"user_utterance": utterance}
            if sampling and kind == "start":
                payload["sampling"] = sampling
            started = time.perf_counter() - self.t0
            try:
                turn = await conn.turn(kind, sid, payload, wait_s=self.target.timeout)
            except ProtocolError:
                turn = Turn(request_id="", end="timeout")
            except ConnectionClosed:  # the send found the socket closed
                turn = Turn(request_id="", end="closed")
            self.records.append(record_of(i, k, started, turn))
            self.on_turn()
            if turn.end != "done":
                self._fail_all(i, self.records[-1].error or turn.end, first=k + 1)
                if barrier is not None:
                    await _leave(barrier, self.cfg.turns - k - 1)
                return
            if self.cfg.think_ms:
                await asyncio.sleep(self.cfg.think_ms / 1000.0)
        with contextlib.suppress(ConnectionClosed):
            await conn.send("end", sid)

    def _fail_all(self, i: int, why: str, first: int = 0) -> None:
        """Record the turns a broken session will never run."""
        for k in range(first, self.cfg.turns):
            self.records.append(TurnRecord(session=i, turn=k, end="skipped", error=why))
            self.on_turn()

    # --- the report ------------------------------------------------------------
    def _report(self, wall: float, cpu_percent: float) -> BenchReport:
        ok = [r for r in self.records if r.end == "done"]
        failures: dict[str, int] = {}
        for r in self.records:
            if r.end != "done":
                key = r.error or r.end
                failures[key] = failures.get(key, 0) + 1

        def table(rows: list[TurnRecord]) -> dict[str, Summary]:
            return {m: summarize([getattr(r, m) for r in rows]) for m in METRICS}

        return BenchReport(
            config=self.cfg,
            date_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine=machine_line(),
            wall_s=wall,
            turns_ok=len(ok),
            turns_failed=len(self.records) - len(ok),
            failures=failures,
            turns_per_s=len(ok) / wall,
            token_frames_per_s=sum(r.tokens for r in self.records) / wall,
            first_turn=table([r for r in ok if r.turn == 0]),
            later_turns=table([r for r in ok if r.turn > 0]),
            all_turns=table(ok),
            connect_ms=summarize(self.connects),
            prefill_ms=summarize(self.prefills),
            client=ClientLoad(cpu_percent=cpu_percent, loop_lag=summarize(self.lags)),
            turns=sorted(self.records, key=lambda r: (r.session, r.turn)),
        )


async def _leave(barrier: asyncio.Barrier, waits: int) -> None:
    """A session that broke still meets its wave at each remaining barrier, so
    the others are not left waiting for it."""
    for _ in range(waits):
        await barrier.wait()


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return (f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def render(report: BenchReport) -> str:
    c = report.config
    lines = [
        f"yap bench {report.date_utc} on {report.machine}",
        f"server {c.server}: {c.sessions} sessions x {c.turns} turns, concurrency {c.concurrency}, mode {c.mode}"
        + (f" at {c.rate}/s" if c.mode == "poisson" else "") + (", prefilled" if c.prefill else ""),
        f"turns ok {report.turns_ok}, failed {report.turns_failed}"
        + (f" {report.failures}" if report.failures else "")
        + f"; {report.wall_s:.2f} s, {report.turns_per_s:.1f} turns/s, {report.token_frames_per_s:.0f} token frames/s",
    ]
    for title, table in (("first turn (pays the prefill)", report.first_turn),
                         ("later turns", report.later_turns)):
        n = max(s.count for s in table.values())
        if not n:
            continue
        lines.append(f"\n{title}, n={n}, ms:")
        lines.append(f"  {'':16}{'avg':>9}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}")
        for m in METRICS:
            s = table[m]
            if s.count:
                lines.append(f"  {LABELS[m]:16}" + "".join(f"{fmt_ms(v):>9}" for v in (s.avg, s.p50, s.p90, s.p95, s.p99)))
    lines.append(f"\nconnect p50 {fmt_ms(report.connect_ms.p50)} ms, p95 {fmt_ms(report.connect_ms.p95)} ms"
                 + (f"; prefill (ready) p50 {fmt_ms(report.prefill_ms.p50)} ms" if report.prefill_ms.count else ""))
    lag = report.client.loop_lag
    lines.append(f"client: {report.client.cpu_percent:.0f}% of one core; event-loop lag p50 {fmt_ms(lag.p50)} "
                 f"p99 {fmt_ms(lag.p99)} max {fmt_ms(lag.max)} ms")
    return "\n".join(lines)


def plot(report: BenchReport, path: Path) -> None:
    """ECDFs of each latency, first turns against later ones (matplotlib, imported here)."""
    try:
        import matplotlib
    except ImportError:
        raise click.ClickException("--plot needs matplotlib: pip install 'yap-core[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report.turns if r.end == "done"]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6), sharey=True)
    for ax, m in zip(axes, METRICS, strict=True):
        for label, rows in (("first turn", [r for r in ok if r.turn == 0]), ("later turns", [r for r in ok if r.turn > 0])):
            xs = sorted(v for r in rows if (v := getattr(r, m)) is not None)
            if xs:
                ax.step(xs, [(k + 1) / len(xs) for k in range(len(xs))], where="post", label=f"{label} (n={len(xs)})")
        ax.set_title(LABELS[m])
        ax.set_xlabel("ms")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of turns")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="lower right")
    c = report.config
    fig.suptitle(f"yap bench: {c.sessions} sessions x {c.turns} turns, c={c.concurrency}, {c.mode} ({report.date_utc})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_utterances(path: Path | None) -> list[str]:
    if path is None:
        return list(DEFAULT_UTTERANCES)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise click.BadParameter(f"{path}: no utterances", param_hint="--utterances")
    return lines


@click.command("bench")
@target_options
@click.option("-n", "--sessions", type=click.IntRange(min=1), default=20, show_default=True, help="Sessions (conversations) in all.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="Sessions open at once.")
@click.option("--turns", type=click.IntRange(min=1), default=3, show_default=True, help="Turns per session.")
@click.option("--mode", type=click.Choice(["closed", "burst", "poisson"]), default="closed", show_default=True,
              help="closed: next session when a slot frees; burst: waves of -c whose turns fire together; "
                   "poisson: sessions arrive at --rate per second.")
@click.option("--rate", type=click.FloatRange(min=0.001), default=None, help="Arrivals per second (poisson mode).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="sampling.max_tokens per turn (default: the server's).")
@click.option("--prefill", is_flag=True, help="Open each session with a start without utterance (ready), then send every turn as a message.")
@click.option("--think-ms", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Pause between a session's turns.")
@click.option("--utterances", "utterances_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="One utterance a line (default: a built-in mix).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the poisson arrivals.")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the full report (every turn) as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write a PNG of the latency distributions.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.option("--max-failures", type=click.IntRange(min=0), default=0, show_default=True, help="Exit 1 when more turns than this fail.")
def bench_command(target: Target, sessions: int, concurrency: int, turns: int, mode: Mode, rate: float | None,
                  max_tokens: int | None, prefill: bool, think_ms: float, utterances_file: Path | None, seed: int,
                  json_out: Path | None, plot_path: Path | None, progress: bool, max_failures: int) -> None:
    """Latency benchmark: per-turn toolcall, first token, first 3 words, first sentence, total."""
    if mode == "poisson" and rate is None:
        raise click.BadParameter("poisson mode needs --rate", param_hint="--rate")
    if mode != "poisson" and rate is not None:
        raise click.BadParameter("--rate applies to --mode poisson only", param_hint="--rate")
    cfg = BenchConfig(server=target.url, sessions=sessions, concurrency=min(concurrency, sessions), turns=turns,
                      mode=mode, rate=rate, max_tokens=max_tokens, prefill=prefill, think_ms=think_ms, seed=seed)
    from tqdm import tqdm

    with tqdm(total=sessions * turns, unit="turn", file=sys.stderr, disable=not progress, leave=False) as bar:
        report = asyncio.run(Bench(cfg, target, load_utterances(utterances_file), lambda: bar.update(1)).run())
    click.echo(render(report))
    if json_out:
        json_out.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2))
        click.echo(f"report: {json_out}")
    if plot_path:
        plot(report, plot_path)
        click.echo(f"plot: {plot_path}")
    if report.turns_failed > max_failures:
        click.echo(f"FAIL: {report.turns_failed} turn(s) failed (allowed {max_failures}): {report.failures}", err=True)
        sys.exit(1)
