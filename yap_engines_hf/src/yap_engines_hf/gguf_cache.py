"""A converted copy of a GGUF model, so only the first start pays the conversion.

transformers dequantizes a GGUF file and rebuilds its tokenizer on every load
(tens of seconds on a small CPU); the result saved as a float32 safetensors
folder loads in well under a second. The folder is keyed by the file's path,
size and mtime and the transformers version, written under a temporary name
and renamed into place, so concurrent starts never see half a folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

_DONE = ".complete"


def cache_folder(gguf: Path, cache_root: Path) -> Path:
    st = gguf.stat()
    ident = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|transformers {metadata.version('transformers')}"
    return cache_root / "hf-gguf" / f"{gguf.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def is_complete(folder: Path) -> bool:
    return (folder / _DONE).is_file()


def save(folder: Path, model: Any, tokenizer: Any) -> None:
    """Write model (float32) and tokenizer; a concurrent writer's copy is as good as ours."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _DONE).write_text("")
    try:
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process got there first
