"""The README documents every setting of every built-in plugin: no setting is
accepted without a line saying what it does."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from yap_core.scripted import ScriptedSettings
from yap_core.settings import describe
from yap_engines_hf.settings import HfSettings
from yap_engines_trt.settings import TrtSettings
from yap_engines_vllm.settings import VllmSettings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("settings", [HfSettings, VllmSettings, TrtSettings, ScriptedSettings])
def test_plugin_settings_are_documented(settings: type[msgspec.Struct]) -> None:
    for env_name, _default, description in describe(settings):
        assert description, f"{env_name} has no description"
        assert f"`{env_name}`" in README, f"{env_name} is missing from README.md"


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in README
