"""Quality of the default model on the kept splits: real model, real numbers.

The project's target is F1 >= 0.93 on held-out voice turns (test.jsonl:
templates never seen in training); measured 0.934 with the current recipe.
test_iid.jsonl (new draws of the train templates) measured 0.983; its bar
sits a little under that, so a regression fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from yap_classifier.data.generate import DATA_DIR
from yap_classifier.evaluate import evaluate
from yap_classifier.examples import read_examples
from yap_classifier.model import SequenceClassifier


@pytest.mark.parametrize(("split", "floor"), [("test", 0.93), ("test_iid", 0.95)])
def test_f1_on_kept_splits(built_model: Path, split: str, floor: float) -> None:
    model = SequenceClassifier.load(str(built_model), window_tokens=256, device="cpu")
    report = evaluate(model, read_examples(DATA_DIR / f"{split}.jsonl"), threshold=0.5)
    assert report.n > 500
    assert report.f1 >= floor, report
