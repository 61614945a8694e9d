"""Double of vllm.engine.arg_utils: AsyncEngineArgs with the fields Yap sets
(names and defaults as in 0.25.1) and create_engine_config() validating them
as vLLM does. Unknown keyword arguments raise TypeError, as the real dataclass does."""

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla")
LOAD_FORMATS = ("auto", "pt", "safetensors", "npcache", "dummy", "tensorizer", "sharded_state", "gguf",
                "bitsandbytes", "mistral", "runai_streamer", "fastsafetensors")  # fmt: skip
QUANTIZATION_METHODS = ("awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4",
                        "modelopt_mxfp8", "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin",
                        "humming", "compressed-tensors", "bitsandbytes", "experts_int8", "quark", "moe_wna16",
                        "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online",
                        "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only",
                        "mxfp8", "gguf")  # fmt: skip
CUDAGRAPH_MODES = ("NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE")  # CUDAGraphMode
ATTENTION_BACKENDS = ("FLASH_ATTN", "FLASH_ATTN_DIFFKV", "TRITON_ATTN", "TRITON_ATTN_DIFFKV", "ROCM_ATTN",
                      "TORCH_SDPA", "FLASHINFER", "FLASHINFER_MLA", "FLEX_ATTENTION", "CPU_ATTN")  # fmt: skip


@dataclass
class EngineArgs:
    model: str = "Qwen/Qwen3-0.6B"
    tokenizer: str | None = None
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    load_format: str = "auto"
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool | None = None
    gpu_memory_utilization: float = 0.92
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    disable_log_stats: bool = False
    quantization: str | None = None
    enforce_eager: bool = False
    enable_chunked_prefill: bool | None = None
    attention_backend: str | None = None
    stream_interval: int = 1
    # vLLM takes a CompilationConfig or a dict of its fields; the double knows cudagraph_mode only
    compilation_config: Any = None
    # Set by vLLM's API server processes (and Yap's SERVER_WORKERS): how many
    # front-end processes share the engine core, and which one this is
    # (-1: the process that launches the engine core).
    _api_process_count: int = 1
    _api_process_rank: int = 0

    def create_engine_config(self, usage_context: Any = None) -> SimpleNamespace:
        if self.kv_cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"Invalid kv_cache_dtype {self.kv_cache_dtype!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"Unknown load format {self.load_format!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATION_METHODS:
            raise ValueError(f"Unknown quantization method: {self.quantization}")
        if self.attention_backend is not None and self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"Unknown attention backend: {self.attention_backend!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"GPU memory utilization must be within (0, 1]. Got {self.gpu_memory_utilization}.")
        if self.stream_interval < 1:
            raise ValueError(f"stream_interval must be >= 1, got {self.stream_interval}")
        cudagraph_mode = self._cudagraph_mode()
        if self._api_process_count < 1 or not -1 <= self._api_process_rank < self._api_process_count:
            raise ValueError(  # ParallelConfig's own check
                "Invalid value of `_api_process_rank`. "
                f"Expected to be `-1` or `[0, {self._api_process_count})`, but found: {self._api_process_rank}"
            )
        if self.tensor_parallel_size != 1:
            raise ValueError("the vLLM double runs on one (imaginary) device: tensor_parallel_size must be 1")
        config_file = Path(self.model) / "config.json"
        try:
            hf_config = json.loads(config_file.read_text())
        except OSError as exc:
            raise ValueError(f"Invalid repository ID or local directory specified: {self.model!r}") from exc
        derived = int(hf_config.get("max_position_embeddings", 2048))
        max_model_len = self.max_model_len or derived
        if max_model_len > derived:
            raise ValueError(
                f"User-specified max_model_len ({max_model_len}) is greater than the derived "
                f"max_model_len (max_position_embeddings={derived} in model's config.json)."
            )
        chunked = True if self.enable_chunked_prefill is None else self.enable_chunked_prefill
        batched = self.max_num_batched_tokens or (2048 if chunked else max_model_len)
        return SimpleNamespace(
            model_config=SimpleNamespace(model=self.model, tokenizer=self.tokenizer or self.model, dtype=self.dtype,
                                         max_model_len=max_model_len, quantization=self.quantization, seed=self.seed,
                                         hf_config=hf_config, enforce_eager=self.enforce_eager),
            cache_config=SimpleNamespace(cache_dtype=self.kv_cache_dtype, block_size=16,
                                         enable_prefix_caching=True if self.enable_prefix_caching is None
                                         else self.enable_prefix_caching,
                                         gpu_memory_utilization=self.gpu_memory_utilization),
            scheduler_config=SimpleNamespace(max_num_seqs=self.max_num_seqs or 256, max_num_batched_tokens=batched,
                                             enable_chunked_prefill=chunked,
                                             stream_interval=self.stream_interval),
            parallel_config=SimpleNamespace(tensor_parallel_size=self.tensor_parallel_size, data_parallel_size=1,
                                            _api_process_count=self._api_process_count,
                                            _api_process_rank=self._api_process_rank),
            load_config=SimpleNamespace(load_format=self.load_format),
            attention_config=SimpleNamespace(backend=self.attention_backend),
            compilation_config=SimpleNamespace(cudagraph_mode=cudagraph_mode),
        )  # fmt: skip

    def _cudagraph_mode(self) -> str:
        """As VllmConfig resolves it: a name parsed like CUDAGraphMode[name.upper()],
        FULL_AND_PIECEWISE by default, NONE whenever enforce_eager is set."""
        given = dict(self.compilation_config or {})
        unknown = set(given) - {"cudagraph_mode"}
        if unknown:
            raise TypeError(f"the vLLM double's CompilationConfig has no field(s) {sorted(unknown)}")
        name = given.get("cudagraph_mode")
        if name is not None and str(name).upper() not in CUDAGRAPH_MODES:
            raise KeyError(name)  # CUDAGraphMode[...] in the real validator
        if self.enforce_eager:
            return "NONE"
        return "FULL_AND_PIECEWISE" if name is None else str(name).upper()


@dataclass
class AsyncEngineArgs(EngineArgs):
    enable_log_requests: bool = False
