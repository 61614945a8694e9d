"""TokenSampler's penalties on hand-made logits (no model needed)."""

from __future__ import annotations

import torch
from yap_core.contracts import Sampling
from yap_engines_hf.sampling import TokenSampler

CPU = torch.device("cpu")


def _sampler(prompt: list[int] | None = None, **sampling: float) -> TokenSampler:
    return TokenSampler(Sampling(temperature=0.0, **sampling), prompt or [], 3, CPU)


def test_repetition_penalty_covers_prompt_and_reply() -> None:
    logits = torch.tensor([2.0, 1.9, 1.5])
    assert _sampler().pick(logits) == 0
    assert _sampler([0], repetition_penalty=2.0).pick(logits) == 1  # prompt token 0: 2.0 -> 1.0
    s = _sampler([0], repetition_penalty=2.0)
    s.observe(1)  # reply token 1: 1.9 -> 0.95
    assert s.pick(logits) == 2


def test_frequency_penalty_counts_each_reply_token() -> None:
    logits = torch.tensor([1.0, 2.0, 0.0])
    s = _sampler([1], frequency_penalty=0.6)  # the prompt does not count
    assert s.pick(logits) == 1
    s.observe(1)
    assert s.pick(logits) == 1  # 2.0 - 0.6
    s.observe(1)
    assert s.pick(logits) == 0  # 2.0 - 1.2


def test_presence_penalty_applies_once() -> None:
    logits = torch.tensor([1.0, 2.0, 0.0])
    s = _sampler(presence_penalty=0.8)
    s.observe(1)
    assert s.pick(logits) == 1  # 2.0 - 0.8
    s.observe(1)
    assert s.pick(logits) == 1  # still 1.2: presence does not grow


def test_tokens_outside_the_vocabulary_are_ignored() -> None:
    for s in (_sampler(), _sampler([7, -1], repetition_penalty=1.3, frequency_penalty=0.5)):
        s.observe(99)
        s.observe(-1)
        assert s.pick(torch.tensor([0.0, 3.0, 1.0])) == 1
