"""The scripted engine (yap_core.scripted) against the engine conformance kit."""

from __future__ import annotations

import pytest
from yap_core.plugins import PluginHost
from yap_core.settings import Config
from yap_core.testing import EngineConformance


@pytest.fixture(scope="module")
def yap_engine():
    host = PluginHost()
    host.load("scripted")
    return host.engine_factory("scripted")(Config(env={}))


class TestScriptedConformance(EngineConformance):
    """Every check of the kit, unchanged."""
