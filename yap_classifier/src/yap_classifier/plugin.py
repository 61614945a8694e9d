"""Plugin entry point (``yap`` entry-point group, name ``classifier``).

Kept light: torch and transformers are imported only when a classifier is
built or a command runs, never when the plugin is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from yap_core.hookspecs import Register, hookimpl
from yap_core.settings import Config, CoreSettings

if TYPE_CHECKING:
    import click

    from yap_classifier.service import ScreenshotClassifier


def make_classifier(config: Config) -> ScreenshotClassifier:
    """Factory: a classifier configured from the [core] settings; nothing loads until ``start()``."""
    from yap_classifier.service import ScreenshotClassifier

    return ScreenshotClassifier(config.section("core", CoreSettings))


@hookimpl
def register_classifiers(register: Register) -> None:
    register("classifier", make_classifier)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from yap_classifier.commands import classifier_group

    cli.add_command(classifier_group)

