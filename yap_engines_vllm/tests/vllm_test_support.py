"""Helpers shared by this folder's tests (a module with a unique name: every
test folder of the repository has a conftest.py, so ``from conftest import``
would pick whichever was imported first)."""

from __future__ import annotations

import sys
from pathlib import Path

from yap_core.plugins import PluginHost
from yap_core.settings import Config


def purge_vllm_modules() -> None:
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        del sys.modules[name]


def engine_config(model_dir: Path, **env: str) -> Config:
    base = {"CHAT_MODEL": str(model_dir), "TEXT_API_KEY": "test-key", "DEPLOY_MODE": "chat",
            "CHAT_MAX_LEN": "1024", "CHAT_LOAD_FORMAT": "dummy"}  # fmt: skip
    base.update(env)
    return Config(env=base, toml={})


def make_vllm_engine(config: Config):
    host = PluginHost()
    host.load("vllm")
    return host.engine_factory("vllm")(config)
