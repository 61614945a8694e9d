"""Settings resolve as environment, then plugins.toml, then defaults; nothing
is accepted and then ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import pytest
from yap_core.settings import Config, CoreSettings, SettingsError, describe, doc, load_core

KEY = {"TEXT_API_KEY": "k1"}


def test_environment_wins_over_toml_and_toml_over_default() -> None:
    config = Config(
        {**KEY, "CHAT_MAX_OUT": "40"},
        {"core": {"chat_max_out": 20, "history_max_tokens": 100}},
    )
    settings = load_core(config)
    assert settings.chat_max_out == 40  # env
    assert settings.history_max_tokens == 100  # toml
    assert settings.user_utt_max_tokens == 350  # default


def test_key_list_and_booleans_from_environment() -> None:
    settings = load_core(Config({"TEXT_API_KEY": "a, b ,c", "CONCURRENT_MODEL_CALL": "yes"}, {}))
    assert settings.text_api_key == ("a", "b", "c")
    assert settings.concurrent_model_call is True


def test_missing_api_key_is_refused() -> None:
    with pytest.raises(SettingsError, match="TEXT_API_KEY is required"):
        load_core(Config({}, {}))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHAT_MAX_OUT": "0"}, "CHAT_MAX_OUT"),
        ({"CHAT_MAX_OUT": "many"}, "CHAT_MAX_OUT='many': expected an integer"),
        ({"CONCURRENT_MODEL_CALL": "maybe"}, "CONCURRENT_MODEL_CALL"),
        ({"DEPLOY_MODE": "everything"}, "DEPLOY_MODE"),
        ({"CHAT_TOP_P": "1.5"}, "CHAT_TOP_P"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_core(Config({**KEY, **env}, {}))


def test_unknown_toml_key_is_an_error_listing_known_keys() -> None:
    with pytest.raises(SettingsError, match=r"unknown key\(s\) chat_max_outt"):
        load_core(Config(KEY, {"core": {"chat_max_outt": 3}}))


def test_discover_reads_the_named_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.toml"
    path.write_text('[core]\ndeploy_mode = "chat"\n')
    settings = load_core(Config.discover({**KEY, "YAP_PLUGINS_TOML": str(path)}))
    assert settings.deploy_mode == "chat"


def test_discover_refuses_a_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        Config.discover({"YAP_PLUGINS_TOML": str(tmp_path / "nope.toml")})
    broken = tmp_path / "broken.toml"
    broken.write_text("[core\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        Config.discover({"YAP_PLUGINS_TOML": str(broken)})


def test_a_plugin_section_loads_its_own_struct() -> None:
    class PluginSettings(msgspec.Struct, kw_only=True):
        widget_count: Annotated[int, doc("How many widgets.", ge=1)] = 2

    config = Config({"WIDGET_COUNT": "5"}, {"example": {"widget_count": 3}})
    assert config.section("example", PluginSettings).widget_count == 5
    assert Config({}, {"example": {"widget_count": 3}}).section("example", PluginSettings).widget_count == 3
    with pytest.raises(SettingsError, match="WIDGET_COUNT"):
        Config({"WIDGET_COUNT": "0"}, {}).section("example", PluginSettings)


def test_every_core_setting_is_documented_in_code_and_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for env_name, _default, description in describe(CoreSettings):
        assert description, f"{env_name} has no description"
        assert f"`{env_name}`" in readme, f"{env_name} missing from README's configuration table"
