"""The trt plugin through the core: discovery without importing tensorrt_llm,
and `yap quantize --engine trt` (SM validation and a real CPU build)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner
from yap_core.cli import cli
from yap_core.plugins import PluginHost, installed_plugins
from yap_core.settings import Config


def test_plugin_registers_engine_and_quantizer_lazily():
    info = {p.name: p for p in installed_plugins()}["trt"]
    assert set(info.provides) == {"engine", "quantizer"}
    host = PluginHost()
    host.load("trt")
    quantizer = host.quantizer_factory("trt")(Config(env={}, toml={}))
    assert quantizer.name == "modelopt" and quantizer.formats((9, 0)) == ["int4_awq", "fp8"]
    engine = host.engine_factory("trt")(Config(env={"CHAT_MODEL": "/models/any"}, toml={}))
    assert engine.name == "trt"
    assert "tensorrt_llm" not in sys.modules


def test_quantize_lists_formats_for_an_sm(tmp_path: Path):
    result = CliRunner().invoke(cli, ["quantize", "m", "--engine", "trt", "--sm", "8.6"])
    assert result.exit_code == 0, result.output
    assert "SM 8.6: int4_awq, int8_sq" in result.output


def test_quantize_fp8_on_an_a100_is_refused_with_the_alternatives(tmp_path: Path):
    result = CliRunner().invoke(
        cli, ["quantize", "m", "--engine", "trt", "--sm", "8.0", "--format", "fp8", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0
    assert "'fp8' is not available for trt on SM 8.0; available: int4_awq, int8_sq" in result.output
    assert not (tmp_path / "o").exists()


def test_quantize_builds_through_the_cli(tiny_llama: Path, tmp_path: Path):
    out = tmp_path / "cli_fp8"
    args = ["quantize", str(tiny_llama), "--engine", "trt", "--sm", "9.0", "--format", "fp8", "--out", str(out),
            "--calib-samples", "4", "--calib-seq-len", "16"]
    result = CliRunner().invoke(cli, args, env={"TRT_QUANT_DEVICE": "cpu"})
    assert result.exit_code == 0, result.output
    assert f"built fp8 checkpoint in {out}" in result.output
    meta = json.loads((out / "build_metadata.json").read_text())
    assert meta["key"]["calibration"]["num_samples"] == 4 and meta["quant_algo"] == "FP8"
    again = CliRunner().invoke(cli, args, env={"TRT_QUANT_DEVICE": "cpu"})
    assert again.exit_code == 0 and f"reused fp8 checkpoint in {out}" in again.output
