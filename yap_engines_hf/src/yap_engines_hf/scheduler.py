"""The decode loop: one worker thread that runs every request together.

Between steps it takes aborts (their rows and KV go at once), admits new
requests (prefill, with the prefix cache) and prefill jobs; each step decodes
one token for every running request in a single batched forward pass. The
event loop never runs model code: it hands work over under a lock and gets
results back through the callbacks it passed in.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import msgspec
import torch
from yap_core.contracts import Delta, EngineStats, FinishReason, GenerationRequest
from yap_core.stops import StopMatcher

from yap_engines_hf.detokenize import IncrementalDetokenizer
from yap_engines_hf.kv import BatchKV, RequestKV
from yap_engines_hf.prefix_cache import PrefixCache
from yap_engines_hf.runner import ModelRunner
from yap_engines_hf.sampling import TokenSampler

log = logging.getLogger(__name__)

# Called on the worker thread with each Delta (or the error that ended the request).
Emit = Callable[[Delta | BaseException], None]


class SchedulerConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_batch: int
    max_model_len: int
    vocab_size: int
    eos_ids: frozenset[int]
    prefix_cache_tokens: int
    prefill_chunk: int


class _Submitted(msgspec.Struct, kw_only=True):
    request: GenerationRequest
    emit: Emit


class _Prefill(msgspec.Struct, kw_only=True):
    ids: tuple[int, ...]
    done: Future


class _Live:
    """A running request: its sampler, detokenizer, stop matcher and counts."""

    def __init__(self, sub: _Submitted, cached: int, tokenizer_decode: Callable[[Sequence[int]], str], sampler: TokenSampler) -> None:
        self.request = sub.request
        self.emit = sub.emit
        self.cached = cached
        self.sampler = sampler
        self.detok = IncrementalDetokenizer(tokenizer_decode)
        self.stops = StopMatcher(sub.request.sampling.stop)
        self.completion = 0
        self.last_token = -1
        self.generated: list[int] = []

    def delta(self, text: str, finish: FinishReason | None = None) -> Delta:
        return Delta(
            text=text,
            completion_tokens=self.completion,
            prompt_tokens=len(self.request.prompt_token_ids),
            cached_prompt_tokens=self.cached,
            finish_reason=finish,
        )


class Scheduler:
    def __init__(self, runner: ModelRunner, decode: Callable[[Sequence[int]], str], config: SchedulerConfig) -> None:
        self._runner = runner
        self._decode = decode
        self._cfg = config
        self._cond = threading.Condition()
        self._queue: deque[_Submitted | _Prefill] = deque()
        self._known: set[str] = set()  # queued, admitting or running request ids
        self._abort: set[str] = set()
        self._exit_waiters: dict[str, list[Future]] = {}
        self._admitting = 0
        self._live: list[_Live] = []
        self._batch = BatchKV(runner.num_layers)
        self._prefix = PrefixCache(config.prefix_cache_tokens)
        self._queries = 0
        self._hits = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="yap-hf-decode", daemon=True)

    # --- called from the event loop (any thread) ---------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    def submit(self, request: GenerationRequest, emit: Emit) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the hf engine is closed")
            if request.request_id in self._known:
                raise ValueError(f"request_id {request.request_id!r} is already running")
            self._known.add(request.request_id)
            self._queue.append(_Submitted(request=request, emit=emit))
            self._cond.notify()

    def abort(self, request_id: str) -> Future:
        """Ask the loop to drop the request; the future is done once it is freed."""
        done: Future = Future()
        with self._cond:
            if request_id not in self._known:
                done.set_result(None)
                return done
            queued = next((j for j in self._queue if isinstance(j, _Submitted) and j.request.request_id == request_id), None)
            if queued is not None:
                # never started: nothing to free
                self._queue.remove(queued)
                self._known.discard(request_id)
                queued.emit(Delta(text="", completion_tokens=0, prompt_tokens=len(queued.request.prompt_token_ids), finish_reason="abort"))
                done.set_result(None)
                return done
            self._abort.add(request_id)
            self._exit_waiters.setdefault(request_id, []).append(done)
            self._cond.notify()
        return done

    def prefill(self, ids: Sequence[int]) -> Future:
        done: Future = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the hf engine is closed")
            self._queue.append(_Prefill(ids=tuple(ids), done=done))
            self._cond.notify()
        return done

    def stats(self) -> EngineStats:
        with self._cond:
            waiting = sum(1 for j in self._queue if isinstance(j, _Submitted))
            running = len(self._live) + self._admitting
            tokens = self._batch.tokens()
            return EngineStats(
                running=running,
                waiting=waiting,
                kv_cache_usage=min(1.0, tokens / (self._cfg.max_batch * self._cfg.max_model_len)),
                prefix_cache_queries=self._queries,
                prefix_cache_hits=self._hits,
            )

    # --- the worker thread -------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                jobs = self._next_jobs()
                if jobs is None:
                    break
                try:
                    self._drop_aborted()
                    for job in jobs:
                        self._do(job)
                    self._drop_aborted()
                    if self._live:
                        self._step()
                except Exception as exc:  # a failed forward ends every running request, not the loop
                    log.exception("hf engine step failed")
                    self._fail_all(exc)
        self._fail_all(RuntimeError("the hf engine was closed"))

    def _next_jobs(self) -> list[_Submitted | _Prefill] | None:
        with self._cond:
            while not self._stopping and not self._queue and not self._live and not self._abort:
                self._cond.wait()
            if self._stopping:
                return None
            jobs: list[_Submitted | _Prefill] = []
            room = self._cfg.max_batch - len(self._live)
            for job in list(self._queue):
                if isinstance(job, _Submitted):
                    if room <= 0:
                        continue
                    room -= 1
                    self._admitting += 1
                self._queue.remove(job)
                jobs.append(job)
            return jobs

    def _do(self, job: _Submitted | _Prefill) -> None:
        if isinstance(job, _Prefill):
            try:
                job.done.set_result(self._prefill_only(job.ids))
            except Exception as exc:
                job.done.set_exception(exc)
            return
        outcome: _Live | Delta | BaseException | None = None
        try:
            outcome = self._admit(job)
        finally:
            # one step under the lock: stats() never counts the request twice or not at all
            with self._cond:
                self._admitting -= 1
                if isinstance(outcome, _Live):
                    self._live.append(outcome)
        if not isinstance(outcome, _Live | None):
            # it ended during admission: freed and uncounted before its last word goes out
            self._exited(job.request.request_id)
            job.emit(outcome)

    def _prefill_only(self, ids: tuple[int, ...]) -> int:
        cached, prefix = self._prefix.lookup(ids, len(ids))
        if cached < len(ids):
            _, kv = self._runner.prefill(ids, cached, prefix)
            self._prefix.store(ids, kv)
        return cached

    def _admit(self, sub: _Submitted) -> _Live | Delta | BaseException:
        """Prefill a request and emit its first token. Returns the _Live to add to
        the running set (its KV already in the batch), or, when it ended here,
        its final Delta or error for the caller to send."""
        rid = sub.request.request_id
        ids = sub.request.prompt_token_ids
        if self._take_abort(rid):
            return Delta(text="", completion_tokens=0, prompt_tokens=len(ids), finish_reason="abort")
        try:
            # at least the last prompt token is computed: its logits give the first token
            cached, prefix = self._prefix.lookup(ids, len(ids) - 1)
            computed = self._prefill_chunked(rid, ids, cached, prefix)
            if computed is None:
                return Delta(text="", completion_tokens=0, prompt_tokens=len(ids), cached_prompt_tokens=cached, finish_reason="abort")
            logits, kv = computed
            self._prefix.store(ids, kv)
            with self._cond:
                self._queries += len(ids)
                self._hits += cached
            sampler = TokenSampler(sub.request.sampling, ids, self._cfg.vocab_size, logits.device)
            live = _Live(sub, cached, self._decode, sampler)
        except Exception as exc:
            log.exception("hf engine prefill failed")
            return exc
        final = self._advance(live, sampler.pick(logits))
        if final is not None:
            return final
        self._batch.add(kv, len(ids))
        return live

    def _prefill_chunked(
        self, rid: str, ids: tuple[int, ...], cached: int, prefix: RequestKV | None
    ) -> tuple[torch.Tensor, RequestKV] | None:
        """Compute the prompt a chunk at a time, decoding one step for the running
        requests between chunks. None when the request was aborted meanwhile."""
        done, kv = cached, prefix
        while True:
            end = min(len(ids), done + self._cfg.prefill_chunk)
            logits, kv = self._runner.prefill(ids[:end], done, kv)
            done = end
            if done == len(ids):
                return logits, kv
            self._drop_aborted()
            if self._live:
                self._step()
            if self._take_abort(rid):
                return None

    def _step(self) -> None:
        logits = self._runner.decode(self._batch, [r.last_token for r in self._live])
        with self._cond:
            aborted = set(self._abort)
        keep: list[int] = []
        done: list[tuple[_Live, Delta]] = []
        for row, live in enumerate(self._live):
            # an abort that came during the forward: its row goes with the next _drop_aborted
            final = None if live.request.request_id in aborted else self._advance(live, live.sampler.pick(logits[row]))
            if final is None:
                keep.append(row)
            else:
                self._remember(row, live)
                done.append((live, final))
        if done:
            self._batch.keep(keep)
            self._live = [self._live[r] for r in keep]
            # freed before the last delta goes out: a consumer that then reads stats() sees it gone
            for live, final in done:
                self._exited(live.request.request_id)
                live.emit(final)

    def _advance(self, live: _Live, token: int) -> Delta | None:
        """Account one sampled token and emit its text; the final Delta (not yet
        emitted) when the request ends here, else None."""
        live.completion += 1
        live.sampler.observe(token)
        s = live.request.sampling
        if token in self._cfg.eos_ids and not s.ignore_eos:
            text, reason = self._tail(live)
            return live.delta(text, reason or "stop")
        live.generated.append(token)
        live.last_token = token
        text, hit = live.stops.feed(live.detok.push(token))
        if hit:
            return live.delta(text, "stop")
        total = len(live.request.prompt_token_ids) + live.completion
        if live.completion >= s.max_tokens or total >= self._cfg.max_model_len:
            tail, reason = self._tail(live)
            return live.delta(text + tail, reason or "length")
        if text:
            live.emit(live.delta(text))
        return None

    @staticmethod
    def _tail(live: _Live) -> tuple[str, FinishReason | None]:
        """Text still held at the end, and "stop" if it completes a stop string."""
        text, hit = live.stops.feed(live.detok.flush())
        if hit:
            return text, "stop"
        return text + live.stops.flush(), None

    def _remember(self, row: int, live: _Live) -> None:
        """Keep a finished request's prompt + reply KV for the next turn."""
        if self._cfg.prefix_cache_tokens:
            # the row holds the KV of the prompt and of every reply token fed back so far
            ids = (live.request.prompt_token_ids + tuple(live.generated))[: self._batch.row_len(row)]
            self._prefix.store(ids, self._batch.row_kv(row))

    def _drop_aborted(self) -> None:
        with self._cond:
            if not self._abort:
                return
            aborted = set(self._abort)
        gone = [live for live in self._live if live.request.request_id in aborted]
        if gone:
            keep = [row for row, live in enumerate(self._live) if live.request.request_id not in aborted]
            self._batch.keep(keep)
            self._live = [self._live[r] for r in keep]
            for live in gone:
                self._exited(live.request.request_id)
                live.emit(live.delta("", "abort"))
        # ids not running (already finished, or still being admitted) are settled by _exited / _admit
        with self._cond:
            for rid in aborted:
                if rid not in self._known:
                    self._abort.discard(rid)

    def _take_abort(self, rid: str) -> bool:
        with self._cond:
            return rid in self._abort

    def _exited(self, rid: str) -> None:
        with self._cond:
            self._known.discard(rid)
            self._abort.discard(rid)
            waiters = self._exit_waiters.pop(rid, [])
        for w in waiters:
            # False when the waiter gave up (its asyncio task was cancelled): setting a
            # cancelled future raises InvalidStateError and would fail the whole step.
            if w.set_running_or_notify_cancel():
                w.set_result(None)

    def _fail_all(self, exc: BaseException) -> None:
        live, self._live = self._live, []
        self._batch = BatchKV(self._runner.num_layers)
        for r in live:
            r.emit(exc)
            self._exited(r.request.request_id)
        with self._cond:
            queued = [j for j in self._queue if isinstance(j, _Submitted)]
            prefills = [j for j in self._queue if isinstance(j, _Prefill)]
            if self._stopping:
                self._queue.clear()
        if self._stopping:
            for j in queued:
                j.emit(exc)
                self._exited(j.request.request_id)
            for p in prefills:
                p.done.set_exception(exc)
