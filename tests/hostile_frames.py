"""Hypothesis strategies for client frames, each labelled with the outcome
PROTOCOL.md promises for it: None (a valid frame) or (error code, field).

Frames are built as valid ones first, then at most one thing is broken, so the
label is known exactly and does not come from the decoder under test.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

KNOWN_TYPES = ("start", "message", "followup", "cancel", "end", "ping", "pong")
NEEDS_SESSION = ("start", "message", "followup")
STRICT_PAYLOADS = ("start", "message", "followup", "cancel")  # unknown keys rejected

Expected = tuple[str, str | None] | None  # (code, field path) or None when valid
Labelled = tuple[str, Expected]

ids = st.text(min_size=1, max_size=40)
non_blank = st.text(min_size=0, max_size=60).map(lambda s: s + "x")
personality = st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z")

# (field, valid strategy, out-of-range values or None, JSON kind)
SAMPLING: dict[str, tuple[Any, list[Any], str]] = {
    "temperature": (st.floats(0, 2), [-0.1, 2.5, 1e9], "float"),
    "top_p": (st.floats(0.01, 1), [0, -1, 1.01], "float"),
    "top_k": (st.integers(-1, 100).filter(lambda k: k != 0), [0, -2, -100], "int"),
    "min_p": (st.floats(0, 1), [-0.5, 1.5], "float"),
    "repetition_penalty": (st.floats(0.01, 2), [0, 2.01, -1], "float"),
    "presence_penalty": (st.floats(-2, 2), [-2.5, 3], "float"),
    "frequency_penalty": (st.floats(-2, 2), [-3, 2.5], "float"),
    "max_tokens": (st.integers(1, 100), [0, -5], "int"),
    "sanitize_output": (st.booleans(), [], "bool"),
}

# Values of a JSON kind other than the named one (strict typing: "0.5" is not a
# number, true is not a number, 1 is not a boolean, 1.5 is not an integer).
WRONG: dict[str, Any] = {
    "float": st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2), st.just({})),
    "int": st.one_of(st.text(max_size=5), st.booleans(), st.just(1.5), st.just(-0.25), st.just([])),
    "bool": st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False), st.just(None)),
    "str": st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.lists(st.text(), max_size=2)),
    "str_required": st.one_of(st.integers(), st.booleans(), st.just(None), st.just({})),
}


@st.composite
def sampling(draw: Any) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(sorted(SAMPLING)), unique=True, max_size=4))
    return {k: draw(SAMPLING[k][0]) for k in keys}


@st.composite
def history(draw: Any) -> list[dict[str, str]]:
    items = draw(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=40)), max_size=4))
    return [{"role": r, "content": c} for r, c in items]


@st.composite
def valid_payload(draw: Any, kind: str) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    if kind == "start":
        if draw(st.booleans()):
            payload["chat_prompt"] = draw(st.text(max_size=80))
        if draw(st.booleans()):
            payload["personality"] = draw(personality)
        if draw(st.booleans()):
            payload["gender"] = draw(st.sampled_from(["female", "male"]))
        if draw(st.booleans()):
            payload["history"] = draw(history())
        if draw(st.booleans()):
            payload["user_utterance"] = draw(non_blank)
        if draw(st.booleans()):
            payload["sampling"] = draw(sampling())
    elif kind == "message":
        payload["user_utterance"] = draw(non_blank)
        if draw(st.booleans()):
            payload["sampling"] = draw(sampling())
    elif kind == "followup":
        payload["analysis_text"] = draw(non_blank)
    elif kind == "cancel":
        if draw(st.booleans()):
            payload["reason"] = draw(st.text(max_size=200))
    return payload


@st.composite
def valid_frame(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(KNOWN_TYPES))
    frame: dict[str, Any] = {"type": kind}
    if kind in NEEDS_SESSION or draw(st.booleans()):
        frame["session_id"] = draw(ids)
    if draw(st.booleans()):
        frame["request_id"] = draw(ids)
    payload = draw(valid_payload(kind))
    if payload or draw(st.booleans()):
        frame["payload"] = payload
    return frame


def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


@st.composite
def valid_frames(draw: Any) -> Labelled:
    return _dump(draw(valid_frame())), None


@st.composite
def bad_payload_frames(draw: Any) -> Labelled:
    """A valid frame with exactly one thing wrong: invalid_payload naming the field."""
    frame = draw(valid_frame())
    kind = frame["type"]
    payload: dict[str, Any] = frame.setdefault("payload", {})
    options = ["session_type", "request_type", "long_id", "payload_not_object"]
    if kind in NEEDS_SESSION:
        options.append("no_session")
    if kind in STRICT_PAYLOADS:
        options.append("unknown_key")
    if kind in ("start", "message"):
        options += ["sampling_range", "sampling_type", "sampling_unknown"]
    if kind == "message":
        options += ["blank_utterance", "utterance_type", "start_only_field"]
    if kind == "start":
        options += ["bad_personality", "bad_gender", "history_role", "history_unknown", "prompt_type"]
    if kind == "followup":
        options += ["blank_analysis"]
    if kind == "cancel":
        options += ["long_reason"]
    what = draw(st.sampled_from(options))
    field: str
    if what == "session_type":
        frame["session_id"] = draw(WRONG["str"])
        field = "session_id"
    elif what == "request_type":
        frame["request_id"] = draw(WRONG["str"])
        field = "request_id"
    elif what == "long_id":
        name = draw(st.sampled_from(["session_id", "request_id"]))
        frame[name] = "i" * draw(st.integers(257, 2000))
        field = name
    elif what == "payload_not_object":
        frame["payload"] = draw(st.one_of(st.lists(st.integers(), max_size=3), st.text(), st.integers(), st.booleans()))
        field = "payload"
    elif what == "no_session":
        del frame["session_id"]
        field = "session_id"
    elif what == "unknown_key":
        key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in _known_keys(kind)))
        payload[key] = draw(st.integers())
        field = f"payload.{key}"
    elif what in ("sampling_range", "sampling_type", "sampling_unknown"):
        samp = payload.setdefault("sampling", {})
        if what == "sampling_unknown":
            key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in SAMPLING))
            samp[key] = 1
        else:
            candidates = [k for k, v in SAMPLING.items() if (what == "sampling_type" or v[1])]
            key = draw(st.sampled_from(candidates))
            if what == "sampling_range":
                samp[key] = draw(st.sampled_from(SAMPLING[key][1]))
            else:
                samp[key] = draw(WRONG[SAMPLING[key][2]])
        field = f"payload.sampling.{key}"
    elif what == "blank_utterance":
        payload["user_utterance"] = draw(st.sampled_from(["", " ", "\n\t", "   "]))
        field = "payload.user_utterance"
    elif what == "utterance_type":
        payload["user_utterance"] = draw(WRONG["str_required"])
        field = "payload.user_utterance"
    elif what == "start_only_field":
        key = draw(st.sampled_from(["chat_prompt", "personality", "gender", "history"]))
        payload[key] = "x"
        field = f"payload.{key}"
    elif what == "bad_personality":
        payload["personality"] = draw(st.one_of(st.just(""), st.just("a" * 33), st.just("bad name"), st.just("ünï")))
        field = "payload.personality"
    elif what == "bad_gender":
        payload["gender"] = draw(st.text(max_size=8).filter(lambda g: g not in ("female", "male")))
        field = "payload.gender"
    elif what == "history_role":
        payload["history"] = [{"role": draw(st.text(max_size=8).filter(lambda r: r not in ("user", "assistant"))),
                               "content": "hi"}]
        field = "payload.history[0].role"
    elif what == "history_unknown":
        payload["history"] = [{"role": "user", "content": "hi", "name": "bob"}]
        field = "payload.history[0].name"
    elif what == "prompt_type":
        payload["chat_prompt"] = draw(WRONG["str"])
        field = "payload.chat_prompt"
    elif what == "blank_analysis":
        payload["analysis_text"] = ""
        field = "payload.analysis_text"
    else:  # long_reason
        payload["reason"] = "r" * draw(st.integers(201, 1000))
        field = "payload.reason"
    return _dump(frame), ("invalid_payload", field)


def _known_keys(kind: str) -> set[str]:
    return {
        "start": {"chat_prompt", "personality", "gender", "history", "user_utterance", "sampling"},
        "message": {"user_utterance", "sampling"},
        "followup": {"analysis_text"},
        "cancel": {"reason"},
    }[kind]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _is_known_frame(text: str | bytes) -> bool:
    """Could this text be a frame with a known type? (Then garbage is not garbage.)"""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("type") in KNOWN_TYPES


@st.composite
def not_a_frame(draw: Any) -> Labelled:
    """Text that is not a JSON object with a known type: invalid_message."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        text = draw(st.text(max_size=200))
    elif choice == 1:  # JSON, but not an object
        text = _dump(draw(json_values.filter(lambda v: not isinstance(v, dict))))
    elif choice == 2:  # an object without a string type
        obj = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "type"), json_values, max_size=4))
        if draw(st.booleans()):
            obj["type"] = draw(json_values.filter(lambda v: not isinstance(v, str)))
        text = _dump(obj)
    elif choice == 3:  # an object with an unknown type
        obj = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
        obj["type"] = draw(st.text(max_size=20).filter(lambda t: t not in KNOWN_TYPES))
        text = _dump(obj)
    elif choice == 4:  # a valid frame, cut short
        whole = _dump(draw(valid_frame()))
        text = whole[: draw(st.integers(0, len(whole) - 1))]
    else:  # deep nesting, NaN literals, trailing junk
        depth = draw(st.integers(1, 5000))
        text = draw(st.sampled_from(["[" * depth, "{\"a\":" * depth, '{"type": NaN}', '{"type": "ping"} x',
                                     '{"type": "ping",}', "\ufeff{}", "\x00"]))
    assume(not _is_known_frame(text))
    return text, ("invalid_message", None)


def floats_ok(value: Any) -> bool:
    return not (isinstance(value, float) and (math.isnan(value) or math.isinf(value)))
