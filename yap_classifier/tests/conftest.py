"""Shared fixtures: the default classifier is trained once per test session
into the repo's cache folder (reused across sessions while data and recipe
are unchanged)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from yap_classifier import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ.get("YAP_CACHE_DIR") or REPO / ".cache" / "yap")


@pytest.fixture(scope="session")
def built_model(cache_dir: Path) -> Path:
    return train.build_default(cache_dir)
