"""DOUBLE of the argument models in tensorrt_llm/llmapi/llm_args.py (the
fields the plugin uses, with the real names and defaults)."""

from __future__ import annotations

from dataclasses import dataclass

# Keyword arguments the real LLM classes accept that the plugin may pass; the
# real check is against the pydantic model's fields (TorchLlmArgs / TrtLlmArgs).
COMMON_ARGS = frozenset({"max_batch_size", "max_seq_len", "max_num_tokens", "max_input_len", "kv_cache_config",
                         "max_beam_width", "enable_chunked_prefill", "backend"})
TORCH_ONLY_ARGS = frozenset({"sampler_type", "enable_iter_perf_stats", "enable_iter_req_stats",
                             "attn_backend", "disable_overlap_scheduler"})
SAMPLER_TYPES = ("TRTLLMSampler", "TorchSampler", "auto")


@dataclass(kw_only=True)
class KvCacheConfig:
    enable_block_reuse: bool = True
    max_tokens: int | None = None
    free_gpu_memory_fraction: float | None = None
    # Python-only field: PyTorch backend
    dtype: str = "auto"
    tokens_per_block: int = 32

    def __post_init__(self) -> None:
        if self.free_gpu_memory_fraction is not None and not 0 < self.free_gpu_memory_fraction <= 1:
            raise ValueError("free_gpu_memory_fraction must be in (0, 1]")
        if self.dtype not in ("auto", "fp8", "float16", "bfloat16", "nvfp4"):
            raise ValueError(f"unsupported KV cache dtype {self.dtype!r}")
