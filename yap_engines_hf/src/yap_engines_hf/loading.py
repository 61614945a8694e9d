"""Loading the tokenizer and model with transformers (imported only here)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
from yap_core.contracts import Progress

from yap_engines_hf import gguf_cache
from yap_engines_hf.model_source import ModelSource
from yap_engines_hf.runner import ModelRunner
from yap_engines_hf.settings import HfSettings

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Loaded(msgspec.Struct, kw_only=True):
    tokenizer: Any
    runner: ModelRunner
    decode: Callable[[Sequence[int]], str]
    vocab_size: int
    max_model_len: int
    eos_ids: frozenset[int]
    device: str
    dtype: str


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("HF_DEVICE=cuda but torch sees no CUDA device; set HF_DEVICE=cpu or auto")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> str:
    """The weights' format: a torch dtype name, or "int8" (dynamic quantization)."""
    if setting == "int8" and device.type != "cpu":
        raise RuntimeError("HF_DTYPE=int8 is CPU only (torch dynamic quantization); use bfloat16 on CUDA")
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    # CPU decode is bound by the bytes of weights read per step: int8 reads a
    # quarter of float32 and half of bfloat16 (measured in docs/engines.md)
    return "int8"


def load_model(source: ModelSource, settings: HfSettings, say: Progress, cache_root: Path | None = None) -> Loaded:
    if settings.hf_threads:
        torch.set_num_threads(settings.hf_threads)
    device = pick_device(settings.hf_device)
    dtype = pick_dtype(settings.hf_dtype, device)
    torch_dtype = torch.float32 if dtype == "int8" else _DTYPES[dtype]
    tokenizer, model = _load_weights(source, settings, say, cache_root, torch_dtype)
    model = model.to(device).eval()
    vocab = int(model.get_output_embeddings().weight.shape[0])
    if dtype == "int8":
        say("quantizing linear layers to int8")
        with warnings.catch_warnings():
            # deprecated in favour of torchao, which Yap does not install; present in the pinned torch
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    config = model.config
    limit = int(getattr(config, "max_position_embeddings", 0) or 0) or 2048
    if settings.hf_max_model_len:
        limit = min(limit, settings.hf_max_model_len)
    runner = ModelRunner(model, int(config.num_hidden_layers), settings.hf_decode_threads)

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    loaded = Loaded(
        tokenizer=tokenizer,
        runner=runner,
        decode=decode,
        vocab_size=vocab,
        max_model_len=limit,
        eos_ids=_eos_ids(model, tokenizer),
        device=str(device),
        dtype=dtype,
    )
    say("warming up")
    _warm_up(runner)
    return loaded


def _load_weights(
    source: ModelSource, settings: HfSettings, say: Progress, cache_root: Path | None, torch_dtype: torch.dtype
) -> tuple[Any, Any]:
    """Tokenizer and model, from the GGUF cache when it holds this file."""
    local = {"local_files_only": source.local}
    if not source.gguf_file:
        say(f"loading {source.spec} as {torch_dtype}")
        tokenizer = AutoTokenizer.from_pretrained(source.location, **local)
        return tokenizer, AutoModelForCausalLM.from_pretrained(source.location, dtype=torch_dtype, **local)
    gguf = Path(source.location) / source.gguf_file
    folder = gguf_cache.cache_folder(gguf, cache_root) if cache_root and settings.hf_gguf_cache else None
    if folder is not None and gguf_cache.is_complete(folder):
        say(f"loading {source.spec} (converted copy in {folder}) as {torch_dtype}")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return tokenizer, AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, local_files_only=True)
    say(f"loading {source.spec} (GGUF: converting the tokenizer and dequantizing the weights)")
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file, local_files_only=True)
    # Dequantize at load: keeping GGUF packed needs a matmul kernel fetched
    # from the hub, which we never reach; without it every forward would unpack.
    model = AutoModelForCausalLM.from_pretrained(
        source.location,
        gguf_file=source.gguf_file,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
        local_files_only=True,
    )
    if folder is not None:
        say(f"saving the converted model to {folder}")
        gguf_cache.save(folder, model, tokenizer)
    return tokenizer, model.to(torch_dtype)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    found: set[int] = set()
    for value in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(v) for v in value)
    return frozenset(found)


def _warm_up(runner: ModelRunner) -> None:
    """One small prefill and decode step, so the first request is not the slow one."""
    from yap_engines_hf.kv import BatchKV

    with torch.inference_mode():
        ids = list(range(10, 42))
        _, kv = runner.prefill(ids, 0, None)
        batch = BatchKV(runner.num_layers)
        batch.add(kv, len(ids))
        runner.decode(batch, [42])
        runner.prefill(ids + [43, 44], len(ids), kv)
