"""One soak client socket and the things a flaky phone does with it.

Each action sends real frames to the server and reads until the outcome the
protocol promises (a terminal frame, a pong, an error code, a close), feeding
every inbound frame to the socket's ledger. A socket that closes raises
`SocketClosed`; the caller decides whether that close was expected.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from yap_core.soak_ledger import ServerFrame, SocketLedger, Tally
from yap_core.wsclient import new_id

WORDS = (
    "hello how are you today can you help me with my screen what is this button "
    "tell me a story about the sea please stop no wait yes look at that weather "
    "café naïve 你好 🙂 Ünïcödé ok thanks"
).split()


class SocketClosed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"socket closed with {code}")
        self.code = code


class Unexpected(Exception):
    """The server did not answer as the protocol says (recorded as a violation)."""


def utterance(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


class SoakSocket:
    """A connected client socket with its ledger."""

    def __init__(self, ws: ClientConnection, ledger: SocketLedger, rng: random.Random, *,
                 frame_timeout: float, max_tokens: int, max_message_bytes: int) -> None:
        self.ws = ws
        self.ledger = ledger
        self.rng = rng
        self.frame_timeout = frame_timeout
        self.max_tokens = max_tokens
        self.max_message_bytes = max_message_bytes
        self.session_id = new_id()

    @property
    def tally(self) -> Tally:
        return self.ledger.tally

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else msgspec.json.encode(frame).decode()
        try:
            await self.ws.send(text)
        except ConnectionClosed as exc:
            raise SocketClosed(exc.rcvd.code if exc.rcvd else None) from None

    async def recv(self) -> ServerFrame | None:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), self.frame_timeout)
        except ConnectionClosed as exc:
            raise SocketClosed(exc.rcvd.code if exc.rcvd else None) from None
        except TimeoutError:
            raise Unexpected(f"no frame within {self.frame_timeout}s") from None
        return self.ledger.observe(raw)

    async def until(self, done: Callable[[], bool], on_frame: Callable[[ServerFrame], None] | None = None) -> None:
        while not done():
            frame = await self.recv()
            if frame is not None and on_frame is not None:
                on_frame(frame)

    def _sampling(self) -> dict[str, Any]:
        return {"max_tokens": self.rng.randint(1, self.max_tokens)}

    async def begin(self) -> None:
        """First frame of a socket: a start, with or without an utterance."""
        rid = new_id()
        payload: dict[str, Any] = {"chat_prompt": "You are a brief, friendly voice assistant.",
                                   "sampling": self._sampling()}
        if self.rng.random() < 0.5:
            self.ledger.ready(rid, self.session_id)
            await self.send({"type": "start", "session_id": self.session_id, "request_id": rid, "payload": payload})
            await self.until(lambda: rid not in self.ledger.readies)
        else:
            payload["user_utterance"] = utterance(self.rng)
            self.ledger.turn(rid, self.session_id)
            await self.send({"type": "start", "session_id": self.session_id, "request_id": rid, "payload": payload})
            await self.until(lambda: self.ledger.ended(rid) is not None)

    async def message(self, session_id: str | None = None) -> str:
        """Send a turn; returns its request id (not waited for)."""
        sid = session_id or self.session_id
        rid = new_id()
        self.ledger.turn(rid, sid)
        await self.send({"type": "message", "session_id": sid, "request_id": rid,
                         "payload": {"user_utterance": utterance(self.rng), "sampling": self._sampling()}})
        return rid

    async def first_frame_of(self, rid: str) -> None:
        """Read until the turn shows a frame (so it is mid-stream) or ends."""
        seen = False

        def mark(frame: ServerFrame) -> None:
            nonlocal seen
            seen = seen or frame.request_id == rid

        await self.until(lambda: seen or self.ledger.ended(rid) is not None, mark)

    async def finish(self, *rids: str) -> list[str | None]:
        await self.until(lambda: all(self.ledger.ended(r) is not None for r in rids))
        return [self.ledger.ended(r) for r in rids]

    async def expect_error(self, code: str, extra_done: Callable[[], bool] = lambda: True) -> None:
        got: list[str] = []

        def collect(frame: ServerFrame) -> None:
            if frame.type == "error" and frame.request_id not in self.ledger.turns:
                got.append(str(frame.payload.get("code")))

        await self.until(lambda: bool(got) and extra_done(), collect)
        if got[0] != code:
            raise Unexpected(f"expected error {code}, got {got[0]}")

    # --- actions --------------------------------------------------------------

    async def act_turn(self) -> None:
        rid = await self.message()
        await self.finish(rid)  # any terminal frame; the tally counts which

    async def act_barge_in(self) -> None:
        old = await self.message()
        await self.first_frame_of(old)
        new = await self.message()
        order_ok = True

        def check(frame: ServerFrame) -> None:
            nonlocal order_ok
            if frame.request_id == new and self.ledger.ended(old) is None:
                order_ok = False

        await self.until(lambda: self.ledger.ended(new) is not None, check)
        if not order_ok:
            raise Unexpected("new turn's frames arrived before the barged-in turn ended")
        if self.ledger.ended(old) not in ("done", "cancelled"):
            raise Unexpected(f"barged-in turn ended with {self.ledger.ended(old)}")

    async def act_cancel(self) -> None:
        rid = await self.message()
        await self.first_frame_of(rid)
        before = self.ledger.noop_cancels
        reason = self.rng.choice(["user spoke", "soak", ""])
        await self.send({"type": "cancel", "session_id": self.session_id, "payload": {"reason": reason}})
        # Either the turn is cancelled, or it had already finished and the cancel stops nothing.
        await self.until(lambda: self.ledger.ended(rid) == "cancelled"
                         or (self.ledger.ended(rid) is not None and self.ledger.noop_cancels > before))

    async def act_cancel_idle(self) -> None:
        before = self.ledger.noop_cancels
        await self.send({"type": "cancel", "session_id": self.session_id})
        await self.until(lambda: self.ledger.noop_cancels > before)

    async def act_ping(self) -> None:
        rid = new_id()
        self.ledger.ping(rid, self.session_id)
        await self.send({"type": "ping", "session_id": self.session_id, "request_id": rid})
        await self.until(lambda: rid not in self.ledger.pings)

    def malformed(self) -> tuple[str, str]:
        """A bad frame and the error code PROTOCOL.md gives it."""
        sid, rid = self.session_id, new_id()
        msg = {"type": "message", "session_id": sid, "request_id": rid}
        choices: list[tuple[str, str]] = [
            ("not json at all", "invalid_message"),
            ('{"type": "message", "session_id": ', "invalid_message"),
            ("[1, 2, 3]", "invalid_message"),
            ('"just a string"', "invalid_message"),
            (msgspec.json.encode({"type": "launch_missiles", "session_id": sid}).decode(), "invalid_message"),
            (msgspec.json.encode({"session_id": sid, "payload": {}}).decode(), "invalid_message"),
            (msgspec.json.encode({**msg, "payload": {"user_utterance": ""}}).decode(), "invalid_payload"),
            (msgspec.json.encode({**msg, "payload": {"user_utterance": "hi", "bogus": 1}}).decode(), "invalid_payload"),
            (msgspec.json.encode({**msg, "payload": {"user_utterance": 7}}).decode(), "invalid_payload"),
            (msgspec.json.encode({**msg, "payload": {"user_utterance": "hi",
                                                     "sampling": {"temperature": "0.5"}}}).decode(), "invalid_payload"),
            (msgspec.json.encode({**msg, "payload": {"user_utterance": "hi",
                                                     "sampling": {"top_p": 0}}}).decode(), "invalid_payload"),
            (msgspec.json.encode({**msg, "payload": {"user_utterance": "hi",
                                                     "sampling": {"max_tokens": 1.5}}}).decode(), "invalid_payload"),
            (msgspec.json.encode({**msg, "payload": {"user_utterance": "hi", "personality": "x"}}).decode(),
             "invalid_payload"),
            (msgspec.json.encode({"type": "cancel", "session_id": sid, "payload": {"reason": "r" * 201}}).decode(),
             "invalid_payload"),
        ]
        return self.rng.choice(choices)

    async def act_malformed(self) -> None:
        text, code = self.malformed()
        await self.send(text)
        await self.expect_error(code)

    async def act_malformed_mid_turn(self) -> None:
        rid = await self.message()
        await self.first_frame_of(rid)
        text, code = self.malformed()
        await self.send(text)
        await self.expect_error(code, lambda: self.ledger.ended(rid) is not None)
        if self.ledger.ended(rid) != "done":
            raise Unexpected(f"a bad frame disturbed a running turn: it ended with {self.ledger.ended(rid)}")

    async def act_not_found(self) -> None:
        sid = new_id()
        self.ledger.sessions.add(sid)  # the error echoes it
        await self.send({"type": "message", "session_id": sid, "request_id": new_id(),
                         "payload": {"user_utterance": "anyone there?"}})
        await self.expect_error("session_not_found")

    async def act_two_sessions(self) -> None:
        other = new_id()
        rid2 = new_id()
        self.ledger.turn(rid2, other)
        await self.send({"type": "start", "session_id": other, "request_id": rid2,
                         "payload": {"chat_prompt": "You are a second persona.", "user_utterance": utterance(self.rng),
                                     "sampling": self._sampling()}})
        rid1 = await self.message()
        endings = await self.finish(rid1, rid2)
        if endings != ["done", "done"]:
            raise Unexpected(f"two sessions on one socket ended {endings}: one barged the other")

    async def act_restart(self) -> None:
        rid = new_id()
        self.ledger.turn(rid, self.session_id)
        await self.send({"type": "start", "session_id": self.session_id, "request_id": rid,
                         "payload": {"chat_prompt": "You are terse.", "user_utterance": utterance(self.rng),
                                     "sampling": self._sampling()}})
        await self.finish(rid)

    # Actions below end the socket: they raise SocketClosed with the expected code.

    async def act_oversized(self) -> None:
        filler = "x" * (self.max_message_bytes + 1)
        await self.send(msgspec.json.encode({"type": "message", "session_id": self.session_id,
                                             "payload": {"user_utterance": filler}}).decode())
        await self.expect_error("message_too_large")
        await self.until(lambda: False)  # the close follows

    async def act_disconnect(self) -> None:
        rid = await self.message()
        await self.first_frame_of(rid)
        self.ws.transport.abort()  # a phone losing signal: no close frame, TCP reset
        raise SocketClosed(None)

    async def act_end(self) -> None:
        rid = await self.message()
        await self.first_frame_of(rid)
        ended_first = self.ledger.ended(rid) is not None
        order: list[str] = []

        def note(frame: ServerFrame) -> None:
            order.append(frame.type)
            if frame.type == "session_end" and self.ledger.ended(rid) is None:
                raise Unexpected("session_end before the running turn's cancelled")

        await self.send({"type": "end", "session_id": self.session_id})
        try:
            await self.until(lambda: False, note)
        except SocketClosed as closed:
            if "session_end" not in order:
                raise Unexpected(f"closed ({closed.code}) without session_end") from None
            if not ended_first and self.ledger.ended(rid) not in ("cancelled", "done"):
                raise Unexpected("end during a turn did not end it") from None
            raise


ACTIONS: dict[str, tuple[int, Callable[[SoakSocket], Awaitable[None]]]] = {
    "turn": (30, SoakSocket.act_turn),
    "barge_in": (10, SoakSocket.act_barge_in),
    "cancel": (10, SoakSocket.act_cancel),
    "cancel_idle": (3, SoakSocket.act_cancel_idle),
    "ping": (10, SoakSocket.act_ping),
    "malformed": (8, SoakSocket.act_malformed),
    "malformed_mid_turn": (4, SoakSocket.act_malformed_mid_turn),
    "not_found": (3, SoakSocket.act_not_found),
    "two_sessions": (4, SoakSocket.act_two_sessions),
    "restart": (3, SoakSocket.act_restart),
    "oversized": (2, SoakSocket.act_oversized),
    "disconnect": (5, SoakSocket.act_disconnect),
    "end": (3, SoakSocket.act_end),
}
# The close code each socket-ending action expects.
EXPECTED_CLOSE = {"oversized": 1009, "disconnect": None, "end": 1000}
