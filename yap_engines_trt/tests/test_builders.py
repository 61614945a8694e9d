"""ModelOpt really quantizes a tiny Llama on CPU; the exported checkpoints are
checked file by file (quantization config, dtypes and scales of the weights),
as is the build metadata, reuse, and the upload plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from yap_core.calibration import CalibrationError
from yap_core.contracts import CalibrationConfig, Quantizer
from yap_core.settings import Config
from yap_engines_trt.builders import BuildError, ModeloptQuantizer, detect_format
from yap_engines_trt.calibration import load_calibration
from yap_engines_trt.hub_push import upload_plan
from yap_engines_trt.metadata import read_metadata
from yap_engines_trt.settings import load_settings

# Small on purpose: 2 shared CPU cores in CI.
CALIB = CalibrationConfig(num_samples=8, seq_len=32, batch_size=4)


def quantizer(**env: str) -> ModeloptQuantizer:
    return ModeloptQuantizer(load_settings(Config(env={"TRT_QUANT_DEVICE": "cpu", **env}, toml={})))


def tensors(folder: Path, prefix: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {
            k[len(prefix):]: (str(f.get_tensor(k).dtype), tuple(f.get_tensor(k).shape))
            for k in f.keys()
            if k.startswith(prefix)
        }


def test_quantizer_satisfies_the_contract():
    q = quantizer()
    assert isinstance(q, Quantizer)
    assert q.engine == "trt" and q.formats((8, 0)) == ["int4_awq", "int8_sq"]


def test_fp8_build_exports_fp8_weights_with_scales(tiny_llama: Path, tmp_path: Path):
    lines: list[str] = []
    out = tmp_path / "fp8"
    result = quantizer().build(str(tiny_llama), "fp8", out, calibration=CALIB, progress=lines.append)
    assert result.format == "fp8" and not result.reused

    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "modelopt" and qc["quant_algo"] == "FP8"
    assert "lm_head" in qc["ignore"]
    q_proj = tensors(out, "model.layers.0.self_attn.q_proj.")
    assert q_proj["weight"] == ("torch.float8_e4m3fn", (128, 128))
    assert q_proj["weight_scale"][0] == "torch.float32"
    assert q_proj["input_scale"][0] == "torch.float32"  # static activation scale from calibration
    # unquantized layers stay bf16
    assert tensors(out, "model.embed_tokens.")["weight"][0] == "torch.bfloat16"
    assert (out / "tokenizer.json").is_file()
    assert detect_format(out) == "fp8"

    meta = read_metadata(out)
    assert meta is not None
    assert meta.quant_algo == "FP8" and meta.key.format == "fp8" and meta.key.export == "hf"
    assert meta.key.calibration.dataset == "bundled:calibration.jsonl"
    assert meta.calibration_samples_used == 8
    assert meta.device == "cpu" and meta.sm is None
    assert meta.versions["nvidia-modelopt"] == meta.key.modelopt_version
    assert "model.safetensors" in meta.files and "config.json" in meta.files
    assert any("calibrating fp8 on 8 samples" in line for line in lines)


def test_int4_awq_build_packs_weights(tiny_llama: Path, tmp_path: Path):
    out = tmp_path / "awq"
    quantizer().build(str(tiny_llama), "int4_awq", out, calibration=CalibrationConfig(num_samples=4, seq_len=32))
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_algo"] == "W4A16_AWQ"
    q_proj = tensors(out, "model.layers.0.self_attn.q_proj.")
    # two 4-bit values per byte: 128 output rows x 128 inputs -> 64 x 128 uint8
    assert q_proj["weight"] == ("torch.uint8", (64, 128))
    # one scale per 128-wide input block and output row
    assert q_proj["weight_scale"] == ("torch.float32", (128, 1))
    assert detect_format(out) == "int4_awq"


def test_int8_smoothquant_build(tiny_llama: Path, tmp_path: Path):
    out = tmp_path / "sq"
    quantizer().build(str(tiny_llama), "int8_sq", out, calibration=CALIB)
    q_proj = tensors(out, "model.layers.0.self_attn.q_proj.")
    assert q_proj["weight"] == ("torch.int8", (128, 128))
    assert q_proj["pre_quant_scale"][1] == (128,)  # the SmoothQuant smoothing factors
    assert detect_format(out) == "int8_sq"


def test_matching_build_is_reused_and_force_rebuilds(tiny_llama: Path, tmp_path: Path):
    out = tmp_path / "reuse"
    q = quantizer()
    first = q.build(str(tiny_llama), "fp8", out, calibration=CALIB)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = q.build(str(tiny_llama), "fp8", out, calibration=CALIB)
    assert again.reused and not first.reused
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    # a different calibration is a different build: refused without --force, rebuilt with it
    other = CalibrationConfig(num_samples=6, seq_len=32, batch_size=2)
    with pytest.raises(BuildError, match="--force"):
        q.build(str(tiny_llama), "fp8", out, calibration=other)
    rebuilt = q.build(str(tiny_llama), "fp8", out, calibration=other, force=True)
    assert not rebuilt.reused
    meta = read_metadata(out)
    assert meta is not None and meta.key.calibration.num_samples == 6


def test_foreign_folder_is_never_overwritten(tiny_llama: Path, tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="holds no Yap build"):
        quantizer().build(str(tiny_llama), "fp8", out, calibration=CALIB, force=True)
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "mine.partial").exists()


def test_engine_export_needs_trtllm_build(tiny_llama: Path, tmp_path: Path):
    with pytest.raises(BuildError, match="trtllm-build"):
        quantizer(TRT_QUANT_EXPORT="engine").build(str(tiny_llama), "fp8", tmp_path / "e", calibration=CALIB)
    assert not (tmp_path / "e").exists()


def test_cuda_device_without_gpu_is_an_error(tiny_llama: Path, tmp_path: Path):
    with pytest.raises(BuildError, match="no CUDA GPU"):
        quantizer(TRT_QUANT_DEVICE="cuda").build(str(tiny_llama), "fp8", tmp_path / "c", calibration=CALIB)


def test_upload_plan_lists_the_build_without_network(tiny_llama: Path, tmp_path: Path):
    out = tmp_path / "push"
    quantizer().build(str(tiny_llama), "fp8", out, calibration=CALIB)
    (out / "scratch.log").write_text("not part of the build")
    meta = read_metadata(out)
    assert meta is not None
    plan = {item.path: item.size for item in upload_plan(out, meta)}
    assert "build_metadata.json" in plan and "model.safetensors" in plan and "hf_quant_config.json" in plan
    assert "scratch.log" not in plan
    assert plan["model.safetensors"] == (out / "model.safetensors").stat().st_size


def test_calibration_file_formats(tmp_path: Path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert load_calibration(str(jsonl)).texts == ("one", "two")
    plain = tmp_path / "c.txt"
    plain.write_text("first para\nstill first\n\nsecond\n")
    assert load_calibration(str(plain)).texts == ("first para\nstill first", "second")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    with pytest.raises(CalibrationError, match="bad.jsonl:1"):
        load_calibration(str(bad))
    with pytest.raises(CalibrationError, match="no such file"):
        load_calibration(str(tmp_path / "missing.jsonl"))
    assert len(load_calibration(None).texts) >= 32


def test_detect_reads_what_a_folder_declares(tmp_path: Path):
    awq = tmp_path / "awq"
    awq.mkdir()
    (awq / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq", "bits": 4}}))
    assert detect_format(awq) == "awq"
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({"pretrained_config": {"quantization": {"quant_algo": "FP8"}},
                                                    "build_config": {"max_batch_size": 8}}))
    assert detect_format(engine) == "fp8"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert detect_format(plain) is None
