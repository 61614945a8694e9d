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


def _whole_history_window(tokenizer, turns: list[str], max_tokens: int) -> window.Window:  # type: ignore[no-untyped-def]
    """The window with every turn tokenized in one call (what build did before
    it tokenized a few turns at a time): the oracle for the passes below."""
    budget = max_tokens - tokenizer.num_special_tokens_to_add(pair=True)
    texts = [t.strip() for t in reversed(turns)]
    texts = [texts[0]] + [t for t in texts[1:] if t]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    sep, sep_cost = window._separator(tokenizer)
    kept, left = [], budget
    for i, (text, ids, offsets) in enumerate(zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True)):
        extra = sep_cost if i > 1 else 0
        if i > 0 and left < 1 + extra:
            break
        if len(ids) + extra <= left:
            kept.append(text)
            left -= len(ids) + extra
            continue
        kept.append(window._tail(text, offsets, left - extra))
        break
    return window.Window(kept[0], sep.join(kept[1:]))


@pytest.mark.parametrize("first_pass_chars", [window._FIRST_PASS_CHARS_PER_TOKEN, 0])
@pytest.mark.parametrize("max_tokens", [16, 64, 128])
def test_a_long_history_is_tokenized_in_passes_with_the_same_window(
    tokenizer, monkeypatch: pytest.MonkeyPatch, first_pass_chars: int, max_tokens: int  # type: ignore[no-untyped-def]
) -> None:
    """300 earlier turns of mixed lengths (some empty, one very long): the
    window is what tokenizing them all would give, whether the first pass
    fills it (the default) or it takes several (0: one turn, then 8, 32, ...)."""
    monkeypatch.setattr(window, "_FIRST_PASS_CHARS_PER_TOKEN", first_pass_chars)
    words = ["screen", "error", "weather", "é", "um", "so", "look", "at", "this", "?"]
    turns = [" ".join(words[(i * j) % len(words)] for j in range(i % 7)) for i in range(300)]
    turns[-40] = "a very long turn " * 200
    turns.append("what is on my screen now")
    w = window.build(tokenizer, window.check_turns(turns), max_tokens)
    assert w == _whole_history_window(tokenizer, turns, max_tokens)
    assert w.history and _length(tokenizer, w) <= max_tokens
