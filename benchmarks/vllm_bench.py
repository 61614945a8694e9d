#!/usr/bin/env python3
"""vLLM: raw AsyncLLM versus the full Yap WebSocket path, same model, same run.

Three phases, each a separate process so each has the GPU to itself:

  raw   Starts the vLLM engine plugin in-process and measures, on the same
        AsyncLLM, (a) raw ``AsyncLLM.generate`` and (b) the plugin's
        ``VllmEngine.stream`` wrapper. Prompts are rendered by the core's own
        PromptBuilder and sampled with the core's banned-phrase bias, exactly
        as the server does, so the engine sees the same requests.
  ws    Starts ``yap serve`` (INFERENCE_ENGINE=vllm, same settings) and drives
        it through WebSockets with the same prompts.
  both  raw then ws on ONE engine core (raw AsyncLLM as client 1, ``--workers``
        Yap worker processes as the others, ``--pin-engine`` cores for the
        engine core alone): no engine-to-engine variance between the sides.
        The figures the docs judge the targets on. ``--raw-clients K`` adds
        sustained windows with the raw sessions spread over K AsyncLLM
        clients (raw-split), as the workers spread theirs.
  report  Merges the two JSON files into a markdown table and checks targets.
  turns   Each turn's server-side split (TURN_TIMING_LOG) of one or more server
        logs (``bench_both_w*.server.log`` in the step's ``.tgz``), as
        percentiles: how long a turn's frame waits for its task, for the
        engine call, for the engine's first token.

Sustained (16 and 64 sessions): every session runs turns back to back for
SUSTAIN_S seconds (a fixed system prompt per session, prefix-cached after its
first turn, a new utterance each turn), as a busy deployment does; output
tokens/s over that window (each turn's tokens spread evenly over its
first-to-last-token time, cut to the window) and the turns' TTFT. No
synchronised burst: the throughput figure the targets are judged on. With
``both``, two windows a side, in the order raw, ws, ws, raw (a drift of the
engine's speed over the minutes of a run weighs on both sides alike), and the
WebSocket side's time between a session's two engine requests split into its
hops (``cycle_split``): what a session spends outside the engine is what
lowers the requests per step.

Workloads: concurrency 1, 16, 64 (sessions at once), each "cold" (a fresh
~600-token system prompt per session) and "warm" (the session's prefix is
prefilled first: ``start`` without an utterance on the wire, ``prefill`` on the
engine). Per cell: TTFT p50/p90 from request to first token, aggregate output
tokens/s over the round's wall time. Cancel: time from ``abort`` (raw) or
the client's ``cancel`` frame (ws) to the abort being seen: the final abort
output / ``cancelled`` frame, and the scheduler's running count reaching 0.

Usage (on the GPU machine; see gpu/check.sh):
  python benchmarks/vllm_bench.py raw --model DIR --out raw.json [--load-format dummy]
  python benchmarks/vllm_bench.py ws  --model DIR --out ws.json  [--load-format dummy]
  python benchmarks/vllm_bench.py both --model DIR --workers 4 --pin-engine 3 --out both.json
  python benchmarks/vllm_bench.py report raw.json ws.json --out vllm_bench.md   (or: report both.json)
  python benchmarks/vllm_bench.py turns bench_both_w1.server.log [more logs]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from yap_core.latency_stats import percentile

CONCURRENCY = (1, 16, 64)
CLIENT_PROCS = 8
WARMUP_SEED = 10_000_000
ROUNDS = {1: 20, 16: 5, 64: 3}  # c=1 gets many rounds: its p50 is compared to within 1 ms
SUSTAIN_C = (16, 64)
SUSTAIN_WARM_S = 3.0  # turns run this long before the measured window opens
SUSTAIN_S = 10.0
HISTORY_TURNS = 10  # the session cell's history at start
SESSION_SKIP = 3  # its first turns, not counted (the session's own warm-up)
SUSTAIN_BLOCKS = 1  # `both`: the raw, ws, ws, raw block of sustained windows, this many times
MAX_TOKENS = 150
# Before each round both sides sit idle this long (the WebSocket side needs it to
# start its client processes together; raw waits as long, so that each side's
# first token comes from an engine core and a process that were just as idle).
def idle_before_round_s(c: int) -> float:
    return 0.6 if c == 1 else 1.5 if c <= 16 else 3.0
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": MAX_TOKENS}  # fmt: skip
API_KEY = "bench-key"
WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week case point "
    "government company number group problem fact be have do say get make go know take see come think look "
    "want give use find tell ask work seem feel try leave call good new first last long great little own "
    "other old right big high different small large next early young important few public bad same able "
    "river mountain garden window kitchen music story letter morning evening coffee bread summer winter "
    "travel friend doctor teacher market city village road bridge station ticket weather sunny cloudy"
).split()


def engine_env(args: argparse.Namespace) -> dict[str, str]:
    """The settings both phases run with (the server reads them from its environment)."""
    graphs = {"CUDAGRAPH_MODE": args.cudagraph_mode} if getattr(args, "cudagraph_mode", None) else {}
    return graphs | {
        "TEXT_API_KEY": API_KEY,
        "INFERENCE_ENGINE": "vllm",
        "DEPLOY_MODE": "chat",
        "CHAT_MODEL": args.model,
        "CHAT_LOAD_FORMAT": args.load_format,
        "CHAT_MAX_LEN": "4096",
        "CHAT_MAX_OUT": str(MAX_TOKENS),
        "MAX_NUM_SEQS": "64",
        "CHAT_GPU_FRAC": str(args.gpu_frac),
        "ATTENTION_BACKEND": args.attn,
        "STREAM_INTERVAL": str(args.stream_interval),
        # the server's own framing (raw: no frames): the least time between a turn's token frames
        "TOKEN_FRAME_INTERVAL_MS": str(args.token_frame_ms),
        "CHAT_QUANTIZATION": args.quantization,
        "WS_MAX_MESSAGES_PER_WINDOW": "0",
        "WS_MAX_CANCELS_PER_WINDOW": "0",
        "MAX_CONCURRENT_CONNECTIONS": "512",
        "LOG_LEVEL": "WARNING",
        "OTEL_SDK_DISABLED": "true",
        # one log line per turn splitting its TTFT (server before the engine / engine / after)
        "TURN_TIMING_LOG": "1",
        # ws phase: server processes sharing the one engine core (raw: ignored)
        "SERVER_WORKERS": str(args.workers),
    }


def session_texts(seed: int, n: int) -> list[tuple[str, str]]:
    """n (system prompt, utterance) pairs of plain words: ~600 prompt tokens each."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        system = f"Session {seed}-{i}. You are a friendly voice assistant. " + " ".join(rng.choice(WORDS) for _ in range(520)) + "."
        user = "Tell me about " + " ".join(rng.choice(WORDS) for _ in range(30)) + "?"
        out.append((system, user))
    return out


# The `both` phase runs raw and ws on one engine core: ws's sustained sessions
# get prompts of their own there (a repeated prompt would be a prefix-cache hit).
SHARED_SALT = 7_000


def sustained_turn_texts(seed: int, turn: int) -> str:
    rng = random.Random(seed * 100_003 + turn)
    return "Tell me about " + " ".join(rng.choice(WORDS) for _ in range(30)) + "?"


REPLY_SPREAD = 0.0  # --reply-spread (see sustained_reply_tokens)


def sustained_reply_tokens(seed: int, turn: int, spread: float) -> int:
    """max_tokens of a sustained turn: MAX_TOKENS, or with ``spread`` > 0 drawn
    from [MAX_TOKENS * (1 - spread), MAX_TOKENS] by (session, turn), the same
    on both sides. With every reply 150 tokens (random weights seldom end one
    early) and every session started at once, raw's sessions run in lockstep
    and vLLM admits their next turns in a few large steps; the WebSocket
    path's hops scatter them over many steps, and each step that admits a
    request is several times longer (run 15). Users do not arrive in lockstep."""
    if spread <= 0:
        return MAX_TOKENS
    rng = random.Random(seed * 100_019 + turn + 7)
    return MAX_TOKENS - int(rng.random() * spread * MAX_TOKENS)


def window_tokens(turns: list[tuple[float, float | None, float, int]], w0: float, w1: float) -> float:
    """Output tokens inside [w0, w1]: each (sent, first, end, tokens) turn's
    tokens spread evenly over first..end."""
    total = 0.0
    for _sent, first, end, n in turns:
        if first is None or n == 0:
            continue
        span = max(end - first, 1e-6)
        total += n * max(0.0, min(end, w1) - max(first, w0)) / span
    return total


def pct(xs: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of xs, None when there are none."""
    return percentile(sorted(xs), q * 100) if xs else None


def summarize(samples: list[dict[str, float]], walls: list[float], tokens: list[int]) -> dict[str, Any]:
    ttft = [s["ttft_ms"] for s in samples if s.get("ttft_ms") is not None]
    extra: dict[str, Any] = {}
    # ws only: the server's own view of each turn (usage.ttft_ms, the timing log)
    for key in ("server_ttft_ms", "submit_ms", "engine_first_ms", "after_engine_ms", "hop_in_ms", "hop_out_ms"):
        xs = [s[key] for s in samples if s.get(key) is not None]
        if xs:
            extra[f"{key}_p50"] = _r(pct(xs, 0.5))
    # per turn: what the client waited for beyond the engine's own TTFT (network,
    # server before and after the engine), the server's overhead measured directly
    added = [s["ttft_ms"] - s["engine_first_ms"] for s in samples
             if s.get("ttft_ms") is not None and s.get("engine_first_ms") is not None]  # fmt: skip
    if added:
        extra["added_ms_p50"] = _r(pct(added, 0.5))
        extra["added_ms_p90"] = _r(pct(added, 0.9))
    frames = [s["token_frames"] for s in samples if s.get("token_frames")]
    if frames:
        extra["tokens_per_frame"] = _r(sum(s["tokens"] for s in samples) / sum(frames))
    return extra | {
        "n": len(samples),
        "ttft_ms_p50": _r(pct(ttft, 0.5)),
        "ttft_ms_p90": _r(pct(ttft, 0.9)),
        "out_tok_s": _r(statistics.median(t / w for t, w in zip(tokens, walls, strict=True))) if walls else None,
        "completion_tokens_mean": _r(statistics.mean(s["tokens"] for s in samples)) if samples else None,
        "prompt_tokens_mean": _r(statistics.mean(s["prompt_tokens"] for s in samples)) if samples else None,
        "cached_tokens_mean": _r(statistics.mean(s["cached"] for s in samples)) if samples else None,
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# --------------------------------------------------------------------------- raw


def vllm_engine(args: argparse.Namespace) -> Any:
    """The vLLM plugin's engine object, built from the bench's settings (not
    started). An engine core it starts runs the abort probe's scheduler
    (vllm_abort_probe.py: vLLM's own scheduler plus a timestamp per abort)."""
    from yap_core.plugins import PluginHost
    from yap_core.settings import Config

    host = PluginHost()
    host.load("vllm")
    engine = host.engine_factory("vllm")(Config(env={**os.environ, **engine_env(args)}, toml={}))
    own = engine.engine_kwargs
    engine.engine_kwargs = lambda sm: {**own(sm), "scheduler_cls": "vllm_abort_probe.AbortProbeScheduler"}
    return engine


ABORTS_ON_TOKEN = 10  # aborts (cancels) sent as the 10th token arrives; as many more later
ABORT_JITTER_S = 0.010  # "later": uniformly within this (longer than one decode step of either model)


def probe_summary(args: argparse.Namespace, requests: list[tuple[str, float]]) -> dict[str, Any]:
    """The probe's figures for requests[:ABORTS_ON_TOKEN] (sent on a token) and the rest (at a random moment)."""
    out: dict[str, Any] = {}
    for name, part in (("on_token", requests[:ABORTS_ON_TOKEN]), ("random", requests[ABORTS_ON_TOKEN:])):
        ms = probe_ms(args, part)
        out |= {f"to_scheduler_probe_{name}_ms_p50": _r(pct(ms, 0.5)), f"to_scheduler_probe_{name}_ms_max": _r(max(ms, default=None)),
                f"scheduler_probe_{name}_n": f"{len(ms)} of {len(part)}"}  # fmt: skip
    return out


def probe_file(args: argparse.Namespace) -> str:
    """Where the engine core's abort probe writes (set up by main())."""
    return str(Path(args.out).with_suffix(".aborts"))


def probe_ms(args: argparse.Namespace, requests: list[tuple[str, float]]) -> list[float]:
    """Per (request id, perf_counter of its abort or cancel): ms until vLLM's
    scheduler dropped it, as the probe in the engine core recorded. The probe
    sees internal ids, ``<request id>-<8 hex>`` (InputProcessor.assign_request_id)."""
    dropped = read_probe_times(probe_file(args))
    return [(dropped[rid] - t) * 1e3 for rid, t in requests if rid in dropped]


async def raw_phase(args: argparse.Namespace) -> dict[str, Any]:
    engine = vllm_engine(args)
    t0 = time.perf_counter()
    await engine.start(lambda line: print(f"[raw] {line}", flush=True))
    result = await raw_measure(engine, args, time.perf_counter() - t0)
    await engine.close()
    return result


Window = tuple[list[tuple[float, float | None, float, int]], float, float, float]  # turns, w0, w1, CPU cores


async def raw_sustained(engines: list[Any], builder: Any, params: Any, c: int, window: int = 0,
                        calls: list[FirstCall] | None = None) -> Window:  # fmt: skip
    """One sustained window on raw AsyncLLM: c sessions (prefix prefilled) run
    turns back to back; ``window`` picks utterances no earlier window used.
    With several engines (AsyncLLM clients of one engine core), session i
    sends through engine i mod their count, as the server's workers split
    sessions. ``calls`` gets a ``FirstCall`` for each turn sent in the window."""
    from vllm.inputs import tokens_input
    from vllm.sampling_params import SamplingParams

    systems = [s for s, _ in session_texts(200_000 + c, c)]
    await asyncio.gather(*[engines[0].prefill(builder.prefix(s, [])) for s in systems])
    w0 = time.time() + SUSTAIN_WARM_S
    w1 = w0 + SUSTAIN_S
    turns: list[tuple[float, float | None, float, int]] = []
    by_length: dict[int, Any] = {}  # max_tokens -> its SamplingParams

    def params_for(n: int) -> Any:
        if n not in by_length:  # built as prompt_tools builds ``params``, but for max_tokens
            by_length[n] = SamplingParams(**{k: (0 if k == "top_k" else v) for k, v in SAMPLING.items()} | {"max_tokens": n},
                                          logit_bias=params.logit_bias, output_kind=params.output_kind)  # fmt: skip
        return by_length[n]

    async def session_loop(i: int, system: str) -> None:
        llm = engines[i % len(engines)].async_llm
        k = window * 10_000
        while time.time() < w1:
            ids = builder.render(system, [], sustained_turn_texts(i, k), MAX_TOKENS).token_ids
            p = params_for(sustained_reply_tokens(i, k, REPLY_SPREAD))
            k += 1
            rid, sent, called, first, seen, n = uuid.uuid4().hex, time.time(), time.perf_counter(), None, None, 0
            async for out in llm.generate(tokens_input(list(ids)), p, rid):
                got = len(out.outputs[0].token_ids)
                if got and first is None:
                    first, seen = time.time(), time.perf_counter()
                n += got
            turns.append((sent, first, time.time(), n))
            if calls is not None and seen is not None and w0 <= sent <= w1:
                calls.append((rid, called, seen))

    cpu0 = time.process_time()
    await asyncio.gather(*[session_loop(i, s) for i, s in enumerate(systems)])
    return turns, w0, w1, (time.process_time() - cpu0) / (time.time() - w0 + SUSTAIN_WARM_S)


def summarize_windows(windows: list[Window], cpu_key: str = "frontend_cpu_cores", steps_path: str | None = None) -> dict[str, Any]:
    """Sustained figures over one or more windows of one side: tokens and time
    summed over the windows, TTFT over all their turns, each window's own rate
    kept, and (with the probe's step file) each window's engine steps per
    second and requests per step."""
    tokens = sum(window_tokens(turns, w0, w1) for turns, w0, w1, _ in windows)
    seconds = sum(w1 - w0 for _, w0, w1, _ in windows)
    ttft = [(first - sent) * 1e3 for turns, w0, w1, _ in windows for sent, first, _e, _n in turns
            if first is not None and w0 <= sent <= w1]  # fmt: skip
    out = {"out_tok_s": _r(tokens / seconds), "turns_in_window": len(ttft), "ttft_ms_p50": _r(pct(ttft, 0.5)),
           "ttft_ms_p90": _r(pct(ttft, 0.9)), cpu_key: _r(statistics.mean(w[3] for w in windows)),
           f"windows_{cpu_key}": [_r(w[3]) for w in windows],
           "windows_out_tok_s": [_r(window_tokens(t, w0, w1) / (w1 - w0)) for t, w0, w1, _ in windows]}  # fmt: skip
    steps = read_steps(steps_path)
    if steps:
        inside = [[(n, k) for at, n, k in steps if w0 <= at <= w1] for _t, w0, w1, _ in windows]
        out["windows_steps_per_s"] = [_r(len(st) / (w1 - w0)) for st, (_t, w0, w1, _c) in zip(inside, windows, strict=True)]
        out["windows_requests_per_step"] = [_r(statistics.mean(n for n, _ in st)) if st else None for st in inside]
        # steps that admit (prefill) a request: more tokens than requests
        out["windows_admitting_steps_per_s"] = [_r(sum(1 for n, k in st if k > n) / (w1 - w0))
                                                for st, (_t, w0, w1, _c) in zip(inside, windows, strict=True)]  # fmt: skip
    return out


# request id, perf_counter when AsyncLLM.generate was called, and when that client had the first token
FirstCall = tuple[str, float, float]


def read_probe_times(path: str) -> dict[str, float]:
    """A probe file's ``<internal id> <perf_counter>`` lines (the aborts file,
    or ``.firsts``: when the engine core handed a request's first token to its
    output thread), by the id the client gave: the first line of each counts."""
    out: dict[str, float] = {}
    for line in Path(path).read_text().splitlines() if Path(path).exists() else ():
        rid, _, at = line.rpartition(" ")
        out.setdefault(rid.rpartition("-")[0], float(at))
    return out


def first_split(calls: list[FirstCall], core_firsts: dict[str, float]) -> dict[str, Any]:
    """vLLM's first token for one side, p50 / p90 ms over its turns the probe
    saw: ``core_ms``, generate() called -> the engine core hands the first
    token out (the request's way in, its wait and its prefill step); then
    ``handon_ms``, -> the calling process's AsyncLLM client has it (ZMQ, the
    output handler, and that process's event loop)."""
    core, handon = [], []
    for rid, called, seen in calls:
        at = core_firsts.get(rid)
        if at is not None:
            core.append((at - called) * 1e3)
            handon.append((seen - at) * 1e3)
    out: dict[str, Any] = {"n": len(core)}
    for key, values in (("core_ms", core), ("handon_ms", handon)):
        if values:
            out[f"{key}_p50"], out[f"{key}_p90"] = _r(pct(values, 0.5)), _r(pct(values, 0.9))
    return out


def ws_first_calls(cycles: list[Cycle], logged: dict[str, dict[str, Any]]) -> list[FirstCall]:
    """The ws turns' ``FirstCall``s from the server's TURN_TIMING_LOG: vLLM
    called at received_at + submit_ms, its first text engine_first_ms later."""
    calls = []
    for x in cycles:
        t = logged.get(x[0])
        if t and t.get("submit_ms") is not None and t.get("engine_first_ms") is not None:
            called = t["received_at"] + t["submit_ms"] / 1e3
            calls.append((x[0], called, called + t["engine_first_ms"] / 1e3))
    return calls


def read_steps(path: str | None) -> list[tuple[float, int, int]]:
    """The abort probe's step lines (vllm_abort_probe.py): time, requests, tokens."""
    if path is None or not Path(path).exists():
        return []
    rows = []
    for line in Path(path).read_text().splitlines():
        at, n, k = line.split()
        rows.append((float(at), int(n), int(k)))
    return rows


def prompt_tools(engine: Any, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The core's PromptBuilder, the banned-phrase bias as Sampling, and the
    same as vLLM SamplingParams: the server's requests, built the server's way."""
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from yap_core.banned import load_phrases, logit_bias
    from yap_core.contracts import Sampling
    from yap_core.prompts import Personas, PromptBuilder
    from yap_core.settings import Config, CoreSettings

    core = Config(env={**os.environ, **engine_env(args)}, toml={}).section("core", CoreSettings)
    builder = PromptBuilder(engine.tokenizer, core, engine.max_model_len, Personas.load(core.personas_file))
    bias = logit_bias(engine.tokenizer, load_phrases(core.banned_phrases_file))
    params = SamplingParams(**{k: (0 if k == "top_k" else v) for k, v in SAMPLING.items()}, logit_bias=bias or None,
                            output_kind=RequestOutputKind.DELTA)  # fmt: skip
    return builder, Sampling(**SAMPLING, logit_bias=bias), params


async def raw_measure(engine: Any, args: argparse.Namespace, start_s: float, *, sustain: bool = True) -> dict[str, Any]:
    """Raw AsyncLLM (and the plugin's stream()) on a started engine. sustain:
    also the sustained cells (``both`` runs them itself, between the ws side's)."""
    from vllm.inputs import tokens_input
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from yap_core.contracts import GenerationRequest

    result: dict[str, Any] = {"engine_start_s": round(start_s, 1), "vllm": engine.version,
                              "quantization": engine.quant_plan.reason, "engine_kwargs": engine.engine_kwargs_used}  # fmt: skip
    llm = engine.async_llm
    builder, sampling, params = prompt_tools(engine, args)

    async def one_raw(ids: tuple[int, ...]) -> dict[str, float]:
        t = time.perf_counter()
        first, n, cached = None, 0, 0
        async for out in llm.generate(tokens_input(list(ids)), params, uuid.uuid4().hex):
            k = len(out.outputs[0].token_ids)
            if k and first is None:
                first = time.perf_counter()
            n += k
            cached = out.num_cached_tokens or 0
        return {"ttft_ms": (first - t) * 1e3 if first else None, "tokens": n, "prompt_tokens": len(ids), "cached": cached}

    async def one_wrapped(ids: tuple[int, ...]) -> dict[str, float]:
        t = time.perf_counter()
        first, last = None, None
        async for d in engine.stream(GenerationRequest(request_id=uuid.uuid4().hex, prompt_token_ids=ids, sampling=sampling)):
            if d.completion_tokens and first is None:
                first = time.perf_counter()
            last = d
        return {"ttft_ms": (first - t) * 1e3 if first else None, "tokens": last.completion_tokens,
                "prompt_tokens": last.prompt_tokens, "cached": last.cached_prompt_tokens}  # fmt: skip

    async def one_chat(conv: list[dict[str, str]]) -> dict[str, float]:
        """Raw AsyncLLM from the chat's text, the way vLLM's own OpenAI server
        takes it: its renderer applies the chat template and tokenizes, then
        generate(). Timed from the text, as the server's TTFT is from the frame."""
        from vllm.renderers import ChatParams

        t = time.perf_counter()
        _, prompts = await llm.renderer.render_chat_async([conv], ChatParams())
        first, n, cached = None, 0, 0
        async for out in llm.generate(prompts[0], params, uuid.uuid4().hex):
            k = len(out.outputs[0].token_ids)
            if k and first is None:
                first = time.perf_counter()
            n += k
            cached = out.num_cached_tokens or 0
        return {"ttft_ms": (first - t) * 1e3 if first else None, "tokens": n, "prompt_tokens": 0, "cached": cached}

    def chat_of(system: str, user: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    # warm-up: compile paths for batch sizes and sampling, none of these prompts recur
    for c in CONCURRENCY:
        await asyncio.gather(*[one_raw(builder.render(s, [], u, MAX_TOKENS).token_ids) for s, u in session_texts(WARMUP_SEED + c, c)])

    # raw-chat: c=1 only (the cells the per-turn target is read on)
    chat_cells = tuple(c for c in CONCURRENCY if c == 1) if hasattr(llm, "renderer") else ()  # the double has none
    modes = [("raw", one_raw, CONCURRENCY), ("raw-chat", one_chat, chat_cells),
             ("wrapper", one_wrapped, CONCURRENCY)]  # fmt: skip

    async def run_cells(mode: str, runner: Any, cells: tuple[int, ...]) -> None:
        for c in cells:
            for warm in (False, True):
                samples, walls, tokens, cpus = [], [], [], []
                for r in range(ROUNDS[c]):
                    pairs = session_texts(seed_for(c, warm, r, mode), c)
                    if warm:
                        await asyncio.gather(*[engine.prefill(builder.prefix(s, [])) for s, _ in pairs])
                    if mode == "raw-chat":
                        prompts = [chat_of(s, u) for s, u in pairs]
                    else:
                        prompts = [builder.render(s, [], u, MAX_TOKENS).token_ids for s, u in pairs]
                    await asyncio.sleep(idle_before_round_s(c))
                    t, cpu0 = time.perf_counter(), time.process_time()
                    rs = await asyncio.gather(*[runner(ids) for ids in prompts])
                    walls.append(time.perf_counter() - t)
                    cpus.append((time.process_time() - cpu0) / walls[-1])
                    tokens.append(sum(x["tokens"] for x in rs))
                    samples += rs
                key = f"{mode}/c{c}/{'warm' if warm else 'cold'}"
                result[key] = summarize(samples, walls, tokens)
                result[key]["frontend_cpu_cores"] = _r(statistics.median(cpus))
                print(f"[raw] {key}: {result[key]}", flush=True)

    for mode, runner, cells in modes:
        try:
            await run_cells(mode, runner, cells)
        except Exception as exc:  # vLLM's renderer API moves between releases: the extra cell must not cost the run
            if mode != "raw-chat":
                raise
            result["raw-chat/error"] = repr(exc)
            print(f"[raw] raw-chat failed: {exc!r}", flush=True)

    if sustain:  # sustained: sessions running turns back to back (see the module docstring)
        for c in SUSTAIN_C:
            key = f"raw/sustained/c{c}"
            result[key] = summarize_windows([await raw_sustained([engine], builder, params, c)])
            print(f"[raw] {key}: {result[key]}", flush=True)

    # What the server does before a cold turn reaches the engine, measured here on
    # the same prompts: count the system prompt's tokens, render + tokenize the turn.
    render_ms = []
    for system, user in session_texts(7000, 40):
        t = time.perf_counter()
        builder.render(builder.system_prompt(system, None, None), [], user, MAX_TOKENS)
        render_ms.append((time.perf_counter() - t) * 1e3)
    result["cold_prompt_work_ms"] = {"p50": _r(pct(render_ms, 0.5)), "p90": _r(pct(render_ms, 0.9))}
    print(f"[raw] cold prompt work: {result['cold_prompt_work_ms']}", flush=True)

    # cancel -> abort: raw AsyncLLM.abort after the 10th token: ABORTS_ON_TOKEN
    # of them at once (the abort then lands just after a step began: vLLM drops
    # a request between steps, so this is the worst phase), as many more at a
    # random moment up to ABORT_JITTER_S later (a barge-in, which does not
    # follow the decode steps). A background stream
    # keeps the engine stepping, so vLLM keeps reporting scheduler counts (the
    # step that empties the batch reports none); "dropped" is when its running
    # count falls back to the background stream alone.
    long_params = SamplingParams(max_tokens=3000, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    bg_system, bg_user = session_texts(4999, 1)[0]
    bg_ids = builder.render(bg_system, [], bg_user, MAX_TOKENS).token_ids
    background = llm.generate(tokens_input(list(bg_ids)), long_params, "abort-background")
    await anext(background)
    abort_out, abort_sched, stale, victims = [], [], 0, []
    victim_params = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    rng = random.Random(5)

    async def abort_later(rid: str, delay: float, at: list[float]) -> None:
        await asyncio.sleep(delay)
        at.append(time.perf_counter())
        await llm.abort(rid)

    for i in range(2 * ABORTS_ON_TOKEN):
        system, user = session_texts(5000 + i, 1)[0]
        ids = builder.render(system, [], user, MAX_TOKENS).token_ids
        rid = f"abort-{i}-{uuid.uuid4().hex}"
        n, t_final, at, later = 0, None, [], None
        async for out in llm.generate(tokens_input(list(ids)), victim_params, rid):
            n += len(out.outputs[0].token_ids)
            if out.finished:
                t_final = time.perf_counter()
                assert out.outputs[0].finish_reason == "abort", out.outputs[0].finish_reason
            elif n >= 10 and not at and later is None:
                if i < ABORTS_ON_TOKEN:
                    at.append(time.perf_counter())
                    await llm.abort(rid)
                else:
                    later = asyncio.create_task(abort_later(rid, rng.uniform(0, ABORT_JITTER_S), at))
        if later is not None:
            await later
        t_abort = at[0]
        abort_out.append((t_final - t_abort) * 1e3)
        victims.append((rid, t_abort))
        while engine.scheduler_snapshot().running > 1 and time.perf_counter() - t_abort < 1.0:  # noqa: ASYNC110
            await asyncio.sleep(0.0002)
        if engine.scheduler_snapshot().running > 1:
            stale += 1
        else:
            abort_sched.append((time.perf_counter() - t_abort) * 1e3)
    await background.aclose()
    result["abort"] = {"to_final_output_ms_p50": _r(pct(abort_out, 0.5)), "to_final_output_ms_max": _r(max(abort_out)),
                       **probe_summary(args, victims),
                       "to_scheduler_dropped_ms_p50": _r(pct(abort_sched, 0.5)),
                       "to_scheduler_dropped_ms_max": _r(max(abort_sched)) if abort_sched else None,
                       "scheduler_not_seen_dropping_within_1s": stale}  # fmt: skip
    print(f"[raw] abort: {result['abort']}", flush=True)
    result["stats_end"] = _stats_dict(await engine.stats())
    return result


def _stats_dict(stats: Any) -> dict[str, Any]:
    return {f: getattr(stats, f) for f in stats.__struct_fields__}


def seed_for(c: int, warm: bool, r: int, mode: str) -> int:
    """Raw and ws (separate engines) get the same prompts; the wrapper runs on
    the raw phase's engine after it, so it gets its own (an earlier identical
    prompt would be a prefix-cache hit)."""
    return {"wrapper": 100_000, "ws-shared": 300_000, "ws-parked": 400_000, "raw-chat": 500_000}.get(mode, 0) + c * 1000 + (500 if warm else 0) + r


# --------------------------------------------------------------------------- ws


def ws_worker(url: str, pairs: list[tuple[str, str]], warm: bool, start_at: float, spin: bool = False) -> list[dict[str, float]]:
    """One client process's share of a round (the client is spread over
    processes so that its own CPU does not limit what is measured)."""
    return asyncio.run(_ws_worker(url, pairs, warm, start_at, spin))


async def _spin() -> None:
    """Keep this event loop polling (a loop with a ready task polls its sockets
    without sleeping): the client's CPU stays awake, as a voice app's is (busy
    with audio when its user stops talking), where a Python client parked in
    epoll through the idle gap pays its own wake-up. Measured on the GPU
    machine (gpu-results.md, run 7): the token frame's hop to the client
    ~0.1 ms shorter, the frame's hop to the server unchanged."""
    while True:  # noqa: ASYNC110 (spinning is the point)
        await asyncio.sleep(0)


def turn_sample(turn: Any, sent: float) -> dict[str, Any]:
    """One finished WebSocket turn as a sample (``sent``: time.time() at sending)."""
    assert turn.end == "done", (turn.end, turn.error)
    usage = turn.usage or {}
    return {"ttft_ms": turn.first_token_s * 1e3 if turn.first_token_s is not None else None,
            "tokens": usage.get("completion_tokens", 0), "prompt_tokens": usage.get("prompt_tokens", 0),
            "cached": usage.get("cached_prompt_tokens", 0), "end_abs": sent + turn.total_s,
            "server_ttft_ms": usage.get("ttft_ms"), "request_id": turn.request_id, "sent_at": turn.sent_at,
            "first_at": None if turn.first_token_s is None else turn.sent_at + turn.first_token_s,
            "token_frames": sum(1 for f in turn.frames if f.type == "token")}  # fmt: skip


def ws_session_worker(url: str, system: str, history: list[dict[str, str]], users: list[str], idle_s: float) -> list[dict[str, Any]]:
    """One voice session, in a client process: opened with a history (the
    server prefills it), then one `message` turn per utterance, each after
    ``idle_s`` (the user speaking; the client spins, as in the c=1 cells)."""
    return asyncio.run(_ws_session_worker(url, system, history, users, idle_s))


async def _ws_session_worker(url: str, system: str, history: list[dict[str, str]], users: list[str], idle_s: float) -> list[dict[str, Any]]:
    from yap_core.wsclient import YapConnection

    spinner = asyncio.create_task(_spin())
    sampling = dict(SAMPLING)
    sid = uuid.uuid4().hex
    conn = await YapConnection.open(url, API_KEY)
    try:
        ready = await conn.turn("start", sid, {"chat_prompt": system, "history": history, "sampling": sampling}, wait_s=120)
        assert ready.end == "ready", (ready.end, ready.error)
        samples = []
        for user in users:
            await asyncio.sleep(idle_s)
            sent = time.time()
            samples.append(turn_sample(await conn.turn("message", sid, {"user_utterance": user, "sampling": sampling}, wait_s=120), sent))
        return samples
    finally:
        spinner.cancel()
        await conn.close()


async def _ws_worker(url: str, pairs: list[tuple[str, str]], warm: bool, start_at: float, spin: bool) -> list[dict[str, float]]:
    from yap_core.wsclient import YapConnection

    spinner = asyncio.create_task(_spin()) if spin else None

    sampling = dict(SAMPLING)
    conns = [await YapConnection.open(url, API_KEY) for _ in pairs]
    sids = [uuid.uuid4().hex for _ in pairs]
    try:
        if warm:  # the session opens first: start without utterance -> ready (the server prefills)
            readies = await asyncio.gather(*[c.turn("start", sid, {"chat_prompt": s, "sampling": sampling}, wait_s=120)
                                             for c, sid, (s, _) in zip(conns, sids, pairs, strict=True)])  # fmt: skip
            assert all(r.end == "ready" for r in readies), [r.end for r in readies]
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def one(conn: YapConnection, sid: str, system: str, user: str) -> dict[str, float]:
            sent = time.time()
            if warm:
                turn = await conn.turn("message", sid, {"user_utterance": user, "sampling": sampling}, wait_s=120)
            else:
                turn = await conn.turn("start", sid, {"chat_prompt": system, "user_utterance": user,
                                                      "sampling": sampling}, wait_s=120)  # fmt: skip
            return turn_sample(turn, sent)

        return await asyncio.gather(*[one(c, sid, s, u) for c, sid, (s, u) in zip(conns, sids, pairs, strict=True)])
    finally:
        if spinner is not None:
            spinner.cancel()
        for conn in conns:
            await conn.close()


# request id, session, window, sent (time.time), sent and done (perf_counter), the client's TTFT (s; None: no token)
Cycle = tuple[str, int, int, float, float, float, float | None]


def ws_sustain_worker(url: str, sessions: list[tuple[int, str]], w1: float, window: int,
                      spread: float) -> tuple[list[tuple[float, float | None, float, int]], float, list[Cycle]]:  # fmt: skip
    """One client process's share of a sustained window: its turns, the CPU
    seconds this client process spent (the benchmark's own load on the host),
    and each turn's ``Cycle`` (for ``cycle_split``)."""
    cpu0 = time.process_time()
    cycles: list[Cycle] = []
    turns = asyncio.run(_ws_sustain_worker(url, sessions, w1, window, spread, cycles))
    return turns, time.process_time() - cpu0, cycles


async def _ws_sustain_worker(url: str, sessions: list[tuple[int, str]], w1: float, window: int, spread: float,
                             cycles: list[Cycle]) -> list[tuple[float, float | None, float, int]]:  # fmt: skip
    from yap_core.wsclient import YapConnection

    turns: list[tuple[float, float | None, float, int]] = []

    async def session_loop(i: int, system: str) -> None:
        conn = await YapConnection.open(url, API_KEY)
        sid = uuid.uuid4().hex
        try:
            ready = await conn.turn("start", sid, {"chat_prompt": system, "sampling": dict(SAMPLING)}, wait_s=120)
            assert ready.end == "ready", ready.end
            k = window * 10_000
            while time.time() < w1:
                sent = time.time()
                sampling = dict(SAMPLING, max_tokens=sustained_reply_tokens(i, k, spread))
                turn = await conn.turn("start", sid, {"chat_prompt": system, "user_utterance": sustained_turn_texts(i, k),
                                                      "sampling": sampling}, wait_s=120)  # fmt: skip
                k += 1
                assert turn.end == "done", (turn.end, turn.error)
                first = None if turn.first_token_s is None else sent + turn.first_token_s
                turns.append((sent, first, sent + turn.total_s, (turn.usage or {}).get("completion_tokens", 0)))
                cycles.append((turn.request_id, i, window, sent, turn.sent_at, turn.sent_at + turn.total_s, turn.first_token_s))
        finally:
            await conn.close()

    await asyncio.gather(*[session_loop(i, s) for i, s in sessions])
    return turns


class Front:
    """The WebSocket side under test: its URLs, the processes that serve the
    sockets (never vLLM's engine core) and the log with TURN_TIMING_LOG lines."""

    def __init__(self, ws_url: str, base_url: str, procs: list[Any], log_path: Path, salt: int = 0) -> None:
        self.ws_url, self.base_url, self.procs, self.log_path, self.salt = ws_url, base_url, procs, log_path, salt

    def cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.procs)

    def timings(self) -> dict[str, dict[str, Any]]:
        """The server's TURN_TIMING_LOG lines so far, by request_id."""
        from yap_core.turn import timing_records

        return timing_records(self.log_path.read_text(errors="replace"))


async def ws_phase(args: argparse.Namespace) -> dict[str, Any]:
    import psutil
    from yap_core.server_process import ServerProcess

    log_path = Path(args.out).with_suffix(".server.log")
    server = ServerProcess(engine_env(args), log_path=log_path)
    t0 = time.perf_counter()
    await server.start()
    start_s = time.perf_counter() - t0
    main = psutil.Process(server.pid)
    # With SERVER_WORKERS the supervisor idles and its workers serve the sockets.
    workers = [p for p in main.children() if "--worker-spec" in " ".join(p.cmdline())]
    result = await ws_measure(Front(server.ws_url, server.base_url, workers or [main], log_path), args, start_s)
    await server.stop()
    return result


def client_pool() -> Any:
    """The benchmark's WebSocket client processes (spawned: no inherited event loop)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=CLIENT_PROCS, mp_context=multiprocessing.get_context("spawn"))


async def ws_sustained(front: Front, pool: Any, c: int, window: int = 0, client_cores: list[float] | None = None,
                       cycles: list[Cycle] | None = None) -> Window:  # fmt: skip
    """One sustained window through the WebSocket path: c sessions, spread over
    the client processes, run turns back to back (utterances as raw_sustained's).
    ``client_cores`` gets the CPU cores the client processes kept busy: load on
    the engine core's host that the raw side does not have; ``cycles`` the
    ``Cycle`` of each turn sent in the window."""
    loop = asyncio.get_running_loop()
    systems = [(i + front.salt, s) for i, (s, _) in enumerate(session_texts(200_000 + c + front.salt, c))]
    procs = min(CLIENT_PROCS, c)
    w0 = time.time() + SUSTAIN_WARM_S
    w1 = w0 + SUSTAIN_S
    cpu0 = front.cpu()
    parts = await asyncio.gather(*[loop.run_in_executor(pool, ws_sustain_worker, front.ws_url, systems[i::procs], w1, window, REPLY_SPREAD)
                                   for i in range(procs)])  # fmt: skip
    wall = time.time() - w0 + SUSTAIN_WARM_S
    if client_cores is not None:
        client_cores.append(sum(cpu for _, cpu, _c in parts) / wall)
    if cycles is not None:
        cycles += [x for _, _cpu, part in parts for x in part if w0 <= x[3] <= w1]
    return [t for turns, _, _c in parts for t in turns], w0, w1, (front.cpu() - cpu0) / wall


CYCLE_KEYS = ("done_hop_ms", "client_gap_ms", "hop_in_ms", "submit_ms", "between_ms", "engine_first_ms", "added_ms")


def cycle_split(cycles: list[Cycle], logged: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Where a sustained session's time between two engine requests goes, p50 /
    p90 ms over the turns of the ws windows (client clock and TURN_TIMING_LOG on
    the host's one perf_counter): the server queued ``done`` -> the client has
    it (done_hop: the sender, Hypercorn, kernel, client library); -> the client
    sends its next turn (client_gap: the client process's own lag); -> the
    server's app has that frame (hop_in); -> vLLM called (submit_ms). Their
    sum is between_ms: a raw session's next request follows its last output
    after one prompt render. Each turn is paired with its session's next one
    in the same window. ``added_ms``, over every turn: the client's TTFT less
    vLLM's own time to that turn's first output (engine_first_ms), the server's
    share of TTFT under this load, read on one request so vLLM's pace between
    the raw and ws windows does not enter it."""
    by_session: dict[tuple[int, int], list[Cycle]] = {}
    for x in sorted(cycles, key=lambda x: x[4]):
        by_session.setdefault((x[1], x[2]), []).append(x)
    values: dict[str, list[float]] = {k: [] for k in CYCLE_KEYS}
    for x in cycles:
        t = logged.get(x[0])
        if t and x[6] is not None and t.get("engine_first_ms") is not None:
            values["added_ms"].append(x[6] * 1e3 - float(t["engine_first_ms"]))
    for turns in by_session.values():
        for prev, nxt in zip(turns, turns[1:], strict=False):
            a, b = logged.get(prev[0]), logged.get(nxt[0])
            if not a or not b or a.get("total_ms") is None or b.get("submit_ms") is None:
                continue
            split = {"done_hop_ms": (prev[5] - (a["received_at"] + a["total_ms"] / 1e3)) * 1e3,
                     "client_gap_ms": (nxt[4] - prev[5]) * 1e3,
                     "hop_in_ms": (b["received_at"] - nxt[4]) * 1e3, "submit_ms": b["submit_ms"]}  # fmt: skip
            split["between_ms"] = sum(split.values())
            split["engine_first_ms"] = b.get("engine_first_ms")
            for k, v in split.items():
                if v is not None:
                    values[k].append(float(v))
    out: dict[str, Any] = {"n": len(values["between_ms"])}
    for k, v in values.items():
        if v:
            out[f"{k}_p50"], out[f"{k}_p90"] = _r(pct(v, 0.5)), _r(pct(v, 0.9))
    return out


async def ws_measure(front: Front, args: argparse.Namespace, start_s: float, *, sustain: bool = True) -> dict[str, Any]:
    from yap_core.server_process import http_get_async
    from yap_core.wsclient import YapConnection

    result: dict[str, Any] = {"server_start_s": round(start_s, 1), "server_processes": len(front.procs)}
    print(f"[ws] server up in {result['server_start_s']} s", flush=True)
    sampling = dict(SAMPLING)
    front_cpu = front.cpu

    loop = asyncio.get_running_loop()
    pool = client_pool()

    async def round_(pairs: list[tuple[str, str]], warm: bool, spin: bool = False) -> tuple[list[dict[str, float]], float, float]:
        procs = min(CLIENT_PROCS, len(pairs))
        shares = [pairs[i::procs] for i in range(procs)]
        start_at = time.time() + idle_before_round_s(len(pairs))
        cpu0 = None
        futures = [loop.run_in_executor(pool, ws_worker, front.ws_url, share, warm, start_at, spin) for share in shares]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = front_cpu()
        parts = await asyncio.gather(*futures)
        samples = [x for part in parts for x in part]
        wall = max(x["end_abs"] for x in samples) - start_at
        await with_timings(samples)
        cpu = (front_cpu() - cpu0) / wall
        return samples, wall, cpu

    async def with_timings(samples: list[dict[str, Any]]) -> None:
        """Each turn's server-side split from the timing log, and the two hops."""
        await asyncio.sleep(0.05)  # the log lines of the last turns
        logged = front.timings()
        for x in samples:
            rec = logged.get(x["request_id"], {})
            for key in ("submit_ms", "engine_first_ms", "after_engine_ms"):
                x[key] = rec.get(key)
            # the two socket hops, on the one clock of this host: client send -> the
            # server has the frame; the server queued the token frame -> client has it
            if rec.get("received_at") is not None:
                x["hop_in_ms"] = (rec["received_at"] - x["sent_at"]) * 1e3
            if rec.get("first_token_at") is not None and x.get("first_at") is not None:
                x["hop_out_ms"] = (x["first_at"] - rec["first_token_at"]) * 1e3

    # warm-up as in the raw phase (also starts the client processes)
    for c in CONCURRENCY:
        await round_(session_texts(WARMUP_SEED + c, c), False)

    # c=1: the client process spins (see _spin), then the same cells again with
    # the client parked between turns ("ws-parked"), for comparison. More
    # sessions: no spinning, their clients' CPU would be taken from the server.
    cells = [("ws", c, c == 1) for c in CONCURRENCY] + ([("ws-parked", 1, False)] if 1 in CONCURRENCY else [])
    for name, c, spin in cells:
        for warm in (False, True):
            samples, walls, tokens, cpus = [], [], [], []
            for r in range(ROUNDS[c]):
                mode = name if name != "ws" else "ws-shared" if front.salt else "ws"
                rs, wall, cpu = await round_(session_texts(seed_for(c, warm, r, mode), c), warm, spin)
                walls.append(wall)
                tokens.append(sum(x["tokens"] for x in rs))
                cpus.append(cpu)
                samples += rs
            key = f"{name}/c{c}/{'warm' if warm else 'cold'}"
            result[key] = summarize(samples, walls, tokens)
            result[key]["server_main_cpu_cores"] = _r(statistics.median(cpus))
            print(f"[ws] {key}: {result[key]}", flush=True)
    if 1 in CONCURRENCY and args.session_turns:
        # One session as a voice app runs it: HISTORY_TURNS earlier turns sent
        # at start (prefilled), then turns whose history keeps growing (past
        # HISTORY_MAX_TOKENS, so trimming too), the user's pause before each.
        # The c=1 cells above open a new session per turn: no history.
        system, _ = session_texts(600_000 + front.salt, 1)[0]
        users = [sustained_turn_texts(600_000 + front.salt, k) for k in range(HISTORY_TURNS + args.session_turns)]
        rng = random.Random(front.salt)
        history = [m for u in users[:HISTORY_TURNS] for m in ({"role": "user", "content": u},
                   {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(100)) + "."})]  # fmt: skip
        samples = await loop.run_in_executor(pool, ws_session_worker, front.ws_url, system, history,
                                             users[HISTORY_TURNS:], idle_before_round_s(1))  # fmt: skip
        await with_timings(samples)
        result["ws-session/c1/warm"] = summarize(samples[SESSION_SKIP:], [], [])
        print(f"[ws] ws-session/c1/warm: {result['ws-session/c1/warm']}", flush=True)
    for c in SUSTAIN_C if sustain else ():
        key = f"ws/sustained/c{c}"
        result[key] = summarize_windows([await ws_sustained(front, pool, c)], "server_main_cpu_cores")
        print(f"[ws] {key}: {result[key]}", flush=True)
    pool.shutdown()

    # cancel -> cancelled frame, and -> engine running 0 per /status
    to_cancelled, to_idle, status_ms, cancels = [], [], [], []
    headers = {"X-API-Key": API_KEY}
    for _ in range(10):  # what one /status round trip costs (bounds the idle figure below)
        t = time.perf_counter()
        await http_get_async(front.base_url + "/status", headers)
        status_ms.append((time.perf_counter() - t) * 1e3)
    rng = random.Random(6)
    i, attempt = 0, 0
    while i < 2 * ABORTS_ON_TOKEN:
        # Random weights may sample the end token early (the wire has no
        # ignore_eos): such a victim ends before its cancel; the next prompt is tried.
        attempt += 1
        assert attempt <= 4 * ABORTS_ON_TOKEN, "too many victims ended before 10 tokens"
        system, user = session_texts(5000 + attempt, 1)[0]
        async with await YapConnection.open(front.ws_url, API_KEY) as conn:
            sid, rid = uuid.uuid4().hex, uuid.uuid4().hex
            await conn.send("start", sid, rid, {"chat_prompt": system, "user_utterance": user, "sampling": sampling})
            tokens = 0
            while tokens < 10:
                frame = await conn.recv(60)
                if frame.type == "token":
                    tokens += 1
                assert frame.type != "error", frame
                if frame.type == "done":
                    break
            if tokens < 10:
                continue
            i += 1
            if i > ABORTS_ON_TOKEN:  # a barge-in at a random moment (token frames queue meanwhile)
                await asyncio.sleep(rng.uniform(0, ABORT_JITTER_S))
            t_cancel = await conn.send("cancel", sid, None, {"reason": "bench"})
            cancels.append((rid, t_cancel))
            while True:
                frame = await conn.recv(10)
                if frame.type == "cancelled":
                    to_cancelled.append((time.perf_counter() - t_cancel) * 1e3)
                    break
                if frame.type in ("done", "error"):  # it ended on its own just before the cancel
                    cancels.pop()
                    i -= 1
                    break
            while len(front.procs) == 1:  # with workers, /status answers for whichever worker takes the GET
                body = (await http_get_async(front.base_url + "/status", headers)).body
                if body["engine"]["stats"]["running"] == 0:
                    to_idle.append((time.perf_counter() - t_cancel) * 1e3)
                    break
                await asyncio.sleep(0.0005)
    await asyncio.sleep(0.2)  # the engine core drops the last one a step after its `cancelled` frame
    result["abort"] = {"to_cancelled_frame_ms_p50": _r(pct(to_cancelled, 0.5)), "to_cancelled_frame_ms_max": _r(max(to_cancelled)),
                       # only where this bench started the engine core (both)
                       **probe_summary(args, cancels),
                       "to_engine_idle_via_status_ms_p50": _r(pct(to_idle, 0.5)) if to_idle else None,
                       "to_engine_idle_via_status_ms_max": _r(max(to_idle)) if to_idle else None,
                       "status_round_trip_ms_p50": _r(pct(status_ms, 0.5))}  # fmt: skip
    print(f"[ws] abort: {result['abort']}", flush=True)
    return result


# --------------------------------------------------------------------------- both


def cpu_split(physical: int) -> tuple[set[int], set[int]]:
    """The first ``physical`` cores (with their hyper-threads) for vLLM's engine
    core, the rest for everything else; (set(), all) when ``physical`` is 0.
    The engine core's busy loop is CPU-bound on a 1B model: sharing a core
    with the benchmark's own WebSocket clients slows every decode step, which
    a deployment (clients on other machines) would not see."""
    cpus = sorted(os.sched_getaffinity(0))
    if not physical:
        return set(), set(cpus)
    cores: dict[str, list[int]] = {}
    for c in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list")
        cores.setdefault(siblings.read_text().strip() if siblings.exists() else str(c), []).append(c)
    groups = list(cores.values())
    engine = {c for g in groups[:physical] for c in g}
    return engine, set(cpus) - engine


async def interleaved_sustained(raws: list[Any], front: Front, args: argparse.Namespace,
                                raw_result: dict[str, Any], ws_result: dict[str, Any]) -> None:  # fmt: skip
    """The sustained cells of both sides, two windows each in the order raw,
    ws, ws, raw (that block SUSTAIN_BLOCKS times). The engine's speed drifts by several per cent over minutes
    on the GPU machine (gpu-results.md, run 7); with one window a side, that
    drift was what the comparison measured. In this order a steady drift
    weighs on both sides alike.

    With several raw clients (``--raw-clients K``) a third side, raw-split,
    sends the raw sessions through all K clients, and a block is raw,
    raw-split, ws, ws, raw-split, raw. The WebSocket side's workers are one
    engine client each; this measures, with no Yap code in the way, whether
    the engine core steps slower when its outputs go to K clients, not one."""
    raw = raws[0]
    builder, _sampling, params = prompt_tools(raw, args)
    block = ("raw", "raw-split", "ws", "ws", "raw-split", "raw") if len(raws) > 1 else ("raw", "ws", "ws", "raw")
    engines = {"raw": [raw], "raw-split": raws}
    pool = client_pool()
    try:
        for c in SUSTAIN_C:
            # Run 8 (gpu-results.md): in two of its three runs the first sustained window ran
            # about a third slower than every later one: one window first, not counted.
            await raw_sustained([raw], builder, params, c, window=99)
            windows: dict[str, list[Window]] = {side: [] for side in block}
            client_cores: list[float] = []
            cycles: list[Cycle] = []
            raw_calls: list[FirstCall] = []
            for k, side in enumerate(block * SUSTAIN_BLOCKS):
                if side == "ws":
                    windows[side].append(await ws_sustained(front, pool, c, window=k, client_cores=client_cores, cycles=cycles))
                else:
                    calls = raw_calls if side == "raw" else None
                    windows[side].append(await raw_sustained(engines[side], builder, params, c, window=k, calls=calls))
            steps = probe_file(args) + ".steps"
            raw_result["sustain_s"] = SUSTAIN_S  # for the report, which runs apart
            raw_result["sustained_order"] = list(block)
            for side in windows:
                if side != "ws":
                    raw_result[f"{side}/sustained/c{c}"] = summarize_windows(windows[side], steps_path=steps)
            ws_result[f"ws/sustained/c{c}"] = summarize_windows(windows["ws"], "server_main_cpu_cores", steps)
            ws_result[f"ws/sustained/c{c}"]["windows_client_cpu_cores"] = [_r(x) for x in client_cores]
            await asyncio.sleep(0.3)  # the log lines of the last turns; the probe writes every 0.2 s
            logged = front.timings()
            ws_result[f"ws/sustained/c{c}"]["cycle"] = cycle_split(cycles, logged)
            core_firsts = read_probe_times(probe_file(args) + ".firsts")
            raw_result[f"raw/sustained/c{c}"]["first_split"] = first_split(raw_calls, core_firsts)
            ws_result[f"ws/sustained/c{c}"]["first_split"] = first_split(ws_first_calls(cycles, logged), core_firsts)
            sides = "; ".join(f"{side} {raw_result[f'{side}/sustained/c{c}']}" for side in windows if side != "ws")
            print(f"[both] sustained c={c}: {sides}; ws {ws_result[f'ws/sustained/c{c}']}", flush=True)
    finally:
        pool.shutdown()


async def both_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Raw AsyncLLM and the WebSocket path on ONE engine core, one after the
    other: the bench launches the engine core as the SERVER_WORKERS supervisor
    does (``VllmEngine.share``), with ``--raw-clients`` (K, default 1) clients more than workers.
    Clients 0..K-1 are this process's raw AsyncLLMs; the next N are Yap worker
    processes serving the WebSockets. Separate raw and ws phases each start their own engine, and
    two engine starts of the same model differed by up to 40 % in throughput
    (docs/gpu-results.md); here both sides share every step of one engine."""
    import threading

    import psutil
    from yap_core.board import Board
    from yap_core.server_process import free_port, http_get
    from yap_core.workers import ServeOptions, WorkerSpec, listen, start_worker

    n, k = args.workers, args.raw_clients
    os.environ.update(engine_env(args))  # the workers read their settings from the environment
    launcher = vllm_engine(args)
    engine_cpus, other_cpus = cpu_split(args.pin_engine)
    if engine_cpus:  # the engine core process (spawned by share) inherits this affinity
        os.sched_setaffinity(0, engine_cpus)
        print(f"[both] engine core on CPUs {sorted(engine_cpus)}, everything else on {sorted(other_cpus)}", flush=True)
    share = launcher.share(n + k)
    if engine_cpus:
        os.sched_setaffinity(0, other_cpus)  # this process, the workers and the client processes
    ready_error: list[BaseException] = []

    def wait_ready() -> None:
        try:
            share.wait_ready()
        except BaseException as exc:
            ready_error.append(exc)

    waiter = threading.Thread(target=wait_ready, daemon=True)
    waiter.start()
    host, port = "127.0.0.1", free_port("127.0.0.1")
    log_path = Path(args.out).with_suffix(".server.log")
    log = log_path.open("wb")  # this run's turns only, when a step runs again
    socks = listen(host, port, n)
    options = ServeOptions(host=host, port=port, certfile=None, keyfile=None, access_log=False)
    board = Board.create(n)  # the workers' shared counts, as `yap serve` makes them
    workers = [start_worker(WorkerSpec(index=i, count=n, fd=socks[i % len(socks)].fileno(), parent_pid=os.getpid(),
                                       attachment=share.attachments[k + i], board_fd=board.fd), options, log)
               for i in range(n)]  # fmt: skip
    for sock in socks:
        sock.close()
    board.close()  # the workers hold it
    try:
        t0 = time.perf_counter()
        raws = []
        for j in range(k):  # client 0 serves every raw cell; all k serve the raw-split windows
            raws.append(vllm_engine(args))
            raws[j].attach(share.attachments[j])
            await raws[j].start(lambda line: print(f"[raw] {line}", flush=True))
        raw = raws[0]
        base = f"http://{host}:{port}"
        healthy = 0
        # Every worker up before anything is measured: workers starting (imports,
        # tokenizer, their warm-up requests) take CPU and engine steps from the raw side.
        while healthy < 20:  # consecutive 200s: new connections land on every worker
            assert not ready_error, ready_error
            assert all(w.poll() is None for w in workers), "a worker exited; see " + str(log_path)
            try:
                healthy = healthy + 1 if http_get(base + "/healthz", timeout=2.0).status == 200 else 0
            except OSError:
                healthy = 0
            await asyncio.sleep(0.05 if healthy else 0.5)
        raw_result = await raw_measure(raw, args, time.perf_counter() - t0, sustain=False)
        front = Front(f"ws://{host}:{port}/ws", base, [psutil.Process(w.pid) for w in workers], log_path, SHARED_SALT)
        ws_result = await ws_measure(front, args, time.perf_counter() - t0, sustain=False)
        await interleaved_sustained(raws, front, args, raw_result, ws_result)
        for engine in raws:
            await engine.close()
        method = f"one engine core: raw AsyncLLM is client 1 of {n + k}, the WebSocket path {n} worker process(es)"
        if k > 1:
            method += f"; raw-split windows send the raw sessions through clients 1..{k}, all in the benchmark's process"
        method += f"; Python {sys.version.split()[0]}"
        if args.token_frame_ms:
            method += f"; TOKEN_FRAME_INTERVAL_MS={args.token_frame_ms:g} (a turn's token frames at most that often)"
        if REPLY_SPREAD > 0:
            method += (f"; sustained replies of {MAX_TOKENS - int(REPLY_SPREAD * MAX_TOKENS)}"
                       f"-{MAX_TOKENS} tokens (--reply-spread {REPLY_SPREAD:g})")
        if engine_cpus:
            method += f"; the engine core alone on CPUs {sorted(engine_cpus)}"
        return {"method": method, "raw": raw_result, "ws": ws_result}
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(60)
        share.close()
        log.close()


# The load phase's processes. spin: a tight loop (CPU only, a tiny working set).
# memory: a stand-in for the kind of work the server's workers and the
# benchmark's clients do beside the engine core (Python objects made and
# dropped), plus large copies through a buffer far past the caches. It moves
# far more memory than they do: it shows whether memory traffic slows the
# engine, not how much theirs does.
LOADS = {
    "spin": "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end:\n    pass\n",
    "memory": (
        "import sys, time\nend = time.time() + float(sys.argv[1])\nmb = 1 << 20\nbuf = bytearray(256 * mb)\ni = 0\n"
        "while time.time() < end:\n"
        "    a = (i * 37 % 60) * 4 * mb\n    chunk = bytes(buf[a:a + 4 * mb])\n"
        "    junk = [{'type': 'token', 'text': str(j)} for j in range(2000)]\n    i += 1\n"
    ),
}


async def load_phase(args: argparse.Namespace) -> dict[str, Any]:
    """A control for the sustained cells: raw AsyncLLM alone, in windows with
    the host quiet and with ``--load-procs`` processes (``--load-kind``: see
    LOADS) on the CPUs the WebSocket side would use (the engine core pinned as
    in ``both``). If the
    engine's steps slow down under load that runs no Yap code at all, what
    ``both`` measures between its raw and ws windows includes the host's CPU
    (the benchmark's own clients run on it), not only the server's work."""
    engine_cpus, other_cpus = cpu_split(args.pin_engine)
    if engine_cpus:
        os.sched_setaffinity(0, engine_cpus)
    launcher = vllm_engine(args)
    share = launcher.share(1)
    if engine_cpus:
        os.sched_setaffinity(0, other_cpus)  # this process and the load
    try:
        await asyncio.to_thread(share.wait_ready)
        raw = vllm_engine(args)
        raw.attach(share.attachments[0])
        await raw.start(lambda line: print(f"[load] {line}", flush=True))
        builder, _sampling, params = prompt_tools(raw, args)
        load = LOADS[args.load_kind]
        result: dict[str, Any] = {"load_procs": args.load_procs, "load_kind": args.load_kind, "engine_cpus": sorted(engine_cpus)}
        steps = probe_file(args) + ".steps"
        for c in SUSTAIN_C:
            await raw_sustained([raw], builder, params, c, window=99)  # the first window of a run is slow: not counted
            windows: dict[str, list[Window]] = {"quiet": [], "load": []}
            for k, side in enumerate(("quiet", "load", "load", "quiet") * SUSTAIN_BLOCKS):
                procs = []
                if side == "load":
                    seconds = str(SUSTAIN_WARM_S + SUSTAIN_S + 1.0)
                    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", load, seconds)
                             for _ in range(args.load_procs)]  # fmt: skip
                windows[side].append(await raw_sustained([raw], builder, params, c, window=k))
                for proc in procs:
                    await proc.wait()
            for side, ws_ in windows.items():
                result[f"{side}/sustained/c{c}"] = summarize_windows(ws_, steps_path=steps)
            print(f"[load] c={c}: {json.dumps({k: v for k, v in result.items() if k.endswith(f'c{c}')})}", flush=True)
        await raw.close()
        return result
    finally:
        share.close()


# --------------------------------------------------------------------------- report


def windows_order(raw: list[float] | None, ws: list[float] | None) -> str:
    """Each window's rate in the order they ran (raw, ws, ws, raw with two of each)."""
    if not raw or not ws:
        return ""
    if len(raw) == len(ws) == 2:
        return f"{raw[0]}, {ws[0]}, {ws[1]}, {raw[1]}"
    return f"raw {', '.join(map(str, raw))}; ws {', '.join(map(str, ws))}"


def _nth(xs: list[Any] | None, i: int) -> Any:
    return xs[i] if xs and i < len(xs) else None


def _change(new: float, old: float) -> str:
    return f"{(new / old - 1) * 100:+.1f}%"


def window_lines(raw: dict[str, Any], ws: dict[str, Any]) -> list[str]:
    """Each sustained window in the order it ran (raw, ws, ws, raw per block;
    raw, raw-split, ws, ws, raw-split, raw with --raw-clients), with the
    engine's steps per second and requests per step in it (the probe's step
    file), the CPU cores the measured side kept busy beside the engine core
    (raw: this process; ws: the server workers, and apart the benchmark's
    client processes), and each block's own comparisons."""
    out: list[str] = []
    block = raw.get("sustained_order") or ["raw", "ws", "ws", "raw"]
    for c in SUSTAIN_C:
        x = {side: (ws if side == "ws" else raw).get(f"{side}/sustained/c{c}", {}) for side in set(block)}
        rates = {side: x[side].get("windows_out_tok_s") or [] for side in x}
        per_block = {side: block.count(side) for side in x}
        n = len(rates["raw"]) // per_block["raw"] if rates["raw"] else 0
        if not n or any(len(rates[side]) != n * per_block[side] for side in x):
            continue
        seen = dict.fromkeys(x, 0)
        order = []  # (side, index within side), as interleaved_sustained ran them
        for _ in range(n):
            for side in block:
                order.append((side, seen[side]))
                seen[side] += 1
        out += ["", f"Sustained c={c}, window by window (engine steps from the probe in the engine core):", "",
                "| # | side | out tok/s | engine steps/s | requests per step | steps admitting a request /s "
                "| frontend CPU cores | client CPU cores |",
                "|---|---|---|---|---|---|---|---|"]
        for k, (side, i) in enumerate(order):
            # None: a run without the step log, or from before the CPU columns
            steps, reqs = _nth(x[side].get("windows_steps_per_s"), i), _nth(x[side].get("windows_requests_per_step"), i)
            cpu = _nth(x[side].get("windows_server_main_cpu_cores" if side == "ws" else "windows_frontend_cpu_cores"), i)
            clients = _nth(x["ws"].get("windows_client_cpu_cores"), i) if side == "ws" else "-"
            admits = _nth(x[side].get("windows_admitting_steps_per_s"), i)
            out.append(f"| {k + 1} | {side} | {rates[side][i]} | {steps} | {reqs} | {admits} | {cpu} | {clients} |")
        # each side's tokens/s summed over its windows of one block
        sums = {side: [sum(rates[side][b * per_block[side]:(b + 1) * per_block[side]]) for b in range(n)] for side in x}
        out.append("")
        pairs = [("ws", "raw")] + ([("raw-split", "raw"), ("ws", "raw-split")] if "raw-split" in x else [])
        for new, old in pairs:
            out.append(f"Each block's {new} vs {old}: " + ", ".join(_change(a, b) for a, b in zip(sums[new], sums[old], strict=True)))
    return out


def report(raw: dict[str, Any], ws: dict[str, Any]) -> str:
    lines = [
        f"vLLM {raw.get('vllm')}; quantization: {raw.get('quantization')}; engine start {raw.get('engine_start_s')} s, "
        f"server start {ws.get('server_start_s')} s; WebSocket path on {ws.get('server_processes', 1)} server process(es) (SERVER_WORKERS)",
        f"Method: {ws.get('method', 'raw and ws phases in separate processes, each with its own engine')}",
        "",
        "| sessions | prefix | raw TTFT p50 / p90 ms | wrapper TTFT p50 ms | WS TTFT p50 / p90 ms | WS − raw p50 ms "
        "| raw tok/s | wrapper tok/s | WS tok/s | WS vs raw |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    checks = []
    for c in CONCURRENCY:
        for warm in ("cold", "warm"):
            r, w, s = raw[f"raw/c{c}/{warm}"], raw[f"wrapper/c{c}/{warm}"], ws[f"ws/c{c}/{warm}"]
            added = (s["ttft_ms_p50"] or 0) - (r["ttft_ms_p50"] or 0)
            loss = 1 - (s["out_tok_s"] or 0) / r["out_tok_s"] if r["out_tok_s"] else None
            lines.append(
                f"| {c} | {warm} | {r['ttft_ms_p50']} / {r['ttft_ms_p90']} | {w['ttft_ms_p50']} | {s['ttft_ms_p50']} / "
                f"{s['ttft_ms_p90']} | {added:+.2f} | {r['out_tok_s']} | {w['out_tok_s']} | {s['out_tok_s']} | "
                f"{'' if loss is None else f'{-loss * 100:+.1f}%'} |"
            )
            checks.append((f"c={c} {warm}: TTFT added {added:+.2f} ms (target <= 1 ms)", added <= 1.0))
            if c > 1 and loss is not None:
                checks.append((f"c={c} {warm}: throughput lost {loss * 100:.1f}% (target <= 2%)", loss <= 0.02))
    if "raw-chat/c1/warm" in raw and "ws/c1/warm" in ws:
        lines += ["", "c=1, raw AsyncLLM given the chat as text (vLLM's renderer applies the template and tokenizes, "
                  "as its own OpenAI server does) against the WebSocket path, which also starts from text:", "",
                  "| prefix | raw (ids) TTFT p50 ms | raw (chat text) TTFT p50 / p90 ms | WS TTFT p50 ms | WS − raw (chat text) p50 ms |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for warm in ("cold", "warm"):
            r, t, s = raw[f"raw/c1/{warm}"], raw[f"raw-chat/c1/{warm}"], ws[f"ws/c1/{warm}"]
            added = (s["ttft_ms_p50"] or 0) - (t["ttft_ms_p50"] or 0)
            lines.append(f"| {warm} | {r['ttft_ms_p50']} | {t['ttft_ms_p50']} / {t['ttft_ms_p90']} | {s['ttft_ms_p50']} | {added:+.2f} |")
            checks.append((f"c=1 {warm}: TTFT added vs raw from the chat's text {added:+.2f} ms (target <= 1 ms)", added <= 1.0))
    lines += ["", f"Sustained: each session runs turns back to back for {SUSTAIN_S:g} s (after {SUSTAIN_WARM_S:g} s), "
              "prefix cached; output tokens/s in the window and TTFT of the turns sent in it.", "",
              "| sessions | raw tok/s | WS tok/s | WS vs raw | raw TTFT p50 ms | WS TTFT p50 ms | raw turns | WS turns "
              "| windows in order (raw, ws, ws, raw with `both`), tok/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in SUSTAIN_C:
        r, s = raw.get(f"raw/sustained/c{c}"), ws.get(f"ws/sustained/c{c}")
        if not r or not s:
            continue
        loss = 1 - s["out_tok_s"] / r["out_tok_s"] if r["out_tok_s"] else None
        lines.append(f"| {c} | {r['out_tok_s']} | {s['out_tok_s']} | {'' if loss is None else f'{-loss * 100:+.1f}%'} | "
                     f"{r['ttft_ms_p50']} | {s['ttft_ms_p50']} | {r['turns_in_window']} | {s['turns_in_window']} | "
                     f"{windows_order(r.get('windows_out_tok_s'), s.get('windows_out_tok_s'))} |")  # fmt: skip
        if loss is not None:
            checks.append((f"sustained c={c}: throughput lost {loss * 100:.1f}% (target <= 2%)", loss <= 0.02))
        split = raw.get(f"raw-split/sustained/c{c}")
        if split and r["out_tok_s"] and split["out_tok_s"]:
            lines.append(f"| {c}, raw over {raw.get('raw_clients')} clients | {split['out_tok_s']} | {s['out_tok_s']} | "
                         f"raw-split vs raw {_change(split['out_tok_s'], r['out_tok_s'])}; "
                         f"WS vs raw-split {_change(s['out_tok_s'], split['out_tok_s'])} | {split['ttft_ms_p50']} | "
                         f"{s['ttft_ms_p50']} | {split['turns_in_window']} | {s['turns_in_window']} | |")  # fmt: skip
    lines += window_lines(raw, ws)
    for c in SUSTAIN_C:
        cyc = ws.get(f"ws/sustained/c{c}", {}).get("cycle")
        if cyc and cyc.get("n"):
            lines += ["", f"Sustained c={c}, the WebSocket side between a session's two engine requests, p50 / p90 ms over "
                      f"{cyc['n']} turns (`cycle_split`): `done` queued -> the client has it; -> the client sends its next "
                      "turn; -> the server's app has it; -> vLLM called; their sum; then vLLM's own first token; "
                      "and over every turn the server's part of its TTFT (the client's TTFT less vLLM's first token).", "",
                      "| " + " | ".join(CYCLE_KEYS) + " |", "|" + "---|" * len(CYCLE_KEYS),
                      "| " + " | ".join(f"{cyc.get(f'{k}_p50')} / {cyc.get(f'{k}_p90')}" for k in CYCLE_KEYS) + " |"]
        splits = {side: x.get(f"{side}/sustained/c{c}", {}).get("first_split") for side, x in (("raw", raw), ("ws", ws))}
        if all(v and v.get("n") for v in splits.values()):
            lines += ["", f"Sustained c={c}, vLLM's first token split by the probe's `.firsts` (`first_split`), p50 / p90 ms: "
                      "generate() called -> the engine core hands the token out; -> the calling process's AsyncLLM has it.",
                      "", "| side | turns | engine core | hand-on |", "|---|---|---|---|"]
            lines += [f"| {side} | {v['n']} | {v.get('core_ms_p50')} / {v.get('core_ms_p90')} | "
                      f"{v.get('handon_ms_p50')} / {v.get('handon_ms_p90')} |" for side, v in splits.items()]  # fmt: skip
    lines += ["", "Where the WebSocket path's TTFT goes (p50 ms; server figures from `done.usage.ttft_ms` and "
              "TURN_TIMING_LOG): client-measured TTFT; the server's own (frame in -> token frame queued); frame in -> "
              "engine called (decode, session, prompt); engine called -> first text from vLLM; first text -> token "
              "frame queued (sanitizer); the two socket hops on the host's one clock (client sends -> the server's "
              "app has the frame: client library, kernel, Hypercorn; token frame queued -> the client has it parsed: "
              "the server's sender task, Hypercorn, kernel, client library); raw AsyncLLM's TTFT for comparison; "
              "completion tokens per token frame.", "",
              "| sessions | prefix | client TTFT | server TTFT | before engine | engine | after engine | hop in | hop out "
              "| added per turn p50 / p90 | raw TTFT | tokens/frame |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(f"{c} (client spinning)" if c == 1 else str(c), "ws", c) for c in CONCURRENCY]
    rows += [("1 (client parked)", "ws-parked", 1)] if "ws-parked/c1/warm" in ws else []
    # one session through many turns, its history growing (a voice app's); the others open a session a turn
    rows += [("1, one session, history growing", "ws-session", 1)] if "ws-session/c1/warm" in ws else []
    for label, name, c in rows:
        for warm in ("cold", "warm"):
            if f"{name}/c{c}/{warm}" not in ws:
                continue
            r, s = raw[f"raw/c{c}/{warm}"], ws[f"{name}/c{c}/{warm}"]
            lines.append(f"| {label} | {warm} | {s['ttft_ms_p50']} | {s.get('server_ttft_ms_p50')} | {s.get('submit_ms_p50')} | "
                         f"{s.get('engine_first_ms_p50')} | {s.get('after_engine_ms_p50')} | "
                         f"{s.get('hop_in_ms_p50')} | {s.get('hop_out_ms_p50')} | "
                         f"{s.get('added_ms_p50')} / {s.get('added_ms_p90')} | {r['ttft_ms_p50']} | "
                         f"{s.get('tokens_per_frame')} |")  # fmt: skip
    a, b = raw.get("abort", {}), ws.get("abort", {})

    def probed(x: dict[str, Any]) -> str:
        return "; ".join(f"{label} p50 {x.get(f'to_scheduler_probe_{k}_ms_p50')} ms (max {x.get(f'to_scheduler_probe_{k}_ms_max')}, "
                         f"{x.get(f'scheduler_probe_{k}_n')} seen)"
                         for k, label in (("on_token", "sent as the 10th token arrived"),
                                          ("random", f"at a random moment up to {ABORT_JITTER_S * 1e3:g} ms later")))  # fmt: skip

    lines += ["", "Abort -> the request dropped by vLLM's scheduler (the probe in the engine core, vllm_abort_probe.py: "
              "the moment `finish_requests` removed it, on the host's one clock):",
              f"- raw `AsyncLLM.abort`: {probed(a)}; its final abort output p50 {a.get('to_final_output_ms_p50')} ms "
              f"(max {a.get('to_final_output_ms_max')}); the scheduler's running count seen dropping in the stats of a "
              f"later step p50 {a.get('to_scheduler_dropped_ms_p50')} ms (max {a.get('to_scheduler_dropped_ms_max')}; "
              f"not seen within 1 s: {a.get('scheduler_not_seen_dropping_within_1s')}).",
              f"- WebSocket `cancel` frame sent: {probed(b)}; the `cancelled` frame p50 {b.get('to_cancelled_frame_ms_p50')} ms "
              f"(max {b.get('to_cancelled_frame_ms_max')}).",
              f"Server-side work before a cold turn reaches the engine (system prompt count + render, measured "
              f"in-process on the same prompts): p50 {raw.get('cold_prompt_work_ms', {}).get('p50')} ms.",
              "", "CPU (cores busy): " + "; ".join(
                  f"c={c} {w}: raw frontend {raw[f'raw/c{c}/{w}'].get('frontend_cpu_cores')}, "
                  f"server main process {ws[f'ws/c{c}/{w}'].get('server_main_cpu_cores')}"
                  for c in CONCURRENCY for w in ("cold", "warm"))]  # fmt: skip
    if b.get("to_cancelled_frame_ms_p50") is not None:
        checks.append((f"cancel -> cancelled p50 {b['to_cancelled_frame_ms_p50']} ms (target <= 5 ms)",
                       b["to_cancelled_frame_ms_p50"] <= 5.0))  # fmt: skip
    for side, x in (("raw AsyncLLM.abort", a), ("WebSocket cancel frame", b)):
        for k, label in (("on_token", "sent on a token"), ("random", "at a random moment")):
            ms = x.get(f"to_scheduler_probe_{k}_ms_p50")
            if ms is not None:
                checks.append((f"{side} {label} -> request dropped by vLLM's scheduler p50 {ms} ms (target <= 5 ms)", ms <= 5.0))
    ws1 = {w: ws.get(f"ws/c1/{w}", {}).get("added_ms_p50") for w in ("cold", "warm")}
    for w, ms in ws1.items():
        if ms is not None:
            checks.append((f"c=1 {w}: added per turn p50 {ms} ms (client TTFT - the engine's own; target <= 1 ms)", ms <= 1.0))
    for c in SUSTAIN_C:
        ms = ws.get(f"ws/sustained/c{c}", {}).get("cycle", {}).get("added_ms_p50")
        if ms is not None:
            checks.append((f"sustained c={c}: added per turn p50 {ms} ms (client TTFT - the engine's own; target <= 1 ms)",
                           ms <= 1.0))  # fmt: skip
    lines += ["", "Targets:"] + [f"- {'MET' if ok else 'MISSED'}: {text}" for text, ok in checks]
    return "\n".join(lines) + "\n"


TURN_KEYS = ("task_ms", "submit_ms", "engine_first_ms", "ttft_ms")


def turns_table(logs: list[str]) -> str:
    """Per server log: turns, and p50 / p90 of each TURN_KEYS figure (ms) over
    every turn the log holds that reached the engine."""
    from yap_core.turn import timing_records

    head = "| log | turns | " + " | ".join(f"{k} p50 / p90" for k in TURN_KEYS) + " |"
    lines = [head, "|" + " --- |" * (len(TURN_KEYS) + 2)]
    for log in logs:
        recs = [r for r in timing_records(Path(log).read_text(errors="replace")).values() if r.get("submit_ms") is not None]
        cells = []
        for key in TURN_KEYS:
            values = [float(r[key]) for r in recs if r.get(key) is not None]
            cells.append(f"{_r(pct(values, 0.5))} / {_r(pct(values, 0.9))}" if values else "-")
        lines.append(f"| {Path(log).name} | {len(recs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    global CONCURRENCY, ROUNDS, CLIENT_PROCS, SUSTAIN_C, SUSTAIN_S, SUSTAIN_WARM_S, SUSTAIN_BLOCKS, REPLY_SPREAD
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["raw", "ws", "both", "load", "report", "turns"])
    ap.add_argument("files", nargs="*", help="report: raw.json ws.json, or one both.json; turns: server logs")
    ap.add_argument("--model", help="model folder (config.json + tokenizer) or checkpoint")
    ap.add_argument("--load-format", default="auto", help="dummy: random weights")
    ap.add_argument("--attn", default="FLASH_ATTN")
    ap.add_argument("--quantization", default="none", help="CHAT_QUANTIZATION for both phases (none: bf16)")
    ap.add_argument("--gpu-frac", type=float, default=0.85)
    ap.add_argument("--stream-interval", type=int, default=1, help="STREAM_INTERVAL for both phases")
    ap.add_argument("--cudagraph-mode", help="CUDAGRAPH_MODE for both phases (e.g. FULL; default: vLLM's)")
    ap.add_argument("--token-frame-ms", type=float, default=0.0,
                    help="TOKEN_FRAME_INTERVAL_MS for the WebSocket path (0: every piece at once)")
    ap.add_argument("--workers", type=int, default=1, help="ws phase: SERVER_WORKERS (server processes on one engine core)")
    ap.add_argument("--raw-clients", type=int, default=1,
                    help="both phase: AsyncLLM clients on the raw side; above 1 adds raw-split sustained windows")
    ap.add_argument("--pin-engine", type=int, default=0, help="both phase: physical cores reserved for vLLM's engine core (0: no pinning)")
    ap.add_argument("--out", help="where the JSON (or the report's markdown) goes; required but for turns")
    ap.add_argument("--quick", action="store_true", help="tiny run (c=1 and 4, one round): checks the script, measures nothing")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="session counts of the round cells")
    ap.add_argument("--sustain", default=",".join(map(str, SUSTAIN_C)), help="session counts of the sustained cells (--sustain= for none)")
    ap.add_argument("--rounds-c1", type=int, default=ROUNDS[1], help="rounds (turns) of each c=1 cell")
    ap.add_argument("--session-turns", type=int, default=20,
                    help="ws: turns of the one-session cell (history growing; 0: none); run with c=1")
    ap.add_argument("--sustain-s", type=float, default=SUSTAIN_S, help="seconds of each sustained window")
    ap.add_argument("--blocks", type=int, default=SUSTAIN_BLOCKS, help="both: raw, ws, ws, raw blocks of sustained windows")
    ap.add_argument("--reply-spread", type=float, default=REPLY_SPREAD,
                    help="sustained: each turn's max_tokens drawn from [MAX_TOKENS * (1 - this), MAX_TOKENS], "
                         "the same on both sides (0: all MAX_TOKENS); see sustained_reply_tokens")
    ap.add_argument("--load-procs", type=int, default=4, help="load: processes running in the loaded windows")
    ap.add_argument("--load-kind", choices=sorted(LOADS), default="spin", help="load: what those processes do (see LOADS)")
    args = ap.parse_args()
    SUSTAIN_S, SUSTAIN_BLOCKS, REPLY_SPREAD = args.sustain_s, args.blocks, args.reply_spread
    CONCURRENCY = tuple(int(c) for c in args.concurrency.split(",") if c)
    SUSTAIN_C = tuple(int(c) for c in args.sustain.split(",") if c)
    ROUNDS = {c: args.rounds_c1 if c == 1 else ROUNDS.get(c, 3) for c in CONCURRENCY}
    if args.quick:
        CONCURRENCY, ROUNDS, CLIENT_PROCS = (1, 4), {1: 1, 4: 1}, 2
        SUSTAIN_C, SUSTAIN_S, SUSTAIN_WARM_S = (4,), 2.0, 0.5
    if args.phase == "turns":
        print(turns_table(args.files))
        return
    if not args.out:
        sys.exit("--out is required")
    if args.phase == "report":
        loaded = [json.loads(Path(f).read_text()) for f in args.files]
        raw, ws = loaded if len(loaded) == 2 else (loaded[0]["raw"], loaded[0]["ws"] | {"method": loaded[0]["method"]})
        # the cells the run measured (a --quick run has others than the defaults)
        CONCURRENCY = tuple(sorted({int(k.split("/")[1][1:]) for k in raw if k.startswith("raw/c")}))
        SUSTAIN_C = tuple(sorted({int(k.rsplit("/c", 1)[1]) for k in raw if k.startswith("raw/sustained/")}))
        SUSTAIN_S = raw.get("sustain_s", SUSTAIN_S)
        text = report(raw, ws)
        Path(args.out).write_text(text)
        print(text)
        return
    if not args.model:
        sys.exit("--model is required")
    # The abort probe (vllm_abort_probe.py) runs in vLLM's engine core: a process
    # of its own, which finds the module on PYTHONPATH and writes where this says.
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    os.environ["YAP_ABORT_PROBE_FILE"] = probe_file(args)
    Path(probe_file(args)).unlink(missing_ok=True)
    Path(probe_file(args) + ".steps").unlink(missing_ok=True)
    Path(probe_file(args) + ".firsts").unlink(missing_ok=True)
    run = {"raw": raw_phase, "ws": ws_phase, "both": both_phase, "load": load_phase}[args.phase]
    result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
