"""Yap engine on vLLM (AsyncLLM), with vLLM quantization."""
