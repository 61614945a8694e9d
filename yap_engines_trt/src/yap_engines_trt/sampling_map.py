"""The core's Sampling as TensorRT-LLM SamplingParams keyword arguments, and
which keys a backend cannot honour.

TensorRT-LLM 1.2.x's PyTorch backend has two samplers: TRTLLMSampler (the C++
sampling layers: every penalty, min_p) and TorchSampler, which accepts
repetition/presence/frequency penalties and min_p but ignores them (penalties
came to TorchSampler in NVIDIA/TensorRT-LLM PR 16485, after 1.2). Those keys
are therefore declared unsupported under TorchSampler, never silently dropped.
"""

from __future__ import annotations

from typing import Any

from yap_core.contracts import Sampling

TORCH_SAMPLER_IGNORES = frozenset({"repetition_penalty", "presence_penalty", "frequency_penalty", "min_p"})
_DEFAULTS = Sampling()


def unsupported_keys(backend: str, sampler: str) -> frozenset[str]:
    """Sampling keys this backend/sampler cannot honour."""
    if backend == "pytorch" and sampler == "TorchSampler":
        return TORCH_SAMPLER_IGNORES
    return frozenset()


def keys_set(sampling: Sampling) -> set[str]:
    """Keys of ``sampling`` that differ from the neutral defaults."""
    return {k for k in sampling.__struct_fields__ if getattr(sampling, k) != getattr(_DEFAULTS, k)}


def sampling_kwargs(s: Sampling) -> dict[str, Any]:
    """SamplingParams(**kwargs) for everything but logit_bias (which needs the
    backend: a logits processor or an embedding bias, see engine) and stop
    strings (matched on text by the engine, see stop_strings). Per-request
    perf metrics are asked for: they carry the KV blocks reused for the prompt."""
    kw: dict[str, Any] = {"max_tokens": s.max_tokens, "ignore_eos": s.ignore_eos, "detokenize": True,
                          "skip_special_tokens": True, "return_perf_metrics": True}
    if s.temperature == 0:
        kw["top_k"] = 1  # greedy: TensorRT-LLM wants temperature > 0, greedy is top_k=1
    else:
        kw["temperature"] = s.temperature
        if s.top_p < 1.0:
            kw["top_p"] = s.top_p
        if s.top_k > 0:
            kw["top_k"] = s.top_k
        if s.min_p > 0:
            kw["min_p"] = s.min_p
    if s.repetition_penalty != 1.0:
        kw["repetition_penalty"] = s.repetition_penalty
    if s.presence_penalty != 0.0:
        kw["presence_penalty"] = s.presence_penalty
    if s.frequency_penalty != 0.0:
        kw["frequency_penalty"] = s.frequency_penalty
    if s.seed is not None:
        kw["seed"] = s.seed
    return kw
