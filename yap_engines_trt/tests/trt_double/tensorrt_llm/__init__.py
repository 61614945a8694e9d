"""DOUBLE of tensorrt_llm 1.2.x for tests: see ../README.md. Not TensorRT-LLM."""

from tensorrt_llm.llmapi.llm import LLM
from tensorrt_llm.sampling_params import SamplingParams

__version__ = "1.2.0+double"
IS_DOUBLE = True

__all__ = ["LLM", "SamplingParams", "__version__"]
