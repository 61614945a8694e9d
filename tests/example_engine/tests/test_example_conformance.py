"""A third-party engine passes the same conformance kit as the built-in ones."""

from yap_core.testing import EngineConformance


class TestExampleConformance(EngineConformance):
    pass
