"""Choosing the next token for one request from its logits.

Every Sampling key is honoured here: penalties (repetition over prompt and
reply, presence and frequency over the reply, as in the OpenAI API), logit
bias, temperature (0: greedy), top_k, top_p, min_p, and a per-request seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from yap_core.contracts import Sampling


class TokenSampler:
    """Per-request sampling state: token counts for penalties and its RNG."""

    def __init__(self, sampling: Sampling, prompt_ids: Sequence[int], vocab_size: int, device: torch.device) -> None:
        self.s = sampling
        self._greedy_plain = (
            sampling.temperature == 0
            and sampling.repetition_penalty == 1.0
            and sampling.presence_penalty == 0.0
            and sampling.frequency_penalty == 0.0
            and not sampling.logit_bias
        )
        self._vocab_size = vocab_size
        # Penalty state exists only for the penalties asked for: observe() runs per token.
        self._counts: torch.Tensor | None = None  # reply token counts (presence, frequency)
        if sampling.presence_penalty or sampling.frequency_penalty:
            self._counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        self._seen: torch.Tensor | None = None  # prompt and reply tokens (repetition)
        if sampling.repetition_penalty != 1.0:
            self._seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            if prompt_ids:
                ids = torch.tensor([i for i in prompt_ids if 0 <= i < vocab_size], dtype=torch.long, device=device)
                self._seen[ids] = True
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if sampling.logit_bias:
            pairs = [(k, v) for k, v in sampling.logit_bias.items() if 0 <= k < vocab_size]
            self._bias = (
                torch.tensor([k for k, _ in pairs], dtype=torch.long, device=device),
                torch.tensor([v for _, v in pairs], dtype=torch.float32, device=device),
            )
        self._gen: torch.Generator | None = None
        if sampling.temperature > 0:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(63))

    def observe(self, token_id: int) -> None:
        """Count a produced token (for the penalties)."""
        if not 0 <= token_id < self._vocab_size:
            return
        if self._counts is not None:
            self._counts[token_id] += 1
        if self._seen is not None:
            self._seen[token_id] = True

    def pick(self, logits: torch.Tensor) -> int:
        """Next token id from one row of logits (shape [vocab])."""
        if self._greedy_plain:
            return int(torch.argmax(logits))
        x = self._adjust(logits.to(torch.float32, copy=True))
        s = self.s
        if s.temperature == 0:
            return int(torch.argmax(x))
        x = x / s.temperature
        if 0 < s.top_k < x.shape[0]:
            kth = torch.topk(x, s.top_k).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        probs = torch.softmax(x, dim=-1)
        if s.min_p > 0:
            probs = probs.masked_fill(probs < s.min_p * probs.max(), 0.0)
        if s.top_p < 1.0:
            probs = _top_p(probs, s.top_p)
        return int(torch.multinomial(probs, 1, generator=self._gen))

    def _adjust(self, x: torch.Tensor) -> torch.Tensor:
        s = self.s
        if self._seen is not None:  # repetition_penalty != 1.0
            seen = x[self._seen]
            x[self._seen] = torch.where(seen > 0, seen / s.repetition_penalty, seen * s.repetition_penalty)
        if self._counts is not None:  # a presence or frequency penalty
            x = x - s.frequency_penalty * self._counts - s.presence_penalty * (self._counts > 0).float()
        if self._bias is not None:
            x = x.index_add(0, self._bias[0], self._bias[1])
        return x


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p."""
    sorted_p, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    sorted_p = sorted_p.masked_fill(mass_before >= top_p * sorted_p.sum(), 0.0)
    return torch.zeros_like(probs).scatter(0, order, sorted_p)
