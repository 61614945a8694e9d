"""DOUBLE of tensorrt_llm/llmapi/llm.py: LLM (PyTorch backend), _TrtLLM
(TensorRT-engine backend), RequestOutput. The executor is a tiny deterministic
generator over the real tokenizer, with KV block reuse accounting."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from tensorrt_llm.executor.result import GenerationResult, KvCacheMetrics, RequestPerfMetrics, Step
from tensorrt_llm.llmapi.llm_args import COMMON_ARGS, SAMPLER_TYPES, TORCH_ONLY_ARGS, KvCacheConfig
from tensorrt_llm.sampling_params import SamplingParams

REPLY = "Sure! This reply comes from the TensorRT-LLM double, one token at a time."
STEP_S = 0.002  # one decode step
MAX_NUM_BLOCKS = 4096


class RequestOutput(GenerationResult):
    """What generate_async returns (the real one subclasses the detokenizing result)."""


class _Executor:
    """Schedules requests (at most max_batch_size decode together; the rest
    wait), produces one token per step, keeps iteration stats."""

    def __init__(self, llm: BaseLLM) -> None:
        self.llm = llm
        self.slots: asyncio.Semaphore | None = None
        self.cancelled: set[int] = set()
        self.active: dict[int, int] = {}  # request id -> tokens held (prompt + generated)
        self.queued = 0
        self.cached_blocks: set[str] = set()
        self.reused_blocks = 0
        self.missed_blocks = 0
        self.stats: collections.deque[dict] = collections.deque(maxlen=1000)
        self.stats_event = asyncio.Event()
        self.shutdown_done = False
        self.tasks: set[asyncio.Task] = set()

    def abort_request(self, request_id: int) -> None:
        self.cancelled.add(request_id)

    def submit(self, result: RequestOutput) -> None:
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.llm.args["max_batch_size"])
        task = asyncio.get_running_loop().create_task(self._run(result))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, result: RequestOutput) -> None:
        rid = result.request_id
        self.queued += 1
        assert self.slots is not None
        async with self.slots:
            self.queued -= 1
            if rid in self.cancelled:
                result.aqueue.put_nowait(Step([], True, "cancelled"))
                return
            prompt = result.prompt_token_ids
            perf = self._context_phase(prompt)
            self.active[rid] = len(prompt)
            try:
                await self._generate(result, perf)
            finally:
                self.active.pop(rid, None)
                self.cancelled.discard(rid)
                self._record()

    def _context_phase(self, prompt: list[int]) -> RequestPerfMetrics:
        """Full prompt blocks: reused if an earlier request computed the same
        prefix (and reuse is on); the rest are allocated and, once computed,
        offered for reuse."""
        per = self.llm.kv_cache_config.tokens_per_block
        reused = missed = 0
        for k in range(1, len(prompt) // per + 1):
            digest = hashlib.sha256(json.dumps(prompt[: k * per]).encode()).hexdigest()
            if self.llm.kv_cache_config.enable_block_reuse and digest in self.cached_blocks and missed == 0:
                reused += 1
            else:
                missed += 1
                if self.llm.kv_cache_config.enable_block_reuse:
                    self.cached_blocks.add(digest)
        self.reused_blocks += reused
        self.missed_blocks += missed
        total = -(-len(prompt) // per)
        return RequestPerfMetrics(KvCacheMetrics(
            num_total_allocated_blocks=total, num_new_allocated_blocks=total - reused, num_reused_blocks=reused,
            num_missed_blocks=missed, kv_cache_hit_rate=reused / max(1, reused + missed)))

    async def _generate(self, result: RequestOutput, perf: RequestPerfMetrics) -> None:
        sp: SamplingParams = result.sampling_params
        rid = result.request_id
        tokens: list[int] = []
        gen = torch.Generator().manual_seed(sp.seed if sp.seed is not None else rid)
        stop_ids = [self.llm.tokenizer.encode(s, add_special_tokens=False) for s in _as_list(sp.stop)]
        while True:
            await asyncio.sleep(STEP_S)
            if rid in self.cancelled:
                result.aqueue.put_nowait(Step([], True, "cancelled", perf=perf))
                return
            token = self._next_token(result, tokens, gen)
            tokens.append(token)
            self.active[rid] += 1
            self._record()
            if token == self.llm.eos_id and not sp.ignore_eos:
                result.aqueue.put_nowait(Step([token], True, "stop", perf=perf))
                return
            matched = next((ids for ids in stop_ids if ids and tokens[-len(ids):] == ids), None)
            if matched is not None:
                trim = 0 if sp.include_stop_str_in_output else len(matched)
                result.aqueue.put_nowait(Step([token], True, "stop", trim=trim, perf=perf))
                return
            if len(tokens) >= sp.max_tokens:
                result.aqueue.put_nowait(Step([token], True, "length", perf=perf))
                return
            result.aqueue.put_nowait(Step([token], False, None, perf=perf))

    def _next_token(self, result: RequestOutput, tokens: list[int], gen: torch.Generator) -> int:
        """Seeded noise plus a strong pull towards the next token of REPLY, then
        the request's embedding bias and logits processors, then sampling."""
        sp: SamplingParams = result.sampling_params
        context = result.prompt_token_ids + tokens
        seed = int.from_bytes(hashlib.sha256(json.dumps(context[-8:] + [len(context)]).encode()).digest()[:4], "big")
        logits = torch.randn(self.llm.vocab_size, generator=torch.Generator().manual_seed(seed))
        script = self.llm.script
        logits[script[len(tokens) % len(script)]] += 12.0
        logits = logits.unsqueeze(0)  # [beam, vocab]
        if sp.embedding_bias is not None:
            logits += sp.embedding_bias.to(logits.dtype)
        for proc in _as_list(sp.logits_processor):
            proc(result.request_id, logits, [context], None, None)
        row = logits[0]
        if sp.repetition_penalty is not None and sp.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(context)))
            row[seen] = torch.where(row[seen] > 0, row[seen] / sp.repetition_penalty, row[seen] * sp.repetition_penalty)
        if sp.top_k == 1 or sp.temperature is None:
            return int(torch.argmax(row))
        probs = torch.softmax(row / sp.temperature, dim=-1)
        if sp.top_k:
            kth = torch.topk(probs, sp.top_k).values[-1]
            probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))

    def _record(self) -> None:
        per = self.llm.kv_cache_config.tokens_per_block
        used = sum(-(-n // per) for n in self.active.values())
        self.stats.append({
            "numActiveRequests": len(self.active),
            "numQueuedRequests": self.queued,
            "kvCacheStats": {
                "maxNumBlocks": MAX_NUM_BLOCKS, "freeNumBlocks": MAX_NUM_BLOCKS - used, "usedNumBlocks": used,
                "tokensPerBlock": per, "reusedBlocks": self.reused_blocks, "missedBlocks": self.missed_blocks,
                "cacheHitRate": self.reused_blocks / max(1, self.reused_blocks + self.missed_blocks),
            },
        })
        self.stats_event.set()


class _IterationResult:
    """Async iterable over queued iteration stats; stops after ``timeout`` without news."""

    def __init__(self, executor: _Executor, timeout: float) -> None:
        self._executor = executor
        self._timeout = timeout

    def __aiter__(self) -> _IterationResult:
        return self

    async def __anext__(self) -> dict:
        ex = self._executor
        if not ex.stats:
            ex.stats_event.clear()
            try:
                await asyncio.wait_for(ex.stats_event.wait(), self._timeout)
            except TimeoutError:
                raise StopAsyncIteration from None
        if not ex.stats:
            raise StopAsyncIteration
        return ex.stats.popleft()


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


class BaseLLM:
    backend = "pytorch"

    def __init__(self, model: str | Path, tokenizer: str | Path | None = None, tokenizer_mode: str = "auto",
                 skip_tokenizer_init: bool = False, trust_remote_code: bool = False, tensor_parallel_size: int = 1,
                 dtype: str = "auto", revision: str | None = None, tokenizer_revision: str | None = None,
                 **kwargs: Any) -> None:
        valid = COMMON_ARGS | (TORCH_ONLY_ARGS if self.backend == "pytorch" else frozenset())
        for key in kwargs:
            if key not in valid:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
        kv = kwargs.get("kv_cache_config") or KvCacheConfig()
        if not isinstance(kv, KvCacheConfig):
            raise TypeError("kv_cache_config must be a KvCacheConfig")
        sampler = kwargs.get("sampler_type", "auto")
        if sampler not in SAMPLER_TYPES:
            raise ValueError(f"sampler_type must be one of {SAMPLER_TYPES}, got {sampler!r}")
        self.model_dir = Path(model)
        if not (self.model_dir / "config.json").is_file():
            raise ValueError(f"{model}: not a local model folder (the double never downloads)")
        self.args = {"max_batch_size": 2048, "max_seq_len": None, "max_num_tokens": 8192, **kwargs}
        self.kv_cache_config = kv
        self._build_model()
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or model))
        self.vocab_size = len(self.tokenizer)
        self.eos_id = self.tokenizer.eos_token_id
        self.script = self.tokenizer.encode(REPLY, add_special_tokens=False) + [self.eos_id]
        self._executor: _Executor | None = _Executor(self)
        self._next_id = 0

    def _build_model(self) -> None:
        """PyTorch backend: the checkpoint's config.json is enough for the double."""

    def generate_async(self, inputs: Any, sampling_params: SamplingParams | None = None, lora_request: Any = None,
                       prompt_adapter_request: Any = None, streaming: bool = False,
                       kv_cache_retention_config: Any = None, disaggregated_params: Any = None,
                       trace_headers: Any = None, _postproc_params: Any = None, scheduling_params: Any = None,
                       conversation_params: Any = None, cache_salt: str | None = None,
                       priority: float = 0.5) -> RequestOutput:
        if self._executor is None or self._executor.shutdown_done:
            raise RuntimeError("LLM is shutting down")
        sp = sampling_params or SamplingParams()
        if isinstance(inputs, dict):
            prompt = list(inputs["prompt_token_ids"])
        elif isinstance(inputs, list) and all(isinstance(t, int) for t in inputs):
            prompt = list(inputs)
        elif isinstance(inputs, str):
            prompt = self.tokenizer.encode(inputs)
        else:
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        max_seq = self.args.get("max_seq_len")
        if max_seq is not None and len(prompt) + sp.max_tokens > max_seq:
            raise ValueError(f"The sum of prompt length ({len(prompt)}) and max_tokens ({sp.max_tokens}) "
                             f"should not exceed max_seq_len ({max_seq})")
        self._next_id += 1
        result = RequestOutput(self._next_id, prompt, sp, self._executor, self.tokenizer, streaming)
        self._executor.submit(result)
        return result

    def get_stats_async(self, timeout: float | None = 2) -> _IterationResult:
        assert self._executor is not None
        return _IterationResult(self._executor, timeout or 2)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown_done = True
            for rid in list(self._executor.active):
                self._executor.abort_request(rid)


class LLM(BaseLLM):
    """PyTorch backend (tensorrt_llm.LLM in 1.x)."""


class _TrtLLM(BaseLLM):
    """TensorRT-engine backend: the folder must be a trtllm-build output."""

    backend = "tensorrt"

    def _build_model(self) -> None:
        build = json.loads((self.model_dir / "config.json").read_text()).get("build_config")
        if not isinstance(build, dict):
            raise ValueError(f"{self.model_dir}: not a TensorRT engine folder (no build_config)")
        if self.args["max_batch_size"] > build["max_batch_size"]:
            raise ValueError(f"max_batch_size {self.args['max_batch_size']} exceeds the engine's {build['max_batch_size']}")
        self.build_config = build
