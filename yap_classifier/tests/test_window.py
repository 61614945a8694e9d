"""The input window: newest turns kept, the tail of a long utterance kept,
unsafe text made safe, with the real MiniLM tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer
from yap_classifier.train import base_model_path

from yap_classifier import window


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(base_model_path())


def _length(tokenizer, w: window.Window) -> int:  # type: ignore[no-untyped-def]
    return len(tokenizer(w.utterance, w.history)["input_ids"])


def test_short_input_is_kept_whole(tokenizer) -> None:  # type: ignore[no-untyped-def]
    w = window.build(tokenizer, ["first", "second", "what about this one"], 64)
    assert w.utterance == "what about this one"
    assert w.history == "second [SEP] first"  # newest first


def test_long_utterance_keeps_its_tail(tokenizer) -> None:  # type: ignore[no-untyped-def]
    words = " ".join(f"word{i}" for i in range(10_000)) + " can you read my screen"
    w = window.build(tokenizer, ["an earlier turn", words], 32)
    assert w.utterance.endswith("can you read my screen")
    assert w.history == ""  # the utterance took the whole window
    assert _length(tokenizer, w) <= 32


def test_newest_history_kept_when_it_overflows(tokenizer) -> None:  # type: ignore[no-untyped-def]
    old = "the oldest turn " * 20
    w = window.build(tokenizer, [old, "middle turn here", "newest turn", "and now"], 16)
    assert w.utterance == "and now"
    assert w.history.startswith("newest turn [SEP] middle turn here [SEP] ")
    assert 0 < w.history.count("oldest") < 20  # only the tail of the oldest turn fits
    assert _length(tokenizer, w) <= 16


def test_lone_surrogates_become_replacement_characters(tokenizer) -> None:  # type: ignore[no-untyped-def]
    turns = window.check_turns(["bad \ud800 text", "look at \udfff this"])
    assert turns == ["bad \ufffd text", "look at \ufffd this"]
    w = window.build(tokenizer, turns, 64)
    assert _length(tokenizer, w) <= 64


@pytest.mark.parametrize("turns", [[""], ["earlier", "   \n\t"]])
def test_empty_utterance(turns: list[str]) -> None:
    with pytest.raises(window.EmptyUtterance):
        window.check_turns(turns)


@pytest.mark.parametrize(("turns", "error"), [([], ValueError), ("a string", TypeError), ([b"bytes"], TypeError), ([1], TypeError)])
def test_not_user_turns(turns: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        window.check_turns(turns)  # type: ignore[arg-type]
