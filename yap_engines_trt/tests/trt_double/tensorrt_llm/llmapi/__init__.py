"""DOUBLE of tensorrt_llm.llmapi."""

from tensorrt_llm.llmapi.llm import LLM, RequestOutput
from tensorrt_llm.llmapi.llm_args import KvCacheConfig

__all__ = ["LLM", "RequestOutput", "KvCacheConfig"]
