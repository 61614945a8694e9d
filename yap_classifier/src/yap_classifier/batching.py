"""Micro-batching across sessions on one worker thread.

Callers on the event loop ``await submit(item, wait_s)``; the worker thread
takes the first waiting item, gathers more for up to ``max_wait_s`` (or until
``batch_size``), drops those whose caller has gone (timed out or cancelled)
and runs one batch. Results go back with ``call_soon_threadsafe``, so the
event loop never blocks on the model.

Bounded by construction: one thread per batcher, a queue of at most
``queue_size`` items (a full queue is refused at once with ``Overloaded``),
and an abandoned item is never run.

Standard library only, so the GPU benchmark can import it without the venv.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")
log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full: more callers are waiting than the worker can serve."""


class BatcherClosed(RuntimeError):
    """The batcher was closed before the item ran."""


@dataclass
class BatchStats:
    batches: int = 0  # model calls
    items: int = 0  # items run through the model
    largest_batch: int = 0
    dropped: int = 0  # abandoned items removed before inference
    timeouts: int = 0  # callers that gave up waiting
    rejected: int = 0  # refused because the queue was full
    errors: int = 0  # items whose inference raised


class _Job(Generic[In]):
    __slots__ = ("item", "loop", "future", "deadline", "abandoned")

    def __init__(self, item: In, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], deadline: float) -> None:
        self.item = item
        self.loop = loop
        self.future = future
        self.deadline = deadline
        # Set on the event loop when the caller stops waiting; read by the
        # worker (a plain bool store/load is atomic under the GIL).
        self.abandoned = False


_STOP = object()


class MicroBatcher(Generic[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[Sequence[In]], Sequence[Out]],
        *,
        batch_size: int,
        max_wait_s: float,
        queue_size: int,
        name: str = "yap-classifier",
    ) -> None:
        if batch_size < 1 or max_wait_s < 0 or queue_size < 1:
            raise ValueError("batch_size >= 1, max_wait_s >= 0 and queue_size >= 1 are required")
        self._run_batch = run_batch
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._closed = False
        self.stats = BatchStats()

    def start(self) -> None:
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def submit(self, item: In, wait_s: float) -> Out:
        """Run ``item`` in a batch; ``TimeoutError`` after ``wait_s`` seconds.
        (The worker also uses this deadline to skip items nobody awaits.)"""
        if self._closed:
            raise BatcherClosed("the classifier is closed")
        loop = asyncio.get_running_loop()
        job = _Job(item, loop, loop.create_future(), time.monotonic() + wait_s)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.stats.rejected += 1
            raise Overloaded(f"{self._queue.maxsize} classifications already queued") from None
        try:
            return await asyncio.wait_for(job.future, wait_s)
        except TimeoutError:
            self.stats.timeouts += 1
            raise
        finally:
            job.abandoned = True

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the batch it is running; waiting callers get BatcherClosed."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._drain_into_stop()
            self._thread.join(timeout)

    def _drain_into_stop(self) -> None:
        # Make room for the stop marker even when the queue is full.
        while True:
            try:
                self._queue.put_nowait(_STOP)
                return
            except queue.Full:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    continue
                if job is not _STOP:
                    _settle(job, error=BatcherClosed("the classifier closed"))

    # --- worker thread ---------------------------------------------------
    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stop = self._gather(first)
            self._run(jobs)
            if stop:
                break
        # Whoever is still queued will not be served.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                _settle(job, error=BatcherClosed("the classifier closed"))

    def _gather(self, first: _Job[In]) -> tuple[list[_Job[In]], bool]:
        jobs = [first]
        until = time.monotonic() + self.max_wait_s
        while len(jobs) < self.batch_size:
            left = until - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self, jobs: list[_Job[In]]) -> None:
        now = time.monotonic()
        live = [j for j in jobs if not j.abandoned and j.deadline > now]
        self.stats.dropped += len(jobs) - len(live)
        if not live:
            return
        try:
            results = self._run_batch([j.item for j in live])
        except Exception:  # noqa: BLE001 - one bad item must not fail its batch-mates
            if len(live) == 1:
                log.exception("classifier inference failed")
                self.stats.errors += 1
                _settle(live[0], error=RuntimeError("classifier inference failed; see the server log"))
                return
            for job in live:  # find the culprit: run each alone
                self._run([job])
            return
        self.stats.batches += 1
        self.stats.items += len(live)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        for job, result in zip(live, results, strict=True):
            _settle(job, result=result)


def _settle(job: _Job[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    def deliver() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(deliver)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting
        pass
