"""Labelled examples and the JSONL files that hold them.

One example per line: ``{"history": [earlier user turns], "utterance": "...",
"label": 0 or 1}``. Reading is lenient where the meaning is clear (blank
lines skipped, missing or null history is [], a history given as one string
is one turn, labels as true/false or "0"/"1") and strict where it is not: a
line that is not an object, or has no usable utterance or label, is an error
naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec


class Example(msgspec.Struct, frozen=True, kw_only=True):
    history: list[str] = []
    utterance: str
    label: int


class DataError(ValueError):
    """A data file line cannot be read as an example."""


def read_examples(path: Path) -> list[Example]:
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(parse_line(line))
        except DataError as exc:
            raise DataError(f"{path}:{number}: {exc}") from None
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def parse_line(line: str) -> Example:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"not JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise DataError("expected a JSON object")
    return Example(history=_history(obj.get("history")), utterance=_utterance(obj), label=_label(obj))


def _history(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise DataError("history must be a list of strings")
    turns = []
    for item in value:
        if isinstance(item, dict):  # {"role": ..., "content": ...}: keep the user's turns
            if item.get("role", "user") != "user":
                continue
            item = item.get("content")
        if not isinstance(item, str):
            raise DataError("history must be a list of strings")
        turns.append(item)
    return turns


def _utterance(obj: dict[str, Any]) -> str:
    value = obj.get("utterance")
    if not isinstance(value, str):
        raise DataError("utterance must be a string")
    return value


def _label(obj: dict[str, Any]) -> int:
    value = obj.get("label")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false", "yes", "no"):
        return int(value.strip().lower() in ("1", "true", "yes"))
    raise DataError(f"label must be 0 or 1, got {value!r}")
