"""Fixtures for the cross-package tests; the helpers live in protocol_support.py."""

from protocol_support import yap_servers

__all__ = ["yap_servers"]
