"""TEST DOUBLE of vllm.v1.engine.async_llm.AsyncLLM (vLLM 0.25.1). Not vLLM.

The public surface follows the real class: ``from_engine_args(engine_args,
start_engine_loop, usage_context, stat_loggers)``, ``generate(prompt,
sampling_params, request_id, *, ...)`` as an async generator of
``RequestOutput``, ``abort(request_id, internal=False)``, ``get_tokenizer()``,
``model_config``, ``vllm_config``, ``shutdown()``, ``errored``.

Behaviour mirrored from the real source:
- request ids get an internal random suffix (InputProcessor.assign_request_id);
  outputs carry the external id; ``abort(external_id)`` aborts every request
  with that id and puts a final output with ``finish_reason="abort"``;
- closing or cancelling ``generate()`` aborts the request (internal id);
- DELTA outputs merge in a per-request collector when the consumer lags;
- stop strings: text is held back by ``output_text_buffer_length`` and
  truncated before the stop string; EOS, stop_token_ids, max_tokens and
  max_model_len end requests as in ``vllm/v1/core/sched/utils.check_stop``;
- prompts are validated (empty, too long, ids outside the vocabulary);
- prefix caching in 16-token blocks, never the last prompt token;
  ``num_cached_tokens`` on every output, and per-step PrefixCacheStats;
- SchedulerStats go to the stat loggers after every step that had work, with
  async-scheduling semantics: they describe the batch as scheduled, and the
  step that empties the batch sends none, so idle counts can stay stale (seen
  on the H100 with vLLM 0.25.1).

The "engine core" is an asyncio task here (a process in vLLM) and the model
is a hash of the last tokens over a fixed set of word tokens.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError
from vllm.v1.metrics.loggers import StatLoggerFactory, StatLoggerManager
from vllm.v1.metrics.stats import PrefixCacheStats, SchedulerStats

log = logging.getLogger("vllm.v1.engine.input_processor")
BLOCK_SIZE = 16
NUM_GPU_BLOCKS = 4096
STEP_SECONDS = 0.002  # one simulated forward pass
_EPS = 1e-5


class RequestOutputCollector:
    """Per-request hand-off from the output loop to generate() (DELTA outputs merge)."""

    def __init__(self, output_kind: RequestOutputKind, request_id: str) -> None:
        self.aggregate = output_kind == RequestOutputKind.DELTA
        self.request_id = request_id
        self.output: RequestOutput | Exception | None = None
        self.ready = asyncio.Event()

    def put(self, output: RequestOutput | Exception) -> None:
        if self.output is None or isinstance(output, Exception):
            self.output = output
            self.ready.set()
        elif isinstance(self.output, RequestOutput):
            self.output.add(output, aggregate=self.aggregate)

    async def get(self) -> RequestOutput:
        while (output := self.output) is None:
            await self.ready.wait()
        self.output = None
        self.ready.clear()
        if isinstance(output, Exception):
            raise output
        return output

    def get_nowait(self) -> RequestOutput | None:
        output = self.output
        if output is not None:
            self.output = None
            self.ready.clear()
        if isinstance(output, Exception):
            raise output
        return output

    def close(self) -> None:
        return None


class _Request:
    def __init__(self, internal_id: str, external_id: str, prompt: list[int], params: SamplingParams,
                 collector: RequestOutputCollector, rng: random.Random) -> None:  # fmt: skip
        self.internal_id = internal_id
        self.external_id = external_id
        self.prompt = prompt
        self.params = params
        self.collector = collector
        self.rng = rng
        self.output_ids: list[int] = []
        self.text = ""
        self.sent_text = 0  # chars of text already sent (DELTA)
        self.sent_tokens = 0
        self.num_cached = 0
        self.finished = False


class _DoubleModel:
    """Next token from a hash of the last four tokens: a few hundred word tokens
    of the real tokenizer, plus EOS about once in 40 contexts."""

    def __init__(self, tokenizer: Any, eos_token_id: int) -> None:
        self.eos = eos_token_id
        vocab = tokenizer.get_vocab()
        words = sorted(i for t, i in vocab.items() if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower()
                       and 3 <= len(t) <= 9)  # fmt: skip
        self.candidates = words[:300] + [vocab[p] for p in (".", ",", "!", "?") if p in vocab]
        self.vocab_size = len(tokenizer)

    def logits(self, context: list[int]) -> dict[int, float]:
        h = hash(tuple(context[-4:])) & 0xFFFFFFFF
        out = {tok: ((h ^ (i * 0x9E3779B1)) * 2654435761 & 0xFFFF) / 65536 * 8.0 for i, tok in enumerate(self.candidates)}
        out[self.eos] = 8.5 if h % 40 == 0 else -1.0
        return out


class _DoubleEngineCore:
    def __init__(self, vllm_config: Any, tokenizer: Any, loggers: StatLoggerManager) -> None:
        self.config = vllm_config
        self.tokenizer = tokenizer
        self.loggers = loggers
        eos = vllm_config.model_config.hf_config.get("eos_token_id", tokenizer.eos_token_id)
        self.model = _DoubleModel(tokenizer, eos if isinstance(eos, int) else tokenizer.eos_token_id)
        self.max_model_len = vllm_config.model_config.max_model_len
        self.max_num_seqs = vllm_config.scheduler_config.max_num_seqs
        self.stream_interval = vllm_config.scheduler_config.stream_interval
        self.prefix_caching = vllm_config.cache_config.enable_prefix_caching
        self.rng = random.Random(vllm_config.model_config.seed)
        self.requests: dict[str, _Request] = {}
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self.cached_blocks: set[int] = set()
        self.finished_since_step = 0
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.dead = False

    # -- scheduling -----------------------------------------------------------
    def add(self, request: _Request) -> None:
        self.requests[request.internal_id] = request
        self.waiting.append(request)
        self._ensure_running()
        self.wake.set()

    def abort(self, internal_ids: Iterable[str]) -> None:
        for rid in internal_ids:
            req = self.requests.pop(rid, None)
            if req is None:
                continue
            req.finished = True
            if req in self.running:
                self.running.remove(req)
            elif req in self.waiting:
                self.waiting.remove(req)
            self.finished_since_step += 1
        self.wake.set()

    def _ensure_running(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        try:
            while not self.dead:
                if not (self.running or self.waiting or self.finished_since_step):
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                await asyncio.sleep(STEP_SECONDS)
                self._step()
        except Exception as exc:
            # as OutputProcessor.propagate_error: every waiting request sees the failure
            self.dead = True
            for req in self.requests.values():
                req.collector.put(exc)
            raise

    def _step(self) -> None:
        prefix_stats = PrefixCacheStats()
        while self.waiting and len(self.running) < self.max_num_seqs:
            req = self.waiting.popleft()
            req.num_cached = self._lookup_prefix(req.prompt)
            if self.prefix_caching:
                prefix_stats.record(len(req.prompt), req.num_cached, preempted=False)
                self._store_prefix(req.prompt)
            self.running.append(req)
        self.finished_since_step = 0
        # Async scheduling (vLLM's default): a step's stats describe the batch as
        # scheduled, before this step's finished requests leave it; and the step
        # that leaves the batch empty sends none, so idle counts can stay stale.
        used = sum(math.ceil((len(r.prompt) + len(r.output_ids)) / BLOCK_SIZE) for r in self.running)
        stats = SchedulerStats(num_running_reqs=len(self.running), num_waiting_reqs=len(self.waiting),
                               kv_cache_usage=min(1.0, used / NUM_GPU_BLOCKS), prefix_cache_stats=prefix_stats)  # fmt: skip
        for req in list(self.running):
            self._decode_one(req)
            if req.finished:
                self.running.remove(req)
                self.requests.pop(req.internal_id, None)
        if stats.num_running_reqs or stats.num_waiting_reqs:
            self.loggers.record(stats)

    # -- prefix cache -----------------------------------------------------------
    def _block_hashes(self, ids: list[int]) -> list[int]:
        hashes, parent = [], 0
        for start in range(0, len(ids) - len(ids) % BLOCK_SIZE, BLOCK_SIZE):
            parent = hash((parent, tuple(ids[start : start + BLOCK_SIZE])))
            hashes.append(parent)
        return hashes

    def _lookup_prefix(self, prompt: list[int]) -> int:
        if not self.prefix_caching:
            return 0
        hits = 0
        # the last prompt token is always computed (its logits start decoding)
        for block_hash in self._block_hashes(prompt[: len(prompt) - 1]):
            if block_hash not in self.cached_blocks:
                break
            hits += 1
        return hits * BLOCK_SIZE

    def _store_prefix(self, prompt: list[int]) -> None:
        self.cached_blocks.update(self._block_hashes(prompt))

    # -- the "model" ----------------------------------------------------------
    def _decode_one(self, req: _Request) -> None:
        params = req.params
        token = self._sample(req)
        req.output_ids.append(token)
        finish, stop_reason = None, None
        n_out = len(req.output_ids)
        if token == self.model.eos and not params.ignore_eos and n_out >= params.min_tokens:
            finish = "stop"
        elif token in (params.stop_token_ids or ()) and n_out >= params.min_tokens:
            finish, stop_reason = "stop", token
        elif params.max_tokens is not None and n_out >= params.max_tokens:
            finish = "length"
        elif len(req.prompt) + n_out >= self.max_model_len:
            finish = "length"
        full = self.tokenizer.decode(req.output_ids, skip_special_tokens=params.skip_special_tokens)
        if not full.endswith("\ufffd") or finish:
            new_chars = len(full) - len(req.text)
            req.text = full
            if finish is None and params.stop:
                matched = _match_stop(req.text, new_chars, params.stop, params.include_stop_str_in_output)
                if matched is not None:
                    stop_str, offset = matched
                    finish, stop_reason = "stop", stop_str
                    if offset != -1:
                        req.text = req.text[:offset]
        if finish is not None:
            req.finished = True
        self._emit(req, finish, stop_reason)

    def _sample(self, req: _Request) -> int:
        p = req.params
        logits = self.model.logits(req.prompt + req.output_ids)
        for tok, bias in (p.logit_bias or {}).items():
            logits[tok] = logits.get(tok, 4.0) + bias
        if p.ignore_eos or len(req.output_ids) < p.min_tokens:
            logits[self.model.eos] = -math.inf
        seen_prompt, counts = set(req.prompt), {}
        for tok in req.output_ids:
            counts[tok] = counts.get(tok, 0) + 1
        for tok in list(logits):
            value = logits[tok]
            if p.repetition_penalty != 1.0 and (tok in seen_prompt or tok in counts):
                value = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
            if tok in counts:
                value -= p.presence_penalty + p.frequency_penalty * counts[tok]
            logits[tok] = value
        ranked = sorted(logits.items(), key=lambda kv: (-kv[1], kv[0]))
        if p.temperature < _EPS:
            return ranked[0][0]
        if p.top_k > 0:
            ranked = ranked[: p.top_k]
        top = ranked[0][1]
        weights = [math.exp((v - top) / p.temperature) for _, v in ranked]
        total = sum(weights)
        probs = [w / total for w in weights]
        keep, mass = [], 0.0
        for (tok, _), prob in zip(ranked, probs, strict=True):
            if mass >= p.top_p or prob < p.min_p * probs[0]:
                break
            keep.append((tok, prob))
            mass += prob
        return req.rng.choices([t for t, _ in keep], weights=[w for _, w in keep])[0]

    def _emit(self, req: _Request, finish: str | None, stop_reason: int | str | None) -> None:
        params = req.params
        if params.output_kind == RequestOutputKind.FINAL_ONLY and finish is None:
            return
        # stream_interval: first token, then every N tokens, and the last (RequestState.make_request_output)
        if (finish is None and req.sent_tokens and len(req.output_ids) - req.sent_tokens < self.stream_interval):
            return
        buffer = 0 if finish else params.output_text_buffer_length
        end = max(req.sent_text, len(req.text) - buffer)
        if params.output_kind == RequestOutputKind.DELTA:
            text = req.text[req.sent_text : end]
            token_ids = req.output_ids[req.sent_tokens :]
        else:
            text = req.text[:end]
            token_ids = list(req.output_ids)
        req.sent_text, req.sent_tokens = end, len(req.output_ids)
        completion = CompletionOutput(index=0, text=text, token_ids=token_ids, cumulative_logprob=None,
                                      logprobs=None, finish_reason=finish, stop_reason=stop_reason)  # fmt: skip
        req.collector.put(
            RequestOutput(request_id=req.external_id, prompt=None, prompt_token_ids=req.prompt, prompt_logprobs=None,
                          outputs=[completion], finished=finish is not None, num_cached_tokens=req.num_cached)
        )  # fmt: skip

    def shutdown(self) -> None:
        self.dead = True
        if self.task is not None:
            self.task.cancel()


def _match_stop(text: str, new_chars: int, stops: list[str], include: bool) -> tuple[str, int] | None:
    """(stop string, truncate-at offset or -1) when a stop string ends in the
    newest ``new_chars`` characters (the contract of vLLM's check_stop_strings)."""
    if not new_chars:
        return None
    for stop in stops:
        index = text.find(stop, max(0, len(text) - new_chars - len(stop) + 1))
        if index == -1:
            continue
        if include:
            end = index + len(stop)
            return stop, (-1 if end >= len(text) else end)
        return stop, index
    return None


class AsyncLLM:
    """TEST DOUBLE of vLLM's AsyncLLM."""

    def __init__(self, vllm_config: Any, stat_loggers: list[StatLoggerFactory] | None = None,
                 log_stats: bool = True, log_requests: bool = False,
                 client_addresses: dict[str, Any] | None = None, client_count: int = 1,
                 client_index: int = 0) -> None:  # fmt: skip
        from transformers import AutoTokenizer

        # The real client, given client_addresses, binds them and waits for an
        # engine core launched elsewhere (vllm/v1/engine/core_client.py); the
        # double has no second process: it records them and runs its own core.
        self.client_addresses = client_addresses
        self.client_count = client_count
        self.client_index = client_index
        self.vllm_config = vllm_config
        self.model_config = vllm_config.model_config
        self.log_requests = log_requests
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_config.tokenizer)
        loggers = StatLoggerManager(vllm_config, [0], stat_loggers if log_stats else None)
        loggers.log_engine_initialized()
        self.engine_core = _DoubleEngineCore(vllm_config, self._tokenizer, loggers)
        # external id -> internal ids (OutputProcessor.external_req_ids)
        self._external: dict[str, list[str]] = {}
        self._warned_raw = False

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True,
                         usage_context: Any = None, stat_loggers: list[StatLoggerFactory] | None = None) -> AsyncLLM:  # fmt: skip
        vllm_config = engine_args.create_engine_config(usage_context)
        return cls(vllm_config, stat_loggers=stat_loggers, log_stats=not engine_args.disable_log_stats,
                   log_requests=engine_args.enable_log_requests)  # fmt: skip

    @classmethod
    def from_vllm_config(cls, vllm_config: Any, start_engine_loop: bool = True, usage_context: Any = None,
                         stat_loggers: list[StatLoggerFactory] | None = None, enable_log_requests: bool = False,
                         aggregate_engine_logging: bool = False, disable_log_stats: bool = False,
                         client_addresses: dict[str, Any] | None = None, client_count: int = 1,
                         client_index: int = 0) -> AsyncLLM:  # fmt: skip
        return cls(vllm_config, stat_loggers=stat_loggers, log_stats=not disable_log_stats,
                   log_requests=enable_log_requests, client_addresses=client_addresses,
                   client_count=client_count, client_index=client_index)  # fmt: skip

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def get_tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def errored(self) -> bool:
        return self.engine_core.dead

    def shutdown(self, timeout: float | None = None) -> None:
        self.engine_core.shutdown()

    async def add_request(self, request_id: str, prompt: Any, params: SamplingParams, **_: Any) -> RequestOutputCollector:
        if self.errored:
            raise EngineDeadError()
        ids = self._prompt_ids(prompt)
        params = copy.copy(params)  # the real engine clones params too (skip_clone aside)
        if params.max_tokens is None:
            params.max_tokens = self.model_config.max_model_len - len(ids)
        internal_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
        collector = RequestOutputCollector(params.output_kind, internal_id)
        rng = random.Random(params.seed) if params.seed is not None else self.engine_core.rng
        self._external.setdefault(request_id, []).append(internal_id)
        self.engine_core.add(_Request(internal_id, request_id, ids, params, collector, rng))
        return collector

    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            ids = self._tokenizer.encode(prompt)
        elif isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            if "type" not in prompt and not self._warned_raw:
                # as InputProcessor.process_inputs in 0.25.1 (a raw TokensPrompt still works)
                log.warning("Passing raw prompts to InputProcessor is deprecated; pass Renderer outputs")
                self._warned_raw = True
            ids = list(prompt["prompt_token_ids"])
        else:
            raise ValueError(f"unsupported prompt type for the vLLM double: {type(prompt).__name__}")
        if not ids:
            raise ValueError("The decoder prompt cannot be empty")
        max_len = self.model_config.max_model_len
        if len(ids) > max_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of {max_len}."
            )
        if len(ids) == max_len:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) plus the number of requested output tokens "
                f"(at least 1) is longer than the maximum model length of {max_len}."
            )
        vocab = len(self._tokenizer)
        if max(ids) >= vocab or min(ids) < 0:
            raise ValueError(f"Token id {max(ids)} is out of vocabulary")
        return ids

    async def generate(self, prompt: Any, sampling_params: SamplingParams, request_id: str, *,
                       prompt_text: str | None = None, lora_request: Any = None,
                       tokenization_kwargs: dict[str, Any] | None = None, trace_headers: Any = None,
                       priority: int = 0, data_parallel_rank: int | None = None,
                       reasoning_ended: bool | None = None,
                       reasoning_parser_kwargs: dict[str, Any] | None = None) -> AsyncGenerator[RequestOutput, None]:  # fmt: skip
        q: RequestOutputCollector | None = None
        try:
            q = await self.add_request(request_id, prompt, sampling_params)
            finished = False
            while not finished:
                out = q.get_nowait() or await q.get()
                assert isinstance(out, RequestOutput)
                finished = out.finished
                yield out
        except (asyncio.CancelledError, GeneratorExit):
            if q is not None:
                await self.abort(q.request_id, internal=True)
            raise
        except EngineDeadError:
            raise
        except ValueError:
            raise
        except Exception as e:
            if q is not None:
                await self.abort(q.request_id, internal=True)
            raise EngineGenerateError() from e
        finally:
            if q is not None:
                q.close()

    async def abort(self, request_id: str | Iterable[str], internal: bool = False) -> None:
        request_ids = (request_id,) if isinstance(request_id, str) else list(request_id)
        internal_ids: list[str] = []
        for rid in request_ids:
            if internal:
                internal_ids.append(rid)
                for ext, ids in list(self._external.items()):
                    if rid in ids:
                        ids.remove(rid)
                        if not ids:
                            del self._external[ext]
            else:
                internal_ids.extend(self._external.pop(rid, []))
        core = self.engine_core
        for rid in internal_ids:
            req = core.requests.get(rid)
            if req is not None and not req.finished:
                # the final output is produced here, before the core hears of it (as in OutputProcessor)
                req.finished = True
                core._emit(req, "abort", None)
        core.abort(internal_ids)
