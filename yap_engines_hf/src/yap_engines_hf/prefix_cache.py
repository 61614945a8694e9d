"""Prefix cache: KV of recent prompts, found by their token-id prefix.

Bounded by a token budget, least recently used first out. A lookup returns
the longest common prefix with any entry: KV at position i depends only on
tokens 0..i, so any shared beginning is reusable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from yap_engines_hf.kv import RequestKV, slice_kv


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[int, ...], RequestKV] = OrderedDict()
        self._tokens = 0

    @property
    def tokens(self) -> int:
        return self._tokens

    def lookup(self, ids: Sequence[int], limit: int) -> tuple[int, RequestKV | None]:
        """(tokens reusable, their KV), at most `limit` tokens."""
        best, best_key = 0, None
        for key in self._entries:
            n = min(common_prefix(key, ids), limit)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, slice_kv(self._entries[best_key], 0, best)

    def store(self, ids: Sequence[int], kv: RequestKV) -> None:
        """Keep `kv` (the KV of `ids`, exactly len(ids) tokens)."""
        if self.max_tokens == 0 or not ids or len(ids) > self.max_tokens:
            return
        key = tuple(ids)
        # an entry that is a prefix of this one is now redundant
        for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            self._drop(old)
        if any(len(k) > len(key) and k[: len(key)] == key for k in self._entries):
            return  # already covered by a longer entry
        self._entries[key] = kv
        self._tokens += len(key)
        while self._tokens > self.max_tokens:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        del self._entries[key]
        self._tokens -= len(key)
