"""The core's engine conformance kit (yap_core.testing) run against the trt
engine on the TensorRT-LLM double."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from yap_core.settings import Config
from yap_core.testing import EngineConformance
from yap_engines_trt.engine import TrtEngine, engine_from_config

DOUBLE_ROOT = Path(__file__).parent / "trt_double"


@pytest.fixture(scope="module")
def yap_engine(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir: Path) -> Iterator[TrtEngine]:
    model = tmp_path_factory.mktemp("kit") / "ckpt"
    shutil.copytree(smollm2_tokenizer_dir, model)
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 2048}))
    # the double on sys.path for this module only
    sys.path.insert(0, str(DOUBLE_ROOT))
    try:
        yield engine_from_config(Config(env={"CHAT_MODEL": str(model)}, toml={}))
    finally:
        sys.path.remove(str(DOUBLE_ROOT))
        for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
            del sys.modules[name]


class TestTrtConformance(EngineConformance):
    prefix_caching = True
