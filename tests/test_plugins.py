"""Plugin discovery through entry points, the `yap plugins` command, clear
errors for unknown engines, and only the selected engine being imported."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from yap_core.plugins import PluginError, PluginHost, installed_plugins
from yap_core.settings import Config, SettingsError

VENV_BIN = Path(sys.executable).parent
BUILT_IN = {"hf", "vllm", "trt", "classifier", "scripted"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"INFERENCE_ENGINE", "YAP_PLUGINS_TOML", "DEPLOY_MODE"}}
    return env | extra


def _yap(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "yap"), *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=120
    )


def test_entry_points_list_every_installed_plugin_with_what_it_provides() -> None:
    found = {p.name: p for p in installed_plugins(["example"])}
    assert BUILT_IN | {"example"} <= set(found)
    example = found["example"]
    assert example.distribution == "yap-example-engine"
    assert example.module == "yap_example_engine.plugin"
    assert example.provides == ["engine"] and example.selected
    assert "engine" in found["hf"].provides and not found["hf"].selected
    assert "quantizer" in found["vllm"].provides


def test_a_third_party_engine_is_built_by_its_entry_point_name() -> None:
    host = PluginHost()
    host.load("example")
    engine = host.engine_factory("example")(Config(env={"EXAMPLE_STEP_MS": "0"}))
    assert type(engine).__module__ == "yap_example_engine.engine"
    assert engine.name == "example"


def test_a_plugins_settings_are_validated() -> None:
    host = PluginHost()
    host.load("example")
    with pytest.raises(SettingsError, match="EXAMPLE_STEP_MS"):
        host.engine_factory("example")(Config(env={"EXAMPLE_STEP_MS": "-1"}))
    with pytest.raises(SettingsError, match="unknown key"):
        host.engine_factory("example")(Config(env={}, toml={"example": {"step": 1}}))


def test_unknown_engine_name_lists_the_installed_ones() -> None:
    with pytest.raises(PluginError) as err:
        PluginHost().load("nosuchengine")
    message = str(err.value)
    assert "nosuchengine" in message
    for name in BUILT_IN | {"example"}:
        assert name in message


def test_a_loaded_plugin_without_that_engine_says_what_is_registered() -> None:
    host = PluginHost()
    host.load("example")
    with pytest.raises(PluginError, match=r"registered: example"):
        host.engine_factory("hf")


def test_yap_plugins_prints_a_table(tmp_path: Path) -> None:
    out = _yap("plugins", cwd=tmp_path, INFERENCE_ENGINE="example")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["name", "distribution", "version", "provides", "selected"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert BUILT_IN | {"example"} <= set(rows)
    assert rows["example"].split()[1:3] == ["yap-example-engine", "0.1.0"]
    assert rows["example"].rstrip().endswith("yes")
    assert not rows["hf"].rstrip().endswith("yes")


def test_yap_plugins_json_follows_plugins_toml(tmp_path: Path) -> None:
    (tmp_path / "plugins.toml").write_text('[core]\ninference_engine = "vllm"\ndeploy_mode = "chat"\n')
    out = _yap("plugins", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {p["name"]: p for p in json.loads(out.stdout)}
    assert rows["vllm"]["selected"] is True
    assert rows["classifier"]["selected"] is False  # chat-only deployment
    assert rows["hf"]["selected"] is False
    assert rows["example"]["distribution"] == "yap-example-engine"
    assert set(rows["hf"]) == {"name", "distribution", "version", "module", "provides", "selected"}


def test_yap_plugins_refuses_a_bad_plugins_toml(tmp_path: Path) -> None:
    (tmp_path / "plugins.toml").write_text("[core]\ninference_engin = 'hf'\n")
    out = _yap("plugins", cwd=tmp_path)
    assert out.returncode != 0
    assert "inference_engin" in out.stderr


_PROBE = """
import json, sys
from yap_core.plugins import PluginHost
from yap_core.settings import Config, CoreSettings
config = Config.discover()
name = config.section("core", CoreSettings).inference_engine
host = PluginHost()
host.load(name)
engine = host.engine_factory(name)(config)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"vllm", "tensorrt_llm", "yap_engines_vllm", "yap_engines_trt", "modelopt", "torch", "transformers"})
print(json.dumps({"engine": type(engine).__name__, "heavy": heavy}))
"""


def test_under_hf_nothing_imports_vllm_or_tensorrt_llm(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=tmp_path, env=_env(INFERENCE_ENGINE="hf"), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["engine"] == "HfEngine"
    roots = {m.split(".")[0] for m in result["heavy"]}
    assert not roots & {"vllm", "tensorrt_llm", "yap_engines_vllm", "yap_engines_trt", "modelopt"}, roots


def test_listing_plugins_imports_no_engine(tmp_path: Path) -> None:
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom yap_core.cli import cli\n"
        "r = CliRunner().invoke(cli, ['plugins'])\nassert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'transformers', 'vllm', 'tensorrt_llm', 'yap_engines_hf', 'yap_engines_vllm', 'yap_engines_trt', 'yap_example_engine'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_conformance_kit_runs_by_plugin_name(tmp_path: Path) -> None:
    """What a third party does: one test module, then pytest --yap-engine NAME."""
    (tmp_path / "test_kit.py").write_text(
        "from yap_core.testing import EngineConformance\n\nclass TestKit(EngineConformance):\n    pass\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_kit.py", "--yap-engine", "example"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "12 passed" in out.stdout


def test_the_conformance_kit_needs_an_engine(tmp_path: Path) -> None:
    (tmp_path / "test_kit.py").write_text(
        "from yap_core.testing import EngineConformance\n\nclass TestKit(EngineConformance):\n    pass\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_kit.py"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert out.returncode != 0
    assert "--yap-engine" in out.stdout + out.stderr


def test_hf_engine_bad_model_path_fails_before_loading(tmp_path: Path) -> None:
    host = PluginHost()
    host.load("hf")
    factory = host.engine_factory("hf")
    with pytest.raises(SettingsError, match="CHAT_MODEL: no such GGUF file"):
        factory(Config(env={"CHAT_MODEL": str(tmp_path / "missing.gguf")}))
    with pytest.raises(SettingsError, match="CHAT_MODEL: no such model folder"):
        factory(Config(env={"CHAT_MODEL": str(tmp_path / "missing")}))
    with pytest.raises(SettingsError, match="has no config.json"):
        factory(Config(env={"CHAT_MODEL": str(tmp_path)}))
    with pytest.raises(SettingsError, match="HF_DTYPE"):
        factory(Config(env={"HF_DTYPE": "float64"}))
    with pytest.raises(SettingsError, match="HF_MAX_BATCH"):
        factory(Config(env={"HF_MAX_BATCH": "0"}))


# Pins of the GPU stacks the engine distributions install beside, read from their
# own metadata (2026-12-05): tensorrt-llm's requirements.txt asks for
# nvidia-modelopt[torch]~=0.37.0 (after 1.2.0rc2); every vLLM from 0.25.1 to 0.34.0 for
# compressed-tensors==0.17.0, which no llmcompressor since 0.12 accepts.
TENSORRT_LLM_MODELOPT = "~=0.37.0"


def _requires(dist: str) -> list[str]:
    return importlib.metadata.requires(dist) or []


def test_the_trt_plugin_accepts_the_modelopt_tensorrt_llm_installs() -> None:
    """A floor above tensorrt-llm's pin made `pip install yap-engines-trt`
    impossible (it asked for >=0.47); CI builds with that very release."""
    ours = next(Requirement(r) for r in _requires("yap-engines-trt") if Requirement(r).name == "nvidia-modelopt")
    assert ours.specifier.contains("0.37.0"), ours
    assert SpecifierSet(TENSORRT_LLM_MODELOPT).contains(importlib.metadata.version("nvidia-modelopt"))


def test_the_vllm_plugin_does_not_ask_for_llmcompressor_beside_vllm() -> None:
    """No requirement of yap-engines-vllm, extra or not, names llmcompressor:
    pip could not install it beside vLLM (docs/vllm.md says where it goes)."""
    names = {Requirement(r).name for r in _requires("yap-engines-vllm")}
    assert "vllm" in names and "llmcompressor" not in names, names
