"""HfEngine: the Engine contract on transformers + torch, CPU or CUDA.

Loading happens in `start()` (on a thread, with progress lines); all model
work runs on the scheduler's worker thread. The async methods only hand work
over and wait on futures, so the event loop never blocks on the model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from yap_core.contracts import ChatTokenizer, Delta, EngineStats, GenerationRequest, Progress

from yap_engines_hf.model_source import ModelSource
from yap_engines_hf.scheduler import Scheduler, SchedulerConfig
from yap_engines_hf.settings import HfSettings

log = logging.getLogger(__name__)

# How long closing a stream waits for the worker to free the request: one
# decode step is tens of ms, one long prefill a few seconds at worst.
_ABORT_WAIT_S = 30.0


class HfEngine:
    name = "hf"

    def __init__(self, source: ModelSource, settings: HfSettings, cache_root: Path | None = None) -> None:
        self.version = metadata.version("transformers")
        self.model_id = source.spec
        self.max_model_len = 0  # known once the model's config is read in start()
        self.device = ""
        self.dtype = ""
        self._source = source
        self._settings = settings
        self._cache_root = cache_root  # where the converted GGUF copy lives (None: no copy)
        self._tokenizer: Any = None
        self._vocab_size = 0
        self._scheduler: Scheduler | None = None

    @property
    def tokenizer(self) -> ChatTokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the hf engine is not started: await engine.start() first")
        return self._tokenizer

    def unsupported_sampling(self) -> frozenset[str]:
        return frozenset()

    async def start(self, progress: Progress | None = None) -> None:
        if self._scheduler is not None:
            return
        say = progress or (lambda line: log.info("%s", line))
        self._scheduler = await asyncio.to_thread(self._load, say)
        self._scheduler.start()
        say(f"hf engine ready: {self.model_id} on {self.device} ({self.dtype})")

    def _load(self, say: Progress) -> Scheduler:
        # Heavy imports here, not at plugin import: `yap plugins` must stay light.
        from yap_engines_hf.loading import load_model

        loaded = load_model(self._source, self._settings, say, self._cache_root)
        self._tokenizer = loaded.tokenizer
        self._vocab_size = loaded.vocab_size
        self.max_model_len = loaded.max_model_len
        self.device, self.dtype = loaded.device, loaded.dtype
        return Scheduler(
            loaded.runner,
            loaded.decode,
            SchedulerConfig(
                max_batch=self._settings.hf_max_batch,
                max_model_len=loaded.max_model_len,
                vocab_size=loaded.vocab_size,
                eos_ids=loaded.eos_ids,
                prefix_cache_tokens=self._settings.hf_prefix_cache_tokens,
                prefill_chunk=self._settings.hf_prefill_chunk,
            ),
        )

    async def close(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.stop)

    def _running(self) -> Scheduler:
        if self._scheduler is None:
            raise RuntimeError("the hf engine is not started: await engine.start() first")
        return self._scheduler

    def _check_ids(self, ids: Sequence[int], what: str) -> None:
        if not ids:
            raise ValueError(f"{what}: empty prompt")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"{what}: {len(ids)} prompt tokens; the context holds {self.max_model_len} (prompt + reply)")
        bad = next((i for i in ids if not 0 <= i < self._vocab_size), None)
        if bad is not None:
            raise ValueError(f"{what}: token id {bad} is outside the vocabulary (0..{self._vocab_size - 1})")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        scheduler = self._running()
        self._check_ids(request.prompt_token_ids, f"request {request.request_id}")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()

        def emit(item: Delta | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                pass  # the loop is closed: nobody is listening any more

        scheduler.submit(request, emit)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            if not finished:
                # aclose(), a cancelled consumer, or an error downstream: stop decoding now
                await asyncio.wait_for(asyncio.wrap_future(scheduler.abort(request.request_id)), _ABORT_WAIT_S)

    async def abort(self, request_id: str) -> None:
        if self._scheduler is None:
            return
        await asyncio.wrap_future(self._scheduler.abort(request_id))

    async def prefill(self, prompt_token_ids: Sequence[int]) -> int:
        scheduler = self._running()
        self._check_ids(prompt_token_ids, "prefill")
        return await asyncio.wrap_future(scheduler.prefill(prompt_token_ids))

    async def stats(self) -> EngineStats:
        if self._scheduler is None:
            return EngineStats(running=0, waiting=0)
        return self._scheduler.stats()
