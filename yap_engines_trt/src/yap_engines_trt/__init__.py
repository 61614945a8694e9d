"""Yap engine on TensorRT-LLM (LLM API), with ModelOpt quantization builders."""
