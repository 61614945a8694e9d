"""Loading a Hugging Face model folder, and the batch limit, on a second engine.

The folder is the converted copy of the GGUF that the session's engine wrote
(a real HF folder: config.json, safetensors, tokenizer files)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from yap_core.plugins import PluginHost
from yap_core.settings import Config
from yap_core.testing import YapKit
from yap_engines_hf.model_source import default_gguf

from yap_engines_hf import gguf_cache


def _cache_root() -> Path:
    return Path(os.environ["YAP_CACHE_DIR"]) if "YAP_CACHE_DIR" in os.environ else Path.home() / ".cache" / "yap"


def _build(env: dict[str, str]):
    host = PluginHost()
    host.load("hf")
    return host.engine_factory("hf")(Config(env=env))


def test_a_model_folder_loads_and_queues_past_max_batch(yap_kit: YapKit) -> None:
    folder = gguf_cache.cache_folder(default_gguf(), _cache_root())
    assert gguf_cache.is_complete(folder), "the session's engine should have written the converted copy"
    assert (folder / "config.json").is_file()
    engine = _build({"CHAT_MODEL": str(folder), "HF_DTYPE": "float32", "HF_MAX_BATCH": "2", "HF_GGUF_CACHE": "0"})
    tok = yap_kit.engine.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
    ids = tuple(tok.encode(text, add_special_tokens=False))

    async def scenario() -> tuple[list[str], int]:
        await engine.start()
        try:
            assert engine.model_id == str(folder) and engine.dtype == "float32"
            reqs = [yap_kit.request(ids, temperature=0.0, max_tokens=12) for _ in range(3)]
            streams = [engine.stream(r) for r in reqs]
            firsts = await asyncio.gather(*(anext(s) for s in streams[:2]))
            third = asyncio.create_task(anext(streams[2]))
            await asyncio.sleep(0.05)
            waiting = (await engine.stats()).waiting
            texts = [firsts[0].text + "".join([d.text async for d in streams[0]])]
            texts.append(firsts[1].text + "".join([d.text async for d in streams[1]]))
            texts.append((await third).text + "".join([d.text async for d in streams[2]]))
            return texts, waiting
        finally:
            await engine.close()

    texts, waiting = yap_kit.run(scenario(), timeout=600)
    assert waiting == 1, "the third request should wait while two decode"
    assert len(set(texts)) == 1 and "Paris" in texts[0], texts


def test_cuda_asked_for_without_a_gpu_fails_before_loading(yap_kit: YapKit) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the error path exists only without a GPU
    engine = _build({"HF_DEVICE": "cuda"})
    with pytest.raises(RuntimeError, match="HF_DEVICE=cuda"):
        yap_kit.run(engine.start())
