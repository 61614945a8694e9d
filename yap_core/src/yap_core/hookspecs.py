"""The hooks a Yap plugin implements.

A plugin is a module registered under the ``yap`` entry-point group. It
implements any of these hooks with ``@yap_core.hookimpl`` and hands its
factories to the ``register`` callback, so the core can list what is available
without building anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

PROJECT = "yap"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# register(name, factory); factory(config: yap_core.settings.Config) -> object
Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def register_engines(register: Register) -> None:
    """Register chat engine factories: ``register("hf", make_engine)``.

    The factory takes the deployment's ``Config`` and returns an object that
    satisfies ``yap_core.contracts.Engine``. It must not start anything: the
    server calls ``await engine.start()``.
    """


@hookspec
def register_classifiers(register: Register) -> None:
    """Register screenshot-intent classifier factories (``contracts.Classifier``)."""


@hookspec
def register_quantizers(register: Register) -> None:
    """Register quantizer factories (``contracts.Quantizer``), keyed by engine name."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``yap`` CLI (e.g. ``yap classifier train``)."""
