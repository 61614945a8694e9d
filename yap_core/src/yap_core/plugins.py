"""Finding, loading and listing plugins.

Plugins are modules under the ``yap`` entry-point group. Only the plugins a
deployment selects are imported (``load``); ``installed_plugins`` lists the
rest from distribution metadata alone, so listing never imports vllm or
tensorrt_llm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

import msgspec
import pluggy

from yap_core import hookspecs

ENTRY_POINT_GROUP = "yap"
# Distributions say what they provide through keywords in their metadata,
# e.g. keywords = ["yap-plugin", "yap-engine", "yap-quantizer"].
_KIND_KEYWORDS = {"yap-engine": "engine", "yap-classifier": "classifier", "yap-quantizer": "quantizer"}


class PluginError(RuntimeError):
    """A plugin is missing, fails to import, or does not provide what was asked."""


class PluginInfo(msgspec.Struct, kw_only=True):
    name: str  # entry-point name: what the deployment selects (INFERENCE_ENGINE=name)
    distribution: str
    version: str
    module: str
    provides: list[str]
    selected: bool = False


def installed_plugins(selected: Iterable[str] = ()) -> list[PluginInfo]:
    """Every plugin installed, read from metadata without importing any."""
    chosen = set(selected)
    found: list[PluginInfo] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        keywords = _keywords(dist)
        found.append(
            PluginInfo(
                name=ep.name,
                distribution=dist.name if dist else "?",
                version=dist.version if dist else "?",
                module=ep.value,
                provides=[kind for kw, kind in _KIND_KEYWORDS.items() if kw in keywords],
                selected=ep.name in chosen,
            )
        )
    return sorted(found, key=lambda p: p.name)


def _keywords(dist: metadata.Distribution | None) -> set[str]:
    if dist is None:
        return set()
    raw = dist.metadata.get("Keywords") or ""
    return {k.strip() for k in raw.replace(";", ",").split(",") if k.strip()}


def _installed_names() -> str:
    names = sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})
    return ", ".join(names) if names else "none"


class PluginHost:
    """One deployment's plugin manager. Create one per process (or per test);
    nothing here is global."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._loaded: set[str] = set()

    def load(self, name: str) -> None:
        """Import the plugin registered under entry-point name ``name``."""
        if name in self._loaded or self.pm.has_plugin(name):
            self._loaded.add(name)
            return
        eps = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not eps:
            raise PluginError(
                f"no Yap plugin named {name!r} is installed (installed: {_installed_names()}); "
                f"install its distribution, e.g. pip install yap-engines-{name}"
            )
        try:
            module = eps[0].load()
        except ImportError as exc:
            raise PluginError(f"plugin {name!r} ({eps[0].value}) failed to import: {exc}") from exc
        self.pm.register(module, name=name)
        self.pm.check_pending()
        self._loaded.add(name)

    def add(self, plugin: object, name: str) -> None:
        """Register an in-process plugin object (tests, embedding)."""
        self.pm.register(plugin, name=name)
        self.pm.check_pending()
        self._loaded.add(name)

    def _factories(self, hook: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
        found: dict[str, Callable[..., Any]] = {}

        def register(name: str, factory: Callable[..., Any]) -> None:
            if name in found:
                raise PluginError(f"two plugins register {name!r}")
            found[name] = factory

        hook(register=register)
        return found

    def _factory(self, kind: str, hook: Callable[..., Any], name: str) -> Callable[..., Any]:
        factories = self._factories(hook)
        if name not in factories:
            have = ", ".join(sorted(factories)) or "none"
            raise PluginError(f"no {kind} named {name!r} is registered by the loaded plugins (registered: {have})")
        return factories[name]

    def engine_factory(self, name: str) -> Callable[..., Any]:
        return self._factory("engine", self.pm.hook.register_engines, name)

    def classifier_factory(self, name: str) -> Callable[..., Any]:
        return self._factory("classifier", self.pm.hook.register_classifiers, name)

    def quantizer_factory(self, name: str) -> Callable[..., Any]:
        return self._factory("quantizer", self.pm.hook.register_quantizers, name)

    def add_commands(self, cli: Any) -> None:
        self.pm.hook.register_commands(cli=cli)
