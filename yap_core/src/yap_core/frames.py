"""Wire frames of protocol version 1 (shared/PROTOCOL.md): decoding and encoding.

Inbound text is decoded in two steps: the envelope (``type``, ids, the payload
kept raw), then the payload with the Struct of that type. A frame that is not a
JSON object or has no known ``type`` is ``invalid_message``; anything wrong
after that is ``invalid_payload`` naming the field (``payload.sampling.top_p``).
JSON types are strict (msgspec's strict mode): "0.5" is not a number, true is
not a number, 1 is not a boolean, 1.5 is not an integer.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

# Ids are echoed on every frame; bound them so a client cannot make us echo megabytes.
Id = Annotated[str, Meta(min_length=1, max_length=256)]
NonBlank = Annotated[str, Meta(min_length=1, pattern=r"\S")]
# A personality the wire can name; persona files are held to the same rule.
PERSONALITY_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"


class Envelope(msgspec.Struct):
    """The outer object of every client frame. Unknown top-level keys are
    ignored (PROTOCOL rejects unknown fields inside payloads only)."""

    type: str
    session_id: Id | None = None
    request_id: Id | None = None
    payload: Raw = Raw(b"{}")


class WireSampling(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``sampling`` as the client sends it; omitted keys stay UNSET and fall
    back to the session's, then the server's, defaults."""

    temperature: Annotated[float, Meta(ge=0, le=2)] | UnsetType = UNSET
    top_p: Annotated[float, Meta(gt=0, le=1)] | UnsetType = UNSET
    top_k: Annotated[int, Meta(ge=-1)] | UnsetType = UNSET
    min_p: Annotated[float, Meta(ge=0, le=1)] | UnsetType = UNSET
    repetition_penalty: Annotated[float, Meta(gt=0, le=2)] | UnsetType = UNSET
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | UnsetType = UNSET
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | UnsetType = UNSET
    # Upper bound is CHAT_MAX_OUT, a setting: checked after decoding (see Session).
    max_tokens: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    sanitize_output: bool | UnsetType = UNSET


class HistoryItem(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["user", "assistant"]
    content: str


class StartPayload(msgspec.Struct, forbid_unknown_fields=True):
    chat_prompt: str | None = None
    personality: Annotated[str, Meta(pattern=PERSONALITY_PATTERN)] | None = None
    gender: Literal["female", "male"] | None = None
    history: list[HistoryItem] = []
    user_utterance: NonBlank | None = None
    sampling: WireSampling | None = None


class MessagePayload(msgspec.Struct, forbid_unknown_fields=True):
    user_utterance: NonBlank
    sampling: WireSampling | None = None


class FollowupPayload(msgspec.Struct, forbid_unknown_fields=True):
    analysis_text: NonBlank


class CancelPayload(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(max_length=200)] = "client"


class EmptyPayload(msgspec.Struct):
    """``end``, ``ping``, ``pong``: nothing is read; extra keys are ignored."""


ClientType = Literal["start", "message", "followup", "cancel", "end", "ping", "pong"]
Payload = StartPayload | MessagePayload | FollowupPayload | CancelPayload | EmptyPayload

_PAYLOAD_TYPES: dict[str, type[msgspec.Struct]] = {
    "start": StartPayload,
    "message": MessagePayload,
    "followup": FollowupPayload,
    "cancel": CancelPayload,
    "end": EmptyPayload,
    "ping": EmptyPayload,
    "pong": EmptyPayload,
}
_ENVELOPE_DECODER = msgspec.json.Decoder(Envelope)
_PAYLOAD_DECODERS = {name: msgspec.json.Decoder(t) for name, t in _PAYLOAD_TYPES.items()}


class ClientFrame(msgspec.Struct):
    type: ClientType
    session_id: str | None
    request_id: str | None
    payload: Payload


class FrameError(Exception):
    """A frame that cannot be served; becomes one ``error`` frame."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        session_id: str | None = None,
        request_id: str | None = None,
        retryable: bool | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.code = code
        self.message = message
        self.field = field
        self.session_id = session_id
        self.request_id = request_id


_AT = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>.*)`$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<name>.*)`$", re.S)


def _field_path(prefix: str, exc: msgspec.ValidationError) -> tuple[str, str]:
    """(field path, reason) from msgspec's message, e.g. ``payload.sampling.top_p``."""
    match = _AT.match(str(exc))
    text = match.group("text") if match else str(exc)
    path = prefix + ((match.group("path") or "") if match else "")
    named = _UNKNOWN.match(text) or _MISSING.match(text)
    if named:
        path = f"{path}.{named.group('name')}"
    return path, text


def decode(data: str | bytes) -> ClientFrame:
    """Decode one inbound text frame or raise FrameError."""
    try:
        env = _ENVELOPE_DECODER.decode(data)
    except msgspec.ValidationError as exc:
        path, text = _field_path("", exc)
        if path in ("", ".type") or path.startswith(".type"):
            raise FrameError("invalid_message", _message_reason(text)) from None
        field = path.lstrip(".")
        raise FrameError("invalid_payload", f"{field}: {text}", field=field) from None
    except msgspec.DecodeError as exc:
        raise FrameError("invalid_message", f"not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec raises this (not DecodeError) for very deeply nested JSON.
        raise FrameError("invalid_message", "JSON nested too deeply") from None
    decoder = _PAYLOAD_DECODERS.get(env.type)
    if decoder is None:
        known = ", ".join(_PAYLOAD_TYPES)
        raise FrameError(
            "invalid_message",
            f"unknown type {env.type!r} (known: {known})",
            session_id=env.session_id,
            request_id=env.request_id,
        )
    if env.type in ("start", "message", "followup") and env.session_id is None:
        raise FrameError(
            "invalid_payload",
            f"session_id: required on {env.type}",
            field="session_id",
            request_id=env.request_id,
        )
    try:
        payload = decoder.decode(env.payload)
    except msgspec.ValidationError as exc:
        field, text = _field_path("payload", exc)
        raise FrameError(
            "invalid_payload",
            f"{field}: {text}",
            field=field,
            session_id=env.session_id,
            request_id=env.request_id,
        ) from None
    except RecursionError:
        raise FrameError(
            "invalid_payload", "payload: nested too deeply", field="payload",
            session_id=env.session_id, request_id=env.request_id,
        ) from None
    sampling = getattr(payload, "sampling", None)
    if sampling is not None and sampling.top_k == 0:  # PROTOCOL: -1 or >= 1; Meta cannot say "not 0"
        raise FrameError(
            "invalid_payload", "payload.sampling.top_k: must be -1 (off) or at least 1",
            field="payload.sampling.top_k", session_id=env.session_id, request_id=env.request_id,
        )
    return ClientFrame(env.type, env.session_id, env.request_id, payload)  # type: ignore[arg-type]


def _message_reason(text: str) -> str:
    if text.startswith("Expected `object`"):
        return "a frame must be one JSON object: " + text
    if "required field `type`" in text:
        return "a frame needs a string `type`"
    return "type: " + text


# ---------------------------------------------------------------------------
# Server frames. Payloads are Structs so one Encoder writes them without
# building dicts on the hot path.


class TokenPayload(msgspec.Struct):
    text: str


class FinalPayload(msgspec.Struct):
    text: str


class ToolcallPayload(msgspec.Struct):
    status: Literal["yes", "no"]
    tool: Literal["take_screenshot"] | None
    confidence: float
    raw: dict[str, Any]


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    ttft_ms: float | None
    total_ms: float


class DonePayload(msgspec.Struct):
    finish_reason: Literal["stop", "length"]
    usage: Usage


class ReadyPayload(msgspec.Struct):
    cached_prompt_tokens: int


class CancelledPayload(msgspec.Struct):
    reason: str


class Capacity(msgspec.Struct):
    active: int
    max: int


class ErrorPayload(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    retryable: bool
    retry_after_ms: int | None = None
    field: str | None = None  # invalid_payload: the offending field's path
    capacity: Capacity | None = None  # server_at_capacity


class Empty(msgspec.Struct):
    pass


EMPTY = Empty()

ServerPayload = (
    TokenPayload
    | FinalPayload
    | ToolcallPayload
    | DonePayload
    | ReadyPayload
    | CancelledPayload
    | ErrorPayload
    | Empty
)


class ServerFrame(msgspec.Struct):
    type: str
    session_id: str
    request_id: str | None
    payload: ServerPayload


UNKNOWN_SESSION = "unknown"
# Codes a client may retry as they are.
RETRYABLE = frozenset({"server_at_capacity", "rate_limited", "timeout", "internal_error", "engine_unavailable"})
ERROR_CODES = frozenset(
    {
        "authentication_failed",
        "server_at_capacity",
        "message_too_large",
        "invalid_message",
        "invalid_payload",
        "session_not_found",
        "rate_limited",
        "text_too_long",
        "engine_unavailable",
        "timeout",
        "internal_error",
    }
)

_ENCODER = msgspec.json.Encoder()


def encode(frame_type: str, session_id: str | None, request_id: str | None, payload: ServerPayload) -> str:
    """One server frame as the text to send."""
    return _ENCODER.encode(
        ServerFrame(frame_type, session_id or UNKNOWN_SESSION, request_id, payload)
    ).decode()


def error_frame(
    code: str,
    message: str,
    *,
    session_id: str | None = None,
    request_id: str | None = None,
    retryable: bool | None = None,
    retry_after_ms: int | None = None,
    field: str | None = None,
    capacity: Capacity | None = None,
) -> str:
    assert code in ERROR_CODES, code
    payload = ErrorPayload(
        code=code,
        message=message,
        retryable=code in RETRYABLE if retryable is None else retryable,
        retry_after_ms=retry_after_ms,
        field=field,
        capacity=capacity,
    )
    return encode("error", session_id, request_id, payload)
