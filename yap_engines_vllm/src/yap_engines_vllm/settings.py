"""The vLLM engine's settings: the ``[vllm]`` section of plugins.toml, or the
environment (field name upper-cased), validated before anything loads."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from yap_core.settings import Config, CoreSettings, SettingsError, doc

KvDtype = Literal["auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2"]
ModelDtype = Literal["auto", "bfloat16", "float16"]
# load formats a deployment may ask for; "dummy" is random weights (benchmarks)
LoadFormat = Literal["auto", "safetensors", "pt", "dummy"]
# vLLM's CUDAGraphMode names (vllm/config/compilation.py, 0.25.1)
CudagraphMode = Literal["NONE", "PIECEWISE", "FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"]

# GPU memory vLLM may claim when the classifier is not on the same GPU, and when it is.
GPU_FRAC_CHAT_ONLY = 0.90
GPU_FRAC_SHARED = 0.70

Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class VllmSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    chat_gpu_frac: Annotated[
        Fraction | None,
        doc(
            "Share of GPU memory vLLM takes (weights + KV cache), 0-1. Empty: 0.90 with "
            "DEPLOY_MODE=chat, 0.70 with DEPLOY_MODE=both (the classifier shares the GPU)."
        ),
    ] = None
    chat_max_len: Annotated[
        Positive | None,
        doc("Context length in tokens, prompt + reply; must exceed CHAT_MAX_OUT. Empty: the model's own."),
    ] = None
    max_num_seqs: Annotated[int, doc("Most sequences vLLM decodes in one batch.", ge=1)] = 64
    enable_prefix_caching: Annotated[bool, doc("Reuse KV blocks of shared prompt prefixes.")] = True
    enable_chunked_prefill: Annotated[bool, doc("Split long prefills so decodes keep streaming.")] = True
    max_num_batched_tokens: Annotated[
        Positive | None,
        doc("Token budget of one scheduler step (the chunked-prefill chunk). Empty: vLLM's default."),
    ] = None
    stream_interval: Annotated[
        int,
        doc("Tokens per streamed output (vLLM's stream_interval). 1 streams every token; larger "
            "values cut per-token work under heavy load at the cost of choppier streams.", ge=1),
    ] = 1
    kv_dtype: Annotated[KvDtype, doc("KV cache dtype, passed as vLLM's kv_cache_dtype (fp8 halves it).")] = "auto"
    enforce_eager: Annotated[bool, doc("Skip CUDA graphs and torch.compile (faster start, slower decode).")] = False
    cudagraph_mode: Annotated[
        CudagraphMode | None,
        doc(
            "vLLM's compilation_config.cudagraph_mode. FULL also captures steps that mix a new "
            "request's prefill with decodes (FlashAttention 3 supports it); vLLM's default "
            "FULL_AND_PIECEWISE runs those piecewise. Empty: vLLM's default."
        ),
    ] = None
    tensor_parallel_size: Annotated[int, doc("GPUs the chat model is split across.", ge=1)] = 1
    attention_backend: Annotated[
        str | None, doc("vLLM attention backend, e.g. FLASH_ATTN or FLASHINFER. Empty: vLLM chooses.")
    ] = None
    chat_quantization: Annotated[
        str | None,
        doc(
            "Override the quantization vLLM loads with (awq, gptq, fp8, modelopt, ...; none: no "
            "quantization). Empty: what the checkpoint declares; FP8 for float checkpoints on SM >= 8.9."
        ),
    ] = None
    chat_dtype: Annotated[ModelDtype, doc("Activation/weight dtype of float checkpoints.")] = "auto"
    chat_tokenizer: Annotated[
        str | None, doc("Tokenizer folder or hub id, when not the model's own. Empty: the model's.")
    ] = None
    chat_load_format: Annotated[
        LoadFormat, doc("How weights load; dummy gives random weights (benchmarks only, meaningless text).")
    ] = "auto"
    chat_seed: Annotated[int, doc("vLLM's global seed (per-request seeds come from sampling).")] = 0


def load_settings(config: Config) -> VllmSettings:
    """The ``[vllm]`` section: environment, then plugins.toml, then defaults."""
    return config.section("vllm", VllmSettings)


def gpu_fraction(settings: VllmSettings, core: CoreSettings) -> float:
    """The memory share: explicit, else by deploy mode (the classifier's model
    and activations need the rest when it runs on the same GPU)."""
    if settings.chat_gpu_frac is not None:
        return settings.chat_gpu_frac
    return GPU_FRAC_SHARED if core.deploy_mode == "both" else GPU_FRAC_CHAT_ONLY


def validate(settings: VllmSettings, core: CoreSettings) -> None:
    """Cross-field checks, before vLLM is imported."""
    if settings.chat_max_len is not None and settings.chat_max_len <= core.chat_max_out:
        raise SettingsError(
            f"CHAT_MAX_LEN={settings.chat_max_len} leaves no room for a prompt: it must be larger than "
            f"CHAT_MAX_OUT={core.chat_max_out} (prompt + reply share the context)"
        )
    if (
        settings.max_num_batched_tokens is not None
        and not settings.enable_chunked_prefill
        and settings.chat_max_len is not None
        and settings.max_num_batched_tokens < settings.chat_max_len
    ):
        raise SettingsError(
            f"MAX_NUM_BATCHED_TOKENS={settings.max_num_batched_tokens} is below CHAT_MAX_LEN="
            f"{settings.chat_max_len} with ENABLE_CHUNKED_PREFILL off: a long prompt could never be scheduled"
        )
    if settings.cudagraph_mode is not None and settings.enforce_eager:
        # vLLM would let ENFORCE_EAGER win, with no more than a log line
        raise SettingsError(
            f"CUDAGRAPH_MODE={settings.cudagraph_mode} with ENFORCE_EAGER=1: eager mode runs no CUDA "
            "graphs; set one or the other"
        )
    if core.chat_model and core.chat_model.endswith(".gguf"):
        # Seen on the H100 with vLLM 0.25.1: its start-up reads a local .gguf path
        # as a JSON config and fails; refuse it here with the way out instead.
        raise SettingsError(
            f"CHAT_MODEL={core.chat_model}: the vLLM engine does not load .gguf files (vLLM 0.25.1 "
            "fails on them); give a Hugging Face checkpoint folder, or use INFERENCE_ENGINE=hf for GGUF"
        )
