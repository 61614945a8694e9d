"""Reading a local calibration file for `yap quantize --calib-data`, one format
for every quantizer: JSONL with a string ``text`` per line, or plain text in
which blank lines separate samples. Nothing is ever downloaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


class CalibrationError(ValueError):
    """The calibration file is missing, empty or malformed."""


def parse_calibration(raw: bytes, name: str) -> tuple[str, ...]:
    """The samples in a calibration file's bytes; ``name`` picks the format."""
    text = raw.decode("utf-8")
    if name.endswith(".jsonl"):
        found = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise CalibrationError(f"{name}:{lineno}: not JSON ({exc})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise CalibrationError(f"{name}:{lineno}: expected an object with a string 'text'")
            found.append(row["text"])
    else:
        found = [part.strip() for part in text.split("\n\n")]
    texts = tuple(t for t in found if t.strip())
    if not texts:
        raise CalibrationError(f"{name}: no calibration text in it")
    return texts


def read_calibration(dataset: str) -> tuple[tuple[str, ...], str]:
    """(samples, sha256 of the file) of a local calibration file."""
    path = Path(dataset)
    if not path.is_file():
        raise CalibrationError(f"calibration data {dataset!r}: no such file (give a local JSONL or text file)")
    raw = path.read_bytes()
    return parse_calibration(raw, path.name), hashlib.sha256(raw).hexdigest()
