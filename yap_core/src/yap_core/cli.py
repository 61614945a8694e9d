"""The ``yap`` command.

Subcommands live in the module named for their idea and are imported only
when invoked (``_LAZY``), so ``yap plugins`` stays quick and imports no engine.
Plugins add their own commands through the ``register_commands`` hook; the
classifier's ``yap classifier ...`` group is loaded from the selected
classifier plugin only when it is asked for.
"""

from __future__ import annotations

import importlib
import json
import sys

import click

from yap_core.plugins import PluginError, PluginHost, installed_plugins
from yap_core.settings import Config, CoreSettings, SettingsError

# command name -> "module:attribute" of a click command
_LAZY = {
    "serve": "yap_core.server:serve_command",
    "client": "yap_core.client:client_group",
    "bench": "yap_core.bench:bench_command",
    "soak": "yap_core.soak:soak_command",
    "quantize": "yap_core.quantize:quantize_command",
}


class _YapGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_LAZY) | {"classifier"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _LAZY:
            module, _, attr = _LAZY[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        if name == "classifier":
            return _plugin_group("classifier")
        return super().get_command(ctx, name)


def _plugin_group(name: str) -> click.Command | None:
    """A command group a plugin adds, loading only the selected classifier plugin."""
    try:
        config = Config.discover()
        plugin = config.section("core", CoreSettings).tool_classifier
        host = PluginHost()
        host.load(plugin)
    except (PluginError, SettingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    holder = click.Group()
    host.add_commands(holder)
    return holder.commands.get(name)


@click.group(cls=_YapGroup)
@click.version_option(package_name="yap-core")
def cli() -> None:
    """Yap: real-time text inference for voice agents."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List installed plugins (from metadata; nothing is imported)."""
    try:
        selected = Config.discover().section("core", CoreSettings).plugin_names()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    found = installed_plugins(selected)
    if as_json:
        click.echo(json.dumps([_as_dict(p) for p in found], indent=2))
        return
    rows = [("name", "distribution", "version", "provides", "selected")]
    rows += [(p.name, p.distribution, p.version, ", ".join(p.provides) or "-", "yes" if p.selected else "") for p in found]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _as_dict(p: object) -> dict[str, object]:
    import msgspec

    return msgspec.to_builtins(p)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except (PluginError, SettingsError) as exc:
        click.echo(f"yap: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":  # how the SERVER_WORKERS supervisor starts its workers
    main()
