"""Token ids of plain ASCII text from a cache of its pieces.

A byte-level BPE tokenizer (GPT-2, SmolLM2, Llama 3, Qwen 2) splits a text
with one regular expression and encodes each piece on its own: the ids of the
text are its pieces' ids, joined. So the ids of each piece seen before are
kept here, and an utterance made of known pieces is encoded by one
``findall`` and a dict lookup per piece.

Why: in the pause between a user's turns the CPU caches go cold, and the Rust
tokenizer's first call after it took 0.13-0.2 ms for a 25-word utterance on
the dev box (0.033 ms back to back); the split and lookups here took
0.06-0.1 ms cold and 0.007 ms warm (``benchmarks/piece_cache_bench.py``).

Only ASCII text takes this path, with the tokenizer's expression translated to
ASCII classes (``\\p{L}`` to ``[A-Za-z]``, ``\\s`` to the six ASCII spaces),
which matches what it matches on ASCII. Pieces are learned off the event loop
(``learn``: the thread that tokenizes each reply, and the prefill), and every
text learned is checked whole against the tokenizer; a mismatch turns the
cache off for good, with a warning. An unsupported tokenizer gets no cache.

The cache is bounded in two generations: when the current one holds
``max_pieces`` it becomes the previous one, and a piece found there moves back
on its next use. A deployment whose system prompts keep bringing new words
(retrieved text, say) keeps learning in at most twice that many entries, and
the words its turns use stay; before, a full cache stopped learning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

# tokenizers' ByteLevel(use_regex=True) expression (GPT-2's).
GPT2_EXPRESSION = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Oniguruma escapes -> (inside a [class], standalone) for ASCII text. Unicode's
# White_Space has only these six in ASCII (Python's \s would add \x1c-\x1f).
_SPACES = r" \t\n\x0b\x0c\r"
_ASCII = {
    r"\p{L}": ("A-Za-z", "[A-Za-z]"),
    r"\p{N}": ("0-9", "[0-9]"),
    r"\s": (_SPACES, f"[{_SPACES}]"),
    r"\S": (None, f"[^{_SPACES}]"),
}

# Texts the cache must encode exactly as the tokenizer does before it is used.
_PROBES = (
    "Hello there! It's 12:30, we'll go; I'D say they've 3.50 or 12345 apples?",
    "  spaced   out\t\ttabs\n\nnew lines \r\n and trailing  ",
    "a\x0bb\x0cc\x1cd\x1fe \x1c f",
    "'quoted' \"double\" (parens) [brackets] {braces} <angle> ... -- __ ## @you #tag",
    "don't DON'T o'clock rock'n'roll 'll 'd's",
    "x1y22z333 4444 55555 1,000,000.25 -7 +8e10",
)


class PieceCache:
    """The ids of known pieces of ASCII text (see the module's docstring).

    ``ids`` runs on the event loop; ``learn`` in threads. Both read and set
    single dict entries, atomic under the GIL, and a new generation swaps two
    references: a race can only lose entries (encoded again later), never
    give wrong ids, since a piece's ids never change."""

    def __init__(
        self,
        expression: str,
        encode: Callable[[str], Sequence[int]],
        added: Iterable[str] = (),
        max_pieces: int = 65_536,
    ) -> None:
        self._split = re.compile(expression).findall
        self._encode = encode
        added = [a for a in added if a]
        # A text holding one of the tokenizer's added tokens is split there first.
        self._added = re.compile("|".join(map(re.escape, added))) if added else None
        self._pieces: dict[str, tuple[int, ...]] = {}  # this generation
        self._old: dict[str, tuple[int, ...]] = {}  # the one before (see the module's docstring)
        self._max = max_pieces
        # Texts learned and checked already: a shared system prompt comes back
        # at every session's start. Emptied when full (a bound, not an LRU).
        self._checked: set[str] = set()
        self.on = True

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, encode: Callable[[str], Sequence[int]]) -> PieceCache | None:
        """A cache for a Hugging Face fast tokenizer whose pre-tokenizer is a
        byte-level split this module knows, checked on probe texts; else None."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        try:
            config = json.loads(backend.to_str()) if backend is not None else None
        except Exception:
            return None
        expression = _split_expression(config) if isinstance(config, dict) else None
        ascii_expression = translate(expression) if expression else None
        if ascii_expression is None:
            return None
        added = [t.get("content", "") for t in config.get("added_tokens") or ()]
        cache = cls(ascii_expression, encode, added)
        for probe in _PROBES:
            cache.learn(probe)
        if not cache.on:
            return None
        return cache

    def __len__(self) -> int:
        """Entries held, both generations (a piece moved back counts twice)."""
        return len(self._pieces) + len(self._old)

    def ids(self, text: str, new: int = 0) -> tuple[int, ...] | None:
        """The ids of ``text`` when it is ASCII and every piece is known, or
        at most ``new`` are not: those are encoded here, each on its own, and
        kept. None otherwise (the caller encodes the text whole).

        Why ``new``: a new session's system prompt often differs from the
        last one by a name or a number. Encoding those pieces alone took 346
        us for 566 tokens after a pause, against 835 us for the whole text
        (dev box, benchmarks/piece_cache_bench.py). For a short utterance
        after a pause it is a wash: the tokenizer's first call costs the same
        whatever its length."""
        if not self._eligible(text):
            return None
        pieces = self._split(text)
        out: list[int] = []
        get = self._pieces.get
        for piece in pieces:  # the turn's path: one lookup a piece when all are known
            known = get(piece)
            if known is None:
                return self._with_new(pieces, new)
            out += known
        return tuple(out)

    def _with_new(self, pieces: list[str], new: int) -> tuple[int, ...] | None:
        """``ids`` when a piece is not in this generation: take it from the
        one before, or encode it (up to ``new`` such pieces), then join."""
        found: dict[str, tuple[int, ...]] = {}  # local: a new generation may start meanwhile
        unknown: list[str] = []
        for piece in pieces:
            if piece in found:
                continue
            known = self._pieces.get(piece) or self._moved_back(piece)
            if known is not None:
                found[piece] = known
            elif piece not in unknown:
                if len(unknown) == new:
                    return None  # early: a text of many new words is not scanned to its end
                unknown.append(piece)
        for piece in unknown:
            found[piece] = self._keep(piece, tuple(self._encode(piece)))
        out: list[int] = []
        for piece in pieces:
            out += found[piece]
        return tuple(out)

    def _moved_back(self, piece: str) -> tuple[int, ...] | None:
        """A piece of the generation before, kept in this one again; None if neither has it."""
        known = self._old.get(piece)
        return None if known is None else self._keep(piece, known)

    def _keep(self, piece: str, ids: tuple[int, ...]) -> tuple[int, ...]:
        if len(self._pieces) >= self._max:
            self._old, self._pieces = self._pieces, {}  # a new generation
        self._pieces[piece] = ids
        return ids

    def _eligible(self, text: str) -> bool:
        """On, ASCII, and free of added tokens (which the tokenizer splits out first)."""
        return self.on and text.isascii() and not (self._added is not None and self._added.search(text))

    def learn(self, text: str) -> None:
        """Encode the pieces of ``text`` not known yet, then check the text
        whole against the tokenizer (off the event loop: Rust calls)."""
        if text in self._checked or not self._eligible(text):
            return
        for piece in self._split(text):
            if piece not in self._pieces and self._moved_back(piece) is None:
                self._keep(piece, tuple(self._encode(piece)))
        got = self.ids(text)
        if got is None:
            return
        if len(self._checked) >= 4096:
            self._checked.clear()
        self._checked.add(text)
        if got != tuple(self._encode(text)):
            self.on = False
            log.warning(
                "piece cache off: a %d-character text split into pieces encodes differently "
                "from the tokenizer's own encode; every text now goes to the tokenizer",
                len(text),
            )


def _split_expression(config: dict[str, Any]) -> str | None:
    """The expression a byte-level BPE tokenizer.json splits text with, when
    nothing else changes an ASCII text on its way to the model (no normalizer
    but NFC, no prefix space, no BPE dropout)."""
    model = config.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return None
    normalizer = config.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":  # NFC leaves ASCII as it is
        return None
    pre = config.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel":
        if pre.get("add_prefix_space") or not pre.get("use_regex", True):
            return None
        return GPT2_EXPRESSION
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, byte_level = steps
    pattern = split.get("pattern") or {}
    if (
        split.get("type") != "Split"
        or split.get("behavior") != "Isolated"
        or split.get("invert")
        or "Regex" not in pattern
        or byte_level.get("type") != "ByteLevel"
        or byte_level.get("use_regex", True)
        or byte_level.get("add_prefix_space")
    ):
        return None
    return str(pattern["Regex"])


def translate(expression: str) -> str | None:
    """An Oniguruma expression as a Python one for ASCII text: ``\\p{L}``,
    ``\\p{N}``, ``\\s``, ``\\S`` become ASCII classes; None when it uses any
    other Unicode property (or ``\\S`` inside a class), or Python cannot compile it."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(expression):
        ch = expression[i]
        if ch == "\\":
            if expression.startswith(("\\p{", "\\P{"), i):
                end = expression.find("}", i)
                token = expression[i : end + 1] if end > 0 else expression[i:]
            else:
                token = expression[i : i + 2]
            i += len(token)
            if token in _ASCII:
                inside, alone = _ASCII[token]
                if in_class and inside is None:
                    return None
                out.append(inside if in_class else alone)  # type: ignore[arg-type]
            elif token[:2] in ("\\p", "\\P"):
                return None
            else:
                out.append(token)
            continue
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
            i += 1
            if expression.startswith("^", i):
                out.append("^")
                i += 1
            if expression.startswith("]", i):  # a literal ] first in a class
                out.append("\\]")
                i += 1
            continue
        if ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    result = "".join(out)
    try:
        re.compile(result)
    except re.error:
        return None
    return result
