"""Loading a sequence classifier and scoring input windows with it.

Any ``AutoModelForSequenceClassification`` with two labels works: a local
folder or a hub id. fp16 on a GPU, fp32 on the CPU. A folder that holds a
bare encoder (no trained classification head) is refused at load, since
transformers would otherwise fill the head with random weights.

Only torch, transformers and the standard library are imported, so the GPU
benchmark can use this module without the project's venv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from yap_classifier import window

POSITIVE_NAMES = {"screenshot", "yes", "positive", "pos", "true", "1", "label_1"}


class ModelError(RuntimeError):
    """The model named by TOOL_MODEL cannot be used as the screenshot classifier."""


class Scores(NamedTuple):
    positive: float  # P(screenshot)
    probabilities: dict[str, float]  # label name -> probability


class SequenceClassifier:
    """A loaded model + tokenizer. Not thread-safe: one worker thread calls it."""

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str, max_tokens: int, positive_index: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_tokens = max_tokens
        self.positive_index = positive_index
        self.labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, model_id: str, *, window_tokens: int, device: str | None = None) -> SequenceClassifier:
        """Load ``model_id`` (folder or hub id). ``window_tokens`` is clamped to the
        model's own maximum input length."""
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        local = Path(model_id).expanduser()
        if (model_id.startswith((".", "/", "~")) or local.exists()) and not (local / "config.json").is_file():
            raise ModelError(f"TOOL_MODEL={model_id!r}: no config.json there; expected a sequence-classification model folder")
        try:
            config = AutoConfig.from_pretrained(model_id)
        except (OSError, ValueError) as exc:
            raise ModelError(f"TOOL_MODEL={model_id!r}: cannot read its config: {exc}") from exc
        _check_is_classifier(model_id, config)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                model_id, dtype=dtype, output_loading_info=True
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
        limit = _max_input_tokens(config, tokenizer)
        return cls(
            model,
            tokenizer,
            model_id=model_id,
            max_tokens=min(window_tokens, limit),
            positive_index=positive_index(config.id2label),
        )

    def encode(self, batch: Sequence[Sequence[str]]) -> Any:
        """Tensors for a batch of checked user-turn lists."""
        windows = window.build_many(self.tokenizer, batch, self.max_tokens)
        enc = self.tokenizer(
            [w.utterance for w in windows],
            [w.history for w in windows],
            truncation=True,
            max_length=self.max_tokens,
            padding=True,
            return_tensors="pt",
        )
        return enc.to(self.device)

    def predict(self, batch: Sequence[Sequence[str]]) -> list[Scores]:
        """Scores for each user-turn list (checked with ``window.check_turns``)."""
        import torch

        enc = self.encode(batch)
        with torch.inference_mode():
            logits = self.model(**enc).logits
        probs = logits.float().softmax(dim=-1).cpu().tolist()
        return [
            Scores(row[self.positive_index], {label: p for label, p in zip(self.labels, row, strict=True)})
            for row in probs
        ]


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
