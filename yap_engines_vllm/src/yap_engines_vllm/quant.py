"""Which quantization vLLM loads a chat checkpoint with.

The checkpoint's own files decide (``quantization_config.quant_method`` in
config.json, ModelOpt's hf_quant_config.json, a .gguf file); a name such as
"...-AWQ" is only a hint, logged when it disagrees. ``CHAT_QUANTIZATION``
overrides, but may not contradict what the files declare. A float checkpoint
on SM 8.9 or newer (Ada, Hopper, Blackwell) gets FP8 weights: vLLM quantizes
them online at load, halving weight memory and traffic.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import msgspec
from yap_core.quantize import read_quant_method
from yap_core.settings import SettingsError

log = logging.getLogger(__name__)

# vLLM 0.25.1's accepted `quantization` names (vllm.model_executor.layers.quantization.QuantizationMethods).
VLLM_METHODS: frozenset[str] = frozenset(
    {
        "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
        "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
        "bitsandbytes", "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4",
        "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel",
        "int8_per_channel_weight_only", "mxfp8", "gguf",
    }
)  # fmt: skip

# A declared method, and the override names that load the same weights with another kernel.
_COMPATIBLE: dict[str, frozenset[str]] = {
    "awq": frozenset({"awq", "awq_marlin", "auto_awq"}),
    "gptq": frozenset({"gptq", "gptq_marlin", "auto_gptq"}),
    "modelopt": frozenset({"modelopt", "modelopt_fp4", "modelopt_mxfp8", "modelopt_mixed"}),
}

FP8_MIN_SM = (8, 9)
_HINTS = re.compile(r"(awq|gptq|fp8|int4|int8|w4a16|w8a8|nvfp4|gguf)", re.IGNORECASE)


class QuantPlan(msgspec.Struct, frozen=True, kw_only=True):
    quantization: str | None  # passed to vLLM; None: vLLM reads the checkpoint's own declaration
    declared: str | None  # what the checkpoint's files say it is
    reason: str  # one line for the start-up log


def declared_quantization(model: str) -> str | None:
    """What the checkpoint's files declare; None for a float checkpoint or a hub id."""
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf"
    return read_quant_method(path)


def name_hint(model: str) -> str | None:
    """A quantization named in the model's path (trusted for nothing but a warning)."""
    found = _HINTS.search(Path(model).name)
    return found.group(1).lower() if found else None


def plan(model: str, override: str | None, sm: tuple[int, int] | None) -> QuantPlan:
    declared = declared_quantization(model)
    hint = name_hint(model)
    # Only a local folder can be checked; vLLM reads a hub id's config itself.
    if hint and declared is None and Path(model).is_dir():
        log.warning("chat model %s is named like %s but its files declare no quantization", model, hint)
    if override:
        return _with_override(override.strip().lower(), declared)
    if declared:
        return QuantPlan(quantization=None, declared=declared, reason=f"checkpoint declares {declared}")
    if sm is None:
        return QuantPlan(quantization=None, declared=None, reason="float checkpoint; GPU capability unknown")
    if sm >= FP8_MIN_SM:
        return QuantPlan(
            quantization="fp8", declared=None, reason=f"float checkpoint on SM {sm[0]}.{sm[1]}: FP8 weights"
        )
    return QuantPlan(
        quantization=None, declared=None, reason=f"float checkpoint on SM {sm[0]}.{sm[1]} (< 8.9): no FP8"
    )


def _with_override(method: str, declared: str | None) -> QuantPlan:
    if method == "none":
        if declared:
            raise SettingsError(
                f"CHAT_QUANTIZATION=none, but the checkpoint is {declared}-quantized and cannot load as float"
            )
        return QuantPlan(quantization=None, declared=None, reason="CHAT_QUANTIZATION=none")
    if method not in VLLM_METHODS:
        raise SettingsError(
            f"CHAT_QUANTIZATION={method!r} is not a vLLM quantization; one of: none, {', '.join(sorted(VLLM_METHODS))}"
        )
    if declared and method not in _COMPATIBLE.get(declared, frozenset({declared})):
        raise SettingsError(
            f"CHAT_QUANTIZATION={method} contradicts the checkpoint, whose files declare {declared}"
        )
    return QuantPlan(quantization=method, declared=declared, reason=f"CHAT_QUANTIZATION={method}")
