"""The hf engine's settings: section ``[hf]`` of plugins.toml, or HF_* env vars."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from yap_core.settings import doc

Dtype = Literal["auto", "float32", "bfloat16", "float16", "int8"]
Device = Literal["auto", "cpu", "cuda"]


class HfSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    hf_dtype: Annotated[
        Dtype,
        doc(
            "Weights: float32, bfloat16, float16, or int8 (CPU only: float32 model with int8 dynamic-quantized"
            " linear layers, ~2-3x faster decode than bfloat16 on CPU). auto: int8 on CPU, bfloat16 on CUDA."
        ),
    ] = "auto"
    hf_device: Annotated[Device, doc("auto: cuda when available, else cpu.")] = "auto"
    hf_threads: Annotated[int, doc("torch CPU threads for prompt computation (0: torch's default).", ge=0)] = 0
    hf_decode_threads: Annotated[
        int,
        doc(
            "torch CPU threads for decode steps (0: same as HF_THREADS). Decode is bound by memory and"
            " per-op overhead, where more threads mostly add synchronisation: 1 measured 2x faster than 2"
            " on a busy 2-core machine.",
            ge=0,
        ),
    ] = 1
    hf_max_batch: Annotated[int, doc("Most requests decoded together; more wait their turn.", ge=1, le=256)] = 8
    hf_prefill_chunk: Annotated[
        int,
        doc(
            "Prompt tokens computed per pass while other requests are decoding: a long prompt"
            " holds running streams back for one chunk at a time, not for the whole prompt.",
            ge=16,
        ),
    ] = 512
    hf_max_model_len: Annotated[
        int, doc("Context length cap, prompt + output (0: the model's own maximum).", ge=0)
    ] = 0
    hf_gguf_cache: Annotated[
        bool,
        doc(
            "Keep a converted (float32 safetensors) copy of a GGUF model under YAP_CACHE_DIR/hf-gguf:"
            " the first start converts (tens of seconds), later starts load the copy in about a second."
        ),
    ] = True
    hf_prefix_cache_tokens: Annotated[
        int, doc("Prompt tokens whose KV the prefix cache keeps (LRU). 0 disables the cache.", ge=0)
    ] = 16384
