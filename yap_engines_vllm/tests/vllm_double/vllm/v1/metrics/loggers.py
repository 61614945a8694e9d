"""Double of vllm.v1.metrics.loggers: the stat-logger interface and the
manager that builds per-engine loggers from factories (the default
LoggingStatLogger / Prometheus loggers are left out: they only log)."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from vllm.v1.metrics.stats import SchedulerStats


class StatLoggerBase(ABC):
    @abstractmethod
    def __init__(self, vllm_config: Any, engine_index: int = 0): ...

    @abstractmethod
    def record(
        self,
        scheduler_stats: SchedulerStats | None,
        iteration_stats: Any | None,
        mm_cache_stats: Any | None = None,
        engine_idx: int = 0,
    ): ...

    @abstractmethod
    def log_engine_initialized(self): ...

    def log(self):  # noqa: B027
        pass

    def record_sleep_state(self, is_awake: int, level: int):  # noqa: B027
        pass


class AggregateStatLoggerBase(StatLoggerBase):
    @abstractmethod
    def __init__(self, vllm_config: Any, engine_indexes: list[int]): ...


StatLoggerFactory = type[AggregateStatLoggerBase] | Callable[[Any, int], StatLoggerBase]


class StatLoggerManager:
    def __init__(self, vllm_config: Any, engine_idxs: list[int] | None = None,
                 custom_stat_loggers: list[StatLoggerFactory] | None = None) -> None:  # fmt: skip
        self.loggers: list[StatLoggerBase] = []
        for factory in custom_stat_loggers or []:
            if isinstance(factory, type) and issubclass(factory, AggregateStatLoggerBase):
                self.loggers.append(factory(vllm_config=vllm_config, engine_indexes=engine_idxs or [0]))
            else:
                self.loggers.append(factory(vllm_config, 0))  # type: ignore[call-arg]

    def record(self, scheduler_stats: SchedulerStats | None, iteration_stats: Any = None, engine_idx: int = 0) -> None:
        for stat_logger in self.loggers:
            stat_logger.record(scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=engine_idx)

    def log_engine_initialized(self) -> None:
        for stat_logger in self.loggers:
            stat_logger.log_engine_initialized()
