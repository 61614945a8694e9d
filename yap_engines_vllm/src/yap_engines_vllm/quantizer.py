"""``yap quantize --engine vllm --format awq|w4a16``: 4-bit weight checkpoints
for vLLM, built by llmcompressor in an environment of its own: llmcompressor
and vLLM pin different compressed-tensors releases, so pip will not install
them together (see ``INSTALL``). The checkpoints still load in vLLM: its
compressed-tensors reads what llmcompressor's wrote (W4A16 on the H100, run 13).

Both formats write compressed-tensors checkpoints that vLLM loads by their
``quantization_config``: ``awq`` runs AWQ's activation-aware scaling then
4-bit asymmetric group quantization (W4A16_ASYM); ``w4a16`` runs GPTQ with
symmetric 4-bit groups (W4A16). Calibration text comes from a local file
only (JSONL with a ``text`` field, or plain text, one sample per non-empty
line), never from a hub. A ``yap-quant.json`` metadata file records what was
built; a build with identical inputs is reused unless ``force``.

Groups are 128 weights wide, the presets' size, when every quantized layer's
input width divides by it; else the largest of 64 and 32 that does (SmolLM2
is 576 wide), which vLLM's 4-bit kernels also take. llmcompressor refuses a
size that does not divide, so the choice is made here and said.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import msgspec
from yap_core.calibration import CalibrationError, read_calibration
from yap_core.contracts import BuildResult, CalibrationConfig, Progress

from yap_engines_vllm.quant import declared_quantization

METADATA_FILE = "yap-quant.json"
# How to get llmcompressor: vLLM is not needed to build, only to serve.
INSTALL = (
    "pip install yap-core 'llmcompressor>=0.14' && pip install --no-deps yap-engines-vllm, "
    "in a virtual environment without vLLM (each pins its own compressed-tensors release; docs/vllm.md)"
)
# format -> llmcompressor scheme; 4-bit weight kernels (Marlin) exist from SM 8.0 (Ampere)
_SCHEMES = {"awq": "W4A16_ASYM", "w4a16": "W4A16"}
_MIN_SM = (8, 0)
# 4-bit group sizes vLLM's kernels take (Marlin: marlin_utils.MARLIN_SUPPORTED_GROUP_SIZES), widest first
_GROUP_SIZES = (128, 64, 32)
_IGNORED = ["lm_head"]


class QuantMetadata(msgspec.Struct, kw_only=True):
    format: str
    scheme: str
    source_model: str
    calibration_file: str
    calibration_sha256: str
    num_samples: int
    seq_len: int
    tool: str  # "llmcompressor <version>"
    built_at: str
    seconds: float
    group_size: int = 128  # weights per quantization group


class LlmCompressorQuantizer:
    name = "llmcompressor"
    engine = "vllm"

    def formats(self, sm: tuple[int, int]) -> list[str]:
        return sorted(_SCHEMES) if sm >= _MIN_SM else []

    def detect(self, checkpoint: Path) -> str | None:
        return declared_quantization(str(checkpoint))

    def build(
        self,
        model: str,
        fmt: str,
        out_dir: Path,
        *,
        calibration: CalibrationConfig,
        force: bool = False,
        progress: Progress | None = None,
    ) -> BuildResult:
        say = progress or (lambda line: None)
        if fmt not in _SCHEMES:
            raise ValueError(f"format {fmt!r} is not built by llmcompressor; one of: {', '.join(sorted(_SCHEMES))}")
        texts, source, digest = load_calibration(calibration)
        wanted = {"format": fmt, "source_model": model, "calibration_sha256": digest,
                  "num_samples": len(texts), "seq_len": calibration.seq_len}  # fmt: skip
        existing = read_metadata(out_dir)
        if existing is not None and not force and _matches(existing, wanted):
            say(f"reusing {out_dir} (same model, format and calibration)")
            return BuildResult(out_dir=str(out_dir), format=fmt, metadata_file=str(out_dir / METADATA_FILE), reused=True)
        try:
            import llmcompressor
            from compressed_tensors.quantization import preset_name_to_scheme
            from llmcompressor import oneshot
            from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
            from llmcompressor.modifiers.transform import AWQModifier
        except ImportError as exc:
            raise RuntimeError(f"llmcompressor is not installed: {INSTALL}") from exc
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        say(f"loading {model}")
        tokenizer = AutoTokenizer.from_pretrained(model)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
        encoded = tokenizer(texts, max_length=calibration.seq_len, truncation=True, add_special_tokens=False)
        dataset = Dataset.from_dict(dict(encoded))
        scheme = _SCHEMES[fmt]
        group = group_size(_linear_widths(lm))
        if group != _GROUP_SIZES[0]:
            say(f"group size {group}: a layer's input width does not divide by {_GROUP_SIZES[0]}")
        weights = preset_name_to_scheme(scheme, ["Linear"])
        weights.weights.group_size = group
        groups = {"config_groups": {"group_0": weights}, "ignore": _IGNORED}
        # AWQ: activation-aware scaling first, then round to nearest; GPTQ does both in one.
        recipe = [AWQModifier(), QuantizationModifier(**groups)] if fmt == "awq" else [GPTQModifier(**groups)]
        say(f"calibrating {fmt} ({scheme}, groups of {group}) on {len(texts)} samples from {source}")
        oneshot(model=lm, dataset=dataset, recipe=recipe, max_seq_length=calibration.seq_len,
                num_calibration_samples=len(texts))  # fmt: skip
        out_dir.mkdir(parents=True, exist_ok=True)
        lm.save_pretrained(out_dir, save_compressed=True)
        tokenizer.save_pretrained(out_dir)
        meta = QuantMetadata(
            format=fmt, scheme=scheme, source_model=model, calibration_file=source, calibration_sha256=digest,
            num_samples=len(texts), seq_len=calibration.seq_len,
            tool=f"llmcompressor {getattr(llmcompressor, '__version__', '?')}",
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), seconds=round(time.perf_counter() - t0, 1),
            group_size=group,
        )  # fmt: skip
        write_metadata(out_dir, meta)
        say(f"wrote {out_dir} in {meta.seconds} s")
        return BuildResult(out_dir=str(out_dir), format=fmt, metadata_file=str(out_dir / METADATA_FILE))


def group_size(widths: Iterable[tuple[str, int]]) -> int:
    """The widest group size that divides every (layer, input width); a
    ValueError naming the layer when none does."""
    widths = list(widths)
    for size in _GROUP_SIZES:
        if all(width % size == 0 for _, width in widths):
            return size
    name, width = next((n, w) for n, w in widths if w % _GROUP_SIZES[-1])
    raise ValueError(f"{name} takes {width} inputs: no 4-bit group size vLLM supports ({', '.join(map(str, _GROUP_SIZES))}) divides it")


def _linear_widths(model: object) -> list[tuple[str, int]]:
    """(name, input width) of each linear layer the recipe quantizes."""
    import torch

    return [(name, module.in_features) for name, module in model.named_modules()  # type: ignore[attr-defined]
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] not in _IGNORED]  # fmt: skip


def load_calibration(calibration: CalibrationConfig) -> tuple[list[str], str, str]:
    """(texts, file, sha256 of the file). A local file is required: the
    project never downloads a calibration set."""
    if not calibration.dataset:
        raise CalibrationError(
            "a local calibration file is required: --calib-data FILE (JSONL with 'text', or plain text)"
        )
    texts, sha256 = read_calibration(calibration.dataset)
    return list(texts[: calibration.num_samples]), calibration.dataset, sha256


def read_metadata(out_dir: Path) -> QuantMetadata | None:
    try:
        return msgspec.json.decode((out_dir / METADATA_FILE).read_bytes(), type=QuantMetadata)
    except (OSError, msgspec.DecodeError):
        return None


def write_metadata(out_dir: Path, meta: QuantMetadata) -> None:
    (out_dir / METADATA_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(meta)))


def _matches(meta: QuantMetadata, wanted: dict[str, object]) -> bool:
    return all(getattr(meta, key) == value for key, value in wanted.items())
