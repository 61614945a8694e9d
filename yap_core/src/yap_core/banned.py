"""Banned phrases, enforced as a negative logit bias on a few tokens.

A logit bias is per token and blind to context: it cannot forbid a *phrase*,
only make some tokens unlikely everywhere. So each phrase contributes few
tokens: those of the word marked with [brackets] in each spelling where that
word is one token (with or without a leading space, first letter upper or lower
case), or, without a mark, the phrase's rarest word token, taken as the one with
the highest id (BPE vocabularies number merges roughly from frequent to rare).
Common function words are never biased. The limit, documented in docs/prompts-and-sanitizer.md:
the chosen word becomes rare in every context, and the model can still reach
the phrase through another tokenization or a paraphrase.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from yap_core.contracts import ChatTokenizer
from yap_core.settings import SettingsError, read_data_file

__all__ = ["DEFAULT_BIAS", "load_phrases", "logit_bias", "targets"]

log = logging.getLogger(__name__)

# Strong enough that the token almost never wins (odds divided by ~3000),
# weak enough that a context that overwhelmingly wants it still gets it.
DEFAULT_BIAS = -8.0

_MARK = re.compile(r"\[([^\[\]]+)\]")
# Words that carry no meaning of their own: biasing them would cripple speech.
_COMMON = frozenset(
    "a an the i i'm me my we you your it its is am are was be been do does did not no "
    "to of in on at by for with as and or but if so that this have has had can cannot "
    "can't don't just only very will would could should there what".split()
)


def load_phrases(path: str | None) -> list[str]:
    """The phrases of ``path`` (one a line, # comments), or the built-in list."""
    raw, source = read_data_file("BANNED_PHRASES_FILE", path, "banned_phrases.txt")
    phrases = []
    for number, line in enumerate(raw.splitlines(), start=1):
        phrase = line.strip()
        if not phrase or phrase.startswith("#"):
            continue
        unmarked = _MARK.sub("", phrase)
        if "[" in unmarked or "]" in unmarked:
            raise SettingsError(f"BANNED_PHRASES_FILE {source}:{number}: unbalanced [ ] in {phrase!r}")
        phrases.append(phrase)
    return phrases


def targets(phrase: str) -> list[str]:
    """The text whose tokens are biased: the marked words, else the whole phrase."""
    marked = _MARK.findall(phrase)
    return [m.strip() for m in marked if m.strip()] or [phrase]


def _spellings(text: str) -> set[str]:
    forms = {text}
    if not text.isupper():  # acronyms keep their case
        forms |= {text[0].lower() + text[1:], text[0].upper() + text[1:]}
    return forms | {" " + f for f in forms}


def _word_like(piece: str) -> bool:
    word = piece.strip().lower()
    return sum(ch.isalpha() for ch in word) >= 2 and word not in _COMMON


def logit_bias(
    tokenizer: ChatTokenizer, phrases: Sequence[str], bias: float = DEFAULT_BIAS
) -> dict[int, float]:
    """token id -> ``bias`` for the distinctive token of each phrase spelling."""
    if bias >= 0:
        raise ValueError(f"bias must be negative, got {bias}")
    out: dict[int, float] = {}
    for phrase in phrases:
        chosen = [i for target in targets(phrase) for i in _distinctive(tokenizer, target)]
        if not chosen:
            log.warning("banned phrase %r has no distinctive token; it is not enforced", phrase)
        out.update(dict.fromkeys(chosen, bias))
    return out


def _distinctive(tokenizer: ChatTokenizer, target: str) -> list[int]:
    """For one word: each spelling that is a single word token (fragments
    such as "pin" of "opinions" would hit unrelated words), else the rarest
    token of the spaced spelling. For several words: the rarest word token of
    each spelling."""
    chosen: list[int] = []
    single_word = " " not in target
    for spelling in sorted(_spellings(target)):
        ids = tokenizer.encode(spelling, add_special_tokens=False)
        words = [i for i in ids if _word_like(tokenizer.decode([i]))]
        if single_word:
            if len(ids) == 1 and words:
                chosen.append(ids[0])
        elif words:
            chosen.append(max(words))
    if not chosen and single_word:
        ids = tokenizer.encode(" " + target, add_special_tokens=False)
        words = [i for i in ids if _word_like(tokenizer.decode([i]))]
        chosen = [max(words)] if words else []
    return chosen
