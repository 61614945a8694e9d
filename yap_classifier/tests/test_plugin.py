"""The plugin as the core finds it: entry point, factory, commands, lazy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
from yap_core.contracts import Classifier
from yap_core.plugins import PluginHost
from yap_core.settings import Config

REPO = Path(__file__).resolve().parents[2]


def test_factory_through_the_plugin_host(tmp_path: Path) -> None:
    host = PluginHost()
    host.load("classifier")
    factory = host.classifier_factory("classifier")
    clf = factory(Config(env={"YAP_CACHE_DIR": str(tmp_path), "TOOL_MODEL": "/models/mine"}))
    assert isinstance(clf, Classifier)
    assert clf.model_id == "/models/mine"
    group = click.Group()
    host.add_commands(group)
    assert set(group.commands["classifier"].commands) == {"train", "eval"}


def test_loading_the_plugin_imports_no_torch() -> None:
    code = "import sys, yap_classifier.plugin; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_eval_command_prints_one_json_object(tmp_path: Path, cache_dir: Path, built_model: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"history": [], "utterance": "can you look at my screen", "label": 1}\n'
        "\n"
        '{"utterance": "open spotify", "label": 0}\n'
        '{"history": ["which of these shoes should i buy"], "utterance": "what about this one", "label": 1}\n'
    )
    env = {**os.environ, "YAP_CACHE_DIR": str(cache_dir)}
    yap = Path(sys.executable).with_name("yap")
    out = subprocess.run(
        [str(yap), "classifier", "eval", "--model", str(built_model), "--data", str(data)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"accuracy", "precision", "recall", "f1", "n", "p50_ms", "p95_ms"} <= set(report)
    assert report["n"] == 3
    assert 0 <= report["f1"] <= 1 and report["p50_ms"] > 0 and report["p95_ms"] >= report["p50_ms"]


def test_eval_command_bad_data_is_a_clear_error(tmp_path: Path, cache_dir: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"utterance": "x", "label": 7}\n')
    env = {**os.environ, "YAP_CACHE_DIR": str(cache_dir)}
    yap = Path(sys.executable).with_name("yap")
    out = subprocess.run([str(yap), "classifier", "eval", "--data", str(data)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert out.returncode != 0
    assert "d.jsonl:1" in out.stderr and "label must be 0 or 1" in out.stderr
