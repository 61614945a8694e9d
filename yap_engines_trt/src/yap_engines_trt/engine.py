"""The ``trt`` chat engine, written to the TensorRT-LLM 1.2.x LLM API.

Two backends, one class: a Hugging Face or ModelOpt checkpoint (CHAT_MODEL) on
the PyTorch backend (``tensorrt_llm.LLM``), or a prebuilt TensorRT engine
folder (TRT_ENGINE_DIR) on the TensorRT backend
(``tensorrt_llm._tensorrt_engine.LLM``). ``tensorrt_llm`` is imported in
``start()`` only.

Streaming: ``generate_async(..., streaming=True)`` returns a RequestOutput that
is iterated asynchronously; each step's CompletionOutput is cumulative, so the
delta is its ``text_diff``. Leaving the stream early (cancel, barge-in,
disconnect, timeout: the core closes or cancels the iterator) calls
``RequestOutput.abort()``, whose last output has finish_reason "cancelled".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from yap_core.contracts import (
    ChatTokenizer,
    Delta,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Progress,
    Sampling,
)
from yap_core.quantize import read_json_object
from yap_core.settings import Config, CoreSettings, SettingsError
from yap_core.stops import StopMatcher

from yap_engines_trt.engine_limits import (
    RuntimeLimits,
    checkpoint_limits,
    engine_limits,
    read_engine_build,
)
from yap_engines_trt.sampling_map import keys_set, sampling_kwargs, unsupported_keys
from yap_engines_trt.settings import TrtSettings, load_settings

# CompletionOutput.finish_reason -> the core's. "timeout" is TensorRT-LLM ending
# a request past its allotted time: aborted inside the engine.
_FINISH: dict[str | None, FinishReason] = {"stop": "stop", "length": "length", "cancelled": "abort", "timeout": "abort"}
_STATS_POLL_S = 0.01  # how long stats() waits for a fresh iteration record


class EngineStartError(RuntimeError):
    """TensorRT-LLM is missing or refused the configuration."""


class _Api(NamedTuple):
    """The TensorRT-LLM names the engine uses, imported at start."""

    LLM: Any
    SamplingParams: Any
    KvCacheConfig: Any
    LogitsProcessor: Any
    version: str


class TrtEngine:
    name = "trt"

    def __init__(self, settings: TrtSettings, chat_model: str | None) -> None:
        settings.validate()
        self.settings = settings
        self.backend = "tensorrt" if settings.trt_engine_dir else "pytorch"
        if self.backend == "tensorrt":
            self.model_id = str(settings.trt_engine_dir)
            tokenizer = settings.trt_tokenizer or chat_model
            if tokenizer is None:
                raise SettingsError("TRT_ENGINE_DIR holds no tokenizer: set TRT_TOKENIZER (or CHAT_MODEL) to its folder")
        else:
            if chat_model is None:
                raise SettingsError(
                    "INFERENCE_ENGINE=trt needs CHAT_MODEL (an HF or ModelOpt checkpoint) or TRT_ENGINE_DIR"
                )
            self.model_id = chat_model
            tokenizer = settings.trt_tokenizer or chat_model
        self._tokenizer_path = tokenizer
        self.version = "not started"
        self.max_model_len = 0
        self._api: _Api | None = None
        self._llm: Any = None
        self._tokenizer: Any = None
        self._vocab_size = 0
        self._tokens_per_block = 32
        self._live: dict[str, Any] = {}  # request_id -> RequestOutput
        self._kv: dict[str, Any] = {}  # latest kvCacheStats
        self._queued = 0

    # -- control -------------------------------------------------------------

    @property
    def tokenizer(self) -> ChatTokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the trt engine is not started")
        return self._tokenizer

    def unsupported_sampling(self) -> frozenset[str]:
        return unsupported_keys(self.backend, self.settings.trt_sampler)

    async def start(self, progress: Progress | None = None) -> None:
        say = progress or (lambda _line: None)
        limits = self._limits()
        api = _import_trtllm(self.backend)
        self.version = api.version
        kwargs = self._llm_kwargs(api, limits)
        say(f"starting TensorRT-LLM {api.version} ({self.backend} backend) on {self.model_id}")
        try:
            self._llm = await asyncio.to_thread(api.LLM, **kwargs)
        except (ValueError, TypeError) as exc:
            raise EngineStartError(f"TensorRT-LLM refused the configuration: {exc}") from exc
        self._api = api
        self._tokenizer = await asyncio.to_thread(_load_tokenizer, self._tokenizer_path)
        self._vocab_size = _vocab_size(Path(self.model_id), self.backend) or len(self._tokenizer)
        self._tokens_per_block = kwargs["kv_cache_config"].tokens_per_block if self.backend == "pytorch" else (
            limits.tokens_per_block
        )
        self.max_model_len = limits.max_seq_len
        say(f"trt engine ready: max batch {limits.max_batch_size}, context {limits.max_seq_len} tokens")

    async def close(self) -> None:
        for request_id in list(self._live):
            await self.abort(request_id)
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)

    def _limits(self) -> RuntimeLimits:
        if self.backend == "tensorrt":
            return engine_limits(self.settings, read_engine_build(Path(self.model_id)))
        return checkpoint_limits(self.settings, Path(self.model_id))

    def _llm_kwargs(self, api: _Api, limits: RuntimeLimits) -> dict[str, Any]:
        s = self.settings
        kv: dict[str, Any] = {"enable_block_reuse": True, "free_gpu_memory_fraction": s.chat_gpu_frac}
        kwargs: dict[str, Any] = {
            "model": self.model_id,
            "tokenizer": self._tokenizer_path,
            "max_batch_size": limits.max_batch_size,
            "max_seq_len": limits.max_seq_len,
        }
        if self.backend == "pytorch":
            kv["dtype"] = s.kv_dtype  # a Python-only field: PyTorch backend
            kwargs.update(
                max_num_tokens=limits.max_num_tokens, sampler_type=s.trt_sampler, enable_iter_perf_stats=True
            )
        kwargs["kv_cache_config"] = api.KvCacheConfig(**kv)
        return kwargs

    # -- the hot path ----------------------------------------------------------

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        llm = self._started()
        self._check(request)
        params = self._params(request.sampling)
        result = llm.generate_async(list(request.prompt_token_ids), sampling_params=params, streaming=True)
        self._live[request.request_id] = result
        prompt_tokens = len(request.prompt_token_ids)
        stops = StopMatcher(request.sampling.stop)
        cached: int | None = None
        try:
            async for out in result:
                completion = out.outputs[0]
                if cached is None:
                    cached = self._cached_tokens(completion, prompt_tokens)
                text, stopped = stops.feed(completion.text_diff)
                if stopped:
                    finish: FinishReason | None = "stop"
                elif out.finished:
                    finish = _FINISH.get(completion.finish_reason, "error")
                    text += stops.flush()
                else:
                    finish = None
                if text or finish is not None:
                    yield Delta(
                        text=text,
                        completion_tokens=len(completion.token_ids),
                        prompt_tokens=prompt_tokens,
                        cached_prompt_tokens=cached,
                        finish_reason=finish,
                    )
                if finish is not None:
                    return
        finally:
            self._live.pop(request.request_id, None)
            if not result.finished and not result.aborted():
                result.abort()

    def _cached_tokens(self, completion: Any, prompt_tokens: int) -> int:
        """Prompt tokens found in the KV cache: reused blocks x tokens per block
        (block-granular, as TensorRT-LLM reports reuse)."""
        metrics = getattr(completion, "request_perf_metrics", None)
        if metrics is None:
            return 0
        return min(prompt_tokens, metrics.kv_cache_metrics.num_reused_blocks * self._tokens_per_block)

    def _check(self, request: GenerationRequest) -> None:
        if request.request_id in self._live:
            raise ValueError(f"request id {request.request_id!r} is already running")
        if not request.prompt_token_ids:
            raise ValueError("empty prompt")
        refused = keys_set(request.sampling) & self.unsupported_sampling()
        if refused:
            raise ValueError(
                f"sampling key(s) {', '.join(sorted(refused))} are not honoured by TensorRT-LLM's "
                f"{self.settings.trt_sampler}; use TRT_SAMPLER=TRTLLMSampler or leave them at their defaults"
            )
        if len(request.prompt_token_ids) + request.sampling.max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({len(request.prompt_token_ids)}) + max_tokens ({request.sampling.max_tokens}) "
                f"exceeds the context of {self.max_model_len} tokens"
            )

    def _params(self, sampling: Sampling) -> Any:
        api = self._api
        assert api is not None
        kwargs = sampling_kwargs(sampling)
        if sampling.logit_bias:
            if self.backend == "pytorch":
                kwargs["logits_processor"] = make_logit_bias(api.LogitsProcessor, sampling.logit_bias)
            else:
                kwargs["embedding_bias"] = embedding_bias(sampling.logit_bias, self._vocab_size)
        return api.SamplingParams(**kwargs)

    async def abort(self, request_id: str) -> None:
        result = self._live.pop(request_id, None)
        if result is not None and not result.finished and not result.aborted():
            result.abort()

    # -- cache and stats ---------------------------------------------------------

    async def prefill(self, prompt_token_ids: Sequence[int]) -> int:
        """Run the prompt for one token so its KV blocks enter the reuse pool;
        returns the prompt tokens that were already cached (block-granular)."""
        llm = self._started()
        api = self._api
        assert api is not None
        params = api.SamplingParams(max_tokens=1, return_perf_metrics=True)
        result = await llm.generate_async(list(prompt_token_ids), sampling_params=params).aresult()
        return self._cached_tokens(result.outputs[0], len(prompt_token_ids))

    async def stats(self) -> EngineStats:
        await self._refresh_stats()
        kv = self._kv
        per_block = int(kv.get("tokensPerBlock", 0))
        total = int(kv.get("maxNumBlocks", 0))
        running = max(0, len(self._live) - self._queued)
        return EngineStats(
            running=running,
            waiting=min(self._queued, len(self._live)),
            kv_cache_usage=(int(kv.get("usedNumBlocks", 0)) / total) if total else 0.0,
            prefix_cache_queries=(int(kv.get("reusedBlocks", 0)) + int(kv.get("missedBlocks", 0))) * per_block,
            prefix_cache_hits=int(kv.get("reusedBlocks", 0)) * per_block,
        )

    async def _refresh_stats(self) -> None:
        """Drain the iteration stats TensorRT-LLM queued since the last call;
        keep the newest (its KV counters are cumulative). Bounded in time: under
        load new records keep arriving and the iterator would not end."""
        llm = self._started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STATS_POLL_S
        async for record in llm.get_stats_async(timeout=_STATS_POLL_S):
            if isinstance(record, dict):
                self._kv = record.get("kvCacheStats") or self._kv
                self._queued = int(record.get("numQueuedRequests", 0))
            if loop.time() >= deadline:
                break

    def _started(self) -> Any:
        if self._llm is None:
            raise RuntimeError("the trt engine is not started")
        return self._llm


def make_logit_bias(base: type, bias: dict[int, float]) -> Any:
    """A TensorRT-LLM LogitsProcessor (PyTorch backend) adding ``bias`` to the
    logits in place, on the stream TensorRT-LLM hands it."""

    class LogitBias(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.ids = list(bias)
            self.values = [bias[i] for i in self.ids]

        def __call__(self, req_id: int, logits: Any, token_ids: Any, stream_ptr: int | None, client_id: int | None) -> None:
            import torch

            def apply() -> None:
                add = torch.tensor(self.values, dtype=logits.dtype, device=logits.device)
                logits[..., self.ids] += add

            if stream_ptr is None:
                apply()
            else:
                with torch.cuda.stream(torch.cuda.ExternalStream(stream_ptr)):
                    apply()

    return LogitBias()


def embedding_bias(bias: dict[int, float], vocab_size: int) -> Any:
    """The TensorRT backend's per-request bias: a float32 tensor over the vocabulary."""
    import torch

    out = torch.zeros(vocab_size, dtype=torch.float32)
    for token, value in bias.items():
        if not 0 <= token < vocab_size:
            raise ValueError(f"logit_bias token id {token} is outside the vocabulary (size {vocab_size})")
        out[token] = value
    return out


def _import_trtllm(backend: str) -> _Api:
    try:
        import tensorrt_llm
        from tensorrt_llm import SamplingParams
        from tensorrt_llm.llmapi import KvCacheConfig
        from tensorrt_llm.sampling_params import LogitsProcessor
    except ImportError as exc:
        raise EngineStartError(
            f"INFERENCE_ENGINE=trt needs tensorrt-llm 1.2.x, which failed to import: {exc}. It installs from "
            "NVIDIA's package index (pip install tensorrt-llm --extra-index-url https://pypi.nvidia.com)"
        ) from exc
    if backend == "tensorrt":
        try:
            from tensorrt_llm._tensorrt_engine import LLM
        except ImportError as exc:
            raise EngineStartError(
                f"tensorrt-llm {tensorrt_llm.__version__} has no TensorRT engine backend "
                "(tensorrt_llm._tensorrt_engine); serve a checkpoint with CHAT_MODEL instead of TRT_ENGINE_DIR"
            ) from exc
    else:
        from tensorrt_llm import LLM
    return _Api(LLM, SamplingParams, KvCacheConfig, LogitsProcessor, str(tensorrt_llm.__version__))


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _vocab_size(model_dir: Path, backend: str) -> int | None:
    data: Any = read_json_object(model_dir / "config.json") or {}
    if backend == "tensorrt":
        data = data.get("pretrained_config")
    value = data.get("vocab_size") if isinstance(data, dict) else None
    return value if isinstance(value, int) else None


def engine_from_config(config: Config) -> TrtEngine:
    settings = load_settings(config)
    core = config.section("core", CoreSettings)
    return TrtEngine(settings, core.chat_model)
