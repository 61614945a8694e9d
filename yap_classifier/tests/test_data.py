"""The data set kept in the repo: reproducible, large enough, with the
examples the brief asks for, and a held-out split that shares no template."""

from __future__ import annotations

import json

from yap_classifier.data import generate
from yap_classifier.data.templates import TEMPLATES
from yap_classifier.examples import read_examples


def test_kept_files_are_what_the_generator_writes() -> None:
    for name, examples in generate.dataset().items():
        kept = (generate.DATA_DIR / f"{name}.jsonl").read_text(encoding="utf-8")
        assert kept == generate.dumps(examples), f"{name}.jsonl is stale: run python -m yap_classifier.data.generate"


def test_size_and_balance() -> None:
    splits = {n: read_examples(generate.DATA_DIR / f"{n}.jsonl") for n in ("train", "test", "test_iid")}
    assert sum(len(v) for v in splits.values()) >= 2000
    for name, examples in splits.items():
        share = sum(e.label for e in examples) / len(examples)
        assert 0.3 < share < 0.7, (name, share)


def test_held_out_split_shares_no_template_or_line_with_train() -> None:
    train_patterns = {t.pattern for t in TEMPLATES if t.split == "train"}
    test_patterns = {t.pattern for t in TEMPLATES if t.split == "test"}
    assert test_patterns and not (train_patterns & test_patterns)
    train = {json.dumps([e.history, e.utterance]) for e in read_examples(generate.DATA_DIR / "train.jsonl")}
    for name in ("test", "test_iid"):
        for e in read_examples(generate.DATA_DIR / f"{name}.jsonl"):
            assert json.dumps([e.history, e.utterance]) not in train


def test_covers_near_misses_actions_followups_and_other_languages() -> None:
    examples = read_examples(generate.DATA_DIR / "train.jsonl")
    by_text: dict[str, set[int]] = {}
    for e in examples:
        by_text.setdefault(e.utterance, set()).add(e.label)
    negatives = {e.utterance for e in examples if e.label == 0}
    assert any("screen time" in u for u in negatives)
    assert any("look" in u and "tired" in u for u in negatives)
    assert any("see in my future" in u for u in negatives)
    assert any("open spotify" in u for u in negatives)
    # the same follow-up words take their label from the earlier turns
    assert any(labels == {0, 1} for u, labels in by_text.items() if "this one" in u)
    assert any("pantalla" in e.utterance and e.label == 1 for e in examples)
    assert any(len(e.utterance.split()) > 40 for e in examples)  # long rambles
