"""The data and the error of prompt building, shared by personas and prompts."""

from __future__ import annotations

from typing import Literal

import msgspec

PromptErrorCode = Literal["invalid_payload", "text_too_long"]


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One history item, exactly as the protocol's `history` list carries it."""

    role: Literal["user", "assistant"]
    content: str


class RenderedPrompt(msgspec.Struct, frozen=True, kw_only=True):
    """A prompt ready for the engine.

    ``history_used`` is how many of the newest history messages made it in
    (the older ones were trimmed by the budgets); ``user_tokens`` counts the
    utterance's own tokens after its budget.
    """

    token_ids: tuple[int, ...]
    text: str
    history_used: int
    user_tokens: int


class PromptError(Exception):
    """A prompt that cannot be built; maps one to one onto a protocol error frame."""

    def __init__(self, code: PromptErrorCode, field: str | None, message: str) -> None:
        super().__init__(message)
        self.code: PromptErrorCode = code
        self.field = field
        self.message = message
