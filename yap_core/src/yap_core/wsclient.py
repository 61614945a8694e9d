"""A small async client of the Yap protocol (shared/PROTOCOL.md), with timings.

Used by the test clients (`yap client ...`), the benchmark and the soak run.
It knows the wire contract only, nothing of the server's code: connect with a
key, send frames, and collect one turn's frames with the moments that matter to
a voice agent (tool call, first token, first three words, first sentence, end).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

AuthMode = Literal["header", "bearer", "query"]
TERMINAL = frozenset({"done", "cancelled", "error"})


class ProtocolError(Exception):
    """The server broke the wire contract, or a frame did not come in time."""


class Frame(msgspec.Struct, omit_defaults=True):
    """One protocol frame, either way."""

    type: str
    session_id: str | None = None
    request_id: str | None = None
    payload: dict[str, Any] = {}


class Turn(msgspec.Struct, kw_only=True):
    """One turn as the client saw it. Times are seconds after the request was sent."""

    request_id: str
    end: str = ""  # "done", "cancelled", "error", "ready", "closed"
    frames: list[Frame] = []
    text: str = ""  # token texts concatenated
    final: str | None = None
    toolcall: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    error: dict[str, Any] | None = None
    tokens: int = 0  # token frames received
    toolcall_s: float | None = None
    first_token_s: float | None = None
    first_3_words_s: float | None = None
    first_sentence_s: float | None = None
    total_s: float = 0.0
    sent_at: float = 0.0  # the clock (time.perf_counter) when the request was sent
    other: list[Frame] = []  # frames of other requests seen meanwhile (e.g. a barged-in turn's `cancelled`)


_WORD_DONE = re.compile(r"\S+\s")
# A sentence is complete at . ! ? followed by whitespace ("3.5" is not an end).
_SENTENCE_DONE = re.compile(r"[.!?…](?:[\"')\]]*)\s")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Frame)


def new_id() -> str:
    return uuid.uuid4().hex


def encode(frame: Frame) -> str:
    return _encoder.encode(frame).decode()


def decode(data: str | bytes) -> Frame:
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"server sent a frame that is not a protocol frame: {exc}: {data[:200]!r}") from exc


def _auth(url: str, api_key: str | None, mode: AuthMode) -> tuple[str, dict[str, str]]:
    if not api_key:
        return url, {}
    if mode == "header":
        return url, {"X-API-Key": api_key}
    if mode == "bearer":
        return url, {"Authorization": f"Bearer {api_key}"}
    from urllib.parse import quote

    return f"{url}{'&' if '?' in url else '?'}api_key={quote(api_key)}", {}


# What every Yap client socket uses: no proxy from the environment, no compression
# (frames are tiny; deflate would cost both ends CPU), no keepalive pings that
# reset the server's idle timer. max_queue stays websockets' bounded default, so
# a socket that stops reading pushes back on the server (slow-reader checks rely on it).
CONNECT_OPTIONS: dict[str, Any] = {"proxy": None, "compression": None, "ping_interval": None,
                                   "close_timeout": 5, "max_size": 2**22}


async def open_ws(
    url: str,
    api_key: str | None,
    *,
    auth: AuthMode = "header",
    headers: Mapping[str, str] | None = None,
    open_timeout: float = 10.0,
    **options: Any,
) -> ClientConnection:
    """A raw client socket with the key sent as ``auth`` says; ``headers`` are added
    (and win); ``options`` override websockets' ``connect()`` arguments (``sock``,
    ``max_queue``, ``compression`` ...) on top of ``CONNECT_OPTIONS``."""
    target, extra = _auth(url, api_key, auth)
    extra.update(headers or {})
    return await connect(target, additional_headers=extra, open_timeout=open_timeout, **{**CONNECT_OPTIONS, **options})


class YapConnection:
    """One WebSocket to a Yap server. Use ``async with await YapConnection.open(...)``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.clock = time.perf_counter

    @classmethod
    async def open(
        cls,
        url: str,
        api_key: str | None,
        *,
        auth: AuthMode = "header",
        open_timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        compression: str | None = None,
    ) -> YapConnection:
        """``compression="deflate"`` offers permessage-deflate, as browsers do."""
        # No receive-queue limit: the client reads everything, it never pushes back on the server.
        return cls(await open_ws(url, api_key, auth=auth, headers=headers, open_timeout=open_timeout, max_queue=None,
                                 compression=compression))

    async def __aenter__(self) -> YapConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.ws.close()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(
        self,
        type_: str,
        session_id: str | None = None,
        request_id: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> float:
        """Send one frame; returns the moment it was handed to the socket."""
        data = encode(Frame(type_, session_id, request_id, dict(payload or {})))
        t = self.clock()
        await self.ws.send(data)
        return t

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, wait_s: float) -> Frame:
        """The next frame; ProtocolError on timeout, ConnectionClosed when closed."""
        try:
            data = await asyncio.wait_for(self.ws.recv(), wait_s)
        except TimeoutError:
            raise ProtocolError(f"no frame from the server within {wait_s:g} s") from None
        return decode(data)

    async def wait_closed(self, wait_s: float) -> int | None:
        """Read until the server closes the socket; returns its close code.
        Frames that arrive meanwhile are returned through ``drained``."""
        self.drained: list[Frame] = []
        deadline = self.clock() + wait_s
        while True:
            left = deadline - self.clock()
            if left <= 0:
                raise ProtocolError(f"server did not close the socket within {wait_s:g} s")
            try:
                self.drained.append(await self.recv(left))
            except ConnectionClosed:
                return self.ws.close_code

    async def turn(
        self,
        type_: Literal["start", "message", "followup"],
        session_id: str,
        payload: Mapping[str, Any],
        *,
        wait_s: float = 60.0,
        request_id: str | None = None,
        on_frame: Callable[[Frame, float], None] | None = None,
    ) -> Turn:
        """Send one turn-starting frame and collect its frames to its end."""
        rid = request_id or new_id()
        try:
            t0 = await self.send(type_, session_id, rid, payload)
        except ConnectionClosed:
            # Closed before our frame left (a refused socket): what the server
            # sent first, e.g. its error frame, is still buffered; read it.
            t0 = self.clock()
        return await self.collect(rid, t0, wait_s=wait_s, on_frame=on_frame)

    async def collect(
        self,
        request_id: str,
        t0: float,
        *,
        wait_s: float = 60.0,
        on_frame: Callable[[Frame, float], None] | None = None,
    ) -> Turn:
        """Collect frames of ``request_id`` until done, cancelled, error or ready."""
        turn = Turn(request_id=request_id, sent_at=t0)
        # One deadline for the whole turn, not a timer per frame: a voice turn is
        # hundreds of frames and the benchmark runs hundreds of turns at once.
        try:
            async with asyncio.timeout(max(0.0, t0 + wait_s - self.clock())):
                while True:
                    try:
                        data = await self.ws.recv()
                    except ConnectionClosed:
                        turn.end = "closed"
                        turn.total_s = self.clock() - t0
                        return turn
                    now = self.clock() - t0
                    frame = decode(data)
                    if on_frame is not None:
                        on_frame(frame, now)
                    if frame.request_id not in (request_id, None) or frame.type == "pong":
                        turn.other.append(frame)
                        continue
                    turn.frames.append(frame)
                    if _record(turn, frame, now):
                        return turn
        except TimeoutError:
            raise ProtocolError(
                f"turn {request_id} did not end within {wait_s:g} s (saw {len(turn.frames)} frames)"
            ) from None


def _record(turn: Turn, frame: Frame, now: float) -> bool:
    """Fold one frame into the turn; True when it ends the turn."""
    p = frame.payload
    if frame.type == "token":
        turn.tokens += 1
        turn.text += str(p.get("text", ""))
        if turn.first_token_s is None:
            turn.first_token_s = now
        if turn.first_3_words_s is None and len(_WORD_DONE.findall(turn.text)) >= 3:
            turn.first_3_words_s = now
        if turn.first_sentence_s is None and _SENTENCE_DONE.search(turn.text):
            turn.first_sentence_s = now
        return False
    if frame.type == "toolcall":
        turn.toolcall = p
        turn.toolcall_s = now
        return False
    if frame.type == "final":
        turn.final = p.get("text")
        return False
    if frame.type in TERMINAL or frame.type == "ready":
        turn.end = frame.type
        turn.total_s = now
        if frame.type == "done":
            turn.usage = p.get("usage")
            turn.finish_reason = p.get("finish_reason")
            # A short reply is a whole sentence and its words once it is complete.
            if turn.text.strip():
                turn.first_3_words_s = turn.first_3_words_s if turn.first_3_words_s is not None else now
                turn.first_sentence_s = turn.first_sentence_s if turn.first_sentence_s is not None else now
        elif frame.type == "error":
            turn.error = p
        return True
    return False
