"""Engine benchmark: decode speed, time to first token, concurrent throughput.

    .venv/bin/python benchmarks/engine_bench.py            # the hf engine, embedded SmolLM2
    INFERENCE_ENGINE=example .venv/bin/python benchmarks/engine_bench.py
    HF_DTYPE=float32 HF_THREADS=2 .venv/bin/python benchmarks/engine_bench.py --json

The engine is built the way the server builds it (plugin name from
INFERENCE_ENGINE / plugins.toml, settings from the environment), started,
then measured. Figures are medians over --repeat runs; the machine's load
average is printed with them, since a shared machine skews them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from typing import Any

from yap_core.contracts import Engine, GenerationRequest, Sampling
from yap_core.plugins import PluginHost
from yap_core.settings import Config, CoreSettings

FILLER = (
    "Yap is a real-time voice assistant. It answers briefly, warmly and precisely, and it never reads out "
    "markup. The user is talking over a phone line, so every word counts and long lists are avoided. "
)


def _ids(engine: Engine, text: str) -> tuple[int, ...]:
    return tuple(engine.tokenizer.encode(text, add_special_tokens=False))


def _prompt(engine: Engine, tokens: int) -> tuple[int, ...]:
    """A fresh prompt of exactly `tokens` tokens (a random opening defeats the prefix cache)."""
    ids = _ids(engine, f"[{uuid.uuid4().hex}] ")
    while len(ids) < tokens:
        ids += _ids(engine, FILLER)
    return ids[:tokens]


def _request(ids: tuple[int, ...], max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=uuid.uuid4().hex,
        prompt_token_ids=ids,
        sampling=Sampling(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
    )


async def _timed(engine: Engine, req: GenerationRequest) -> tuple[float, float, int, int]:
    """(ttft s, total s, completion tokens, cached prompt tokens)."""
    start = time.perf_counter()
    first = None
    last = None
    async for delta in engine.stream(req):
        if first is None:
            first = time.perf_counter() - start
        last = delta
    assert last is not None and first is not None
    return first, time.perf_counter() - start, last.completion_tokens, last.cached_prompt_tokens


async def decode_rate(engine: Engine, tokens: int) -> float:
    ids = _prompt(engine, 32)
    ttft, total, n, _ = await _timed(engine, _request(ids, tokens))
    return (n - 1) / (total - ttft)


async def ttft_cold(engine: Engine, prompt_tokens: int) -> float:
    return (await _timed(engine, _request(_prompt(engine, prompt_tokens), 1)))[0]


async def ttft_cached(engine: Engine, prompt_tokens: int) -> tuple[float, int]:
    """A second turn: the conversation so far is cached, a short new utterance is not."""
    ids = _prompt(engine, prompt_tokens)
    await engine.prefill(ids)
    turn = ids + _ids(engine, " And what is the weather like today?")
    ttft, _, _, cached = await _timed(engine, _request(turn, 1))
    return ttft, cached


async def concurrent_rate(engine: Engine, streams: int, tokens: int) -> float:
    reqs = [_request(_prompt(engine, 32), tokens) for _ in range(streams)]
    start = time.perf_counter()
    results = await asyncio.gather(*(_timed(engine, r) for r in reqs))
    return sum(r[2] for r in results) / (time.perf_counter() - start)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    config = Config.discover()
    name = config.section("core", CoreSettings).inference_engine
    host = PluginHost()
    host.load(name)
    engine = host.engine_factory(name)(config)
    t0 = time.perf_counter()
    await engine.start()
    start_s = time.perf_counter() - t0
    med = statistics.median
    try:
        out: dict[str, Any] = {
            "engine": name,
            "model": engine.model_id,
            "start_s": round(start_s, 1),
            "decode_tok_s": round(med([await decode_rate(engine, args.tokens) for _ in range(args.repeat)]), 1),
            f"ttft_{args.prompt}_cold_ms": round(1000 * med([await ttft_cold(engine, args.prompt) for _ in range(args.repeat)])),
        }
        cached = [await ttft_cached(engine, args.prompt) for _ in range(args.repeat)]
        out[f"ttft_{args.prompt}_cached_ms"] = round(1000 * med([c[0] for c in cached]))
        out["cached_prompt_tokens"] = cached[0][1]
        out[f"concurrent_{args.streams}_tok_s"] = round(
            med([await concurrent_rate(engine, args.streams, args.tokens) for _ in range(args.repeat)]), 1
        )
    finally:
        await engine.close()
    for attr in ("device", "dtype"):
        if hasattr(engine, attr):
            out[attr] = getattr(engine, attr)
    out["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    parser.add_argument("--prompt", type=int, default=400, help="prompt length for the TTFT figures")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
