"""One deployment at run time: the selected plugins, their state, and counts.

Built from ``Config`` before anything loads (bad settings or a missing plugin
fail here, in one line), then started: models load with progress output while
/healthz answers 503 ``starting``. Holds the server's state
(starting/ready/draining/unhealthy), the connection slots and the number of
turns running, and answers /status.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from yap_core import __version__ as core_version
from yap_core.board import Board
from yap_core.contracts import Classifier, Engine, EngineStats, Progress, Sampling
from yap_core.plugins import PluginError, PluginHost, installed_plugins
from yap_core.settings import Config, CoreSettings
from yap_core.telemetry import Telemetry

if TYPE_CHECKING:
    from yap_core.workers import WorkerSpec

log = logging.getLogger("yap.runtime")

State = Literal["starting", "ready", "draining", "unhealthy"]


class Capacity(msgspec.Struct):
    active: int
    max: int
    available: int
    at_capacity: bool


class ChatParts:
    """What a chat turn needs once the engine is up: prompt builder, personas,
    banned-phrase bias. Built in ``Runtime.start`` (tokenizer work in a thread)."""

    def __init__(self, builder: Any, logit_bias: dict[int, float]) -> None:
        self.builder = builder
        self.logit_bias = logit_bias


def _check_shape(obj: object, protocol: type, what: str) -> None:
    """Like isinstance against a runtime-checkable Protocol, without evaluating
    properties (an engine's tokenizer exists only after start)."""
    names = [n for n in dir(protocol) if not n.startswith("_")]
    names += list(getattr(protocol, "__annotations__", {}))
    own = getattr(obj, "__dict__", {})
    missing = sorted({n for n in names if not hasattr(type(obj), n) and n not in own})
    if missing:
        raise PluginError(f"{what} does not satisfy yap_core.contracts.{protocol.__name__}: missing {', '.join(missing)}")


class Runtime:
    def __init__(
        self,
        config: Config,
        settings: CoreSettings,
        telemetry: Telemetry | None = None,
        *,
        worker: WorkerSpec | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.worker = worker  # one of SERVER_WORKERS processes, or None: the only one
        self.telemetry = telemetry or Telemetry(
            config.env, engine=settings.inference_engine, settings=settings, worker=None if worker is None else worker.index
        )
        # The workers' shared counts, for a /status of the whole deployment.
        self.board = None if worker is None else Board(worker.board_fd, worker.count)
        self._state: State = "starting"
        self.detail = "loading models"
        self.started_at = time.monotonic()
        self.connections = 0
        self.active_turns = 0
        self.engine_requests = 0  # running + waiting, as of the last engine_stats()
        self._publish()
        self.host = PluginHost()
        self.selected = settings.plugin_names()
        self.engine: Engine | None = None
        self.classifier: Classifier | None = None
        self.chat: ChatParts | None = None
        self.unsupported: frozenset[str] = frozenset()
        self.default_sampling = Sampling(
            temperature=settings.chat_temperature,
            top_p=settings.chat_top_p,
            top_k=settings.chat_top_k,
            min_p=settings.chat_min_p,
            repetition_penalty=settings.chat_repetition_penalty,
            presence_penalty=settings.chat_presence_penalty,
            frequency_penalty=settings.chat_frequency_penalty,
            max_tokens=settings.chat_max_out,
        )
        # Fires when the state leaves "ready" for good (engine died) or the drain ends.
        self.stopped = asyncio.Event()
        self._turns_idle = asyncio.Event()
        self._turns_idle.set()
        self._build()

    # --- construction: no model loads here ---------------------------------
    def _build(self) -> None:
        s = self.settings
        for name in self.selected:
            self.host.load(name)
        if s.deploy_mode != "tool":
            engine = self.host.engine_factory(s.inference_engine)(self.config)
            _check_shape(engine, Engine, f"engine {s.inference_engine!r}")
            if self.worker is not None:
                engine.attach(self.worker.attachment)  # to the part the supervisor shares
            self.engine = engine
        if s.deploy_mode != "chat":
            classifier = self.host.classifier_factory(s.tool_classifier)(self.config)
            _check_shape(classifier, Classifier, f"classifier {s.tool_classifier!r}")
            self.classifier = classifier

    # --- start / stop ---------------------------------------------------------
    async def start(self, progress: Progress) -> None:
        """Load and warm every deployed model; then state is ready."""
        t0 = time.monotonic()
        if self.engine is not None:
            progress(f"engine {self.engine.name}: loading")
            await self.engine.start(progress)
            self.unsupported = frozenset(self.engine.unsupported_sampling())
            if self.unsupported:
                log.warning(
                    "engine %s cannot honour sampling keys: %s; requests setting them get invalid_payload",
                    self.engine.name,
                    ", ".join(sorted(self.unsupported)),
                )
            progress("prompt builder: reading the chat template, personas and banned phrases")
            self.chat = await asyncio.to_thread(self._chat_parts, self.engine)
            if self.chat.logit_bias:
                # Every turn's sampling starts from the defaults: the banned-phrase bias goes in once, here.
                self.default_sampling = msgspec.structs.replace(self.default_sampling, logit_bias=self.chat.logit_bias)
            await self._warm(progress)
        if self.classifier is not None:
            progress(f"classifier {self.classifier.name}: loading")
            await self.classifier.start(progress)
        _freeze_heap()
        self.state = "ready"
        self.detail = ""
        seconds = time.monotonic() - t0
        self.telemetry.startup(seconds)
        progress(f"ready in {seconds:.1f}s")

    def _chat_parts(self, engine: Engine) -> ChatParts:
        from yap_core.banned import load_phrases, logit_bias
        from yap_core.prompts import Personas, PromptBuilder

        personas = Personas.load(self.settings.personas_file)
        builder = PromptBuilder(engine.tokenizer, self.settings, engine.max_model_len, personas)
        bias: dict[int, float] = {}
        phrases = load_phrases(self.settings.banned_phrases_file)
        if phrases and "logit_bias" in self.unsupported:
            log.warning("engine %s has no logit bias: banned phrases are not applied", engine.name)
        elif phrases:
            bias = logit_bias(engine.tokenizer, phrases)
        return ChatParts(builder, bias)

    async def _warm(self, progress: Progress) -> None:
        """One short generation so the first client turn pays no warm-up."""
        from yap_core.contracts import GenerationRequest

        assert self.engine is not None and self.chat is not None
        progress("engine: warm-up generation")
        builder = self.chat.builder
        system = await asyncio.to_thread(builder.system_prompt, None, None, None)
        rendered = await asyncio.to_thread(builder.render, system, (), "Hello!", 2)
        request = GenerationRequest(
            request_id="warmup",
            prompt_token_ids=rendered.token_ids,
            sampling=msgspec.structs.replace(self.default_sampling, max_tokens=2),
        )
        stream = self.engine.stream(request)
        try:
            async for _ in stream:
                pass
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self.classifier is not None:
            await self.classifier.close()
        if self.engine is not None:
            await self.engine.close()
        await self.telemetry.aclose()

    def mark_unhealthy(self, detail: str) -> None:
        if self.state != "unhealthy":
            log.error("unhealthy: %s", detail)
        self.state = "unhealthy"
        self.detail = detail
        self.stopped.set()

    # --- connections and turns ---------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        self._state = value
        self._publish()

    def health(self) -> tuple[State, str]:
        """The state /healthz and /status report, with its detail. With
        workers it is the deployment's: every worker serves the one port and
        the kernel picks which takes a socket, so until every worker is ready
        some sockets would get 1013; the first worker not ready speaks for all."""
        if self._state != "ready" or self.board is None:
            return self._state, self.detail
        for row in self.board.rows():
            if row.state != "ready":
                state: State = "starting" if row.state == "unknown" else row.state  # type: ignore[assignment]
                return state, f"worker {row.index + 1} of {self.board.count} is {row.state}"
        return "ready", ""

    def _publish(self) -> None:
        """This worker's counts on the board, after each change (a few hundred ns)."""
        if self.board is not None and self.worker is not None:
            self.board.write(self.worker.index, self._state, self.connections, self.settings.max_concurrent_connections,
                             self.active_turns, self.engine_requests)

    def capacity(self) -> Capacity:
        """The deployment's sockets against MAX_CONCURRENT_CONNECTIONS (with
        workers, every worker's count on the board)."""
        limit = self.settings.max_concurrent_connections
        active = self.connections if self.board is None else self.board.connections()
        available = max(0, limit - active)
        return Capacity(active, limit, available, available == 0)

    def try_acquire_connection(self) -> bool:
        if self.board is None:
            return self._acquire(self.connections)
        with self.board.locked():  # two workers must not both take the last place
            return self._acquire(self.board.connections())

    def _acquire(self, active: int) -> bool:
        if active >= self.settings.max_concurrent_connections:
            return False
        self.connections += 1
        self._publish()
        return True

    def release_connection(self) -> None:
        if self.board is None:
            self.connections -= 1
            return
        with self.board.locked():
            self.connections -= 1
            self._publish()

    def turn_started(self) -> None:
        self.active_turns += 1
        self._turns_idle.clear()
        self._publish()

    def turn_finished(self) -> None:
        self.active_turns -= 1
        if self.active_turns == 0:
            self._turns_idle.set()
        self._publish()

    async def wait_turns_idle(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._turns_idle.wait()
            return True
        except TimeoutError:
            return False

    # --- /status --------------------------------------------------------------
    def plugin_versions(self) -> list[dict[str, str]]:
        found = {p.name: p.version for p in installed_plugins(self.selected)}
        return [{"name": n, "version": found.get(n, core_version)} for n in self.selected]

    async def engine_stats(self) -> EngineStats:
        """The engine's stats; its request count goes on the board (the
        health check calls this every second, /status on each request)."""
        assert self.engine is not None
        stats = await self.engine.stats()
        requests = stats.running + stats.waiting
        if requests != self.engine_requests:
            self.engine_requests = requests
            self._publish()
        return stats

    async def status(self) -> dict[str, Any]:
        engine: dict[str, Any] = {"name": None, "version": None}
        if self.engine is not None:
            stats = None
            if self.state in ("ready", "draining"):
                try:
                    stats = msgspec.to_builtins(await self.engine_stats())
                except Exception as exc:  # the engine died: say so rather than fail /status
                    self.mark_unhealthy(f"engine stats failed: {exc}")
            engine = {
                "name": self.engine.name,
                "version": self.engine.version,
                "max_model_len": self.engine.max_model_len,
                "unsupported_sampling": sorted(self.unsupported),
                "stats": stats,
            }
        rows = self.board.rows() if self.board is not None else None
        return {
            "status": self.health()[0],
            "engine": engine,
            "classifier": None
            if self.classifier is None
            else {"name": self.classifier.name, "model": self.classifier.model_id},
            "models": {
                "chat": self.engine.model_id if self.engine else None,
                "tool": self.classifier.model_id if self.classifier else None,
            },
            "deploy_mode": self.settings.deploy_mode,
            # With workers, the counts are the deployment's (every worker's
            # row of the board); "worker" has the answering worker's own.
            "worker": None
            if self.worker is None
            else {
                "index": self.worker.index,
                "count": self.worker.count,
                "pid": os.getpid(),
                "connections": self.connections,
                "active_turns": self.active_turns,
            },
            "workers": None if rows is None else msgspec.to_builtins(rows),
            "connections": msgspec.to_builtins(self.capacity()),
            "active_turns": self.active_turns if rows is None else sum(r.active_turns for r in rows),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "plugins": self.plugin_versions(),
            "core_version": core_version,
        }


def _freeze_heap() -> None:
    """Move everything loaded so far (models, engine internals: millions of
    objects under vLLM) out of the garbage collector's sight. Full collections
    otherwise walk that heap while tokens stream, stalling the event loop for
    tens of milliseconds. vLLM's own API server does the same after start-up."""
    gc.collect()
    gc.freeze()
