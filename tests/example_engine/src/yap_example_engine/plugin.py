"""Entry point of the example engine (group `yap`, name `example`)."""

from __future__ import annotations

from yap_core.hookspecs import Register
from yap_core.settings import Config

from yap_core import hookimpl
from yap_example_engine.engine import ExampleEngine
from yap_example_engine.settings import ExampleSettings


def make_engine(config: Config) -> ExampleEngine:
    return ExampleEngine(config.section("example", ExampleSettings))


@hookimpl
def register_engines(register: Register) -> None:
    register("example", make_engine)
