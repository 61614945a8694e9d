"""What the soak harness checks on every server frame one socket receives.

One `SocketLedger` per client socket knows every session and request id that
socket issued, so a frame carrying anything else (another socket's session,
another turn's id, a frame after a turn's terminal frame) is a violation. The
shared `Tally` adds up outcomes and keeps a sample of violations for the report.
"""

from __future__ import annotations

from collections import Counter

import msgspec

TERMINAL = frozenset({"done", "cancelled", "error"})
TURN_FRAMES = frozenset({"toolcall", "token", "final"})
SERVER_TYPES = TERMINAL | TURN_FRAMES | {"ready", "pong", "session_end"}
MAX_SAMPLES = 40


class ServerFrame(msgspec.Struct, kw_only=True):
    """A server frame as PROTOCOL.md promises it: a string session id and an object payload."""

    type: str
    session_id: str
    request_id: str | None = None
    payload: dict[str, object]


_decoder = msgspec.json.Decoder(ServerFrame)


class Tally(msgspec.Struct, kw_only=True):
    """Counts over the whole run, shared by every socket."""

    frames: int = 0
    turns_started: int = 0
    endings: Counter[str] = msgspec.field(default_factory=Counter)  # done/cancelled/error/cut
    errors: Counter[str] = msgspec.field(default_factory=Counter)  # error code -> count
    closes: Counter[str] = msgspec.field(default_factory=Counter)  # close code -> count
    actions: Counter[str] = msgspec.field(default_factory=Counter)
    violations: int = 0
    samples: list[str] = msgspec.field(default_factory=list)

    def violation(self, text: str) -> None:
        self.violations += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(text)


class Turn(msgspec.Struct, kw_only=True):
    session_id: str
    ending: str | None = None  # done / cancelled / error / cut
    tokens: list[str] = msgspec.field(default_factory=list)
    final: str | None = None
    saw_toolcall: bool = False


class SocketLedger:
    """Turn accounting for one client socket."""

    def __init__(self, tally: Tally, label: str) -> None:
        self.tally = tally
        self.label = label
        self.sessions: set[str] = set()
        self.turns: dict[str, Turn] = {}
        self.pings: dict[str, str] = {}  # request id -> session id
        self.readies: dict[str, str] = {}  # start without utterance: request id -> session id
        self.noop_cancels = 0  # `cancelled` frames that stopped nothing

    def _bad(self, text: str) -> None:
        self.tally.violation(f"{self.label}: {text}")

    def turn(self, request_id: str, session_id: str) -> None:
        self.sessions.add(session_id)
        self.turns[request_id] = Turn(session_id=session_id)
        self.tally.turns_started += 1

    def ping(self, request_id: str, session_id: str) -> None:
        self.sessions.add(session_id)
        self.pings[request_id] = session_id

    def ready(self, request_id: str, session_id: str) -> None:
        self.sessions.add(session_id)
        self.readies[request_id] = session_id

    def observe(self, raw: str | bytes) -> ServerFrame | None:
        """Check one inbound frame; returns it decoded, or None when it is not a valid frame."""
        self.tally.frames += 1
        if isinstance(raw, bytes):
            self._bad("binary frame from the server")
            return None
        try:
            frame = _decoder.decode(raw)
        except msgspec.DecodeError as exc:
            self._bad(f"malformed server frame ({exc}): {raw[:200]!r}")
            return None
        if frame.type not in SERVER_TYPES:
            self._bad(f"unknown frame type {frame.type!r}")
        if frame.session_id != "unknown" and frame.session_id not in self.sessions:
            self._bad(f"{frame.type} carries a session id this socket never used: {frame.session_id!r}")
        if frame.type == "error":
            code = frame.payload.get("code")
            self.tally.errors[str(code)] += 1
            if not isinstance(frame.payload.get("message"), str) or not isinstance(frame.payload.get("retryable"), bool):
                self._bad(f"error payload lacks message/retryable: {frame.payload}")
        if frame.type == "pong":
            self._check_echo(frame, self.pings)
        elif frame.type == "ready":
            self._check_echo(frame, self.readies)
        elif frame.type == "cancelled" and (frame.request_id not in self.turns):
            self.noop_cancels += 1
        elif frame.type in TURN_FRAMES | TERMINAL and frame.request_id in self.turns:
            self._turn_frame(frame, self.turns[frame.request_id])
        elif frame.type in TURN_FRAMES | {"done"}:
            self._bad(f"{frame.type} for a request id this socket never sent: {frame.request_id!r}")
        return frame

    def _check_echo(self, frame: ServerFrame, issued: dict[str, str]) -> None:
        sid = issued.pop(frame.request_id or "", None)
        if sid is None:
            self._bad(f"{frame.type} echoes a request id that was not asked for: {frame.request_id!r}")
        elif frame.session_id != sid:
            self._bad(f"{frame.type} echoes session {frame.session_id!r}, sent {sid!r}")

    def _turn_frame(self, frame: ServerFrame, turn: Turn) -> None:
        rid = frame.request_id
        if turn.ending is not None:
            self._bad(f"{frame.type} for request {rid} after it ended with {turn.ending}")
            return
        # Error frames about a malformed frame may not trust its session id.
        if frame.session_id != turn.session_id and not (frame.type == "error" and frame.session_id == "unknown"):
            self._bad(f"{frame.type} of request {rid} carries session {frame.session_id!r}, turn is {turn.session_id!r}")
        if frame.type == "toolcall":
            if turn.tokens or turn.saw_toolcall:
                self._bad(f"toolcall of {rid} after a token or twice")
            turn.saw_toolcall = True
        elif frame.type == "token":
            if turn.final is not None:
                self._bad(f"token of {rid} after final")
            turn.tokens.append(str(frame.payload.get("text", "")))
        elif frame.type == "final":
            turn.final = str(frame.payload.get("text", ""))
            # Sanitized output (the default): tokens concatenate to the final text.
            if "".join(turn.tokens) != turn.final:
                self._bad(f"tokens of {rid} do not concatenate to its final text")
        else:  # terminal
            if frame.type == "done" and turn.final is None and turn.tokens:
                self._bad(f"done of {rid} without final")
            turn.ending = frame.type
            self.tally.endings[frame.type] += 1

    def ended(self, request_id: str) -> str | None:
        turn = self.turns.get(request_id)
        return turn.ending if turn else None

    def close(self, cut: bool) -> None:
        """The socket has gone. Open turns are legitimately cut only if the socket was cut."""
        for rid, turn in self.turns.items():
            if turn.ending is None:
                if cut:
                    turn.ending = "cut"
                    self.tally.endings["cut"] += 1
                else:
                    self._bad(f"turn {rid} never ended (socket closed normally)")
        if self.pings and not cut:
            self._bad(f"{len(self.pings)} ping(s) never answered")
        self.turns.clear()
        self.pings.clear()
        self.readies.clear()
