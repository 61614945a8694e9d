"""The example engine, built as the core builds it: by plugin name."""

from __future__ import annotations

import pytest
from yap_core.plugins import PluginHost
from yap_core.settings import Config


@pytest.fixture(scope="session")
def yap_engine():
    host = PluginHost()
    host.load("example")
    return host.engine_factory("example")(Config(env={}))
