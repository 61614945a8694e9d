"""One voice session through `yap serve`: where each turn's time to first
token goes while its history grows.

    .venv/bin/python benchmarks/session_turns.py [--engine hf] [--turns 30] [--history-turns 10] [--stateless | --first-turns | --cold-starts]

The session opens with a ~600-token system prompt and a history of earlier
turns (prefilled: `start` without an utterance), then sends `message` turns,
each after a pause (the user speaking; the client keeps its event loop busy
meanwhile, as a voice app's is). From the server's TURN_TIMING_LOG lines it
prints, per turn at p50 / p90: the time from the frame's arrival until the
turn's task runs, the render on the turn's path, the time from the frame's
arrival to the engine call, the engine's own time to first text,
the two socket hops, and what the server and the sockets added (the client's
TTFT minus the engine's own). The first turns (--skip) are not counted.
With --stateless the client keeps the conversation itself, as some
frameworks do: every turn is a `start` with the system prompt, the whole
history as it heard it and the utterance. With --first-turns every turn is a
new session's first: `start` without an utterance (the prefill, `ready`),
then the `message` (as the GPU benchmark's warm cells do). With --cold-starts
every turn is a new session's `start` carrying its system prompt and the
utterance, no prefill and no history (the GPU benchmark's cold cells): each
system prompt is the same text with a new caller's number and name.

The default engine is hf (the embedded SmolLM2 on CPU): its own TTFT is tens
of milliseconds, but what is measured around it does not depend on it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from yap_core.server_process import ServerProcess
from yap_core.turn import timing_records
from yap_core.wsclient import YapConnection

KEY = "session-turns-bench-key"
WORDS = ("weather city music river coffee garden train morning window story evening market letter mountain "
         "question answer friend kitchen dinner holiday summer winter paper number office doctor").split()  # fmt: skip
NAMES = ("Alice Bruno Chiara Dmitri Esther Farid Greta Hiro Ines Jonas Kemal Lena Mateo Nadia Oskar Priya Quinn Rosa "
         "Soren Tamar Ugo Vera Wanjiru Xavier Yusuf Zofia").split()  # fmt: skip


async def spin() -> None:
    while True:  # noqa: ASYNC110 (the point: the client's loop never sleeps)
        await asyncio.sleep(0)


def p(xs: list[float], q: float) -> str:
    xs = sorted(xs)
    return f"{xs[min(len(xs) - 1, int(q * len(xs)))]:.3f}" if xs else "-"


async def session(args: argparse.Namespace) -> tuple[list[Any], Path]:
    """Run the session; its turns and the server's log."""
    log = Path(tempfile.mkstemp(prefix="yap-session-turns-", suffix=".log")[1])
    env = {"TEXT_API_KEY": KEY, "INFERENCE_ENGINE": args.engine, "DEPLOY_MODE": "chat", "TURN_TIMING_LOG": "1",
           "WS_MAX_MESSAGES_PER_WINDOW": "0", "LOG_LEVEL": "INFO", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}  # fmt: skip
    server = ServerProcess(env, log_path=log)
    await server.start(seconds=300)
    spinner = asyncio.create_task(spin())
    rng = random.Random(3)
    system = "You are a friendly voice assistant. " + " ".join(rng.choice(WORDS) for _ in range(args.system_words)) + "."
    history: list[dict[str, str]] = []
    for _ in range(args.history_turns):
        history.append({"role": "user", "content": "Tell me about " + " ".join(rng.choice(WORDS) for _ in range(20)) + "?"})
        history.append({"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(60)) + "."})
    sampling = {"max_tokens": args.max_tokens}
    turns = []
    try:
        async with await YapConnection.open(server.ws_url, KEY) as conn:
            sid = uuid.uuid4().hex
            ready = await conn.turn("start", sid, {"chat_prompt": system, "history": history, "sampling": sampling}, wait_s=300)
            assert ready.end == "ready", (ready.end, ready.error)
            for _ in range(args.turns):
                await asyncio.sleep(args.pause_ms / 1000)
                user = "Tell me about " + " ".join(rng.choice(WORDS) for _ in range(20)) + "?"
                if args.stateless:
                    payload = {"chat_prompt": system, "history": history, "user_utterance": user, "sampling": sampling}
                    turn = await conn.turn("start", sid, payload, wait_s=300)
                elif args.cold_starts:
                    sid = uuid.uuid4().hex
                    own = f"Caller {4000 + len(turns)} is {NAMES[len(turns) % len(NAMES)]}{len(turns) // len(NAMES) or ''}. {system}"
                    turn = await conn.turn("start", sid, {"chat_prompt": own, "user_utterance": user, "sampling": sampling}, wait_s=300)
                elif args.first_turns:
                    sid = uuid.uuid4().hex
                    ready = await conn.turn("start", sid, {"chat_prompt": system, "sampling": sampling}, wait_s=300)
                    assert ready.end == "ready", (ready.end, ready.error)
                    await asyncio.sleep(args.pause_ms / 1000)
                    turn = await conn.turn("message", sid, {"user_utterance": user, "sampling": sampling}, wait_s=300)
                else:
                    turn = await conn.turn("message", sid, {"user_utterance": user, "sampling": sampling}, wait_s=300)
                assert turn.end == "done", (turn.end, turn.error)
                history = [*history, {"role": "user", "content": user}, {"role": "assistant", "content": turn.final or ""}]
                turns.append(turn)
    finally:
        spinner.cancel()
        await server.stop()
    return turns, log


def report(args: argparse.Namespace, turns: list[Any], log: Path) -> None:
    records = timing_records(log.read_text(errors="replace"))
    log.unlink(missing_ok=True)
    cols: dict[str, list[float]] = {k: [] for k in ("task", "render", "before engine", "engine", "hop in", "hop out", "added")}
    for t in turns[args.skip:]:
        rec = records[t.request_id]
        client_ms = t.first_token_s * 1e3
        cols["task"].append(rec["task_ms"])
        cols["render"].append(rec["render_call_ms"])
        cols["before engine"].append(rec["submit_ms"])
        cols["engine"].append(rec["engine_first_ms"])
        cols["hop in"].append((rec["received_at"] - t.sent_at) * 1e3)
        cols["hop out"].append((t.sent_at + t.first_token_s - rec["first_token_at"]) * 1e3)
        cols["added"].append(client_ms - rec["engine_first_ms"])
    how = "a start with the whole history each turn" if args.stateless else "message turns"
    how = "each turn a new session's first, after its prefill" if args.first_turns else how
    how = "each turn a new session's start with a new system prompt and the utterance" if args.cold_starts else how
    print(f"engine {args.engine}; {how}; {len(turns) - args.skip} turns counted of {len(turns)}, {args.history_turns} turns of "
          f"history at start, {args.max_tokens}-token replies, {args.pause_ms:g} ms pause before each; p50 / p90 ms:")  # fmt: skip
    for name, xs in cols.items():
        print(f"  {name:14s} {p(xs, 0.5):>8s} / {p(xs, 0.9)}")
    print(f"  (mean added {statistics.mean(cols['added']):.3f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", default="hf", help="INFERENCE_ENGINE of the server")
    ap.add_argument("--turns", type=int, default=30)
    ap.add_argument("--history-turns", type=int, default=10, help="turns of history sent with the session's start")
    ap.add_argument("--system-words", type=int, default=500,
                    help="words of the system prompt (~600 tokens for hf; the scripted engine's byte tokenizer "
                         "takes at most ~200 words and --history-turns 2 within CHAT_MAX_LEN)")
    ap.add_argument("--max-tokens", type=int, default=40, help="reply length; each reply joins the history")
    ap.add_argument("--pause-ms", type=float, default=300.0, help="before each turn")
    ap.add_argument("--skip", type=int, default=5, help="first turns not counted")
    modes = ap.add_mutually_exclusive_group()
    modes.add_argument("--stateless", action="store_true", help="every turn a start carrying the whole history")
    modes.add_argument("--first-turns", action="store_true", help="every turn a new session's first, after its prefill")
    modes.add_argument("--cold-starts", action="store_true", help="every turn a new session's start with its utterance")
    args = ap.parse_args()
    t0 = time.perf_counter()
    turns, log = asyncio.run(session(args))
    report(args, turns, log)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
