"""Which quantization formats a GPU architecture (SM version) can run.

The table follows the hardware: FP8 tensor cores arrive with Ada (SM 8.9) and
Hopper (9.0); NVFP4 with Blackwell (10.0+); Ampere (8.0, 8.6, 8.7) runs 8-bit
as INT8-SmoothQuant. INT4-AWQ (weight-only) runs from 8.0 up.
"""

from __future__ import annotations

import msgspec

Sm = tuple[int, int]


class QuantFormat(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # what `yap quantize --format` takes
    modelopt_cfg: str  # attribute of modelopt.torch.quantization holding the recipe
    bits: int  # weight bits
    min_sm: Sm  # oldest architecture that runs it
    note: str


FORMATS: dict[str, QuantFormat] = {
    f.name: f
    for f in (
        QuantFormat(name="int4_awq", modelopt_cfg="INT4_AWQ_CFG", bits=4, min_sm=(8, 0),
                    note="4-bit weights, 16-bit activations (AWQ); SM 8.0+"),
        QuantFormat(name="int8_sq", modelopt_cfg="INT8_SMOOTHQUANT_CFG", bits=8, min_sm=(8, 0),
                    note="8-bit weights and activations (SmoothQuant); the 8-bit choice on SM 8.0-8.7"),
        QuantFormat(name="fp8", modelopt_cfg="FP8_DEFAULT_CFG", bits=8, min_sm=(8, 9),
                    note="FP8 weights and activations; SM 8.9 (Ada), 9.0 (Hopper) and newer"),
        QuantFormat(name="nvfp4", modelopt_cfg="NVFP4_DEFAULT_CFG", bits=4, min_sm=(10, 0),
                    note="NVFP4 weights and activations; SM 10.0 (Blackwell) and newer"),
    )
}

_FP8_SM: Sm = (8, 9)


def formats_for_sm(sm: Sm) -> list[str]:
    """Formats a GPU of this SM version runs, 4-bit first.

    8-bit is FP8 where the hardware has it and INT8-SmoothQuant only below that,
    so each architecture gets one 8-bit format: the one to use.
    """
    if sm < (8, 0):
        return []
    found = ["int4_awq"]
    found.append("fp8" if sm >= _FP8_SM else "int8_sq")
    if sm >= FORMATS["nvfp4"].min_sm:
        found.append("nvfp4")
    return found


def default_format(bits: int, sm: Sm) -> str:
    """The format to build for a bit width on this SM: 4 -> INT4-AWQ, 8 -> FP8 or INT8-SQ."""
    wanted = [f for f in formats_for_sm(sm) if FORMATS[f].bits == bits and f != "nvfp4"]
    if not wanted:
        raise ValueError(f"no {bits}-bit format for {sm_text(sm)}; available: {available_text(sm)}")
    return wanted[0]


def check_format(fmt: str, sm: Sm) -> QuantFormat:
    """The format's description, or a ValueError naming what this SM has instead."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt not in formats_for_sm(sm):
        raise ValueError(
            f"format {fmt!r} does not run on {sm_text(sm)} ({FORMATS[fmt].note}); "
            f"available on {sm_text(sm)}: {available_text(sm)}"
        )
    return FORMATS[fmt]


def sm_text(sm: Sm) -> str:
    return f"SM {sm[0]}.{sm[1]}"


def available_text(sm: Sm) -> str:
    return ", ".join(formats_for_sm(sm)) or "none (TensorRT-LLM quantization needs SM 8.0 or newer)"
