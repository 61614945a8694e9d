"""Sessions of one socket: start, message, followup, cancel, end.

Sessions belong to the socket that started them (one socket may hold several)
and end with it. A valid start/message/followup of a session whose turn is
running barges in: the old turn's ``cancelled`` is queued first, then the new
turn starts. Invalid, rate-limited or other-session frames never touch a
running turn: everything that can reject a frame is checked before the
barge-in. Turns of one session run one after another (a new turn waits for the
previous task to record its history), so history is never read half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET

from yap_core import frames
from yap_core.contracts import Sampling
from yap_core.frames import FrameError, WireSampling
from yap_core.prompt_types import Message, PromptError
from yap_core.runtime import Runtime
from yap_core.turn import Emit, EmitToken, Turn, TurnRunner, TurnSpec

if TYPE_CHECKING:
    from yap_core.prompts import PromptBuilder

log = logging.getLogger("yap.session")

# Python 3.12+. A task created by it runs at once, inside the call that creates
# it, up to its first wait that really suspends.
eager_task_factory = getattr(asyncio, "eager_task_factory", None)


def start_turn_task(coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
    """The task of a turn, started eagerly where Python has eager tasks (3.12+).

    A prepared turn then reaches the engine inside the call that read its frame.
    A plain task would wait one event-loop pass behind whatever else is ready.
    Under load that pass is the whole step's token work: 7.3 ms at p50 with one
    worker at 64 streams of a 1B model (docs/gpu-results.md, run 14). On Python
    3.11 it is a plain task. Nothing after the call may assume the task has not
    run: ``_launch`` is the last thing a frame's handler does."""
    loop = asyncio.get_running_loop()
    if eager_task_factory is not None:
        return eager_task_factory(loop, coro, name=name)  # type: ignore[no-any-return]
    return loop.create_task(coro, name=name)

_ENGINE_KEYS = tuple(k for k in WireSampling.__struct_fields__ if k != "sanitize_output")


class Session:
    def __init__(
        self, session_id: str, system: str, history: list[Message], sampling: WireSampling | None, span: Any
    ) -> None:
        self.id = session_id
        self.span = span  # the session's trace span handle (Telemetry.session_opened)
        self.system = system
        self.history = history
        self.sampling = sampling
        self.turn: Turn | None = None  # the running turn, if any
        self.last_task: asyncio.Task[None] | None = None  # the latest turn or prefill task

    @property
    def running(self) -> Turn | None:
        turn = self.turn
        return turn if turn is not None and turn.open else None


def merge_sampling(base: WireSampling | None, over: WireSampling | None) -> WireSampling | None:
    """Keys set in ``over`` win over ``base``."""
    if over is None:
        return base
    if base is None:
        return over
    changes = {k: getattr(over, k) for k in WireSampling.__struct_fields__ if getattr(over, k) is not UNSET}
    return msgspec.structs.replace(base, **changes)


# The history is cut when at least this many messages can go: a long
# session's list stays within a batch of what the prompt and classifier read.
FORGET_BATCH = 16


def classifier_floor(history: Sequence[Message], drop: int, window: int) -> int:
    """``drop`` lowered so that the newest ``window`` user messages stay: the
    classifier reads at most TOOL_HISTORY_TOKENS tokens of user turns, and a
    turn is at least one token. ``window`` 0: no classifier deployed."""
    if not window or drop <= 0:
        return drop
    users = 0
    for i in range(len(history) - 1, -1, -1):
        if history[i].role == "user":
            users += 1
            if users == window:
                return min(drop, i)
    return 0  # fewer user turns than the window: all of them stay


def forget(history: list[Message], snapshot: Sequence[Message], drop: int) -> None:
    """Cut the first ``drop`` messages of ``snapshot`` from the session's
    ``history``, which only ever grows at its end. It may have grown since the
    snapshot was taken, or been cut further by a later turn's call: the cut is
    found by identity, and nothing is cut when that message is gone already.
    Why: a voice session can last all day; what no prompt will read again
    (``PromptBuilder.prepare`` says how much) need not be kept, nor copied
    for each turn's render."""
    if drop < FORGET_BATCH:
        return
    first_kept = snapshot[drop]
    for i, message in enumerate(history):
        if message is first_kept:
            del history[:i]
            return


class SessionHost:
    """The session-level protocol of one socket."""

    def __init__(self, runtime: Runtime, emit: Emit, emit_token: EmitToken) -> None:
        self.runtime = runtime
        self._out = emit
        self._out_token = emit_token
        self.closed = False  # after `end` or the socket's close nothing more is sent
        self.sessions: dict[str, Session] = {}
        self.running_turns = 0  # of this socket, for the idle timer
        self.idle_since = time.monotonic()
        self.tasks: set[asyncio.Task[None]] = set()

    def emit(self, text: str) -> bool:
        return not self.closed and self._out(text)

    def emit_token(self, session_id: str, request_id: str, piece: str) -> bool:
        return not self.closed and self._out_token(session_id, request_id, piece)

    # --- helpers ----------------------------------------------------------------
    def check_sampling(self, wire: WireSampling | None) -> None:
        """Reject keys the engine cannot honour and max_tokens over CHAT_MAX_OUT."""
        if wire is None:
            return
        for key in _ENGINE_KEYS:
            if getattr(wire, key) is not UNSET and key in self.runtime.unsupported:
                field = f"payload.sampling.{key}"
                raise FrameError(
                    "invalid_payload",
                    f"{field}: the {self.runtime.engine.name} engine cannot honour {key}",  # type: ignore[union-attr]
                    field=field,
                )
        limit = self.runtime.settings.chat_max_out
        if wire.max_tokens is not UNSET and wire.max_tokens > limit:
            raise FrameError(
                "invalid_payload",
                f"payload.sampling.max_tokens: Expected `int` <= {limit} (CHAT_MAX_OUT)",
                field="payload.sampling.max_tokens",
            )

    def resolve(self, wire: WireSampling | None) -> tuple[Sampling, bool]:
        base = self.runtime.default_sampling
        sanitize = True
        if wire is None:
            sampling = base
        else:
            changes = {k: getattr(wire, k) for k in _ENGINE_KEYS if getattr(wire, k) is not UNSET}
            sampling = msgspec.structs.replace(base, **changes) if changes else base
            if wire.sanitize_output is not UNSET:
                sanitize = wire.sanitize_output
        return sampling, sanitize

    def _not_draining(self) -> None:
        if self.runtime.state != "ready":
            raise FrameError(
                "engine_unavailable",
                f"the server is {self.runtime.state}; reconnect and retry",
            )

    def _barge_in(self, session: Session | None) -> asyncio.Task[None] | None:
        if session is None:
            return None
        turn = session.running
        if turn is not None:
            turn.cancel("barge_in", announce=True)
        return session.last_task

    def _launch(self, session: Session, request_id: str | None, spec: TurnSpec, previous: asyncio.Task[None] | None) -> None:
        turn = Turn(session.id, request_id or str(uuid.uuid4()), self.emit, self.emit_token, self.runtime.telemetry.cancellation)
        runner = TurnRunner(self.runtime, turn, spec, session.system, session.history, session.span)
        session.turn = turn
        task = start_turn_task(self._run(runner, previous), name=f"turn-{turn.request_id}")
        turn.task = task
        session.last_task = task
        self._track(task)

    def _track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, runner: TurnRunner, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            # The previous turn records its (partial) reply before we render.
            await asyncio.wait([previous])
        self.running_turns += 1
        try:
            await runner.run()
        finally:
            self.running_turns -= 1
            self.idle_since = time.monotonic()
        rt = self.runtime
        if not runner.new_history() or self.closed:
            return
        window = rt.settings.tool_history_tokens if rt.classifier is not None else 0
        if rt.chat is not None:
            # Tokenize the reply and build the next prompt up to its utterance
            # now, in the pause before the user's next turn: that turn then
            # only adds its utterance (PromptBuilder.prepare).
            history = tuple(runner.history)  # a snapshot: the loop may change the list meanwhile
            self._track(asyncio.create_task(self._prepare(rt.chat.builder, runner, history, window)))
        elif len(runner.history) > 2 * window:  # classifier only: forget in batches of a window
            forget(runner.history, runner.history, classifier_floor(runner.history, len(runner.history), window))

    async def _prepare(
        self, builder: PromptBuilder, runner: TurnRunner, history: tuple[Message, ...], window: int
    ) -> None:
        """``builder.prepare`` in a thread, then forget what no later turn reads."""

        def work() -> int:
            drop = builder.prepare(runner.system, history, runner.new_history())
            return classifier_floor(history, drop, window)

        forget(runner.history, history, await asyncio.to_thread(work))

    # --- frames -------------------------------------------------------------------
    async def start(self, frame: frames.ClientFrame, received_at: float) -> None:
        payload = frame.payload
        assert isinstance(payload, frames.StartPayload) and frame.session_id is not None
        self._not_draining()
        self.check_sampling(payload.sampling)
        system = ""
        builder = self.runtime.chat.builder if self.runtime.chat is not None else None
        if builder is not None:
            try:
                if builder.cheap_system_prompt(payload.chat_prompt):  # counted before, or from known pieces
                    system = builder.system_prompt(payload.chat_prompt, payload.personality, payload.gender)
                else:
                    system = await asyncio.to_thread(
                        builder.system_prompt, payload.chat_prompt, payload.personality, payload.gender
                    )
            except PromptError as exc:
                message = f"{exc.field}: {exc.message}" if exc.field else exc.message
                raise FrameError(exc.code, message, field=exc.field) from None
        history = [Message(role=h.role, content=h.content) for h in payload.history]
        old = self.sessions.get(frame.session_id)
        previous = self._barge_in(old)
        tele = self.runtime.telemetry
        if old is not None:
            tele.session_churn()
            tele.session_closed(old.span, "replaced")
        span = tele.session_opened(frame.session_id, {"deploy_mode": self.runtime.settings.deploy_mode})
        session = Session(frame.session_id, system, history, payload.sampling, span)
        self.sessions[frame.session_id] = session
        if payload.user_utterance is not None:
            sampling, sanitize = self.resolve(session.sampling)
            spec = TurnSpec(kind="utterance", text=payload.user_utterance, sampling=sampling, sanitize=sanitize, received_at=received_at)
            self._launch(session, frame.request_id, spec, previous)
            return
        request_id = frame.request_id or str(uuid.uuid4())
        session.turn = None
        session.last_task = asyncio.create_task(self._prefill(session, request_id, previous))
        self._track(session.last_task)

    async def _prefill(self, session: Session, request_id: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        cached = 0
        rt = self.runtime
        try:
            if rt.engine is not None and rt.chat is not None:
                ids = await asyncio.to_thread(rt.chat.builder.prefix, session.system, tuple(session.history))
                cached = await rt.engine.prefill(ids)
        except PromptError as exc:
            rt.telemetry.error(exc.code)
            self.emit(frames.error_frame(exc.code, exc.message, session_id=session.id, request_id=request_id, field=exc.field))
            return
        except Exception as exc:
            log.exception("prefill failed")
            rt.telemetry.error("internal_error", exc)
            self.emit(frames.error_frame("internal_error", f"prefill failed: {type(exc).__name__}", session_id=session.id, request_id=request_id))
            return
        self.emit(frames.encode("ready", session.id, request_id, frames.ReadyPayload(cached)))

    async def message(self, frame: frames.ClientFrame, received_at: float) -> None:
        payload = frame.payload
        assert isinstance(payload, frames.MessagePayload) and frame.session_id is not None
        session = self._session(frame)
        self._not_draining()
        self.check_sampling(payload.sampling)
        previous = self._barge_in(session)
        sampling, sanitize = self.resolve(merge_sampling(session.sampling, payload.sampling))
        spec = TurnSpec(kind="utterance", text=payload.user_utterance, sampling=sampling, sanitize=sanitize, received_at=received_at)
        self._launch(session, frame.request_id, spec, previous)

    async def followup(self, frame: frames.ClientFrame, received_at: float) -> None:
        payload = frame.payload
        assert isinstance(payload, frames.FollowupPayload) and frame.session_id is not None
        session = self._session(frame)
        if self.runtime.engine is None:
            raise FrameError(
                "engine_unavailable",
                "followup needs a chat model; this deployment runs the classifier only (DEPLOY_MODE=tool)",
                retryable=False,
            )
        self._not_draining()
        previous = self._barge_in(session)
        sampling, sanitize = self.resolve(session.sampling)
        spec = TurnSpec(kind="followup", text=payload.analysis_text, sampling=sampling, sanitize=sanitize, received_at=received_at)
        self._launch(session, frame.request_id, spec, previous)

    def _session(self, frame: frames.ClientFrame) -> Session:
        session = self.sessions.get(frame.session_id or "")
        if session is None:
            raise FrameError(
                "session_not_found",
                f"no session {frame.session_id!r} on this connection; send `start` first",
            )
        return session

    def cancel(self, frame: frames.ClientFrame) -> None:
        payload = frame.payload
        assert isinstance(payload, frames.CancelPayload)
        targets = self._targets(frame)
        for turn in targets:
            turn.cancel(payload.reason, announce=True)
        if not targets:
            # Nothing running: still exactly one answer.
            self.emit(
                frames.encode("cancelled", frame.session_id, frame.request_id, frames.CancelledPayload(payload.reason))
            )

    def _targets(self, frame: frames.ClientFrame) -> list[Turn]:
        if frame.session_id is not None:
            session = self.sessions.get(frame.session_id)
            turn = session.running if session else None
            return [turn] if turn is not None else []
        running = self._running()
        if frame.request_id is not None:
            return [t for t in running if t.request_id == frame.request_id]
        return running

    def end(self, frame: frames.ClientFrame) -> None:
        """Cancel what runs on the socket (announced), then ``session_end``; the
        caller closes 1000, which ends every session of the socket."""
        for turn in self._running():
            turn.cancel("end", announce=True)
        self.emit(frames.encode("session_end", frame.session_id, frame.request_id, frames.EMPTY))
        self.closed = True
        self._close_spans("end")

    def _running(self) -> list[Turn]:
        """The running turns of every session of the socket."""
        return [turn for s in self.sessions.values() if (turn := s.running) is not None]

    async def close(self) -> None:
        """The socket is gone: stop every turn without frames and wait for the
        engine aborts to complete."""
        self.closed = True
        for session in self.sessions.values():
            turn = session.turn
            if turn is not None and turn.open:
                turn.cancel("disconnect", announce=False)
        tasks = list(self.tasks)
        for task in tasks:
            if not task.cancelling():  # a second cancel could cut the engine abort short
                task.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
        self._close_spans("closed")

    def _close_spans(self, reason: str) -> None:
        tele = self.runtime.telemetry
        for session in self.sessions.values():
            tele.session_closed(session.span, reason)
            tele.session_churn()
        self.sessions.clear()
