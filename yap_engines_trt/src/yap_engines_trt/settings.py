"""The TensorRT-LLM plugin's settings: the ``[trt]`` section of plugins.toml or
the environment (field name upper-cased), validated before anything loads.

Names shared in meaning with the vLLM plugin keep its names (CHAT_GPU_FRAC,
KV_DTYPE, CHAT_MAX_LEN); each plugin reads its own section.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from yap_core.settings import Config, SettingsError, doc

Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
# KvCacheConfig.dtype of the PyTorch backend; an engine's KV dtype is fixed when it is built.
KvDtype = Literal["auto", "fp8"]
Sampler = Literal["TRTLLMSampler", "TorchSampler"]


class TrtSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    trt_engine_dir: Annotated[
        str | None,
        doc(
            "Prebuilt TensorRT engine folder (trtllm-build output): served by the TensorRT "
            "backend. Empty: CHAT_MODEL (HF or ModelOpt checkpoint) on the PyTorch backend."
        ),
    ] = None
    trt_tokenizer: Annotated[
        str | None,
        doc("Tokenizer folder. Empty: the model folder's own (an engine folder has none: then CHAT_MODEL)."),
    ] = None
    chat_gpu_frac: Annotated[
        Fraction, doc("KvCacheConfig.free_gpu_memory_fraction: share of free GPU memory for the KV cache.")
    ] = 0.9
    kv_dtype: Annotated[
        KvDtype, doc("KV cache dtype (PyTorch backend; an engine's is fixed at build time).")
    ] = "auto"
    chat_max_len: Annotated[
        Positive | None, doc("Context length in tokens (max_seq_len). Empty: the model's or engine's own.")
    ] = None
    trt_max_batch_size: Annotated[
        Positive | None,
        doc(
            "Engine: the max batch size it must have been built with (checked against its "
            "config.json). PyTorch backend: the scheduler's max batch size. Empty: the engine's own / 64."
        ),
    ] = None
    trt_batch_size: Annotated[
        Positive | None,
        doc("Requests decoded together at run time; must not exceed the max batch size. Empty: the max."),
    ] = None
    trt_max_num_tokens: Annotated[
        Positive | None,
        doc(
            "Tokens in one scheduler step. PyTorch backend and engine builds: empty is 8192. "
            "With TRT_ENGINE_DIR it must match the engine's build value (checked at start)."
        ),
    ] = None
    trt_sampler: Annotated[
        Sampler,
        doc(
            "PyTorch-backend sampler. TRTLLMSampler honours every penalty; TorchSampler (1.2.x) ignores "
            "repetition/presence/frequency penalties and min_p, so those are reported unsupported."
        ),
    ] = "TRTLLMSampler"
    # Builders (`yap quantize --engine trt`)
    trt_quant_export: Annotated[
        Literal["hf", "engine"],
        doc(
            "What `yap quantize` writes: hf (unified HF checkpoint: PyTorch backend, vLLM) or engine "
            "(TensorRT-LLM checkpoint then trtllm-build; needs TensorRT-LLM installed)."
        ),
    ] = "hf"
    trt_quant_device: Annotated[
        Literal["auto", "cpu", "cuda"], doc("Device for calibration. auto: cuda when present.")
    ] = "auto"
    hf_push_repo_id: Annotated[
        str | None, doc("After a build, upload the output folder to this Hugging Face repo (token: HF_TOKEN).")
    ] = None

    def validate(self) -> None:
        """Cross-field checks that need no engine metadata."""
        if self.trt_engine_dir is not None and self.kv_dtype != "auto":
            raise SettingsError(
                f"KV_DTYPE={self.kv_dtype}: an engine's KV cache dtype is fixed when it is built "
                "(trtllm-build); unset KV_DTYPE or serve a checkpoint on the PyTorch backend"
            )
        if self.trt_engine_dir is not None and self.trt_sampler != "TRTLLMSampler":
            raise SettingsError("TRT_SAMPLER chooses the PyTorch backend's sampler; it has no effect with TRT_ENGINE_DIR")
        if (
            self.trt_max_batch_size is not None
            and self.trt_batch_size is not None
            and self.trt_batch_size > self.trt_max_batch_size
        ):
            raise SettingsError(
                f"TRT_BATCH_SIZE={self.trt_batch_size} exceeds TRT_MAX_BATCH_SIZE={self.trt_max_batch_size}"
            )


def load_settings(config: Config) -> TrtSettings:
    settings = config.section("trt", TrtSettings)
    settings.validate()
    return settings
