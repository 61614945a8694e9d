#!/usr/bin/env python3
"""Quick proof that the vLLM engine plugin works on a real GPU: the plugin
starts vLLM's AsyncLLM, streams, aborts (the scheduler empties), prefills
(the prefix cache hits), reports stats; then `yap serve` on vLLM answers one
WebSocket turn and a cancel. Writes one JSON file; exit status 1 on failure.

  python3 gpu/engine_smoke.py --model .wh/c4/models/llama-1b --load-format dummy --out $OUT/smoke.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Any


def env_for(args: argparse.Namespace) -> dict[str, str]:
    return {
        "TEXT_API_KEY": "smoke-key",
        "INFERENCE_ENGINE": "vllm",
        "DEPLOY_MODE": "chat",
        "CHAT_MODEL": args.model,
        "CHAT_LOAD_FORMAT": args.load_format,
        "CHAT_MAX_LEN": "4096",
        "CHAT_GPU_FRAC": "0.80",
        "ATTENTION_BACKEND": args.attn,
        "LOG_LEVEL": "INFO",
        "OTEL_SDK_DISABLED": "true",
        **({"CHAT_TOKENIZER": args.tokenizer} if args.tokenizer else {}),
    }


async def engine_checks(args: argparse.Namespace, out: dict[str, Any]) -> None:
    import os

    from yap_core.contracts import GenerationRequest, Sampling
    from yap_core.plugins import PluginHost
    from yap_core.settings import Config

    host = PluginHost()
    host.load("vllm")
    engine = host.engine_factory("vllm")(Config(env={**os.environ, **env_for(args)}, toml={}))
    t0 = time.perf_counter()
    await engine.start(lambda line: print(f"[smoke] {line}", flush=True))
    out["engine_start_s"] = round(time.perf_counter() - t0, 1)
    out["vllm"] = engine.version
    out["quantization"] = engine.quant_plan.reason
    out["engine_kwargs"] = engine.engine_kwargs_used
    out["max_model_len"] = engine.max_model_len
    # What vLLM applied, not what was asked (KV_DTYPE=fp8: the cache's dtype and its size in blocks)
    cache = engine.async_llm.vllm_config.cache_config
    out["kv_cache"] = {"dtype": cache.cache_dtype, "block_size": cache.block_size, "gpu_blocks": cache.num_gpu_blocks}
    tok = engine.tokenizer
    ids = tuple(tok.encode("The weather today is lovely, so let us talk about", add_special_tokens=False))

    # stream, greedy, twice: deterministic
    texts = []
    for _ in range(2):
        req = GenerationRequest(request_id=uuid.uuid4().hex, prompt_token_ids=ids,
                                sampling=Sampling(temperature=0.0, max_tokens=24))  # fmt: skip
        t = time.perf_counter()
        deltas = [d async for d in engine.stream(req)]
        out.setdefault("greedy_ms", []).append(round((time.perf_counter() - t) * 1e3, 1))
        texts.append("".join(d.text for d in deltas))
        out["greedy_last_delta"] = {"finish": deltas[-1].finish_reason, "tokens": deltas[-1].completion_tokens}
    out["greedy_text"] = texts[0]
    out["greedy_deterministic"] = texts[0] == texts[1]

    # abort mid-stream
    req = GenerationRequest(request_id=uuid.uuid4().hex, prompt_token_ids=ids,
                            sampling=Sampling(max_tokens=400, ignore_eos=True))  # fmt: skip
    n, t_abort, last = 0, 0.0, None
    async for d in engine.stream(req):
        n += 1
        last = d
        if n == 5:
            t_abort = time.perf_counter()
            await engine.abort(req.request_id)
    t_final = time.perf_counter()
    while (await engine.stats()).running:  # noqa: ASYNC110 (polling is the measurement)
        await asyncio.sleep(0.0005)
    out["abort"] = {"finish": last.finish_reason, "tokens": last.completion_tokens,
                    "to_final_ms": round((t_final - t_abort) * 1e3, 2),
                    "to_idle_ms": round((time.perf_counter() - t_abort) * 1e3, 2)}  # fmt: skip

    # aclose aborts
    stream = engine.stream(GenerationRequest(request_id=uuid.uuid4().hex, prompt_token_ids=ids,
                                             sampling=Sampling(max_tokens=400, ignore_eos=True)))  # fmt: skip
    async for _ in stream:
        break
    await stream.aclose()
    t = time.perf_counter()
    while (await engine.stats()).running:  # noqa: ASYNC110 (polling is the measurement)
        await asyncio.sleep(0.0005)
    out["aclose_to_idle_ms"] = round((time.perf_counter() - t) * 1e3, 2)

    # prefill then a request sharing the prefix
    system = tuple(tok.encode("You are a calm and kind assistant who answers briefly. " * 20, add_special_tokens=False))
    first = await engine.prefill(system)
    second = await engine.prefill(system)
    req = GenerationRequest(request_id=uuid.uuid4().hex, prompt_token_ids=system + ids, sampling=Sampling(max_tokens=4))
    deltas = [d async for d in engine.stream(req)]
    out["prefill"] = {"prefix_tokens": len(system), "first_cached": first, "second_cached": second,
                      "request_cached": deltas[-1].cached_prompt_tokens}  # fmt: skip
    stats = await engine.stats()
    out["stats"] = {f: getattr(stats, f) for f in stats.__struct_fields__}

    # 32 concurrent sampled streams
    reqs = [GenerationRequest(request_id=uuid.uuid4().hex, prompt_token_ids=ids + (i + 100,),
                              sampling=Sampling(max_tokens=32, seed=i)) for i in range(32)]  # fmt: skip

    async def run(r: GenerationRequest) -> str | None:
        return [d async for d in engine.stream(r)][-1].finish_reason

    out["concurrent_finishes"] = sorted(set(await asyncio.gather(*[run(r) for r in reqs])))
    await engine.close()


async def server_checks(args: argparse.Namespace, out: dict[str, Any], log_dir: Path) -> None:
    from yap_core.server_process import ServerProcess, http_get_async
    from yap_core.wsclient import YapConnection

    server = ServerProcess(env_for(args), log_path=log_dir / "smoke_server.log")
    t0 = time.perf_counter()
    await server.start()
    out["server_start_s"] = round(time.perf_counter() - t0, 1)
    try:
        async with await YapConnection.open(server.ws_url, "smoke-key") as conn:
            turn = await conn.turn("start", "s1", {"chat_prompt": "You are brief.", "user_utterance": "Hello there!",
                                                   "sampling": {"temperature": 0, "max_tokens": 20}})  # fmt: skip
            out["ws_turn"] = {"end": turn.end, "tokens": turn.tokens, "usage": turn.usage,
                              "ttft_ms": None if turn.first_token_s is None else round(turn.first_token_s * 1e3, 2),
                              "text": turn.text, "error": turn.error}  # fmt: skip
            rid = uuid.uuid4().hex
            await conn.send("message", "s1", rid, {"user_utterance": "Tell me a long story.",
                                                  "sampling": {"max_tokens": 150}})  # fmt: skip
            seen = []
            while True:
                frame = await conn.recv(60)
                seen.append(frame.type)
                if frame.type == "token" and seen.count("token") == 3:
                    t_cancel = await conn.send("cancel", "s1", None, {})
                if frame.type in ("cancelled", "done", "error"):
                    break
            out["ws_cancel"] = {"frames": seen[-3:], "to_terminal_ms": round((time.perf_counter() - t_cancel) * 1e3, 2)}
        body = (await http_get_async(server.base_url + "/status", {"X-API-Key": "smoke-key"})).body
        out["status_engine"] = body.get("engine")
    finally:
        await server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--attn", default="FLASH_ATTN")
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-server", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {"model": args.model, "load_format": args.load_format}
    ok = True
    for name, step in (("engine", engine_checks), ("server", server_checks)):
        if name == "server" and args.skip_server:
            continue
        try:
            if name == "engine":
                asyncio.run(step(args, out))
            else:
                asyncio.run(step(args, out, Path(args.out).parent))
        except Exception:
            ok = False
            out[f"{name}_error"] = traceback.format_exc()[-3000:]
            print(out[f"{name}_error"], file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out, default=str)[:6000])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
