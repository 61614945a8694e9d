"""The classifier's input window: earlier user turns plus the current utterance,
cut to a token budget.

The current utterance always goes in, its tail kept when it alone overflows
(a long ramble usually ends with the request). Earlier turns fill what is
left, newest first. The result is a text pair (utterance, history) that the
tokenizer joins with its own special tokens, so training and serving build
inputs the same way for any tokenizer. The utterance goes first and the
history runs newest to oldest: the current words then always sit at the same
positions, next to the [CLS] token the classification head reads, and the
turn a follow-up refers to sits right after them.

Only the standard library and a Hugging Face fast tokenizer are used here, so
the GPU benchmark can import this module without the project's venv.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

# Characters kept per token of budget before tokenizing: a cheap bound on the
# work a 10,000-word utterance can cause. WordPiece tokens are far shorter.
_CHARS_PER_TOKEN = 24
# The first tokenizer pass takes turns holding this many characters per token
# of budget: English runs ~4 characters a token, so one pass usually fills the
# window. A later pass (text of short tokens) takes four times more turns.
_FIRST_PASS_CHARS_PER_TOKEN = 6


class EmptyUtterance(ValueError):
    """The current utterance is empty or only whitespace."""


class Window(NamedTuple):
    utterance: str
    history: str  # earlier turns, newest first, joined by the separator


def clean(text: str) -> str:
    """Make text safe for the tokenizer: lone surrogates (not valid UTF-8)
    cannot cross into the Rust tokenizer, so they become U+FFFD."""
    if not isinstance(text, str):
        raise TypeError(f"user turns must be str, got {type(text).__name__}")
    if text.isascii():  # the common case, and a C-speed check: no surrogates
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def check_turns(user_turns: Sequence[str]) -> list[str]:
    """Validate the classifier's input: a non-empty list of str, current utterance last."""
    if isinstance(user_turns, str) or not isinstance(user_turns, Sequence):
        raise TypeError("user_turns must be a sequence of str (earlier turns, then the current utterance)")
    if not user_turns:
        raise ValueError("user_turns is empty: it must end with the current utterance")
    turns = [clean(t) for t in user_turns]
    if not turns[-1].strip():
        raise EmptyUtterance("the current utterance is empty")
    return turns


def separator(tokenizer: Any) -> str:
    sep = getattr(tokenizer, "sep_token", None)
    return f" {sep} " if sep else " | "


def build(tokenizer: Any, user_turns: Sequence[str], max_tokens: int) -> Window:
    """Cut ``user_turns`` (current utterance last, already checked) to fit
    ``max_tokens`` including the tokenizer's special tokens."""
    budget = max_tokens - tokenizer.num_special_tokens_to_add(pair=True)
    if budget < 1:
        raise ValueError(f"a window of {max_tokens} tokens leaves no room for text")
    cap = budget * _CHARS_PER_TOKEN
    texts = [t[-cap:].strip() for t in reversed(user_turns)]  # newest first
    texts = [texts[0]] + [t for t in texts[1:] if t]
    sep, sep_cost = _separator(tokenizer)
    kept: list[str] = []
    left = budget
    # Tokenized newest first, a few turns at a time: a long session's history
    # mostly lies past the budget, and tokenizing all of it cost ~5 ms a
    # decision at 256 turns.
    start, size = 0, _first_pass(texts, budget * _FIRST_PASS_CHARS_PER_TOKEN)
    while start < len(texts):
        chunk = texts[start : start + size]
        enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        for i, (text, ids, offsets) in enumerate(zip(chunk, enc["input_ids"], enc["offset_mapping"], strict=True), start):
            extra = sep_cost if i > 1 else 0
            if i > 0 and left < 1 + extra:
                return Window(kept[0], sep.join(kept[1:]))
            if len(ids) + extra <= left:
                kept.append(text)
                left -= len(ids) + extra
                continue
            kept.append(_tail(text, offsets, left - extra))
            return Window(kept[0], sep.join(kept[1:]))
        start, size = start + size, max(size * 4, 8)
    return Window(kept[0], sep.join(kept[1:]))


def _first_pass(texts: Sequence[str], chars: int) -> int:
    """How many of ``texts`` (newest first) the first tokenizer pass takes."""
    for n, text in enumerate(texts, 1):
        chars -= len(text)
        if chars <= 0:
            return n
    return len(texts)


@lru_cache(maxsize=8)
def _separator(tokenizer: Any) -> tuple[str, int]:
    """The separator and its length in tokens, worked out once per tokenizer:
    ``build`` runs for every decision."""
    sep = separator(tokenizer)
    return sep, len(tokenizer(sep.strip(), add_special_tokens=False)["input_ids"])


def _tail(text: str, offsets: Sequence[tuple[int, int]], keep: int) -> str:
    """The end of ``text`` covering its last ``keep`` tokens."""
    start = offsets[len(offsets) - keep][0]
    return text[start:]


def build_many(tokenizer: Any, batch: Sequence[Sequence[str]], max_tokens: int) -> list[Window]:
    return [build(tokenizer, turns, max_tokens) for turns in batch]


def encode(tokenizer: Any, batch: Sequence[Sequence[str]], max_tokens: int) -> Any:
    """The model's inputs for a batch of checked user-turn lists: CPU tensors,
    padded to the longest. Training and serving both encode through here."""
    windows = build_many(tokenizer, batch, max_tokens)
    return tokenizer(
        [w.utterance for w in windows],
        [w.history for w in windows],
        truncation=True,
        max_length=max_tokens,
        padding=True,
        return_tensors="pt",
    )
