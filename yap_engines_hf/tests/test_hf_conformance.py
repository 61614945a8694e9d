"""The hf engine passes the engine conformance kit."""

from yap_core.testing import EngineConformance


class TestHfConformance(EngineConformance):
    # CI machines are small and shared: a decode step can take a while
    abort_bound_s = 10.0
