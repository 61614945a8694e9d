"""The ASCII piece cache (pieces.py) on the real SmolLM2 tokenizer: the ids it
gives are the tokenizer's own, and a split that disagrees turns it off."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yap_core.personas import Personas
from yap_core.pieces import GPT2_EXPRESSION, PieceCache, translate
from yap_core.prompt_types import Message
from yap_core.prompts import INLINE_NEW_CHARS, PromptBuilder
from yap_core.settings import Config, CoreSettings

LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def encoder(tok: Any) -> Any:
    backend = tok.backend_tokenizer
    return lambda text: backend.encode(text, add_special_tokens=False).ids


def counting_cache(tok: Any) -> tuple[PieceCache, list[str]]:
    """A GPT-2-split cache on ``tok``, and the texts it has sent to the tokenizer."""
    calls: list[str] = []
    encode = encoder(tok)

    def counting(text: str) -> Any:
        calls.append(text)
        return encode(text)

    return PieceCache(translate(GPT2_EXPRESSION) or "", counting), calls


@pytest.fixture(scope="module")
def cache(smollm2_tokenizer: Any) -> PieceCache:
    made = PieceCache.for_tokenizer(smollm2_tokenizer, encoder(smollm2_tokenizer))
    assert made is not None, "SmolLM2's byte-level tokenizer gets a piece cache"
    return made


WORDS = ["the", "The", "I'm", "it's", "we'll", "DON'T", "12", "3.5", "1,000", "hello", "World", "!!!", "...", ",", "?", "(x)", "\"q\"", "--"]
GAPS = ["", " ", "  ", "\n", "\n\n", "\t", " \n "]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=60))
def test_any_ascii_text_learned_encodes_as_the_tokenizer_does(cache: PieceCache, smollm2_tokenizer: Any, text: str) -> None:
    cache.learn(text)
    assert cache.on, f"the cache turned itself off on {text!r}"
    added = [t.content for t in smollm2_tokenizer.added_tokens_decoder.values()]
    if any(a in text for a in added):  # Hypothesis also draws this file's literals, "<|im_end|>" among them
        assert cache.ids(text) is None  # the tokenizer splits those out first: never served
    else:
        assert cache.ids(text) == tuple(encoder(smollm2_tokenizer)(text))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(GAPS)), max_size=20))
def test_a_new_text_of_known_pieces_encodes_as_the_tokenizer_does(
    cache: PieceCache, smollm2_tokenizer: Any, parts: list[tuple[str, str]]
) -> None:
    """Learned from other texts, in other orders: the split of a text depends
    on its neighbours (a space joins the word after it), and the cache must
    follow the tokenizer there too."""
    for word, _ in parts:
        cache.learn(f"{word} {word}\n{word}")
    text = "".join(w + g for w, g in parts)
    got = cache.ids(text)
    if got is not None:
        assert got == tuple(encoder(smollm2_tokenizer)(text))


def test_unknown_pieces_non_ascii_and_added_tokens_go_to_the_tokenizer(cache: PieceCache) -> None:
    cache.learn("plain words here")
    assert cache.ids("plain words here") is not None
    assert cache.ids("plain words zyxwvutsrq") is None  # a piece never seen
    assert cache.ids("plain café") is None  # not ASCII
    cache.learn("a <|im_end|> b")  # holds a control token: never learned, never served
    assert cache.ids("a <|im_end|> b") is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=8),
    st.lists(st.text(alphabet="qxzjkvwQXZ0123456789", min_size=1, max_size=9), max_size=4),
)
def test_a_text_with_a_few_new_pieces_encodes_them_alone_and_keeps_them(
    smollm2_tokenizer: Any, words: list[str], new: list[str]
) -> None:
    """An utterance with a name or number not seen yet: up to ``new`` unknown
    pieces are encoded one by one, the text's ids are still the tokenizer's,
    and those pieces are known afterwards; with more, the caller encodes whole."""
    cache, calls = counting_cache(smollm2_tokenizer)
    cache.learn(" ".join(words))
    text = " ".join(words + new)
    unknown = {p for p in cache._split(text) if p not in cache._pieces}
    calls.clear()
    got = cache.ids(text, new=3)
    if len(unknown) > 3:
        assert got is None and calls == []
        return
    assert got == tuple(encoder(smollm2_tokenizer)(text))
    assert sorted(calls) == sorted(unknown)  # each new piece alone, never the whole text
    calls.clear()
    assert cache.ids(text) == got and calls == []


def test_a_full_cache_starts_a_new_generation_and_keeps_the_pieces_in_use(smollm2_tokenizer: Any) -> None:
    """Bounded at two generations of ``max_pieces``: new words keep being
    learned (before, a full cache stopped learning), the pieces turns keep
    using survive every new generation, and the ids stay the tokenizer's."""
    encode = encoder(smollm2_tokenizer)
    cache, calls = counting_cache(smollm2_tokenizer)
    cache._max = 32
    in_use = "hello there"  # a user's greeting, said between the new words
    cache.learn(in_use)
    for i in range(60):
        text = f"word{i} thing{i} fact{i * 7 + 1000}"  # new numbers in each, as in retrieved passages
        cache.learn(text)
        assert len(cache) <= 2 * 32
        calls.clear()
        assert cache.ids(in_use) == tuple(encode(in_use)) and calls == []  # never encoded again
        assert cache.ids(text) == tuple(encode(text)) and calls == []  # the newest text is known
    assert "0" not in cache._pieces and "0" not in cache._old  # two generations ago: dropped
    assert cache.ids("word0 thing0", new=3) == tuple(encode("word0 thing0"))
    assert calls == ["0"]  # only the dropped piece is encoded again


def test_a_split_that_disagrees_with_the_tokenizer_turns_the_cache_off(
    smollm2_tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Lower-case runs only: right for "hello world", not for a capital letter.
    wrong = PieceCache(r" ?[a-z]+|.", encoder(smollm2_tokenizer))
    wrong.learn("hello world")
    assert wrong.on and wrong.ids("hello world") is not None
    with caplog.at_level(logging.WARNING, logger="yap_core.pieces"):
        wrong.learn("Hello world")  # "H" + "ello" is not how the tokenizer encodes "Hello"
    assert not wrong.on
    assert wrong.ids("hello world") is None
    assert "piece cache off" in caplog.text and "hello" not in caplog.text  # no user text in logs


def test_translation_to_ascii_classes() -> None:
    gpt2 = translate(GPT2_EXPRESSION)
    assert gpt2 is not None and r"\p" not in gpt2
    llama3 = translate(LLAMA3)
    assert llama3 is not None
    assert re.findall(llama3, "I'M here 12345\n\n ok") == ["I", "'M", " here", " ", "123", "45", "\n\n", " ok"]
    assert translate(r"\p{Lu}+|\s+") is None  # a property it cannot translate
    assert translate(r"[^\S]") is None  # \S inside a class
    assert translate(r"(unclosed") is None


def test_a_tokenizer_without_a_byte_level_split_gets_no_cache(smollm2_tokenizer: Any) -> None:
    class Backend:
        def to_str(self) -> str:
            return '{"model": {"type": "WordPiece"}, "pre_tokenizer": {"type": "Whitespace"}}'

    class Tok:
        backend_tokenizer = Backend()

    assert PieceCache.for_tokenizer(Tok(), encoder(smollm2_tokenizer)) is None


def test_the_prompt_builder_renders_a_known_utterance_from_the_cache(smollm2_tokenizer: Any) -> None:
    settings_ = Config(env={}, toml={}).section("core", CoreSettings)
    builder = PromptBuilder(smollm2_tokenizer, settings_, 2048, Personas.load(None))
    assert builder.pieces is not None
    system = "You are a friendly voice assistant. Tell me about the weather in the city."
    builder.prefix(system, ())  # a session's start learns the system prompt's pieces
    utterance = "Tell me about the city weather?"
    assert builder.pieces.ids(utterance) is None  # "Tell" opening a text, "?": not seen yet
    builder.remember(["Tell them the weather?"])  # a turn's texts, learned after it
    assert builder.pieces.ids(utterance) is not None
    rendered = builder.render(system, [], utterance, 64)
    conv = [{"role": "system", "content": system}, {"role": "user", "content": utterance}]
    expected = smollm2_tokenizer.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
    if hasattr(expected, "keys"):  # transformers 5 returns a BatchEncoding
        expected = expected["input_ids"]
    assert list(rendered.token_ids) == list(expected)


def test_a_text_learned_once_is_not_encoded_again(smollm2_tokenizer: Any) -> None:
    """A shared system prompt comes back at every session's start: its check
    against the tokenizer runs once."""
    cache, calls = counting_cache(smollm2_tokenizer)
    system = "You are a friendly voice assistant. Keep it short."
    cache.learn(system)
    assert system in calls  # checked whole, once
    calls.clear()
    cache.learn(system)
    assert calls == []
    assert cache.ids(system) == tuple(encoder(smollm2_tokenizer)(system))


def test_remember_encodes_a_new_reply_whole_only_once(smollm2_tokenizer: Any) -> None:
    """Learning checks the reply whole; its ids then come from the pieces, not a second encode."""
    settings_ = Config(env={}, toml={}).section("core", CoreSettings)
    builder = PromptBuilder(smollm2_tokenizer, settings_, 2048, Personas.load(None))
    assert builder.pieces is not None
    reply = "Sure, the weather tomorrow looks sunny with a light breeze in the afternoon."
    whole: list[str] = []
    encode = encoder(smollm2_tokenizer)

    def counting(text: str) -> Any:
        if text == reply:
            whole.append(text)
        return encode(text)

    builder._encode = builder.pieces._encode = counting  # type: ignore[method-assign]
    builder.remember([reply])
    assert len(whole) == 1
    assert builder._ids(reply) == tuple(encode(reply))


def test_a_session_started_with_its_utterance_teaches_the_next_session_its_system_prompt(smollm2_tokenizer: Any) -> None:
    """No prefill learned the first session's system prompt (it started with
    its utterance): the work after its turn does. The next session's prompt,
    the same but for a name and a number, is then counted on the event loop
    from the pieces (``cheap_system_prompt``), its new pieces encoded alone."""
    settings_ = Config(env={}, toml={}).section("core", CoreSettings)
    builder = PromptBuilder(smollm2_tokenizer, settings_, 4096, Personas.load(None))
    assert builder.pieces is not None
    encode = encoder(smollm2_tokenizer)
    calls: list[str] = []

    def counting(text: str) -> Any:
        calls.append(text)
        return encode(text)

    builder._encode = builder.pieces._encode = counting  # type: ignore[method-assign]
    body = " ".join(["You are a calm voice assistant: answer briefly, ask before booking anything."] * 15)
    first = f"Caller 4711 is Alice. {body}"
    assert len(first) > INLINE_NEW_CHARS  # long enough that counting it could be a thread's work
    assert not builder.cheap_system_prompt(first)  # nothing learned yet: encoded whole, in a thread
    system = builder.system_prompt(first, None, None)
    builder.render(system, [], "Book a table?", 64)
    history = [Message("user", "Book a table?"), Message("assistant", "For how many?")]
    builder.prepare(system, history, ["Book a table?", "For how many?"])
    calls.clear()
    second = first.replace("4711", "4712").replace("Alice", "Bruno")
    assert builder.cheap_system_prompt(second)
    ids = builder._ids(builder.system_prompt(second, None, None))
    assert second not in calls  # only its new pieces were encoded, each alone
    assert calls and all(len(c) <= len(" Bruno") for c in calls)
    assert ids == tuple(encode(second))
    strange = f"Caller 4713 is Zed. {body.replace('calm', 'zesty quixotic jovial')}"
    assert not builder.cheap_system_prompt(strange)  # four new pieces: a whole encode, in a thread
