"""Server overhead (issue 3, Speed): how much the server itself costs per frame.

Runs `yap serve` on the scripted instant engine (tokens come as fast as the
event loop asks), so the server is the bottleneck, pinned to one core, with
this client pinned to another, and prints:

1. Time to first token on one idle socket, and the ping/pong round trip on the
   same socket. The engine's first token is instant, so TTFT minus the RTT is
   what the server adds (decode, session, prompt render and tokenize, engine
   call, sanitizer, encode, send) before the client has its first token.
2. Tokens per second the one server core pushes to many sockets at once, and
   the server's CPU time per token (its process CPU seconds over the tokens it
   sent: every per-turn cost is spread over them). Tokens, not frames: when
   the server lags, a turn's pieces join one frame (connection.Outbox), so
   frames alone would flatter a saturated server; the scripted reply is one
   word per token, so the client counts words. Also, from TURN_TIMING_LOG, how
   long each turn started in that window waited for its task to run, for
   the engine call and for its first token frame to be queued while the core
   was busy; and each such turn's TTFT at the client.

    .venv/bin/python benchmarks/server_overhead.py [--sessions 64] [--seconds 10] [--client-deflate [--server-deflate]]
        [--step-ms 3 --message-tokens 100]

--client-deflate: the clients offer permessage-deflate, as browsers do (the
server declines unless --server-deflate sets WS_PERMESSAGE_DEFLATE).
--step-ms: the scripted engine gives tokens in batched steps (SCRIPTED_STEP_MS),
in the order vLLM hands a step's outputs over, instead of at once: the load a
GPU engine puts on the server's event loop. --message-tokens: the throughput
phase's turns are `message` turns of that many tokens, each session's history
growing as a conversation's does, instead of a new `start` each turn.

Targets: < 50 us of server time per token frame, < 1 ms added to TTFT at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from websockets.exceptions import ConnectionClosed
from yap_core.latency_stats import Summary, fmt_ms, summarize
from yap_core.server_process import ServerProcess
from yap_core.turn import timing_records
from yap_core.wsclient import Frame, ProtocolError, YapConnection, new_id

KEY = "overhead-bench-key"
REPLY = " ".join(f"word{i % 10}" for i in range(400)) + "."


def server_env(deploy_mode: str, deflate: bool = False, step_ms: float = 0.0) -> dict[str, str]:
    return {
        "SCRIPTED_STEP_MS": str(step_ms),
        "WS_PERMESSAGE_DEFLATE": "true" if deflate else "false",
        "TEXT_API_KEY": KEY,
        "INFERENCE_ENGINE": "scripted",
        "TOOL_CLASSIFIER": "scripted",
        "DEPLOY_MODE": deploy_mode,
        "SCRIPTED_REPLY": REPLY,
        "CHAT_MAX_OUT": "400",
        "MAX_CONCURRENT_CONNECTIONS": "1000",
        "WS_MAX_MESSAGES_PER_WINDOW": "0",
        "WS_MAX_CANCELS_PER_WINDOW": "0",
        "LOG_LEVEL": "WARNING",
        "TURN_TIMING_LOG": "true",  # each turn's wait for its task, read in the throughput phase
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
    }


async def ttft_phase(
    url: str, turns: int, *, fresh: bool, pause_s: float = 0.0, compression: str | None = None
) -> tuple[Summary, Summary, Summary]:
    """Sequential one-token turns and pings on one socket: TTFT, RTT, server ttft.
    fresh: each turn a `start` (the session replaced: a short prompt); else
    `message` turns whose history grows up to HISTORY_MAX_TOKENS. pause_s:
    the wait after each turn's ping, where a voice user speaks (the server
    prepares the next turn then; with none, the next turn meets that work)."""
    ttft: list[float | None] = []
    rtt: list[float | None] = []
    server: list[float | None] = []
    async with await YapConnection.open(url, KEY, compression=compression) as conn:
        sid = new_id()
        ready = await conn.turn("start", sid, {}, wait_s=10)
        assert ready.end == "ready", ready
        for i in range(turns):
            payload = {"user_utterance": f"hello number {i}", "sampling": {"max_tokens": 1}}
            turn = await conn.turn("start" if fresh else "message", sid, payload, wait_s=10)
            if turn.end != "done":
                raise SystemExit(f"turn {i} ended {turn.end}: {turn.error}")
            ttft.append(None if turn.first_token_s is None else turn.first_token_s * 1e3)
            server.append((turn.usage or {}).get("ttft_ms"))
            t = await conn.send("ping", sid, f"p{i}")
            while (await conn.recv(10)).type != "pong":
                pass
            rtt.append((conn.clock() - t) * 1e3)
            if pause_s:
                await asyncio.sleep(pause_s)
    return summarize(ttft), summarize(rtt), summarize(server)


async def gap_phase(url: str, turns: int, compression: str | None = None) -> Summary:
    """One stream at a time: the gap between consecutive token frames at the
    client. The engine yields its next token at once, so the gap is the
    server's wall time per token frame (engine step, sanitizer, encode, send)."""
    gaps: list[float | None] = []
    async with await YapConnection.open(url, KEY, compression=compression) as conn:
        sid = new_id()
        for _ in range(turns):
            arrivals: list[float] = []

            def on_frame(frame: Frame, at: float, arrivals: list[float] = arrivals) -> None:
                if frame.type == "token":
                    arrivals.append(at)

            turn = await conn.turn("start", sid, {"user_utterance": "go on"}, wait_s=30, on_frame=on_frame)
            if turn.end != "done":
                raise SystemExit(f"turn ended {turn.end}: {turn.error}")
            gaps += [(b - a) * 1e6 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return summarize(gaps)


async def _stream_until(
    url: str, sessions: int, start: float, stop: float, compression: str | None, message_tokens: int = 0
) -> tuple[int, int, list[float]]:
    """Open `sessions` sockets, then from `start` to `stop` run turns back to
    back; returns the token frames and the tokens (words) that arrived inside
    the window, and the TTFT (ms) of each turn sent inside it. message_tokens:
    `message` turns of that many tokens on each socket's one session (its
    history growing, as a conversation's does), instead of a `start` each turn."""
    conns = [await YapConnection.open(url, KEY, compression=compression) for _ in range(sessions)]
    sids = [new_id() for _ in conns]
    for conn, sid in zip(conns, sids, strict=True):
        ready = await conn.turn("start", sid, {}, wait_s=30)
        assert ready.end == "ready", ready
    frames = tokens = 0
    ttfts: list[float] = []

    def count(frame: Frame, _at: float) -> None:
        nonlocal frames, tokens
        if frame.type == "token" and start <= time.perf_counter() <= stop:
            frames += 1
            tokens += len(frame.payload.get("text", "").split())

    async def one(conn: YapConnection, sid: str) -> None:
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            if message_tokens:
                payload = {"user_utterance": "go on", "sampling": {"max_tokens": message_tokens}}
                turn = await conn.turn("message", sid, payload, wait_s=60, on_frame=count)
            else:  # same session each time, its history reset: prompts stay small
                turn = await conn.turn("start", sid, {"user_utterance": "go on"}, wait_s=60, on_frame=count)
            if turn.end != "done":
                raise SystemExit(f"turn ended {turn.end}: {turn.error}")
            if start <= sent <= stop and turn.first_token_s is not None:
                ttfts.append(turn.first_token_s * 1e3)

    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    try:
        await asyncio.gather(*(one(c, s) for c, s in zip(conns, sids, strict=True)))
    except (ProtocolError, ConnectionClosed) as exc:
        raise SystemExit(f"throughput phase failed: {exc}") from exc
    for conn in conns:
        await conn.close()
    return frames, tokens, ttfts


def _worker(
    url: str, sessions: int, start: float, stop: float, cpu: int | None, compression: str | None, message_tokens: int
) -> tuple[int, int, list[float], float]:
    """A client process (its own core): token frames counted, TTFTs, and its CPU seconds."""
    if cpu is not None:
        pin({cpu})
    frames, tokens, ttfts = asyncio.run(_stream_until(url, sessions, start, stop, compression, message_tokens))
    t = psutil.Process().cpu_times()
    return frames, tokens, ttfts, t.user + t.system


async def throughput_phase(url: str, sessions: int, seconds: float, server_pid: int,
                           client_cpus: list[int | None], compression: str | None = None,
                           message_tokens: int = 0) -> dict[str, Any]:
    """Many sockets, spread over client processes, streaming long replies for
    `seconds`: token frames per second, and the server's CPU time per frame."""
    import concurrent.futures
    import multiprocessing

    start = time.perf_counter() + 3.0 + 0.02 * sessions  # time to open every socket first
    stop = start + seconds
    per = [sessions // len(client_cpus) + (i < sessions % len(client_cpus)) for i in range(len(client_cpus))]
    server = psutil.Process(server_pid)
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("spawn")  # perf_counter is CLOCK_MONOTONIC: shared by processes
    with concurrent.futures.ProcessPoolExecutor(len(client_cpus), mp_context=ctx) as pool:
        futures = [loop.run_in_executor(pool, _worker, url, n, start, stop, cpu, compression, message_tokens)
                   for n, cpu in zip(per, client_cpus, strict=True) if n]
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        s0 = server.cpu_times()
        await asyncio.sleep(max(0.0, stop - time.perf_counter()))
        s1 = server.cpu_times()
        results = await asyncio.gather(*futures)
    frames = sum(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    server_cpu = (s1.user + s1.system) - (s0.user + s0.system)
    return {
        "wall_s": seconds,
        "token_frames": frames,
        "frames_per_s": frames / seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "server_us_per_token": 1e6 * server_cpu / max(tokens, 1),
        "server_cpu_percent": 100 * server_cpu / seconds,
        "client_processes": len(results),
        "server_us_per_frame": 1e6 * server_cpu / max(frames, 1),
        "start": start,
        "stop": stop,
        "ttft": summarize([x for r in results for x in r[2]]),
    }


def turn_waits(log: Path, start: float, stop: float) -> tuple[Summary, Summary, Summary]:
    """task_ms, submit_ms and ttft_ms (TURN_TIMING_LOG) of the turns whose
    frame arrived in [start, stop]: how long a new turn waited for its task,
    for the engine call, and for its first token frame to be queued, while the
    server's core was busy."""
    recs = [r for r in timing_records(log.read_text(errors="replace")).values() if start <= r["received_at"] <= stop]
    task, submit, ttft = ([r[k] for r in recs] for k in ("task_ms", "submit_ms", "ttft_ms"))
    return summarize(task), summarize(submit), summarize(ttft)


def pin(cpus: set[int]) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, cpus)


async def run(args: argparse.Namespace) -> None:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = args.pin and len(cpus) >= 2
    load = os.getloadavg()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared box: other work runs too)")
    procs = max(1, min(args.client_procs, len(cpus) - 1)) if pinned else args.client_procs
    client_cpus: list[int | None] = list(cpus[1:1 + procs]) if pinned else [None] * procs
    print(f"server pinned to CPU {cpus[0]}, clients to CPUs {client_cpus}" if pinned else "not pinned")
    compression = "deflate" if args.client_deflate else None
    print(f"clients offer permessage-deflate: {args.client_deflate}; WS_PERMESSAGE_DEFLATE={args.server_deflate}")
    for mode in args.modes:
        log = Path(tempfile.mkstemp(prefix=f"yap-overhead-{mode}-", suffix=".log")[1])
        if pinned:
            pin({cpus[0]})  # the child inherits this affinity, threads included
        srv = ServerProcess(server_env(mode, args.server_deflate, args.step_ms), log_path=log)
        try:
            await srv.start(seconds=120)
        finally:
            if pinned:
                pin({cpus[1]})
        try:
            print(f"\n== DEPLOY_MODE={mode} (scripted engine{' + scripted classifier' if mode == 'both' else ''}) ==")
            for fresh in (True, False):
                ttft, rtt, server = await ttft_phase(
                    srv.ws_url, args.turns, fresh=fresh, pause_s=args.pause_ms / 1000, compression=compression
                )
                what = "fresh session each turn (short prompt)" if fresh else "one session, history growing"
                what += f", {args.pause_ms:g} ms pause after each" if args.pause_ms else ""
                print(f"TTFT, one idle socket, {ttft.count} turns, {what}: p50 {fmt_ms(ttft.p50)} "
                      f"p90 {fmt_ms(ttft.p90)} p99 {fmt_ms(ttft.p99)} ms")
                print(f"  ping/pong RTT same socket: p50 {fmt_ms(rtt.p50)} p90 {fmt_ms(rtt.p90)} ms; "
                      f"server-reported ttft_ms p50 {fmt_ms(server.p50)} p90 {fmt_ms(server.p90)}")
                if ttft.p50 is not None and rtt.p50 is not None:
                    print(f"  server-added TTFT (p50 TTFT - p50 RTT): {(ttft.p50 - rtt.p50) * 1000:.0f} us "
                          "(target < 1000 us)")
            gap = await gap_phase(srv.ws_url, args.gap_turns, compression)
            print(f"one stream, gap between token frames at the client ({gap.count} gaps): p50 {gap.p50:.0f} us, "
                  f"p90 {gap.p90:.0f} us, p99 {gap.p99:.0f} us (server wall time per frame, engine step included)")
            t = await throughput_phase(
                srv.ws_url, args.sessions, args.seconds, srv.pid, client_cpus, compression, args.message_tokens
            )
            print(f"throughput, {args.sessions} sockets from {t['client_processes']:.0f} client process(es), "
                  f"{t['wall_s']:.0f} s: {t['tokens']:.0f} tokens in {t['token_frames']:.0f} token frames = "
                  f"{t['tokens_per_s']:.0f} tokens/s, {t['frames_per_s']:.0f} frames/s")
            print(f"server CPU {t['server_cpu_percent']:.0f}% of its one core; "
                  f"server CPU time per token: {t['server_us_per_token']:.1f} us, per token frame: "
                  f"{t['server_us_per_frame']:.1f} us (target < 50 us)")
            ttft = t["ttft"]
            if ttft.count:
                print(f"  TTFT of the turns sent in the window ({ttft.count}): p50 {ttft.p50:.2f} "
                      f"p90 {ttft.p90:.2f} p99 {ttft.p99:.2f} ms")
            await asyncio.sleep(0.2)  # the last turns' timing lines
            task, submit, queued = turn_waits(log, t["start"], t["stop"])
            print(f"  turns started in the window: {task.count}; frame in -> the turn's task runs p50 "
                  f"{fmt_ms(task.p50)} p90 {fmt_ms(task.p90)} ms, -> engine called p50 {fmt_ms(submit.p50)} "
                  f"p90 {fmt_ms(submit.p90)} ms, -> first token frame queued p50 {fmt_ms(queued.p50)} "
                  f"p90 {fmt_ms(queued.p90)} ms")
        finally:
            await srv.stop()
            await asyncio.to_thread(log.unlink, missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=64, help="sockets streaming at once in the throughput phase")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the throughput phase")
    ap.add_argument("--turns", type=int, default=300, help="sequential turns in the TTFT phase")
    ap.add_argument("--pause-ms", type=float, default=0.0, help="TTFT phase: pause after each turn (a user speaking)")
    ap.add_argument("--client-procs", type=int, default=1, help="client processes in the throughput phase (each on its own core)")
    ap.add_argument("--gap-turns", type=int, default=20, help="400-token turns in the single-stream gap phase")
    ap.add_argument("--modes", nargs="+", default=["chat", "both"], choices=["chat", "both"])
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and client to separate CPUs")
    ap.add_argument("--client-deflate", action="store_true", help="clients offer permessage-deflate, as browsers do")
    ap.add_argument("--server-deflate", action="store_true", help="WS_PERMESSAGE_DEFLATE=true: the server accepts it")
    ap.add_argument("--step-ms", type=float, default=0.0,
                    help="SCRIPTED_STEP_MS: tokens in batched steps, as a GPU engine gives them (0: instant)")
    ap.add_argument("--message-tokens", type=int, default=0,
                    help="throughput phase: `message` turns of N tokens, history growing (0: a `start` each turn)")
    args = ap.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
