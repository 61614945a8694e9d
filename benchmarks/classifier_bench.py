"""Screenshot-classifier decision latency and throughput.

    .venv/bin/python benchmarks/classifier_bench.py                      # CPU, the built default model
    python benchmarks/classifier_bench.py --device cuda --model DIR --out gpu.json

Precision and CUDA graphs as the server runs them (TOOL_DTYPE=auto,
TOOL_CUDA_GRAPHS=1: fp16 and graphs on CUDA, bf16 on a CPU with native bf16);
``--dtype`` and ``--no-cuda-graphs`` compare. The first line printed says
which were used.

Two figures:

1. Decision latency at batch 1 for a 128-token input (window, tokenize,
   forward, softmax: what one lone session waits for), p50/p95 over
   ``--iters`` decisions after a warm-up.
2. Throughput with ``--sessions`` concurrent sessions (default 32), each
   asking for its next decision as soon as it has the last, through the same
   micro-batcher the server uses (one worker thread); decisions per second and
   per-decision latency.

Runs without the project's venv (only torch and transformers are needed), so
it can be copied to a GPU machine: it imports the classifier's modules from
this checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "yap_classifier" / "src"))

from yap_classifier.batching import MicroBatcher  # noqa: E402
from yap_classifier.model import DTYPES, SequenceClassifier  # noqa: E402

RAMBLE = (
    "so um i was looking at my bank account this morning and there were like three charges i don't "
    "recognise and my sister said it might be one of those subscription things you forget about but "
    "honestly i have no idea what half of these names even mean and i've been staring at it for ages "
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def input_of(model: SequenceClassifier, tokens: int, history: int) -> list[str]:
    """User turns whose window encodes to exactly ``tokens`` tokens, after
    ``history`` more earlier turns (a long session's; they fall outside the
    window, but the window has to find that out)."""
    earlier = [f"what about number {i} on that list" for i in range(history)]
    turns = [*earlier, "which of these charges look weird to you", RAMBLE * 8 + "can you look at my screen and tell me what this one is"]
    enc = model.encode([turns])
    if enc["input_ids"].shape[1] != tokens:
        raise SystemExit(f"input encodes to {enc['input_ids'].shape[1]} tokens, expected {tokens}")
    return turns


def batch1(model: SequenceClassifier, turns: list[str], iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        model.predict([turns])
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        model.predict([turns])
        times.append((time.perf_counter() - started) * 1000)
    return times


async def concurrent(
    model: SequenceClassifier, turns: list[str], sessions: int, rounds: int, batch_size: int, wait_ms: float
) -> tuple[float, list[float], int]:
    batcher: MicroBatcher[list[str], object] = MicroBatcher(
        model.predict, batch_size=batch_size, max_wait_s=wait_ms / 1000, queue_size=max(64, 4 * batch_size)
    )
    batcher.start()
    latencies: list[float] = []

    async def session() -> None:
        for _ in range(rounds):
            started = time.perf_counter()
            await batcher.submit(turns, wait_s=60)
            latencies.append((time.perf_counter() - started) * 1000)

    try:
        await asyncio.gather(*(session() for _ in range(2)))  # warm-up
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(session() for _ in range(sessions)))
        elapsed = time.perf_counter() - started
    finally:
        batcher.close()
    return len(latencies) / elapsed, latencies, batcher.stats.largest_batch


def default_model() -> str:
    import os

    from yap_classifier.train import default_cache_dir, default_model_dir, is_built

    path = default_model_dir(default_cache_dir(os.environ.get("YAP_CACHE_DIR")))
    if not is_built(path):
        raise SystemExit(f"no built default model at {path}: run `yap classifier train`, or pass --model")
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the built default under $YAP_CACHE_DIR)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="auto", choices=DTYPES, help="TOOL_DTYPE (default auto)")
    ap.add_argument(
        "--cuda-graphs", action=argparse.BooleanOptionalAction, default=True, help="TOOL_CUDA_GRAPHS (CUDA only)"
    )
    ap.add_argument("--tokens", type=int, default=128, help="input length in tokens")
    ap.add_argument("--history-turns", type=int, default=0, help="earlier user turns before the input (a long session)")
    ap.add_argument("--iters", type=int, default=200, help="batch-1 decisions timed")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=32, help="concurrent sessions for the throughput figure")
    ap.add_argument("--rounds", type=int, default=8, help="decisions per session in the throughput run")
    ap.add_argument("--batch-size", type=int, default=32, help="TOOL_BATCH_SIZE")
    ap.add_argument("--batch-wait-ms", type=float, default=2.0, help="TOOL_BATCH_WAIT_MS")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = SequenceClassifier.load(
        args.model or default_model(),
        window_tokens=args.tokens,
        device=args.device,
        dtype=args.dtype,
        cuda_graphs=args.cuda_graphs,
        batch_size=args.batch_size,
    )
    graphs = f"on, {len(model.graph_shapes)} shapes" if model.cuda_graphs else "off"
    print(f"classifier: dtype {model.dtype} (--dtype {args.dtype}), CUDA graphs {graphs}", flush=True)
    turns = input_of(model, args.tokens, args.history_turns)
    lat = batch1(model, turns, args.iters, args.warmup)
    rate, clat, largest = asyncio.run(
        concurrent(model, turns, args.sessions, args.rounds, args.batch_size, args.batch_wait_ms)
    )
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or platform.machine()} cpu"
    result = {
        "model": model.model_id,
        "device": device,
        "dtype": model.dtype,
        "cuda_graphs": model.cuda_graphs is not None,
        "cuda_graph_shapes": len(model.graph_shapes),
        "torch_threads": torch.get_num_threads(),
        "input_tokens": args.tokens,
        "history_turns": args.history_turns,
        "batch1_p50_ms": round(statistics.median(lat), 2),
        "batch1_p95_ms": round(percentile(lat, 95), 2),
        "batch1_mean_ms": round(statistics.fmean(lat), 2),
        "batch1_iters": len(lat),
        "sessions": args.sessions,
        "throughput_per_s": round(rate, 1),
        "concurrent_p50_ms": round(statistics.median(clat), 2),
        "concurrent_p95_ms": round(percentile(clat, 95), 2),
        "largest_batch": largest,
        "batch_size": args.batch_size,
        "batch_wait_ms": args.batch_wait_ms,
        "torch": torch.__version__,
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key.ljust(width)}  {value}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
