"""Scheduler figures for ``Engine.stats()``, taken from vLLM's stat-logger hook.

AsyncLLM hands every ``SchedulerStats`` the engine core sends (one per step,
and one more after an abort empties the batch) to its stat loggers; ours keeps
the last counts and sums the per-step prefix-cache deltas. One snapshot
belongs to one engine object: nothing here is module-global.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from yap_core.contracts import EngineStats


class SchedulerSnapshot:
    """The latest scheduler state of one AsyncLLM."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.prefix_queries = 0
        self.prefix_hits = 0

    def update(self, scheduler_stats: Any) -> None:
        self.running = scheduler_stats.num_running_reqs
        self.waiting = scheduler_stats.num_waiting_reqs + getattr(scheduler_stats, "num_skipped_waiting_reqs", 0)
        self.kv_cache_usage = scheduler_stats.kv_cache_usage
        prefix = scheduler_stats.prefix_cache_stats
        if prefix is not None:
            # per-step deltas (the scheduler starts a fresh PrefixCacheStats each step)
            self.prefix_queries += prefix.queries
            self.prefix_hits += prefix.hits

    def as_stats(self) -> EngineStats:
        return EngineStats(
            running=self.running,
            waiting=self.waiting,
            kv_cache_usage=self.kv_cache_usage,
            prefix_cache_queries=self.prefix_queries,
            prefix_cache_hits=self.prefix_hits,
        )


def stat_logger_factory(snapshot: SchedulerSnapshot) -> Callable[[Any, int], Any]:
    """A vLLM per-engine stat-logger factory feeding ``snapshot`` (imports vllm)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SnapshotStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                snapshot.update(scheduler_stats)

        def log_engine_initialized(self) -> None:
            return None

    def make(vllm_config: Any, engine_index: int) -> StatLoggerBase:
        return SnapshotStatLogger(vllm_config, engine_index)

    return make
