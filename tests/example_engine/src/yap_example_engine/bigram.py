"""The "model": next-byte counts learned from a few sentences at start-up.

Deterministic at temperature 0 (the most frequent next byte, lowest id on
ties); sampled with the request's seed otherwise."""

from __future__ import annotations

import random

from yap_example_engine.tokenizer import EOS, VOCAB

CORPUS = (
    "Lyon sits where the Rhone and the Saone meet, and its old town climbs the hill of Fourviere.",
    "The festival of lights fills the streets every December with candles in the windows.",
    "A good meal in a bouchon starts with bread, wine and a long conversation.",
    "The assistant answers briefly, and the user asks another question about the city.",
)


class BigramModel:
    def __init__(self) -> None:
        self.counts = [[0] * VOCAB for _ in range(VOCAB)]
        for line in CORPUS:
            ids = list(line.encode("utf-8")) + [EOS]
            for a, b in zip(ids, ids[1:], strict=False):
                self.counts[a][b] += 1

    def next_token(self, prev: int, temperature: float, top_k: int, top_p: float, rng: random.Random) -> int:
        row = self.counts[prev] if 0 <= prev < VOCAB else self.counts[ord(" ")]
        if not any(row):
            row = self.counts[ord(" ")]  # a byte never seen in the corpus: continue as after a space
        if temperature == 0:
            return max(range(VOCAB), key=lambda i: (row[i], -i))
        weights = [c ** (1.0 / temperature) for c in row]
        order = sorted(range(VOCAB), key=lambda i: -weights[i])
        if top_k > 0:
            order = order[:top_k]
        total = sum(weights[i] for i in order)
        kept, mass = [], 0.0
        for i in order:
            if weights[i] == 0 or (kept and mass >= top_p * total):
                break
            kept.append(i)
            mass += weights[i]
        return rng.choices(kept, weights=[weights[i] for i in kept])[0]
