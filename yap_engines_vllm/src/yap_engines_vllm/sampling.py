"""Core Sampling -> vLLM SamplingParams keyword arguments.

Every key of ``yap_core.contracts.Sampling`` has a vLLM counterpart, so the
engine declares no unsupported keys. vLLM clamps logit biases to [-100, 100],
which still bans a token in practice.
"""

from __future__ import annotations

from typing import Any

import msgspec
from yap_core.contracts import Sampling


def sampling_kwargs(s: Sampling) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` (output_kind is added by the engine)."""
    kwargs: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        # the core's "off" is -1; vLLM's is 0 (it also accepts -1, but 0 is its documented value)
        "top_k": 0 if s.top_k == -1 else s.top_k,
        "min_p": s.min_p,
        "repetition_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "max_tokens": s.max_tokens,
        "ignore_eos": s.ignore_eos,
        "seed": s.seed,
    }
    if s.stop:
        kwargs["stop"] = list(s.stop)
    if s.logit_bias:
        kwargs["logit_bias"] = dict(s.logit_bias)
    return kwargs


def sampling_key(s: Sampling) -> tuple[Any, ...]:
    """What makes two samplings build the same SamplingParams: every field of
    ``Sampling`` (a field added later counts without a change here), with
    ``logit_bias`` by identity. The core builds one dict (the banned phrases)
    and every turn's Sampling shares it; hashing hundreds of entries per turn
    would cost what the cache saves. A caller that builds a new dict per
    request only misses the cache."""
    return tuple(id(v) if type(v) is dict else v for v in msgspec.structs.astuple(s))
