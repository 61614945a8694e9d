"""Yap screenshot-intent classifier (sequence classification, micro-batched)."""
