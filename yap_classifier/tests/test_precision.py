"""TOOL_DTYPE: which precision ``auto`` picks, and refusing one the hardware
cannot compute natively (it would run, only many times slower)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch
from yap_classifier.evaluate import evaluate
from yap_classifier.examples import Example
from yap_classifier.model import (
    ModelError,
    SequenceClassifier,
    cpu_has_native_bf16,
    cpu_has_native_fp16,
    resolve_dtype,
)
from yap_core.settings import Config, CoreSettings, SettingsError

from yap_classifier import window

X86 = platform.machine().lower() in ("x86_64", "amd64")
TURNS = [
    ["can you look at my screen"],
    ["set a timer for five minutes"],
    ["which of these phones should i get", "what about this one"],
    ["my screen time is too high"],
]


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not (X86 and Path("/proc/cpuinfo").is_file()), reason="x86 Linux: /proc/cpuinfo flags")
def test_native_bf16_check_agrees_with_the_cpu_flags() -> None:
    flags = _cpu_flags()
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert cpu_has_native_fp16() == bool(flags & {"avx512_fp16", "amx_fp16"})


def test_auto_picks_by_device() -> None:
    assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert resolve_dtype("float32", "cpu") == torch.float32


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(ModelError, match="TOOL_DTYPE='float64': expected one of auto, float32, bfloat16, float16"):
        resolve_dtype("float64", "cpu")
    with pytest.raises(SettingsError, match="TOOL_DTYPE"):
        Config({"TOOL_DTYPE": "float64"}, {}).section("core", CoreSettings)
    assert Config({"TOOL_DTYPE": "bfloat16", "TOOL_CUDA_GRAPHS": "0"}, {}).section("core", CoreSettings).tool_dtype == "bfloat16"


@pytest.mark.parametrize(("dtype", "native"), [("bfloat16", cpu_has_native_bf16()), ("float16", cpu_has_native_fp16())])
def test_half_precision_on_a_cpu_without_it_is_a_start_up_error(built_model: Path, dtype: str, native: bool) -> None:
    # Whichever this CPU has: loads when native, a clear error when emulated.
    if native:
        model = SequenceClassifier.load(str(built_model), window_tokens=128, device="cpu", dtype=dtype)
        assert model.dtype == dtype
    else:
        with pytest.raises(ModelError, match=f"TOOL_DTYPE={dtype}: this CPU has no native"):
            SequenceClassifier.load(str(built_model), window_tokens=128, device="cpu", dtype=dtype)


def test_auto_loads_the_picked_dtype_and_agrees_with_float32(built_model: Path) -> None:
    auto = SequenceClassifier.load(str(built_model), window_tokens=256, device="cpu")
    full = SequenceClassifier.load(str(built_model), window_tokens=256, device="cpu", dtype="float32")
    assert auto.dtype == str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    assert full.dtype == "float32"
    assert auto.cuda_graphs is None  # graphs are CUDA only
    batch = [window.check_turns(t) for t in TURNS]
    got, want = auto.probabilities(batch), full.probabilities(batch)
    assert got.dtype == torch.float32  # the softmax runs in fp32 whatever the weights
    assert (got - want).abs().max().item() < 0.05
    assert [p >= 0.5 for p in got[:, auto.positive_index].tolist()] == [True, False, True, False]
    report = evaluate(auto, [Example(history=[], utterance="can you see my screen", label=1)], threshold=0.5)
    assert (report.dtype, report.cuda_graphs) == (auto.dtype, False)
