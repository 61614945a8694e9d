"""``yap quantize --engine vllm --format awq|w4a16``: 4-bit weight checkpoints
for vLLM, built by llmcompressor (the optional extra ``yap-engines-vllm[quantize]``).

Both formats write compressed-tensors checkpoints that vLLM loads by their
``quantization_config``: ``awq`` runs AWQ's activation-aware scaling then
4-bit asymmetric group quantization (W4A16_ASYM); ``w4a16`` runs GPTQ with
symmetric 4-bit groups (W4A16). Calibration text comes from a local file
only (JSONL with a ``text`` field, or plain text, one sample per non-empty
line), never from a hub. A ``yap-quant.json`` metadata file records what was
built; a build with identical inputs is reused unless ``force``.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
from yap_core.calibration import CalibrationError, read_calibration
from yap_core.contracts import BuildResult, CalibrationConfig, Progress

from yap_engines_vllm.quant import declared_quantization

METADATA_FILE = "yap-quant.json"
# format -> llmcompressor scheme; 4-bit weight kernels (Marlin) exist from SM 8.0 (Ampere)
_SCHEMES = {"awq": "W4A16_ASYM", "w4a16": "W4A16"}
_MIN_SM = (8, 0)


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
            from llmcompressor import oneshot
            from llmcompressor.modifiers.awq import AWQModifier
            from llmcompressor.modifiers.quantization import GPTQModifier
        except ImportError as exc:
            raise RuntimeError(
                "llmcompressor is not installed: pip install 'yap-engines-vllm[quantize]'"
            ) from exc
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        say(f"loading {model}")
        tokenizer = AutoTokenizer.from_pretrained(model)
        lm = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
        encoded = tokenizer(texts, max_length=calibration.seq_len, truncation=True, add_special_tokens=False)
        dataset = Dataset.from_dict(dict(encoded))
        scheme = _SCHEMES[fmt]
        modifier_type = AWQModifier if fmt == "awq" else GPTQModifier
        recipe = [modifier_type(targets=["Linear"], scheme=scheme, ignore=["lm_head"])]
        say(f"calibrating {fmt} ({scheme}) on {len(texts)} samples from {source}")
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
        )  # fmt: skip
        write_metadata(out_dir, meta)
        say(f"wrote {out_dir} in {meta.seconds} s")
        return BuildResult(out_dir=str(out_dir), format=fmt, metadata_file=str(out_dir / METADATA_FILE))


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
