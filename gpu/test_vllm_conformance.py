"""The engine conformance kit on the REAL vLLM engine (GPU machine only; run by
gpu/check.sh with ``--yap-engine vllm`` and the model in CHAT_MODEL). Not
collected by CI: gpu/ is outside the project's testpaths."""

from yap_core.testing import EngineConformance


class TestVllmConformance(EngineConformance):
    prefix_caching = True
    abort_bound_s = 5.0
    concurrency = 16
