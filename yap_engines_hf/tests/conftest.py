"""The hf engine on the embedded SmolLM2 GGUF, built once per test session.

The conformance kit (yap_core.testing) starts it in its own event loop; the
tests here drive it through the same `yap_kit` fixture."""

from __future__ import annotations

import os

import pytest
from yap_core.plugins import PluginHost
from yap_core.settings import Config


@pytest.fixture(scope="session")
def yap_engine():
    host = PluginHost()
    host.load("hf")
    # the defaults, whatever the shell has set, except where converted models are kept
    env = {k: os.environ[k] for k in ("YAP_CACHE_DIR",) if k in os.environ}
    return host.engine_factory("hf")(Config(env=env))
