"""The chat engine on vLLM's V1 ``AsyncLLM`` (written against vLLM 0.25.1).

Requests go in as token ids (``tokens_input``: the engine input vLLM's own
renderer produces, so vLLM skips its prompt preprocessing) with ``RequestOutputKind.DELTA``,
so each ``RequestOutput`` carries only the new tokens and text; each becomes
one core ``Delta``. Ending the stream early (``aclose``, task cancellation)
closes vLLM's ``generate()`` generator, which aborts the request in the
engine core; ``abort(request_id)`` aborts by the id the core gave, and the
stream then ends with ``finish_reason="abort"``.

vllm is imported in ``start()`` only, so listing or selecting other engines
never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
from yap_core.contracts import (
    ChatTokenizer,
    Delta,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Progress,
    Sampling,
)
from yap_core.quantize import read_context_length
from yap_core.settings import CoreSettings, SettingsError

from yap_engines_vllm import quant
from yap_engines_vllm.sampling import sampling_key, sampling_kwargs
from yap_engines_vllm.settings import VllmSettings, gpu_fraction, validate
from yap_engines_vllm.stats import SchedulerSnapshot, stat_logger_factory

log = logging.getLogger(__name__)

# vLLM's finish reasons (vllm.v1.engine.FINISH_REASON_STRINGS) -> the core's.
# "repetition" (vLLM's repetition detector ended it) is a normal stop for a client.
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "error": "error",
    "repetition": "stop",
}

# The start-up request: sampled (not greedy), so the first real turn does not
# pay for compiling vLLM's sampling kernels.
_WARMUP = Sampling(temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.1, max_tokens=8, seed=0)
# The vLLM releases this plugin has run on, on a GPU (docs/gpu-results.md).
TESTED_VLLM = ("0.25.1",)

# Distinct samplings whose SamplingParams are kept (see VllmEngine._params); a
# handful in practice: the server default, and the few a client overrides.
_PARAMS_CACHE_MAX = 256


class VllmEngine:
    name = "vllm"

    def __init__(self, core: CoreSettings, settings: VllmSettings) -> None:
        if not core.chat_model:
            raise SettingsError(
                "CHAT_MODEL is required with INFERENCE_ENGINE=vllm: a local checkpoint folder or a hub id"
            )
        validate(settings, core)
        self._core = core
        self._settings = settings
        self.model_id = core.chat_model
        self.version = _installed_vllm_version()
        # until start(): what a local checkpoint declares (vLLM decides at start)
        self.max_model_len = settings.chat_max_len or read_context_length(Path(core.chat_model)) or 0
        self._llm: Any = None
        self._tokenizer: ChatTokenizer | None = None
        self._snapshot = SchedulerSnapshot()
        # Requests this engine has in vLLM now: external id -> one marker per
        # stream/prefill (vLLM accepts repeated ids; abort(id) ends them all).
        self._inflight: dict[str, set[object]] = {}
        # vLLM names used on the hot path, bound at start()
        self._SamplingParams: Any = None
        self._tokens_input: Any = None
        self._DELTA: Any = None
        self._FINAL_ONLY: Any = None
        # sampling_key -> (SamplingParams, the logit_bias dict its key holds the id of)
        self._params_cache: dict[tuple[Any, ...], tuple[Any, dict[int, float]]] = {}
        self.quant_plan: quant.QuantPlan | None = None
        self.engine_kwargs_used: dict[str, Any] = {}
        # SERVER_WORKERS > 1: this worker's way to the shared engine core (see share())
        self._attachment: Attachment | None = None

    # --- control -------------------------------------------------------------
    @property
    def async_llm(self) -> Any:
        """The running vLLM AsyncLLM (benchmarks compare against it directly)."""
        return self._require()

    @property
    def tokenizer(self) -> ChatTokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the vLLM engine is not started: call start() first")
        return self._tokenizer

    def unsupported_sampling(self) -> frozenset[str]:
        return frozenset()  # every Sampling key maps onto SamplingParams (see sampling.py)

    def engine_kwargs(self, sm: tuple[int, int] | None) -> dict[str, Any]:
        """The AsyncEngineArgs this deployment's settings ask for."""
        s, core = self._settings, self._core
        self.quant_plan = quant.plan(self.model_id, s.chat_quantization, sm)
        kwargs: dict[str, Any] = {
            "model": self.model_id,
            "tokenizer": s.chat_tokenizer,
            "dtype": s.chat_dtype,
            "load_format": s.chat_load_format,
            "quantization": self.quant_plan.quantization,
            "max_model_len": s.chat_max_len,
            "gpu_memory_utilization": gpu_fraction(s, core),
            "max_num_seqs": s.max_num_seqs,
            "enable_prefix_caching": s.enable_prefix_caching,
            "enable_chunked_prefill": s.enable_chunked_prefill,
            "max_num_batched_tokens": s.max_num_batched_tokens,
            "stream_interval": s.stream_interval,
            "kv_cache_dtype": s.kv_dtype,
            "enforce_eager": s.enforce_eager,
            "tensor_parallel_size": s.tensor_parallel_size,
            "attention_backend": s.attention_backend,
            "seed": s.chat_seed,
            # scheduler stats flow only with stats on; they feed stats()
            "disable_log_stats": False,
            "enable_log_requests": False,
        }
        if s.cudagraph_mode is not None:
            kwargs["compilation_config"] = {"cudagraph_mode": s.cudagraph_mode}
        # None means "vLLM's default": leave those out rather than pass None explicitly
        return {k: v for k, v in kwargs.items() if v is not None}

    # --- SERVER_WORKERS > 1 ---------------------------------------------------
    def share(self, workers: int) -> VllmShare:
        """In the supervisor: start the one engine core every worker's AsyncLLM
        client attaches to, as ``vllm serve --api-server-count N`` does
        (vllm/entrypoints/cli/serve.py, 0.25.1): the engine core gets one
        input and one output socket per client and routes each request's
        outputs back to the client that sent it. Returns at once; the model
        loads in the engine core while the workers start (``wait_ready``).
        Nothing here initialises CUDA: the engine core is its own process."""
        from vllm.v1.engine.utils import get_engine_zmq_addresses, launch_core_engines
        from vllm.v1.executor import Executor

        config = self._vllm_config(self._kwargs_for_this_gpu(), workers, rank=-1)
        if config.parallel_config.data_parallel_size > 1:
            raise SettingsError("SERVER_WORKERS > 1 with vLLM data parallelism is not supported")
        addresses = get_engine_zmq_addresses(config, workers)  # IPC paths on one host
        launch = launch_core_engines(config, Executor.get_class(config), True, addresses, workers)
        manager, _coordinator, addresses, _tensor_queue = launch.__enter__()
        attachments = [
            Attachment(
                input_address=addresses.inputs[i],
                output_address=addresses.outputs[i],
                client_index=i,
                client_count=workers,
            )
            for i in range(workers)
        ]
        return VllmShare(launch, manager, [msgspec.to_builtins(a) for a in attachments])

    def attach(self, attachment: Any) -> None:
        """In a worker, before start(): use the supervisor's engine core."""
        self._attachment = msgspec.convert(attachment, Attachment)

    def _vllm_config(self, kwargs: dict[str, Any], workers: int, rank: int) -> Any:
        """vLLM's config for one of ``workers`` API clients (rank -1: the
        supervisor, which launches the engine core). Blocking (it reads the
        model's config): workers call it in a thread."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext

        args = AsyncEngineArgs(**kwargs)
        # How vLLM's own API server processes tell their config they are one of several.
        args._api_process_count = workers
        args._api_process_rank = rank
        return args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)

    def _kwargs_for_this_gpu(self) -> dict[str, Any]:
        from vllm.platforms import current_platform

        # NVML query: does not initialise CUDA in this process (the engine core forks)
        cap = current_platform.get_device_capability()
        self.engine_kwargs_used = self.engine_kwargs((cap.major, cap.minor) if cap is not None else None)
        return self.engine_kwargs_used

    async def start(self, progress: Progress | None = None) -> None:
        say = progress or (lambda line: log.info("%s", line))
        if self._llm is not None:
            return
        t0 = time.perf_counter()
        say("vllm: importing vllm")
        import vllm
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.async_llm import AsyncLLM

        self.version = vllm.__version__
        untested = untested_version(self.version)
        if untested:
            log.warning("%s", untested)
        self._SamplingParams, self._tokens_input = SamplingParams, tokens_input
        self._DELTA, self._FINAL_ONLY = RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY
        kwargs = self._kwargs_for_this_gpu()
        assert self.quant_plan is not None
        say(f"vllm {self.version}: starting AsyncLLM for {self.model_id} ({self.quant_plan.reason})")
        # Built on a worker thread so the event loop keeps answering /healthz
        # (503 starting) during the 20-100 s start. AsyncLLM supports this: with
        # no running loop it defers its output handler to the first request.
        loggers = [stat_logger_factory(self._snapshot)]
        a = self._attachment
        if a is None:
            self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, AsyncEngineArgs(**kwargs), stat_loggers=loggers)
        else:
            say(f"vllm: attaching to the shared engine core as client {a.client_index + 1} of {a.client_count}")

            def attached() -> Any:
                return AsyncLLM.from_vllm_config(
                    self._vllm_config(kwargs, a.client_count, a.client_index),
                    stat_loggers=loggers,
                    client_addresses={"input_address": a.input_address, "output_address": a.output_address},
                    client_count=a.client_count,
                    client_index=a.client_index,
                )

            self._llm = await asyncio.to_thread(attached)
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = int(self._llm.model_config.max_model_len)
        if self.max_model_len <= self._core.chat_max_out:
            await self.close()
            raise SettingsError(
                f"the chat model's context ({self.max_model_len} tokens) leaves no room for "
                f"CHAT_MAX_OUT={self._core.chat_max_out}"
            )
        say("vllm: warm-up request")
        await self._warm_up()
        say(f"vllm: ready in {time.perf_counter() - t0:.1f} s (max_model_len {self.max_model_len})")

    async def _warm_up(self) -> None:
        ids = self.tokenizer.encode("Hello! How are you today?", add_special_tokens=False)
        request = GenerationRequest(request_id=f"warmup-{uuid.uuid4().hex}", prompt_token_ids=tuple(ids), sampling=_WARMUP)
        async for _ in self.stream(request):
            pass

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()

    # --- hot path ------------------------------------------------------------
    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        llm = self._require()
        params = self._params(request.sampling)
        prompt = self._tokens_input(list(request.prompt_token_ids))
        outputs = llm.generate(prompt, params, request.request_id)
        prompt_tokens = len(request.prompt_token_ids)
        completion_tokens = 0
        marker = self._enter(request.request_id)
        try:
            async for out in outputs:
                step = out.outputs[0]
                completion_tokens += len(step.token_ids)
                finish = None
                if out.finished:
                    finish = _FINISH.get(step.finish_reason or "stop", "error")
                yield Delta(
                    text=step.text,
                    completion_tokens=completion_tokens,
                    prompt_tokens=prompt_tokens,
                    cached_prompt_tokens=out.num_cached_tokens or 0,
                    finish_reason=finish,
                )
        finally:
            self._leave(request.request_id, marker)
            # Closing vLLM's generator mid-request aborts it inside the engine core.
            await outputs.aclose()

    def _params(self, sampling: Sampling) -> Any:
        """The SamplingParams of ``sampling``, built once: vLLM clones what
        it is given before changing anything (InputProcessor.process_inputs),
        so one object serves every request with the same sampling, and a turn
        does not build and validate one on its way to the engine."""
        key = sampling_key(sampling)
        hit = self._params_cache.get(key)
        if hit is not None:
            return hit[0]
        if len(self._params_cache) >= _PARAMS_CACHE_MAX:
            self._params_cache.clear()
        params = self._SamplingParams(**sampling_kwargs(sampling), output_kind=self._DELTA)
        # The dict is kept with it: its id is part of the key and must not be reused.
        self._params_cache[key] = (params, sampling.logit_bias)
        return params

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)
            # vLLM has dropped it from its output processor and told the engine core
            self._inflight.pop(request_id, None)

    async def prefill(self, prompt_token_ids: Sequence[int]) -> int:
        llm = self._require()
        params = self._SamplingParams(max_tokens=1, temperature=0.0, output_kind=self._FINAL_ONLY)
        prompt = self._tokens_input(list(prompt_token_ids))
        request_id = f"prefill-{uuid.uuid4().hex}"
        marker = self._enter(request_id)
        cached = 0
        try:
            async for out in llm.generate(prompt, params, request_id):
                cached = out.num_cached_tokens or 0
        finally:
            self._leave(request_id, marker)
        return cached

    def _enter(self, request_id: str) -> object:
        marker = object()
        self._inflight.setdefault(request_id, set()).add(marker)
        return marker

    def _leave(self, request_id: str, marker: object) -> None:
        markers = self._inflight.get(request_id)
        if markers is not None:
            markers.discard(marker)
            if not markers:
                del self._inflight[request_id]

    async def stats(self) -> EngineStats:
        # The server's health check calls this: a dead engine core must fail it.
        if self._llm is not None and self._llm.errored:
            raise RuntimeError("the vLLM engine core is dead (see the log above for its error)")
        # The scheduler's counts arrive with each engine step; with async
        # scheduling (vLLM's default) the step that empties the batch may send
        # none, leaving them stale while idle. So they are capped by the
        # requests this engine still has in flight, which is exact at the ends.
        inflight = sum(len(markers) for markers in self._inflight.values())
        stats = self._snapshot.as_stats()
        stats.running = min(stats.running, inflight)
        stats.waiting = min(stats.waiting, inflight - stats.running)
        return stats

    def scheduler_snapshot(self) -> EngineStats:
        """vLLM's own last-reported scheduler counts, uncapped (benchmarks)."""
        return self._snapshot.as_stats()

    def _require(self) -> Any:
        if self._llm is None:
            raise RuntimeError("the vLLM engine is not started (or was closed)")
        return self._llm


class Attachment(msgspec.Struct, kw_only=True, frozen=True):
    """One worker's way to the shared engine core (the supervisor's share())."""

    input_address: str  # the worker binds it; the engine core connects (requests)
    output_address: str  # likewise, outputs for this worker's requests only
    client_index: int
    client_count: int


class VllmShare:
    """``yap_core.contracts.EngineShare`` for vLLM: the engine core process and
    its launch, held by the supervisor."""

    def __init__(self, launch: Any, manager: Any, attachments: list[Any]) -> None:
        self._launch = launch  # vllm's launch_core_engines context, entered
        self._manager = manager  # CoreEngineProcManager: the engine core process(es)
        self._entered = True
        self.attachments = attachments

    def wait_ready(self) -> None:
        # Leaving launch_core_engines runs vLLM's start-up handshake: it waits
        # for the engine core to load the model and raises if it died.
        self._entered = False
        self._launch.__exit__(None, None, None)

    def close(self) -> None:
        if self._entered:  # never waited: leave the launch without its handshake
            self._entered = False
            with contextlib.suppress(Exception):
                self._launch.__exit__(RuntimeError, RuntimeError("closed before ready"), None)
        if self._manager is not None:
            self._manager.shutdown()


def untested_version(version: str) -> str | None:
    """A line to say at start when this vLLM release is not one the plugin ran
    on. ``vllm>=0.25.1`` lets pip take the newest release (0.34.0 on
    2026-12-05), whose API this plugin was never run against: when it then
    fails, that line names the likely cause. A local part (``+cu130``) is
    the same release."""
    release = version.split("+", 1)[0]
    if release in TESTED_VLLM:
        return None
    return (
        f"vllm {version}: this plugin was tested with vLLM {', '.join(TESTED_VLLM)} only; "
        f"for the tested release: pip install 'vllm=={TESTED_VLLM[-1]}' (docs/vllm.md)"
    )


def _installed_vllm_version() -> str:
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
