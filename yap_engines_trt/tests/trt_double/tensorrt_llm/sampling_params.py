"""DOUBLE of tensorrt_llm/sampling_params.py: SamplingParams (real field names
and defaults, for the fields a chat server sets) and LogitsProcessor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class LogitsProcessor:
    """Base class of per-request logits processors (PyTorch backend)."""

    def __call__(self, req_id: int, logits: Any, token_ids: list[list[int]], stream_ptr: int | None,
                 client_id: int | None) -> None:
        raise NotImplementedError


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    embedding_bias: Any = None
    logits_processor: LogitsProcessor | list[LogitsProcessor] | None = None
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_p: float | None = None
    return_perf_metrics: bool = False
    ignore_eos: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        self.best_of = self.best_of or self.n
        if self.temperature is not None and self.temperature <= 0:
            # the C++ runtime takes temperature > 0; greedy is top_k=1
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
