"""Loading a sequence classifier and scoring input windows with it.

Any ``AutoModelForSequenceClassification`` with two labels works: a local
folder or a hub id. A folder that holds a bare encoder (no trained
classification head) is refused at load, since transformers would otherwise
fill the head with random weights.

Precision (TOOL_DTYPE): ``auto`` is fp16 on a GPU, bf16 on a CPU that
multiplies bf16 in hardware (AVX512-BF16 or AMX on x86, the BF16 extension
on Arm), fp32 on other CPUs. The weights are cast (measured faster than
autocast on the CPU, same F1: docs/classifier.md); the softmax always runs in
fp32. On CUDA the forward is replayed from CUDA graphs (TOOL_CUDA_GRAPHS,
``graphs.py``).

Only torch, transformers and the standard library are imported, so the GPU
benchmark can use this module without the project's venv.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from yap_classifier import graphs, window

log = logging.getLogger(__name__)
DTYPES = ("auto", "float32", "bfloat16", "float16")

POSITIVE_NAMES = {"screenshot", "yes", "positive", "pos", "true", "1", "label_1"}


class ModelError(RuntimeError):
    """The model named by TOOL_MODEL cannot be used as the screenshot classifier."""


class Scores(NamedTuple):
    positive: float  # P(screenshot)
    probabilities: dict[str, float]  # label name -> probability


class SequenceClassifier:
    """A loaded model + tokenizer. Not thread-safe: one worker thread calls it."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        max_tokens: int,
        positive_index: int,
        cuda_graphs: graphs.CudaGraphs | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_tokens = max_tokens
        self.positive_index = positive_index
        self.labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        self.device = next(model.parameters()).device
        self.dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # "bfloat16"
        self.input_names = _input_names(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.cuda_graphs = cuda_graphs

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        window_tokens: int,
        device: str | None = None,
        dtype: str = "auto",
        cuda_graphs: bool = True,
        batch_size: int = 32,
    ) -> SequenceClassifier:
        """Load ``model_id`` (folder or hub id). ``window_tokens`` is clamped to the
        model's own maximum input length. ``dtype`` is TOOL_DTYPE; on CUDA,
        ``cuda_graphs`` (TOOL_CUDA_GRAPHS) captures graphs for batches up to
        ``batch_size`` (TOOL_BATCH_SIZE); larger batches run eager."""
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = resolve_dtype(dtype, device)
        local = Path(model_id).expanduser()
        if (model_id.startswith((".", "/", "~")) or local.exists()) and not (local / "config.json").is_file():
            raise ModelError(f"TOOL_MODEL={model_id!r}: no config.json there; expected a sequence-classification model folder")
        try:
            config = AutoConfig.from_pretrained(model_id)
        except (OSError, ValueError) as exc:
            raise ModelError(f"TOOL_MODEL={model_id!r}: cannot read its config: {exc}") from exc
        _check_is_classifier(model_id, config)
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                model_id, dtype=torch_dtype, output_loading_info=True
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"TOOL_MODEL={model_id!r}: cannot load it as a sequence classifier: {exc}") from exc
        missing = [k for k in info.get("missing_keys", ()) if not k.startswith(model.base_model_prefix + ".")]
        if missing:
            raise ModelError(
                f"TOOL_MODEL={model_id!r}: the checkpoint has no trained classification head "
                f"(missing {', '.join(sorted(missing))}); fine-tune it first, e.g. `yap classifier train`"
            )
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        if not getattr(tokenizer, "is_fast", False):
            raise ModelError(f"TOOL_MODEL={model_id!r}: needs a fast (tokenizers-backed) tokenizer")
        tokenizer.truncation_side = "left"  # keep the end of what the user said
        model.to(device).eval()
        max_tokens = min(window_tokens, _max_input_tokens(config, tokenizer))
        classifier = cls(
            model,
            tokenizer,
            model_id=model_id,
            max_tokens=max_tokens,
            positive_index=positive_index(config.id2label),
        )
        graphs_note = "off"
        if cuda_graphs and device.startswith("cuda"):
            started = time.perf_counter()
            classifier.capture_cuda_graphs(batch_size)
            graphs_note = f"at {len(classifier.graph_shapes)} shapes (captured in {time.perf_counter() - started:.1f} s)"
        log.info(
            "classifier: %s on %s, dtype %s (TOOL_DTYPE=%s), CUDA graphs %s",
            model_id,
            device,
            classifier.dtype,
            dtype,
            graphs_note,
        )
        return classifier

    def capture_cuda_graphs(self, batch_size: int) -> None:
        """Capture the forward at every (batch, length) bucket; a failure is a
        start-up error, never a silent switch to the slower eager path."""
        runner = graphs.CudaGraphs(
            self.model,
            self.input_names,
            batches=graphs.batch_buckets(batch_size),
            lengths=graphs.length_buckets(self.max_tokens),
            pad_id=self.pad_id,
        )
        try:
            runner.capture()
        except graphs.CaptureError as exc:
            raise ModelError(
                f"TOOL_CUDA_GRAPHS: {self.model_id!r}: {exc}; set TOOL_CUDA_GRAPHS=0 to run it without CUDA graphs"
            ) from exc
        self.cuda_graphs = runner

    @property
    def graph_shapes(self) -> list[tuple[int, int]]:
        """(batch, tokens) shapes replayed from CUDA graphs; empty when there are none."""
        return self.cuda_graphs.shapes if self.cuda_graphs else []

    def tokenize(self, batch: Sequence[Sequence[str]]) -> Any:
        """CPU tensors for a batch of checked user-turn lists, padded to the longest."""
        return window.encode(self.tokenizer, batch, self.max_tokens)

    def encode(self, batch: Sequence[Sequence[str]]) -> Any:
        """Tensors for a batch of checked user-turn lists, on the model's device."""
        return self.tokenize(batch).to(self.device)

    def probabilities(self, batch: Sequence[Sequence[str]]) -> Any:
        """[len(batch), labels] fp32 CPU tensor of label probabilities."""
        import torch

        enc = self.tokenize(batch)
        with torch.inference_mode():
            probs = self.cuda_graphs.run(enc) if self.cuda_graphs else None
            if probs is None:  # no graphs, or larger than every captured shape
                enc = enc.to(self.device)
                probs = self.model(**enc).logits.float().softmax(dim=-1).cpu()
        return probs

    def predict(self, batch: Sequence[Sequence[str]]) -> list[Scores]:
        """Scores for each user-turn list (checked with ``window.check_turns``)."""
        probs = self.probabilities(batch).tolist()
        return [
            Scores(row[self.positive_index], {label: p for label, p in zip(self.labels, row, strict=True)})
            for row in probs
        ]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware. Elsewhere oneDNN emulates
    bf16 and it is slower than fp32. (``torch.ops.mkldnn._is_mkldnn_bf16_supported``
    is no test on x86: it is true on any AVX-512 CPU, emulated or not.)"""
    import torch

    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        cpu = torch.cpu
        avx512_bf16 = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        return bool(avx512_bf16 or amx)
    # Arm: torch asks cpuinfo for the BF16 extension here.
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_native_fp16() -> bool:
    """Whether this CPU multiplies fp16 in hardware (AVX512-FP16/AMX-FP16, Arm FP16)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def resolve_dtype(name: str, device: str) -> Any:
    """The torch dtype for TOOL_DTYPE ``name`` on ``device``. A dtype the
    device cannot compute natively is refused: it would run, only many times
    slower than float32."""
    import torch

    if name not in DTYPES:
        raise ModelError(f"TOOL_DTYPE={name!r}: expected one of {', '.join(DTYPES)}")
    cuda = device.startswith("cuda")
    if name == "auto":
        if cuda:
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        supported = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
        if not supported:
            raise ModelError(
                f"TOOL_DTYPE=bfloat16: this {'GPU' if cuda else 'CPU'} has no native bf16 support "
                "(on x86 it needs AVX512-BF16 or AMX); use auto or float32"
            )
        return torch.bfloat16
    if not cuda and not cpu_has_native_fp16():
        raise ModelError("TOOL_DTYPE=float16: this CPU has no native fp16 support; use auto or float32")
    return torch.float16


def _input_names(tokenizer: Any) -> tuple[str, ...]:
    """The tensors the tokenizer hands the model, input_ids first."""
    names = [n for n in tokenizer.model_input_names if n != "input_ids"]
    return ("input_ids", *names)


def _check_is_classifier(model_id: str, config: Any) -> None:
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelError(
            f"TOOL_MODEL={model_id!r} is not a sequence classifier (architectures: {', '.join(archs) or 'none'}); "
            "point TOOL_MODEL at a fine-tuned *ForSequenceClassification model, or leave it empty "
            "for the default built by `yap classifier train`"
        )
    if config.num_labels != 2:
        raise ModelError(f"TOOL_MODEL={model_id!r} has {config.num_labels} labels; the screenshot classifier needs 2")


def positive_index(id2label: dict[int, str]) -> int:
    """Which label means "take a screenshot": one named like it, else index 1."""
    for i, name in id2label.items():
        if str(name).lower() in POSITIVE_NAMES:
            return int(i)
    return 1


def _max_input_tokens(config: Any, tokenizer: Any) -> int:
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    # Tokenizers without a limit report a huge sentinel; ignore it.
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(usable) if usable else 512
