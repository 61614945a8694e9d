"""One accepted, authenticated WebSocket: frames in, frames out, limits.

- Inbound: size check, decode, per-connection sliding-window rate limits,
  dispatch to the socket's sessions. Errors answer with one ``error`` frame and
  never close the socket (except ``message_too_large``: 1009).
- Outbound: one bounded queue per socket drained by one sender task. A client
  that stops reading fills it; at WS_SEND_QUEUE_MAX frames the socket is closed
  with 1008 ("client not reading") instead of growing memory. Token pieces of a
  turn that arrive while its previous token frame still waits in the queue join
  that frame: when the socket (or the server) lags, it sends fewer, larger
  frames instead of falling further behind; when it keeps up, every piece goes
  out on its own at once. The limit counts pieces, joined or not, so a client
  that stops reading is dropped exactly as soon as without joining.
  TOKEN_FRAME_INTERVAL_MS > 0 makes pieces wait on purpose: after a turn's
  token frame, its next one leaves at most that often (the turn's first at
  once, and at once when any other frame queues behind it, so ``final``,
  ``done`` and ``cancelled`` are never held). Fewer frames, less CPU per token
  on both ends of the socket, when tokens come faster than anyone listens.
- Idle: no inbound frame for WS_IDLE_TIMEOUT_S while no turn of this socket
  runs closes with 4000.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from yap_core import frames
from yap_core.frames import FrameError
from yap_core.limits import SlidingWindow
from yap_core.runtime import Runtime
from yap_core.session import SessionHost, eager_task_factory

log = logging.getLogger("yap.connection")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013
CLOSE_IDLE = 4000
_CLOSE_TIMEOUT_S = 5.0  # a close handshake with a client that never answers


class PendingTokens:
    """One queued ``token`` frame, encoded only when its turn to be sent comes,
    so that pieces arriving meanwhile can join it."""

    __slots__ = ("session_id", "request_id", "pieces")

    def __init__(self, session_id: str, request_id: str, piece: str) -> None:
        self.session_id = session_id
        self.request_id = request_id
        self.pieces = [piece]

    def encode(self) -> str:
        return frames.encode("token", self.session_id, self.request_id, frames.TokenPayload("".join(self.pieces)))


class Outbox:
    """The bounded send queue of one socket."""

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        limit: int,
        on_overflow: Callable[[], None],
        token_interval_s: float = 0.0,
    ) -> None:
        self._send = send
        self._limit = limit
        self._interval = token_interval_s
        # The request id of the last token frame sent, and when it was sent.
        self._last_token: tuple[str, float] = ("", 0.0)
        self._hold: asyncio.Future[None] | None = None  # set while a token frame is held
        self._queue: deque[str | PendingTokens] = deque()
        self._queued = 0  # frames and token pieces in the queue: what the limit counts
        self._sending: str | PendingTokens | None = None  # the head, while it is being sent
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._on_overflow = on_overflow
        self.closed = False
        # Python 3.12+ (eager tasks): a frame put while the sender is parked can
        # be sent at once, inside put() (see _start_now); on 3.11 the sender sends all.
        self._parked = False  # the sender waits on an empty queue
        self._direct: asyncio.Task[None] | None = None  # such a send, while it waits on the socket
        self._failed: BaseException | None = None  # what ended such a send; the sender raises it
        self._token_request = ""  # the request id of the last token piece put

    def put(self, item: str | PendingTokens, now: bool = True) -> bool:
        """Queue a frame. ``now``: if the socket is idle, send it at once from
        the caller's step (Python 3.12+; see _start_now)."""
        if not self._room():
            return False
        self._queue.append(item)
        self._queued += 1
        self._empty.clear()
        if now and self._parked and eager_task_factory is not None and self._direct is None and len(self._queue) == 1:
            self._start_now(item)
            return True
        self._wake.set()
        if self._hold is not None and not self._hold.done():
            self._hold.set_result(None)  # a frame behind the held one: send it now
        return True

    def put_token(self, session_id: str, request_id: str, piece: str) -> bool:
        """Queue a token piece: it joins the turn's last queued token frame if
        that frame is still waiting (not being sent yet), else starts one.
        Only a turn's first piece is sent at once: the pieces after it go
        through the sender, so that the turns one engine step wakes do not
        write their sockets ahead of a new turn's first token. (Two turns
        interleaving on one socket each count as new at every switch: more
        of their pieces go at once, in the same order.)"""
        first = request_id != self._token_request
        self._token_request = request_id
        tail = self._queue[-1] if self._queue else None
        if (
            type(tail) is PendingTokens
            and tail is not self._sending
            and tail.request_id == request_id
            and tail.session_id == session_id
        ):
            if not self._room():
                return False
            tail.pieces.append(piece)
            self._queued += 1
            return True
        return self.put(PendingTokens(session_id, request_id, piece), now=first)

    def _room(self) -> bool:
        if self.closed:
            return False
        if self._queued >= self._limit:
            self.closed = True
            self._on_overflow()
            return False
        return True

    def _start_now(self, item: str | PendingTokens) -> None:
        """Send ``item`` from the caller's own step. Under load the engine's
        outputs wake every turn of the worker at once: a frame left to the
        sender would go out only after every other turn's step and every
        other socket's sender ahead of it. While this send waits on the socket
        (rarely: a full buffer) it is the head being sent, and the sender
        takes the frames queued behind it once it is done."""
        assert eager_task_factory is not None
        task = eager_task_factory(asyncio.get_running_loop(), self._send_now(item), name="ws-send")
        if not task.done():
            self._direct = task

    async def _write(self, item: str | PendingTokens) -> None:
        """Send the head of the queue; from now on no piece joins it."""
        self._sending = item
        await self._send(item if type(item) is str else item.encode())  # type: ignore[union-attr]
        if type(item) is PendingTokens and self._interval:
            self._last_token = (item.request_id, time.monotonic())

    def _pop(self, item: str | PendingTokens) -> None:
        """The head is sent (or failed): out of the queue and the limit's count."""
        self._queue.popleft()
        self._queued -= 1 if type(item) is str else len(item.pieces)  # type: ignore[union-attr]
        self._sending = None

    async def _send_now(self, item: str | PendingTokens) -> None:
        try:
            await self._write(item)
        except Exception as exc:  # the sender raises it, as if it had sent this frame itself
            self._failed = exc
        finally:
            self._pop(item)
            self._direct = None
            self._wake.set()  # the sender: the frames behind this one, or the failure
            if not self._queue:
                self._empty.set()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if self._direct is not None:
                self._direct.cancel()

    async def _run(self) -> None:
        queue = self._queue
        while True:
            while not queue or self._direct is not None:
                if self._failed is not None:
                    raise self._failed
                if not queue:
                    self._empty.set()
                self._parked = not queue
                self._wake.clear()
                await self._wake.wait()
                self._parked = False
            if self._failed is not None:
                raise self._failed
            item = queue[0]
            if type(item) is PendingTokens and self._interval:
                await self._hold_tokens(item)
            await self._write(item)
            self._pop(item)

    async def _hold_tokens(self, item: PendingTokens) -> None:
        """Let pieces join ``item`` until the interval since its turn's last
        token frame is over, or until another frame queues behind it."""
        request_id, sent_at = self._last_token
        delay = sent_at + self._interval - time.monotonic()
        if item.request_id != request_id or delay <= 0 or len(self._queue) > 1:
            return
        loop = asyncio.get_running_loop()
        hold = self._hold = loop.create_future()
        timer = loop.call_later(delay, _release, hold)
        try:
            await hold
        finally:
            timer.cancel()
            self._hold = None

    async def flush(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._empty.wait()


def _release(hold: asyncio.Future[None]) -> None:
    if not hold.done():
        hold.set_result(None)


class Connection:
    def __init__(
        self,
        runtime: Runtime,
        receive: Callable[[], Awaitable[dict]],
        send: Callable[[dict], Awaitable[None]],
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self._receive = receive
        self._send_asgi = send
        s = self.settings
        self.outbox = Outbox(
            self._send_text, s.ws_send_queue_max, self._overflow, s.token_frame_interval_ms / 1000.0
        )
        self.host = SessionHost(runtime, self.outbox.put, self.outbox.put_token)
        self.messages = SlidingWindow(s.ws_max_messages_per_window, s.ws_message_window_seconds)
        self.cancels = SlidingWindow(s.ws_max_cancels_per_window, s.ws_cancel_window_seconds)
        self.last_inbound = time.monotonic()
        self.close_code: int | None = None
        self.close_reason = ""
        self._closing = asyncio.Event()
        self._max_bytes = s.ws_max_message_bytes
        self._client_open = True  # until the client's close or disconnect arrives

    async def _send_text(self, text: str) -> None:
        await self._send_asgi({"type": "websocket.send", "text": text})

    # --- closing --------------------------------------------------------------
    def shutdown(self, code: int, reason: str) -> None:
        """Ask the socket to close with ``code`` once queued frames are flushed."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._closing.set()

    def _overflow(self) -> None:
        log.warning("closing a socket whose client stopped reading (%d frames queued)", self.settings.ws_send_queue_max)
        self.shutdown(CLOSE_POLICY, "send queue full: client not reading")

    # --- main loop --------------------------------------------------------------
    async def serve(self) -> None:
        sender = asyncio.create_task(self.outbox.run(), name="ws-sender")
        reader = asyncio.create_task(self._read(), name="ws-reader")
        idle = asyncio.create_task(self._idle(), name="ws-idle")
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({reader, closing, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, idle, closing):
                task.cancel()
            # Turns cut off by the close get no terminal frame; their engine requests are aborted.
            await self.host.close()
            if self.close_code is not None and not sender.done():
                if self.close_code != CLOSE_POLICY:
                    await self.outbox.flush(_CLOSE_TIMEOUT_S)
            sender.cancel()
            if self.close_code is not None and self._client_open:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                        await self._send_asgi(
                            {"type": "websocket.close", "code": self.close_code or CLOSE_NORMAL, "reason": self.close_reason}
                        )
            if self.close_code is not None and self._client_open:
                # Take what the client still sends until its close reply (or a deadline):
                # left unread, Hypercorn's bounded app queue fills, its reader blocks and
                # the TCP connection is never closed (one leaked socket per slow reader).
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                        while (await self._receive())["type"] != "websocket.disconnect":
                            pass
            for task in (reader, idle, closing, sender):
                with contextlib.suppress(BaseException):
                    await task

    async def _read(self) -> None:
        receive = self._receive
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self._client_open = False
                return
            if kind != "websocket.receive":
                continue
            received_at = time.perf_counter()
            self.last_inbound = time.monotonic()
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                if len(data) > self._max_bytes:
                    self._too_large(len(data))
                    return
                self.outbox.put(frames.error_frame("invalid_message", "frames must be text (JSON), not binary"))
                continue
            if len(text) > self._max_bytes // 4 and len(text.encode()) > self._max_bytes:
                self._too_large(len(text.encode()))
                return
            await self._handle(text, received_at)

    def _too_large(self, size: int) -> None:
        self.runtime.telemetry.error("message_too_large")
        self.outbox.put(
            frames.error_frame(
                "message_too_large",
                f"frame of {size} bytes is over WS_MAX_MESSAGE_BYTES ({self._max_bytes})",
            )
        )
        self.shutdown(CLOSE_TOO_BIG, "message too large")

    async def _handle(self, text: str, received_at: float) -> None:
        try:
            frame = frames.decode(text)
        except FrameError as exc:
            self._error(exc)
            return
        kind = frame.type
        try:
            if kind == "ping":
                self.outbox.put(frames.encode("pong", frame.session_id, frame.request_id, frames.EMPTY))
            elif kind == "pong":
                return
            elif kind in ("start", "message", "followup"):
                self._admit(self.messages, "message", "start/message/followup")
                if kind == "start":
                    await self.host.start(frame, received_at)
                elif kind == "message":
                    await self.host.message(frame, received_at)
                else:
                    await self.host.followup(frame, received_at)
            elif kind == "cancel":
                self._admit(self.cancels, "cancel", "cancel")
                self.host.cancel(frame)
            elif kind == "end":
                self.host.end(frame)
                self.shutdown(CLOSE_NORMAL, "session ended")
        except FrameError as exc:
            exc.session_id = exc.session_id or frame.session_id
            exc.request_id = exc.request_id or frame.request_id
            self._error(exc)
        except Exception as exc:  # a bug must cost one frame, not the socket
            log.exception("handling a %s frame failed", kind)
            self._error(
                FrameError(
                    "internal_error",
                    f"the server failed on this frame: {type(exc).__name__}",
                    session_id=frame.session_id,
                    request_id=frame.request_id,
                ),
                cause=exc,
            )

    def _admit(self, window: SlidingWindow, kind: str, frames_counted: str) -> None:
        """Count one frame against ``window``; over its limit, ``rate_limited``."""
        wait = window.admit()
        if wait:
            self.runtime.telemetry.rate_limit_violation(kind)
            raise FrameError(
                "rate_limited",
                f"over {window.limit} {frames_counted} per {window.window_s:g}s",
                retry_after_ms=wait,
            )

    def _error(self, exc: FrameError, cause: BaseException | None = None) -> None:
        self.runtime.telemetry.error(exc.code, cause)
        self.outbox.put(
            frames.error_frame(
                exc.code,
                exc.message,
                session_id=exc.session_id,
                request_id=exc.request_id,
                retryable=exc.retryable,
                retry_after_ms=exc.retry_after_ms,
                field=exc.field,
            )
        )

    async def _idle(self) -> None:
        timeout = self.settings.ws_idle_timeout_s
        while True:
            if self.host.running_turns:
                await asyncio.sleep(timeout)
                continue
            quiet = time.monotonic() - max(self.last_inbound, self.host.idle_since)
            if quiet >= timeout:
                self.runtime.telemetry.timeout_disconnect()
                self.shutdown(CLOSE_IDLE, "idle timeout")
                return
            await asyncio.sleep(timeout - quiet + 0.01)
