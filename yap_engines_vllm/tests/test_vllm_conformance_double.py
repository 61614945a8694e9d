"""The engine conformance kit (yap_core.testing) on the vLLM engine running
against the vLLM DOUBLE. The same kit runs on the real vLLM on the GPU
(gpu/test_vllm_conformance.py, docs/gpu-results.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_test_support import engine_config, make_vllm_engine
from yap_core.testing import EngineConformance


@pytest.fixture(scope="module")
def yap_engine(vllm_double: Path, double_model_dir: Path):
    return make_vllm_engine(engine_config(double_model_dir))


class TestVllmEngineOnDouble(EngineConformance):
    prefix_caching = True
    concurrency = 8
