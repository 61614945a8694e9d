"""Yap engine on plain transformers + torch (CPU or CUDA): the embedded default."""
