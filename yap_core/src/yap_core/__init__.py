"""Yap core: protocol, sessions, prompts, limits, telemetry and the plugin host."""

from yap_core.hookspecs import hookimpl

__all__ = ["hookimpl", "__version__"]
__version__ = "0.1.0"
