"""Plugin entry point of the hf engine. Keep this module light: torch and
transformers are imported when the engine starts, never at plugin import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from yap_core.hookspecs import Register

from yap_core import hookimpl

if TYPE_CHECKING:
    from yap_core.settings import Config

    from yap_engines_hf.engine import HfEngine


def make_engine(config: Config) -> HfEngine:
    """Build (not start) the engine from [core] chat_model and the [hf] section.

    A model that is not there or a missing library fails here, before any weights load."""
    from yap_core.settings import CoreSettings

    from yap_engines_hf.engine import HfEngine
    from yap_engines_hf.model_source import check_runtime, resolve
    from yap_engines_hf.settings import HfSettings

    check_runtime()
    settings = config.section("hf", HfSettings)
    core = config.section("core", CoreSettings)
    source = resolve(core.chat_model)
    cache_root = Path(core.yap_cache_dir).expanduser() if core.yap_cache_dir else Path.home() / ".cache" / "yap"
    return HfEngine(source, settings, cache_root)


@hookimpl
def register_engines(register: Register) -> None:
    register("hf", make_engine)
