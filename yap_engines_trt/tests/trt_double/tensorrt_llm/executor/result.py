"""DOUBLE of tensorrt_llm/executor/result.py: CompletionOutput (cumulative,
with the *_diff properties) and GenerationResult (async iteration yielding
itself per step, abort through the executor, final 'cancelled')."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(slots=True)
class KvCacheMetrics:
    """Mirrors tensorrt_llm.bindings.executor.KvCacheMetrics."""

    num_total_allocated_blocks: int = 0
    num_new_allocated_blocks: int = 0
    num_reused_blocks: int = 0
    num_missed_blocks: int = 0
    kv_cache_hit_rate: float = 0.0


@dataclass(slots=True)
class RequestPerfMetrics:
    """Mirrors tensorrt_llm.bindings.executor.RequestPerfMetrics (the KV part)."""

    kv_cache_metrics: KvCacheMetrics = field(default_factory=KvCacheMetrics)


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: Literal["stop", "length", "timeout", "cancelled"] | None = None
    stop_reason: int | str | None = None
    request_perf_metrics: RequestPerfMetrics | None = None
    _last_text_len: int = field(default=0, init=False, repr=False)
    _last_token_ids_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len:]

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len:]


class Step:
    """One response from the double's executor: new tokens, maybe final."""

    __slots__ = ("new_token_ids", "is_final", "finish_reason", "trim", "perf")

    def __init__(self, new_token_ids: list[int], is_final: bool, finish_reason: str | None, trim: int = 0,
                 perf: RequestPerfMetrics | None = None) -> None:
        self.new_token_ids = new_token_ids
        self.is_final = is_final
        self.finish_reason = finish_reason
        self.trim = trim  # tokens of a matched stop word removed from the output
        self.perf = perf


class GenerationResult:
    def __init__(self, request_id: int, prompt_token_ids: list[int], sampling_params: Any, executor: Any,
                 tokenizer: Any, streaming: bool) -> None:
        self._request_id = request_id
        self._prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self._executor = executor
        self.tokenizer = tokenizer
        self._streaming = streaming
        self._outputs = [CompletionOutput(0)]
        self._done = False
        self._aborted = False
        self.aqueue: asyncio.Queue[Step] = asyncio.Queue()

    @property
    def request_id(self) -> int:
        return self._request_id

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._prompt_token_ids

    @property
    def outputs(self) -> list[CompletionOutput]:
        return self._outputs[: self.sampling_params.n]

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        self._executor.abort_request(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    def _handle_response(self, step: Step) -> None:
        out = self._outputs[0]
        out._last_token_ids_len = len(out.token_ids)
        out.token_ids.extend(step.new_token_ids)
        self._done = step.is_final
        if step.perf is not None and self.sampling_params.return_perf_metrics:
            out.request_perf_metrics = step.perf
        if step.finish_reason == "cancelled":
            out.finish_reason = "cancelled"
        if self._done:
            if step.trim:
                out.token_ids = out.token_ids[: -step.trim]
            out.finish_reason = step.finish_reason
        if self.sampling_params.detokenize and self.tokenizer is not None:
            out._last_text_len = len(out.text)
            out.text = self.tokenizer.decode(out.token_ids, skip_special_tokens=self.sampling_params.skip_special_tokens)

    async def _aresult_step(self) -> None:
        self._handle_response(await self.aqueue.get())

    async def aresult(self) -> GenerationResult:
        while not self._done:
            await self._aresult_step()
        return self

    def __await__(self):
        return self.aresult().__await__()

    def __aiter__(self) -> GenerationResult:
        return self

    async def __anext__(self) -> GenerationResult:
        if self._done:
            raise StopAsyncIteration
        await self._aresult_step()
        return self
