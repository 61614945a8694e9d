"""Plugin entry point (``yap`` entry-point group, name ``vllm``).

Light on purpose: vllm is imported when an engine starts, and llmcompressor
when a quantizer builds, never when the plugin loads.
"""

from __future__ import annotations

from yap_core.hookspecs import Register
from yap_core.settings import Config, CoreSettings

from yap_core import hookimpl


def make_engine(config: Config):  # -> VllmEngine
    from yap_engines_vllm.engine import VllmEngine
    from yap_engines_vllm.settings import load_settings

    return VllmEngine(config.section("core", CoreSettings), load_settings(config))


def make_quantizer(config: Config):  # -> LlmCompressorQuantizer
    from yap_engines_vllm.quantizer import LlmCompressorQuantizer

    return LlmCompressorQuantizer()


@hookimpl
def register_engines(register: Register) -> None:
    register("vllm", make_engine)


@hookimpl
def register_quantizers(register: Register) -> None:
    register("vllm", make_quantizer)
