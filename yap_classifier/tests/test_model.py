"""Loading: a folder that is not a trained sequence classifier is refused at
start-up with a message that says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from yap_classifier.model import ModelError, SequenceClassifier
from yap_classifier.train import base_model_path


def test_bare_encoder_is_not_a_classifier() -> None:
    with pytest.raises(ModelError, match="not a sequence classifier"):
        SequenceClassifier.load(str(base_model_path()), window_tokens=128)


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelError, match="no config.json"):
        SequenceClassifier.load(str(tmp_path), window_tokens=128)


def test_classifier_config_without_a_trained_head(tmp_path: Path) -> None:
    # The encoder's weights under a config that claims a classification head.
    base = base_model_path()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / name).symlink_to(base / name)
    config = json.loads((base / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="no trained classification head"):
        SequenceClassifier.load(str(tmp_path), window_tokens=128)


def test_window_is_clamped_to_the_model(built_model: Path) -> None:
    model = SequenceClassifier.load(str(built_model), window_tokens=100_000)
    assert model.max_tokens == 512
    scores = model.predict([["hey can you look at my screen"], ["set a timer for ten minutes"]])
    assert scores[0].positive > 0.5 > scores[1].positive
    assert set(scores[0].probabilities) == {"no_screenshot", "screenshot"}
    assert abs(sum(scores[0].probabilities.values()) - 1) < 1e-5
