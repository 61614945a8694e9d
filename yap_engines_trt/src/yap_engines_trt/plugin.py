"""Plugin entry point ``trt``: the TensorRT-LLM engine and the ModelOpt builders.

Kept light: tensorrt_llm is imported only when the engine starts, and torch /
modelopt only when a build runs.
"""

from __future__ import annotations

from yap_core.hookspecs import Register
from yap_core.settings import Config

from yap_core import hookimpl


def make_engine(config: Config):  # -> TrtEngine
    from yap_engines_trt.engine import engine_from_config

    return engine_from_config(config)


def make_quantizer(config: Config):  # -> ModeloptQuantizer
    from yap_engines_trt.builders import ModeloptQuantizer
    from yap_engines_trt.settings import load_settings

    return ModeloptQuantizer(load_settings(config))


@hookimpl
def register_engines(register: Register) -> None:
    register("trt", make_engine)


@hookimpl
def register_quantizers(register: Register) -> None:
    register("trt", make_quantizer)
