"""DOUBLE: the TensorRT-engine backend's LLM, as in tensorrt-llm 1.x."""

from tensorrt_llm.llmapi.llm import _TrtLLM as LLM

__all__ = ["LLM"]
