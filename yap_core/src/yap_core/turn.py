"""One turn: classifier decision, prompt, engine stream, frames, history.

Every frame of a turn goes through ``Turn.emit``, which drops it once the
turn's gate is closed. The gate closes synchronously when the turn is
cancelled (before the ``cancelled`` frame is queued) and when its terminal
frame is queued, so after ``cancelled`` (or ``done``/``error``) no frame with
that request_id is ever sent. Cancellation, barge-in, ``end``, disconnect and
CHAT_TIMEOUT_S all reach the engine as an abort: the stream iterator is closed
and ``engine.abort`` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

import msgspec

from yap_core import frames
from yap_core.contracts import Decision, Delta, GenerationRequest, Sampling
from yap_core.prompt_types import Message, PromptError, RenderedPrompt
from yap_core.runtime import Runtime
from yap_core.sanitizer import StreamSanitizer

log = logging.getLogger("yap.turn")
timing_log = logging.getLogger("yap.timing")  # TURN_TIMING_LOG
_TIMING_MARK = "yap.timing: turn "


def timing_records(log_text: str) -> dict[str, dict[str, Any]]:
    """The TURN_TIMING_LOG lines in a server log's text, by request id (for benchmarks)."""
    out = {}
    for line in log_text.splitlines():
        at = line.find(_TIMING_MARK)
        if at >= 0:
            rec = msgspec.json.decode(line[at + len(_TIMING_MARK) :])
            out[rec["request_id"]] = rec
    return out


TurnKind = Literal["utterance", "followup"]
Emit = Callable[[str], bool]  # queue one encoded frame; False: the socket is closing
EmitToken = Callable[[str, str, str], bool]  # (session_id, request_id, piece): queue a token piece


class TurnSpec(msgspec.Struct, kw_only=True):
    """What a turn needs, decided by the session when the frame arrived."""

    kind: TurnKind
    text: str  # the utterance, or the followup's analysis text
    sampling: Sampling
    sanitize: bool
    received_at: float  # perf_counter() when the frame arrived


class Turn:
    """The mutable state of one running turn, owned by its session."""

    def __init__(
        self, session_id: str, request_id: str, emit: Emit, emit_token: EmitToken, on_cancel: Callable[[str], None]
    ) -> None:
        self.session_id = session_id
        self.request_id = request_id
        self.open = True
        self._emit = emit
        self._emit_token = emit_token
        self._on_cancel = on_cancel  # counts the cancellation (Telemetry.cancellation)
        self.task: asyncio.Task[None] | None = None
        self.sent: list[str] = []  # token texts queued to the client: what the user heard
        self.cancel_reason: str | None = None

    def emit(self, frame_type: str, payload: frames.ServerPayload) -> None:
        if self.open:
            self._emit(frames.encode(frame_type, self.session_id, self.request_id, payload))

    def emit_token(self, piece: str) -> None:
        """A piece of the reply (may share a frame with the next pieces if the
        socket lags; see ``connection.Outbox``)."""
        if self.open:
            self._emit_token(self.session_id, self.request_id, piece)

    def emit_error(self, code: str, message: str, retryable: bool | None = None) -> None:
        if self.open:
            self._emit(
                frames.error_frame(
                    code, message, session_id=self.session_id, request_id=self.request_id, retryable=retryable
                )
            )

    def finish(self) -> None:
        """Close the gate: the terminal frame was queued (or the socket is gone)."""
        self.open = False

    def cancel(self, reason: str, *, announce: bool) -> None:
        """Stop the turn. With ``announce``, queue its ``cancelled`` frame after
        closing the gate, so nothing of this turn can follow it."""
        if not self.open:
            return  # already ended: its terminal frame was queued
        self.open = False
        self.cancel_reason = reason
        # Counted here, not in the turn's task: a turn stopped before its task
        # first ran (a barge-in or cancel in the same read as its frame) never
        # runs any of its code.
        self._on_cancel(reason)
        if announce:
            self._emit(frames.encode("cancelled", self.session_id, self.request_id, frames.CancelledPayload(reason)))
        if self.task is not None and not self.task.done():
            self.task.cancel()


class ClassifyResult(msgspec.Struct):
    decision: Decision
    outcome: Literal["yes", "no", "timeout", "error"]


async def classify(runtime: Runtime, user_turns: Sequence[str]) -> ClassifyResult:
    """The classifier's decision; a failure or TOOL_TIMEOUT_S counts as no and
    never blocks the chat reply."""
    assert runtime.classifier is not None
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(runtime.settings.tool_timeout_s):
            decision = await runtime.classifier.classify(list(user_turns))
        outcome: Literal["yes", "no", "timeout", "error"] = "yes" if decision.screenshot else "no"
    except TimeoutError:
        decision = Decision(screenshot=False, confidence=0.0, raw={"timed_out": True}, timed_out=True)
        outcome = "timeout"
    except Exception as exc:  # a broken classifier must not take the chat reply down
        log.warning("classifier failed: %s", exc)
        decision = Decision(screenshot=False, confidence=0.0, raw={"error": type(exc).__name__})
        outcome = "error"
    runtime.telemetry.tool_classification(time.perf_counter() - t0, outcome)
    return ClassifyResult(decision, outcome)


def toolcall_payload(decision: Decision) -> frames.ToolcallPayload:
    try:  # raw must survive JSON (a plugin may hand numpy scalars)
        raw = msgspec.json.decode(msgspec.json.encode(decision.raw))
    except (TypeError, msgspec.EncodeError):
        raw = {"unserializable": repr(decision.raw)[:200]}
    confidence = min(1.0, max(0.0, float(decision.confidence)))
    if decision.screenshot:
        return frames.ToolcallPayload("yes", "take_screenshot", confidence, raw)
    return frames.ToolcallPayload("no", None, confidence, raw)


class TurnRunner:
    """Runs one turn of a session to its single terminal frame."""

    def __init__(
        self,
        runtime: Runtime,
        turn: Turn,
        spec: TurnSpec,
        system: str,
        history: list[Message],
        session_span: object = None,
    ) -> None:
        self.runtime = runtime
        self.session_span = session_span
        self.turn = turn
        self.spec = spec
        self.system = system
        self.history = history
        self.rendered: RenderedPrompt | None = None
        self._added: list[str] = []  # contents _remember added to the history
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        # perf_counter() marks for TURN_TIMING_LOG: where the time to first token went
        self.started_at: float | None = None
        self.render_started_at: float | None = None
        self.rendered_inline = False
        self.rendered_at: float | None = None
        self.submitted_at: float | None = None
        self.first_delta_at: float | None = None
        self.completion_tokens = 0
        self.cached_tokens = 0

    # --- entry point ------------------------------------------------------------
    async def run(self) -> None:
        rt = self.runtime
        tele = rt.telemetry
        turn = self.turn
        self.started_at = time.perf_counter()
        rt.turn_started()
        tele.generation_started()
        status = "error"
        try:
            attrs = {"session_id": turn.session_id, "request_id": turn.request_id, "kind": self.spec.kind}
            with tele.span("request", attrs, parent=self.session_span):
                async with asyncio.timeout(rt.settings.chat_timeout_s):
                    if rt.engine is None:
                        await self._tool_only()
                    else:
                        await self._chat()
            status = "done"
        except asyncio.CancelledError:
            status = "cancelled"  # counted by Turn.cancel
            raise
        except TimeoutError:
            tele.cancellation("timeout")
            self._fail("timeout", f"the turn ran past CHAT_TIMEOUT_S ({rt.settings.chat_timeout_s:g}s)")
        except PromptError as exc:
            self._fail(exc.code, exc.message)
        except Exception as exc:
            log.exception("turn %s failed", turn.request_id)
            self._fail("internal_error", f"the engine failed: {type(exc).__name__}", exc)
        finally:
            turn.finish()
            self._remember()
            rt.turn_finished()
            now = time.perf_counter()
            tele.generation_finished(
                status,
                ttft_s=None if self.first_token_at is None else self.first_token_at - self.spec.received_at,
                total_s=now - self.spec.received_at,
                prompt_tokens=len(self.rendered.token_ids) if self.rendered else 0,
                completion_tokens=self.completion_tokens,
            )
            if rt.settings.turn_timing_log:
                self._log_timing(status, now)

    def _log_timing(self, status: str, now: float) -> None:
        t0 = self.spec.received_at

        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 3)

        timing_log.info(
            "turn %s",
            msgspec.json.encode(
                {
                    "request_id": self.turn.request_id,
                    "status": status,
                    "task_ms": ms(t0, self.started_at),  # frame arrived -> the turn's task runs
                    "render_call_ms": ms(self.render_started_at, self.rendered_at),  # the prompt render itself
                    "render_inline": self.rendered_inline,  # False: in a worker thread
                    "render_ms": ms(t0, self.rendered_at),  # frame arrived -> prompt ids ready
                    "submit_ms": ms(t0, self.submitted_at),  # frame arrived -> engine.stream called
                    "engine_first_ms": ms(self.submitted_at, self.first_delta_at),  # engine's own TTFT
                    "after_engine_ms": ms(self.first_delta_at, self.first_token_at),  # sanitizer, frame
                    "ttft_ms": ms(t0, self.first_token_at),
                    "total_ms": ms(t0, now),
                    "completion_tokens": self.completion_tokens,
                    # The two ends as clock readings (perf_counter: CLOCK_MONOTONIC on Linux,
                    # one clock for every process of the host), so a client on the same host
                    # can tell its own send/receive hops from the server's time.
                    "received_at": round(t0, 6),
                    "first_token_at": None if self.first_token_at is None else round(self.first_token_at, 6),
                }
            ).decode(),
        )

    def _fail(self, code: str, message: str, exc: BaseException | None = None) -> None:
        self.runtime.telemetry.error(code, exc)
        self.turn.emit_error(code, message)
        self.turn.finish()

    def new_history(self) -> list[str]:
        """The contents this turn added to the history (tokenized ahead of the next turn)."""
        return self._added

    def _remember(self) -> None:
        """Keep what the user said and heard (only if the engine saw the prompt)."""
        if self.spec.kind == "followup":
            user = self.runtime.settings.followup_prefix + self.spec.text
        else:
            user = self.spec.text
        if self.runtime.engine is None:
            self._added = [user]
            self.history.append(Message(role="user", content=user))
        elif self.rendered is not None:
            self._added = [user, "".join(self.turn.sent)]
            self.history.append(Message(role="user", content=user))
            self.history.append(Message(role="assistant", content=self._added[1]))

    # --- classifier-only deployment ------------------------------------------
    async def _tool_only(self) -> None:
        result = await classify(self.runtime, self._user_turns())
        self.turn.emit("toolcall", toolcall_payload(result.decision))
        self._done("stop", prompt_tokens=0)

    def _user_turns(self) -> list[str]:
        """Earlier user turns, then the utterance: only the newest
        TOOL_HISTORY_TOKENS, all the classifier can read (a turn is at least
        one token), so a long session's decision costs what a short one's does."""
        turns = [self.spec.text]
        room = self.runtime.settings.tool_history_tokens
        for message in reversed(self.history):
            if len(turns) > room:
                break
            if message.role == "user":
                turns.append(message.content)
        turns.reverse()
        return turns

    # --- chat -------------------------------------------------------------------
    async def _render(self, model_text: str) -> RenderedPrompt:
        builder = self.runtime.chat.builder  # type: ignore[union-attr]
        self.render_started_at = time.perf_counter()
        history = tuple(self.history)
        max_out = self.spec.sampling.max_tokens
        # Prepared, or everything but a short utterance tokenized already:
        # rendering here costs less than the hop to a worker thread would.
        rendered = builder.render_inline(self.system, history, model_text, max_out)
        self.rendered_inline = rendered is not None
        if rendered is None:
            rendered = await asyncio.to_thread(builder.render, self.system, history, model_text, max_out)
        self.rendered = rendered
        self.rendered_at = time.perf_counter()
        return rendered

    def _request(self, rendered: RenderedPrompt) -> GenerationRequest:
        self.submitted_at = time.perf_counter()
        return GenerationRequest(
            request_id=self.turn.request_id, prompt_token_ids=rendered.token_ids, sampling=self.spec.sampling
        )

    async def _chat(self) -> None:
        rt = self.runtime
        spec = self.spec
        if spec.kind == "followup":
            await self._generate(await self._render(rt.settings.followup_prefix + spec.text))
            return
        if rt.classifier is None:
            await self._generate(await self._render(spec.text))
            return
        if rt.settings.concurrent_model_call:
            await self._chat_concurrent()
            return
        result = await classify(rt, self._user_turns())
        self.turn.emit("toolcall", toolcall_payload(result.decision))
        text = rt.settings.screen_check_prefix + spec.text if result.decision.screenshot else spec.text
        await self._generate(await self._render(text))

    async def _chat_concurrent(self) -> None:
        """Classifier and chat together. The chat starts speculatively on the
        plain utterance and its first delta is held until the decision is sent;
        on yes that stream is aborted and the chat restarts behind the
        screen-check prefix (yes is the rare case)."""
        rt = self.runtime
        decision_task = asyncio.create_task(classify(rt, self._user_turns()))
        stream: AsyncIterator[Delta] | None = None
        first: asyncio.Task[Delta] | None = None
        try:
            rendered = await self._render(self.spec.text)
            stream = rt.engine.stream(self._request(rendered))  # type: ignore[union-attr]
            first = asyncio.create_task(_next(stream))
            result = await decision_task
            self.turn.emit("toolcall", toolcall_payload(result.decision))
            if result.decision.screenshot:
                await _discard(first, stream, rt, self.turn.request_id)
                first = None
                stream = None
                await self._generate(await self._render(rt.settings.screen_check_prefix + self.spec.text))
                return
            head = await first  # the held first delta
            first = None
            await self._consume(stream, head)
        finally:
            decision_task.cancel()
            if first is not None or stream is not None:
                await _discard(first, stream, rt, self.turn.request_id)

    async def _generate(self, rendered: RenderedPrompt) -> None:
        stream = self.runtime.engine.stream(self._request(rendered))  # type: ignore[union-attr]
        try:
            await self._consume(stream, None)
        finally:
            await _discard(None, stream, self.runtime, self.turn.request_id)

    async def _consume(self, stream: AsyncIterator[Delta], first: Delta | None) -> None:
        """Forward deltas as token frames (through the sanitizer), then final and done."""
        sanitizer = StreamSanitizer() if self.spec.sanitize else None
        last: Delta | None = None
        tele = self.runtime.telemetry
        turn = self.turn

        def forward(delta: Delta) -> None:
            nonlocal last
            last = delta
            self.completion_tokens = delta.completion_tokens
            self.cached_tokens = delta.cached_prompt_tokens
            if not delta.text:
                return
            if self.first_delta_at is None:
                self.first_delta_at = time.perf_counter()
            piece = sanitizer.feed(delta.text) if sanitizer is not None else delta.text
            if piece:
                self._send_token(piece)

        if first is not None:
            forward(first)
        if last is None or last.finish_reason is None:
            with tele.span("generation", {"request_id": turn.request_id}):
                async for delta in stream:
                    forward(delta)
                    if delta.finish_reason is not None:
                        break
        if sanitizer is not None:
            tail = sanitizer.finish()
            if tail:
                self._send_token(tail)
        reason = last.finish_reason if last is not None else None
        if reason not in ("stop", "length"):
            raise EngineStopped(f"the engine ended the request with finish_reason={reason!r}")
        turn.emit("final", frames.FinalPayload("".join(turn.sent)))
        prompt_tokens = len(self.rendered.token_ids) if self.rendered else 0
        self._done(reason, prompt_tokens=prompt_tokens)  # type: ignore[arg-type]

    def _send_token(self, piece: str) -> None:
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        else:
            self.runtime.telemetry.token(now - (self.last_token_at or now))
        self.last_token_at = now
        self.turn.sent.append(piece)
        self.turn.emit_token(piece)

    def _done(self, reason: Literal["stop", "length"], *, prompt_tokens: int) -> None:
        now = time.perf_counter()
        received = self.spec.received_at
        usage = frames.Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_prompt_tokens=min(self.cached_tokens, prompt_tokens),
            ttft_ms=None if self.first_token_at is None else round((self.first_token_at - received) * 1000, 3),
            total_ms=round((now - received) * 1000, 3),
        )
        self.turn.emit("done", frames.DonePayload(reason, usage))
        self.turn.finish()


async def _next(stream: AsyncIterator[Delta]) -> Delta:
    return await anext(stream)


class EngineStopped(RuntimeError):
    """The engine ended a request we did not cancel (finish_reason abort/error)."""


async def _discard(
    first: asyncio.Task[Delta] | None, stream: AsyncIterator[Delta] | None, runtime: Runtime, request_id: str
) -> None:
    """Abort a stream: cancel a pending read, close the iterator, tell the engine."""
    if first is not None and not first.done():
        first.cancel()
        with contextlib.suppress(BaseException):
            await first
    if stream is not None:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    if runtime.engine is not None:
        with contextlib.suppress(Exception):
            await runtime.engine.abort(request_id)
