"""ExampleEngine: the Engine contract on the bigram model, in plain asyncio.

Each request decodes on its own task-free async generator, one token per
`example_step_ms`, so concurrent streams interleave on the event loop; abort
flips a flag the generator checks before every token."""

from __future__ import annotations

import asyncio
import codecs
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence

from yap_core.contracts import Delta, EngineStats, GenerationRequest, Progress

from yap_example_engine.bigram import BigramModel
from yap_example_engine.settings import ExampleSettings
from yap_example_engine.tokenizer import EOS, ByteTokenizer

_UNSUPPORTED = frozenset({"min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias"})


class ExampleEngine:
    name = "example"
    version = "0.1.0"
    model_id = "bigram-bytes"
    max_model_len = 4096

    def __init__(self, settings: ExampleSettings) -> None:
        self._settings = settings
        self._tokenizer = ByteTokenizer()
        self._model: BigramModel | None = None
        self._running: dict[str, asyncio.Event] = {}  # request id -> abort flag
        self._prefixes: OrderedDict[tuple[int, ...], None] = OrderedDict()
        self._queries = 0
        self._hits = 0

    @property
    def tokenizer(self) -> ByteTokenizer:
        return self._tokenizer

    def unsupported_sampling(self) -> frozenset[str]:
        return _UNSUPPORTED

    async def start(self, progress: Progress | None = None) -> None:
        if progress:
            progress("example engine: counting bigrams")
        self._model = BigramModel()

    async def close(self) -> None:
        for flag in self._running.values():
            flag.set()
        self._model = None

    def _cached(self, ids: tuple[int, ...]) -> int:
        best = 0
        for key in self._prefixes:
            n = 0
            while n < min(len(key), len(ids)) and key[n] == ids[n]:
                n += 1
            best = max(best, n)
        self._prefixes[ids] = None
        while len(self._prefixes) > self._settings.example_prefix_entries:
            self._prefixes.popitem(last=False)
        return best

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self._model is None:
            raise RuntimeError("the example engine is not started")
        ids = request.prompt_token_ids
        if not ids or len(ids) >= self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens: need 1..{self.max_model_len - 1}")
        if request.request_id in self._running:
            raise ValueError(f"request_id {request.request_id!r} is already running")
        s = request.sampling
        cached = min(self._cached(ids), len(ids) - 1)
        self._queries += len(ids)
        self._hits += cached
        aborted = asyncio.Event()
        self._running[request.request_id] = aborted
        rng = random.Random(s.seed)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        prev, n = ids[-1], 0
        holdback = max((len(x) for x in s.stop), default=0)
        finish = None

        def delta(text: str, reason: str | None = None) -> Delta:
            return Delta(text=text, completion_tokens=n, prompt_tokens=len(ids), cached_prompt_tokens=cached, finish_reason=reason)  # type: ignore[arg-type]

        try:
            pending = ""
            while finish is None:
                await asyncio.sleep(self._settings.example_step_ms / 1000)
                if aborted.is_set():
                    finish = "abort"
                    break
                token = self._model.next_token(prev, s.temperature, s.top_k, s.top_p, rng)
                n += 1
                if token == EOS and not s.ignore_eos:
                    finish = "stop"
                    break
                prev = token
                pending += utf8.decode(bytes([token]) if token < 256 else b"")
                hit = min((pending.find(x) for x in s.stop if x in pending), default=-1)
                if hit >= 0:
                    pending, finish = pending[:hit], "stop"
                    break
                if n >= s.max_tokens or len(ids) + n >= self.max_model_len:
                    finish = "length"
                    break
                safe = len(pending) - holdback  # a stop string may still be starting
                if safe > 0:
                    yield delta(pending[:safe])
                    pending = pending[safe:]
            self._running.pop(request.request_id, None)
            yield delta("" if finish == "abort" else pending, finish)
        finally:
            self._running.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        flag = self._running.pop(request_id, None)
        if flag is not None:
            flag.set()

    async def prefill(self, prompt_token_ids: Sequence[int]) -> int:
        ids = tuple(prompt_token_ids)
        cached = self._cached(ids)
        self._queries += len(ids)
        self._hits += cached
        return cached

    async def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._running),
            waiting=0,
            prefix_cache_queries=self._queries,
            prefix_cache_hits=self._hits,
        )
