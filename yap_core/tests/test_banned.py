"""Banned phrases on the real SmolLM2 tokenizer: every spelling of a phrase
hits a biased token, and common words stay free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from yap_core.banned import DEFAULT_BIAS, load_phrases, logit_bias, targets
from yap_core.settings import Config, CoreSettings, SettingsError

COMMON = [" an", " the", " I", "I", " as", "As", " language", " model", " my", " have",
          " not", " personal", " internet", " knowledge", " just", " training", " web", " Open"]


def ids_of(tok: Any, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def test_builtin_list_loads_and_biases_negatively(smollm2_tokenizer: Any) -> None:
    phrases = load_phrases(None)
    assert "As an [AI] language model" in phrases
    assert all(p.strip() and not p.startswith("#") for p in phrases)
    bias = logit_bias(smollm2_tokenizer, phrases)
    assert bias and all(v == DEFAULT_BIAS < 0 for v in bias.values())
    assert all(0 <= i < len(smollm2_tokenizer) for i in bias)


def test_every_spelling_of_a_phrase_meets_a_biased_token(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    phrases = load_phrases(None)
    bias = logit_bias(tok, phrases)
    for phrase in phrases:
        plain = phrase.replace("[", "").replace("]", "")
        for spelling in (plain, " " + plain):
            assert set(ids_of(tok, spelling)) & set(bias), spelling


def test_common_words_are_never_biased(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    bias = logit_bias(tok, load_phrases(None))
    for word in COMMON:
        (token,) = ids_of(tok, word)
        assert token not in bias, word


def test_unmarked_phrase_biases_its_rarest_word(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    bias = logit_bias(tok, ["my knowledge cutoff"])
    assert {tok.decode([i]) for i in bias} == {" cutoff"}
    assert targets("my knowledge cutoff") == ["my knowledge cutoff"]
    assert targets("As an [AI] language [model]") == ["AI", "model"]


def test_marked_word_gets_its_whole_word_tokens_only(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    biased = {tok.decode([i]) for i in logit_bias(tok, ["I do not have personal [opinions]"])}
    assert " opinions" in biased
    assert not biased & {"pin", " Opin", "opin", " personal"}  # no fragments of other words


def test_phrase_of_common_words_biases_nothing(smollm2_tokenizer: Any) -> None:
    assert logit_bias(smollm2_tokenizer, ["I am not"]) == {}


def test_override_file_through_the_setting(tmp_path: Path, smollm2_tokenizer: Any) -> None:
    file = tmp_path / "banned.txt"
    file.write_text("# ours\n\nLet me [delve] into that\n")
    settings = Config(env={"BANNED_PHRASES_FILE": str(file)}).section("core", CoreSettings)
    phrases = load_phrases(settings.banned_phrases_file)
    assert phrases == ["Let me [delve] into that"]
    bias = logit_bias(smollm2_tokenizer, phrases, bias=-20.0)
    assert ids_of(smollm2_tokenizer, " delve")[0] in bias
    assert set(bias.values()) == {-20.0}


def test_bad_files_are_refused(tmp_path: Path, smollm2_tokenizer: Any) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_phrases(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_text("fine\nAs an [AI language model\n")
    with pytest.raises(SettingsError, match=":2: unbalanced"):
        load_phrases(str(bad))
    with pytest.raises(ValueError):
        logit_bias(smollm2_tokenizer, ["x"], bias=1.0)
