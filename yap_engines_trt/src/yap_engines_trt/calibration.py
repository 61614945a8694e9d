"""Calibration data for ModelOpt: a local text set, tokenized into batches,
and the forward loop that runs them through the model with a progress bar.

The plugin ships a small set of conversational texts (``data/calibration.jsonl``,
written for this project); ``--calib-data`` names another local file: JSONL with
a ``text`` field per line, or plain text where blank lines separate samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from yap_core.calibration import parse_calibration, read_calibration

BUNDLED = "calibration.jsonl"


class CalibrationSet(msgspec.Struct, frozen=True, kw_only=True):
    label: str  # path, or "bundled:<file>"
    sha256: str
    texts: tuple[str, ...]


def load_calibration(dataset: str | None) -> CalibrationSet:
    """Read the bundled set (``None``) or a local file."""
    if dataset is None:
        raw = resources.files("yap_engines_trt").joinpath("data", BUNDLED).read_bytes()
        texts = parse_calibration(raw, BUNDLED)
        return CalibrationSet(label=f"bundled:{BUNDLED}", sha256=hashlib.sha256(raw).hexdigest(), texts=texts)
    texts, sha256 = read_calibration(dataset)
    return CalibrationSet(label=str(Path(dataset)), sha256=sha256, texts=texts)


def token_batches(
    tokenizer: Any, texts: tuple[str, ...], *, num_samples: int, seq_len: int, batch_size: int
) -> list[dict[str, Any]]:
    """Up to ``num_samples`` samples (one per text, cut to ``seq_len`` tokens),
    grouped into right-padded batches with attention masks."""
    import torch

    ids = [tokenizer.encode(t, add_special_tokens=False)[:seq_len] for t in texts[:num_samples]]
    ids = [row for row in ids if row]
    batches = []
    for start in range(0, len(ids), batch_size):
        group = ids[start : start + batch_size]
        width = max(len(r) for r in group)
        input_ids = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, row in enumerate(group):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": mask})
    return batches


def forward_loop(batches: list[dict[str, Any]], device: str, desc: str) -> Callable[[Any], None]:
    """The ``forward_loop`` ModelOpt calls (once, or more for AWQ's search)."""

    def run(model: Any) -> None:
        import torch
        from tqdm.auto import tqdm

        with torch.no_grad():
            for batch in tqdm(batches, desc=desc, unit="batch"):
                model(**{k: v.to(device) for k, v in batch.items()})

    return run
