"""Start-up limits: TRT_MAX_BATCH_SIZE / TRT_BATCH_SIZE / CHAT_MAX_LEN against
a prebuilt engine's build configuration (``config.json`` -> ``build_config``,
written by trtllm-build), or against the model for the PyTorch backend."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
from yap_core.quantize import read_context_length
from yap_core.settings import SettingsError

from yap_engines_trt.settings import TrtSettings

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_NUM_TOKENS = 8192


class EngineBuild(msgspec.Struct, frozen=True, kw_only=True):
    max_batch_size: int
    max_seq_len: int
    max_num_tokens: int | None = None
    max_input_len: int | None = None
    plugin_config: dict = {}


class RuntimeLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_batch_size: int  # what the LLM is created with
    max_seq_len: int
    max_num_tokens: int | None
    tokens_per_block: int = 32  # KV block size; an engine's is fixed at build (plugin_config)


def read_engine_build(engine_dir: Path) -> EngineBuild:
    path = engine_dir / "config.json"
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise SettingsError(f"TRT_ENGINE_DIR={engine_dir}: no config.json; is it a trtllm-build output folder?") from None
    except ValueError as exc:
        raise SettingsError(f"{path}: not valid JSON ({exc})") from None
    build = data.get("build_config") if isinstance(data, dict) else None
    if not isinstance(build, dict):
        raise SettingsError(f"{path}: no build_config; is it a trtllm-build output folder?")
    try:
        return msgspec.convert(build, EngineBuild, strict=False, from_attributes=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"{path}: build_config: {exc}") from None


def engine_limits(settings: TrtSettings, build: EngineBuild) -> RuntimeLimits:
    """Settings checked against what the engine was built for; each mismatch
    names both numbers and the fix."""
    where = f"the engine in {settings.trt_engine_dir}"
    if settings.trt_max_batch_size is not None and settings.trt_max_batch_size != build.max_batch_size:
        raise SettingsError(
            f"TRT_MAX_BATCH_SIZE={settings.trt_max_batch_size} but {where} was built with "
            f"max_batch_size={build.max_batch_size}; rebuild it, or set TRT_MAX_BATCH_SIZE={build.max_batch_size}"
        )
    batch = settings.trt_batch_size or build.max_batch_size
    if batch > build.max_batch_size:
        raise SettingsError(
            f"TRT_BATCH_SIZE={batch} exceeds the max_batch_size={build.max_batch_size} {where} was built with"
        )
    if settings.trt_max_num_tokens is not None and settings.trt_max_num_tokens != build.max_num_tokens:
        raise SettingsError(
            f"TRT_MAX_NUM_TOKENS={settings.trt_max_num_tokens} but {where} was built with "
            f"max_num_tokens={build.max_num_tokens}; unset it or rebuild"
        )
    seq = settings.chat_max_len or build.max_seq_len
    if seq > build.max_seq_len:
        raise SettingsError(f"CHAT_MAX_LEN={seq} exceeds the max_seq_len={build.max_seq_len} {where} was built with")
    per_block = build.plugin_config.get("tokens_per_block", 32)
    return RuntimeLimits(
        max_batch_size=batch, max_seq_len=seq, max_num_tokens=build.max_num_tokens, tokens_per_block=int(per_block)
    )


def checkpoint_limits(settings: TrtSettings, model_dir: Path) -> RuntimeLimits:
    """PyTorch backend: no build, so the settings are the limits; the context
    length defaults to (and may not exceed) the model's own."""
    native = read_context_length(model_dir)
    seq = settings.chat_max_len or native
    if seq is None:
        raise SettingsError(f"{model_dir}: config.json names no max_position_embeddings; set CHAT_MAX_LEN")
    if native is not None and seq > native:
        raise SettingsError(f"CHAT_MAX_LEN={seq} exceeds the model's max_position_embeddings={native}")
    most = settings.trt_max_batch_size or DEFAULT_MAX_BATCH
    return RuntimeLimits(
        max_batch_size=settings.trt_batch_size or most, max_seq_len=seq, max_num_tokens=settings.trt_max_num_tokens or DEFAULT_MAX_NUM_TOKENS
    )
