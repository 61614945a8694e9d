"""``yap quantize --engine trt``: quantized checkpoints and engines with NVIDIA ModelOpt.

Steps: check the format against the GPU's SM table, reuse a matching earlier
build, load the model, calibrate and quantize with ``mtq.quantize``, export a
unified Hugging Face checkpoint (PyTorch backend of TensorRT-LLM, and vLLM with
``quantization="modelopt"``) or a TensorRT-LLM checkpoint then ``trtllm-build``
(the TensorRT engine backend), write ``build_metadata.json``, optionally push.

The build is written to a sibling ``.partial`` folder and moved into place at
the end, so a failed build never leaves half a checkpoint where a good one was.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from yap_core.contracts import BuildResult, CalibrationConfig, Progress
from yap_core.quantize import read_json_object, read_quant_method

from yap_engines_trt import calibration as calib
from yap_engines_trt.engine_limits import DEFAULT_MAX_BATCH, DEFAULT_MAX_NUM_TOKENS
from yap_engines_trt.hub_push import push, upload_plan
from yap_engines_trt.metadata import (
    METADATA_FILE,
    BuildKey,
    BuildLimits,
    BuildMetadata,
    CalibrationInfo,
    fingerprint,
    reusable,
    write_metadata,
)
from yap_engines_trt.settings import TrtSettings
from yap_engines_trt.sm import FORMATS, Sm, check_format, formats_for_sm

# ModelOpt's quant_algo names (hf_quant_config.json, TRT-LLM config) -> our format names
_ALGO_TO_FORMAT = {"FP8": "fp8", "W4A16_AWQ": "int4_awq", "W8A8_SQ_PER_CHANNEL": "int8_sq", "NVFP4": "nvfp4"}
_TRTLLM_CKPT = "trtllm_ckpt"  # intermediate folder of the engine path; not part of the result
_ENGINE_DIR = "engine"
_DEFAULT_MAX_SEQ = 4096


class BuildError(RuntimeError):
    """A build cannot be made as asked; the message says why and what to do."""


class ModeloptQuantizer:
    """The TRT plugin's ``contracts.Quantizer``."""

    name = "modelopt"
    engine = "trt"

    def __init__(self, settings: TrtSettings) -> None:
        self.settings = settings

    def formats(self, sm: Sm) -> list[str]:
        return formats_for_sm(sm)

    def detect(self, checkpoint: Path) -> str | None:
        return detect_format(checkpoint)

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
        say = progress or (lambda _line: None)
        if fmt not in FORMATS:
            raise BuildError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
        device, sm, gpu_name = _resolve_device(self.settings.trt_quant_device)
        if sm is not None:
            try:
                check_format(fmt, sm)
            except ValueError as exc:
                raise BuildError(str(exc)) from None
        export = self.settings.trt_quant_export
        if export == "engine":
            _require_trtllm_build()
        source = Path(model)
        source_fp = fingerprint(source) if source.exists() else f"hub:{model}"
        calib_set = calib.load_calibration(calibration.dataset)
        key = BuildKey(
            source_model=str(source.resolve()) if source.exists() else model,
            source_fingerprint=source_fp,
            format=fmt,
            export=export,
            calibration=CalibrationInfo(
                dataset=calib_set.label,
                dataset_sha256=calib_set.sha256,
                num_samples=calibration.num_samples,
                seq_len=calibration.seq_len,
                batch_size=calibration.batch_size,
            ),
            limits=self._limits(export),
            modelopt_version=_version("nvidia-modelopt") or "absent",
        )
        out_dir = Path(out_dir)
        if not force:
            found = reusable(out_dir, key)
            if found is not None:
                say(f"reusing the matching {fmt} build in {out_dir} (pass --force to rebuild)")
                return _result(out_dir, found, reused=True)
        _check_replaceable(out_dir, force)

        started = time.perf_counter()
        partial = out_dir.with_name(out_dir.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        try:
            say(f"loading {model} on {device}")
            hf_model, tokenizer = load_model(model, device)
            batches = calib.token_batches(
                tokenizer,
                calib_set.texts,
                num_samples=calibration.num_samples,
                seq_len=calibration.seq_len,
                batch_size=calibration.batch_size,
            )
            used = sum(len(b["input_ids"]) for b in batches)
            say(f"calibrating {fmt} on {used} samples from {calib_set.label} (asked for {calibration.num_samples})")
            _quantize(hf_model, fmt, calib.forward_loop(batches, device, f"calibrating {fmt}"))
            quant_algo = self._export(hf_model, tokenizer, partial, export, key.limits, say)
            files = _files(partial)
            meta = BuildMetadata(
                key=key,
                quant_algo=quant_algo,
                versions=_versions(),
                sm=f"{sm[0]}.{sm[1]}" if sm else None,
                gpu_name=gpu_name,
                device=device,
                calibration_samples_used=used,
                files=files,
                build_time_utc=datetime.now(UTC).isoformat(timespec="seconds"),
                build_seconds=round(time.perf_counter() - started, 2),
            )
            write_metadata(partial, meta)
            shutil.rmtree(partial / _TRTLLM_CKPT, ignore_errors=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if out_dir.exists():
            shutil.rmtree(out_dir)
        partial.rename(out_dir)
        say(f"wrote {len(files)} files to {out_dir} in {meta.build_seconds} s")
        if self.settings.hf_push_repo_id:
            plan = upload_plan(out_dir, meta)
            say(f"uploading {len(plan)} files to {self.settings.hf_push_repo_id}")
            say(push(out_dir, self.settings.hf_push_repo_id, plan))
        return _result(out_dir, meta, reused=False)

    def _limits(self, export: str) -> BuildLimits:
        if export == "hf":
            return BuildLimits()  # a checkpoint has no build limits; the server sets them
        s = self.settings
        return BuildLimits(
            max_batch_size=s.trt_max_batch_size or DEFAULT_MAX_BATCH,
            max_seq_len=s.chat_max_len or _DEFAULT_MAX_SEQ,
            max_num_tokens=s.trt_max_num_tokens or DEFAULT_MAX_NUM_TOKENS,
        )

    def _export(
        self, model: Any, tokenizer: Any, out: Path, export: str, limits: BuildLimits, say: Progress
    ) -> str:
        import torch
        from tqdm.auto import tqdm

        steps = ["checkpoint", "tokenizer"] + (["engine"] if export == "engine" else [])
        bar = tqdm(steps, desc=f"exporting ({export})", unit="step")
        for step in bar:
            bar.set_postfix_str(step)
            if step == "checkpoint" and export == "hf":
                from modelopt.torch.export import export_hf_checkpoint

                # dtype explicit: transformers 5 keeps config.torch_dtype as a string
                export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=out)
            elif step == "checkpoint":
                from modelopt.torch.export import export_tensorrt_llm_checkpoint

                export_tensorrt_llm_checkpoint(
                    model, decoder_type=model.config.model_type, dtype=torch.bfloat16,
                    export_dir=out / _TRTLLM_CKPT,
                )
            elif step == "tokenizer":
                tokenizer.save_pretrained(out)
            else:
                say("building the TensorRT engine with trtllm-build")
                _run_trtllm_build(out / _TRTLLM_CKPT, out / _ENGINE_DIR, limits)
        return _quant_algo(out, export)


def detect_format(checkpoint: Path) -> str | None:
    """The quantization a checkpoint or engine folder declares: our format name
    for ModelOpt's algorithms, else the declared method (awq, gptq, ...), else None."""
    algo = _declared_algo(checkpoint)
    if algo is not None:
        return _ALGO_TO_FORMAT.get(algo, algo.lower())
    return read_quant_method(checkpoint)


def _declared_algo(folder: Path) -> str | None:
    for path, keys in (
        (folder / "hf_quant_config.json", ("quantization", "quant_algo")),
        (folder / "config.json", ("pretrained_config", "quantization", "quant_algo")),  # engine
        (folder / "config.json", ("quantization", "quant_algo")),  # TRT-LLM checkpoint
        (folder / "config.json", ("quantization_config", "quant_algo")),  # unified HF export
    ):
        value: Any = read_json_object(path)
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value
    return None


def _quant_algo(out: Path, export: str) -> str:
    folder = out if export == "hf" else out / _TRTLLM_CKPT
    algo = _declared_algo(folder)
    if algo is None:
        raise BuildError(f"ModelOpt wrote no quantization config in {folder}; the export did not quantize")
    return algo


def _resolve_device(choice: str) -> tuple[str, Sm | None, str | None]:
    import torch

    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise BuildError("TRT_QUANT_DEVICE=cuda but no CUDA GPU is visible; use auto or cpu")
    if choice == "cpu" or not has_cuda:
        return "cpu", None, None
    sm = tuple(torch.cuda.get_device_capability(0))
    return "cuda", (sm[0], sm[1]), torch.cuda.get_device_name(0)


def _require_trtllm_build() -> None:
    if shutil.which("trtllm-build") is None:
        raise BuildError(
            "TRT_QUANT_EXPORT=engine needs trtllm-build from TensorRT-LLM (<= 1.2.x keeps the TensorRT "
            "engine backend), which is not installed here; build with TRT_QUANT_EXPORT=hf instead "
            "(served by TensorRT-LLM's PyTorch backend and by vLLM)"
        )


def _run_trtllm_build(ckpt: Path, engine: Path, limits: BuildLimits) -> None:
    cmd = [
        "trtllm-build",
        "--checkpoint_dir", str(ckpt),
        "--output_dir", str(engine),
        "--max_batch_size", str(limits.max_batch_size),
        "--max_seq_len", str(limits.max_seq_len),
        "--max_num_tokens", str(limits.max_num_tokens),
        "--use_paged_context_fmha", "enable",  # needed for KV block reuse
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"trtllm-build failed ({done.returncode}): {done.stderr[-2000:]}")


def _check_replaceable(out_dir: Path, force: bool) -> None:
    """Only an empty folder or an earlier build (with metadata) may be replaced."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise BuildError(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not (out_dir / METADATA_FILE).is_file():
        raise BuildError(f"{out_dir} is not empty and holds no Yap build; choose another --out")
    if not force:
        raise BuildError(f"{out_dir} holds a different or incomplete build; pass --force to replace it")


def load_model(model: str, device: str) -> tuple[Any, Any]:
    """A causal LM in bf16 and its tokenizer, from an HF folder, a hub id or a .gguf file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BuildError(f"{model}: no such GGUF file")
        kwargs: dict[str, Any] = {"gguf_file": path.name}
        where = str(path.parent)
    else:
        kwargs, where = {}, model
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    hf_model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.bfloat16, **kwargs)
    if "gguf_file" in kwargs:
        _drop_gguf_marker(hf_model)
    return hf_model.to(device).eval(), tokenizer


def _drop_gguf_marker(model: Any) -> None:
    """transformers dequantizes GGUF weights while loading but keeps a GGUF
    quantizer on the model, which refuses save_pretrained (and so the export);
    the weights are plain tensors, so the marker is removed."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        method = quantizer.quantization_config.quant_method
        if str(getattr(method, "value", method)) != "gguf":
            raise BuildError(f"unexpected {method} quantizer on a model loaded from GGUF")
        quantizer.remove_quantization_config(model)
    model.config.architectures = model.config.architectures or [type(model).__name__]


def _quantize(model: Any, fmt: str, loop: Any) -> None:
    import modelopt.torch.quantization as mtq

    recipe = copy.deepcopy(getattr(mtq, FORMATS[fmt].modelopt_cfg))
    mtq.quantize(model, recipe, loop)


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and _TRTLLM_CKPT not in p.relative_to(folder).parts
    )


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str]:
    names = ["yap-engines-trt", "nvidia-modelopt", "torch", "transformers", "tensorrt-llm"]
    return {n: v for n in names if (v := _version(n)) is not None}


def _result(out_dir: Path, meta: BuildMetadata, *, reused: bool) -> BuildResult:
    return BuildResult(
        out_dir=str(out_dir), format=meta.key.format, metadata_file=str(out_dir / METADATA_FILE),
        reused=reused,
    )
