"""A measuring instrument for vllm_bench.py, loaded inside vLLM's engine core.

"Abort within 5 ms" means the request is gone from vLLM's scheduler. What a
client can see of that comes late: the scheduler's counts travel with the
outputs of the *next* step, one whole decode step (about 6 ms on an 8B model)
after the abort took effect. This scheduler is vLLM's own (``AsyncScheduler``,
the one vLLM picks with async scheduling on, its default) plus one line per
aborted request: the moment ``finish_requests`` dropped it, on the host's
monotonic clock (the clock ``time.perf_counter`` reads in the benchmark), in
the file named by ``YAP_ABORT_PROBE_FILE``. vllm_bench passes it as
``scheduler_cls="vllm_abort_probe.AbortProbeScheduler"``; the benchmarks
folder is on the engine core's ``PYTHONPATH``.

It also keeps a line per scheduler step in ``<that file>.steps`` (wall-clock
time, requests and tokens scheduled), so that a sustained window can be read
as steps per second times requests per step: a slower engine, or one the
front end keeps less busy. And a line per request in ``<that file>.firsts``
when the engine core hands its first token to the output thread (id,
monotonic clock), so that a client's wait for the first token splits into the
engine core's part and the client process's hand-on (``vllm_bench.first_split``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.request import RequestStatus

PROBE_ENV = "YAP_ABORT_PROBE_FILE"  # vllm_bench.py sets it (and reads the file: probe_ms)


class AbortProbeScheduler(AsyncScheduler):
    _steps: list[str] | None = None
    _firsts: list[str] | None = None
    _streaming: set[str]  # requests whose first token went out, until they finish (made with _firsts)
    _flushed = 0.0

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        out = super().schedule(*args, **kwargs)
        path = os.environ.get(PROBE_ENV)
        if path and out.num_scheduled_tokens:
            if self._steps is None:
                self._steps, self._firsts, self._streaming = [], [], set()
            now = time.time()
            self._steps.append(f"{now:.6f} {len(out.num_scheduled_tokens)} {out.total_num_scheduled_tokens}\n")
            if now - self._flushed >= 0.2:  # a window's turns run past its end: its steps reach the file
                self._flush(path)
                self._flushed = now
        return out

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        # dict[client index, EngineCoreOutputs]: the engine core sends these to the clients next
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        if self._firsts is None:  # no probe file (see schedule)
            return outputs
        now, streaming = time.perf_counter(), self._streaming
        for batch in outputs.values():
            for o in batch.outputs:
                if o.new_token_ids and o.request_id not in streaming:
                    streaming.add(o.request_id)
                    self._firsts.append(f"{o.request_id} {now:.6f}\n")
                if o.finish_reason is not None:
                    streaming.discard(o.request_id)
        return outputs

    def _flush(self, path: str) -> None:
        with open(path + ".steps", "a") as f:
            f.writelines(self._steps or ())
        with open(path + ".firsts", "a") as f:
            f.writelines(self._firsts or ())
        for buffered in (self._steps, self._firsts):
            if buffered is not None:
                buffered.clear()

    def finish_requests(self, request_ids: str | Iterable[str] | None, finished_status: RequestStatus) -> Any:
        if finished_status != RequestStatus.FINISHED_ABORTED or request_ids is None:
            return super().finish_requests(request_ids, finished_status)
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        live = [i for i in ids if (r := self.requests.get(i)) is not None and not r.is_finished()]
        result = super().finish_requests(ids, finished_status)
        now = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in every process
        path = os.environ.get(PROBE_ENV)
        if path and live:
            with open(path, "a") as f:
                f.writelines(f"{i} {now:.6f}\n" for i in live)
        return result

