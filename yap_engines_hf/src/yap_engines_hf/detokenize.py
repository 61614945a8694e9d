"""Incremental detokenization that never splits a UTF-8 character.

A byte-level BPE token can hold part of a multi-byte character (emoji,
accents); decoding it alone gives U+FFFD. We decode a short window of recent
ids and emit only text that has stopped changing: new text is held back while
it ends in U+FFFD, and released once the following token completes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        # ids[prefix:read] is already emitted context; ids[read:] is pending
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now complete (maybe '')."""
        self._ids.append(token_id)
        return self._take(final=False)

    def flush(self) -> str:
        """At the end: what is still pending, minus an incomplete character."""
        return self._take(final=True)

    def _take(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if final:
            after = after.rstrip(REPLACEMENT)
        elif after.endswith(REPLACEMENT) or len(after) <= len(before):
            return ""
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        return delta
