"""``build_metadata.json``: what a quantized build is, and whether it can be reused.

A build is reused only when its ``key`` (source, format, export, calibration,
limits, ModelOpt version) equals the one asked for and its files are present.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec

METADATA_FILE = "build_metadata.json"
SCHEMA = 1


class CalibrationInfo(msgspec.Struct, frozen=True, kw_only=True):
    dataset: str  # path, or "bundled:<name>"
    dataset_sha256: str
    num_samples: int  # asked for
    seq_len: int
    batch_size: int


class BuildLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Engine build limits (trtllm-build); None for a checkpoint, which has none."""

    max_batch_size: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int | None = None


class BuildKey(msgspec.Struct, frozen=True, kw_only=True):
    source_model: str
    source_fingerprint: str
    format: str
    export: str  # "hf" or "engine"
    calibration: CalibrationInfo
    limits: BuildLimits
    modelopt_version: str


class BuildMetadata(msgspec.Struct, kw_only=True):
    schema_version: int = SCHEMA
    key: BuildKey
    quant_algo: str  # what ModelOpt wrote (FP8, W4A16_AWQ, ...)
    versions: dict[str, str]  # library -> version
    sm: str | None  # SM of the GPU that built it; None on a CPU build
    gpu_name: str | None
    device: str
    calibration_samples_used: int
    files: list[str]  # relative paths written, for reuse checks and uploads
    build_time_utc: str
    build_seconds: float


def write_metadata(out_dir: Path, meta: BuildMetadata) -> Path:
    path = out_dir / METADATA_FILE
    path.write_bytes(msgspec.json.format(msgspec.json.encode(meta), indent=2))
    return path


def read_metadata(out_dir: Path) -> BuildMetadata | None:
    """The folder's metadata, or None when absent or unreadable (then it is rebuilt)."""
    path = out_dir / METADATA_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=BuildMetadata)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def reusable(out_dir: Path, key: BuildKey) -> BuildMetadata | None:
    """The existing build in ``out_dir`` if it matches ``key`` and is complete."""
    meta = read_metadata(out_dir)
    if meta is None or meta.key != key:
        return None
    if not meta.files or not all((out_dir / f).is_file() for f in meta.files):
        return None
    return meta


def fingerprint(source: Path) -> str:
    """Identifies a source checkpoint: its config and the names, sizes and
    modification times of its weight files (hashing GBs of weights would take
    longer than many builds)."""
    h = hashlib.sha256()
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        if p.name == "config.json":
            h.update(json.dumps(json.loads(p.read_text()), sort_keys=True).encode())
    return h.hexdigest()
