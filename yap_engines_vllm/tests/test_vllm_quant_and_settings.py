"""Quantization choice, the llmcompressor quantizer's own logic, and the
settings' validation. No vLLM, no double needed: these run before vLLM loads."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from yap_core.contracts import SAMPLING_KEYS, CalibrationConfig, Sampling
from yap_core.plugins import PluginHost
from yap_core.settings import Config, CoreSettings, SettingsError
from yap_engines_vllm.quantizer import (
    METADATA_FILE,
    LlmCompressorQuantizer,
    QuantMetadata,
    group_size,
    load_calibration,
    write_metadata,
)
from yap_engines_vllm.sampling import sampling_kwargs
from yap_engines_vllm.settings import VllmSettings, gpu_fraction, load_settings, validate

from yap_engines_vllm import quant


def checkpoint(tmp_path: Path, name: str, quant_method: str | None = None, modelopt: bool = False) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    config: dict = {"model_type": "llama"}
    if quant_method:
        config["quantization_config"] = {"quant_method": quant_method, "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    if modelopt:
        (folder / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "FP8"}}))
    return folder


# --- quantization ------------------------------------------------------------


@pytest.mark.parametrize("method", ["awq", "gptq", "compressed-tensors", "fp8"])
def test_declared_quantization_is_left_to_the_checkpoint(tmp_path, method):
    plan = quant.plan(str(checkpoint(tmp_path, "m", method)), None, (9, 0))
    assert plan.declared == method and plan.quantization is None  # vLLM reads it (and picks Marlin kernels)


def test_modelopt_and_gguf_are_detected_from_files(tmp_path):
    assert quant.plan(str(checkpoint(tmp_path, "m", modelopt=True)), None, (9, 0)).declared == "modelopt"
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert quant.plan(str(gguf), None, (9, 0)).declared == "gguf"


def test_float_checkpoints_get_fp8_from_sm_89(tmp_path):
    model = str(checkpoint(tmp_path, "m"))
    assert quant.plan(model, None, (9, 0)).quantization == "fp8"
    assert quant.plan(model, None, (8, 9)).quantization == "fp8"
    assert quant.plan(model, None, (8, 6)).quantization is None
    assert quant.plan(model, None, None).quantization is None


def test_names_are_only_a_hint(tmp_path, caplog):
    plan = quant.plan(str(checkpoint(tmp_path, "Llama-8B-AWQ")), None, (9, 0))
    assert plan.declared is None and plan.quantization == "fp8"  # its files say float
    assert "named like awq" in caplog.text


def test_override_must_not_contradict_the_files(tmp_path):
    awq = str(checkpoint(tmp_path, "a", "awq"))
    assert quant.plan(awq, "awq_marlin", (9, 0)).quantization == "awq_marlin"
    with pytest.raises(SettingsError, match="contradicts"):
        quant.plan(awq, "fp8", (9, 0))
    with pytest.raises(SettingsError, match="cannot load as float"):
        quant.plan(awq, "none", (9, 0))
    with pytest.raises(SettingsError, match="not a vLLM quantization"):
        quant.plan(awq, "int3-magic", (9, 0))
    plain = str(checkpoint(tmp_path, "p"))
    assert quant.plan(plain, "none", (9, 0)).quantization is None
    assert quant.plan(plain, "FP8", (8, 0)).quantization == "fp8"


# --- quantizer (llmcompressor) -------------------------------------------------


def test_quantizer_is_registered_and_lists_formats_by_sm():
    host = PluginHost()
    host.load("vllm")
    quantizer = host.quantizer_factory("vllm")(Config(env={}, toml={}))
    assert isinstance(quantizer, LlmCompressorQuantizer) and quantizer.engine == "vllm"
    assert quantizer.formats((9, 0)) == ["awq", "w4a16"]
    assert quantizer.formats((7, 5)) == []


def test_calibration_file_is_required_and_validated(tmp_path):
    with pytest.raises(ValueError, match="local calibration file is required"):
        load_calibration(CalibrationConfig())
    with pytest.raises(ValueError, match="no such file"):
        load_calibration(CalibrationConfig(dataset=str(tmp_path / "nope.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_calibration(CalibrationConfig(dataset=str(bad)))
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"text": f"sample {i}"}) for i in range(10)))
    texts, source, digest = load_calibration(CalibrationConfig(dataset=str(good), num_samples=4))
    assert texts == ["sample 0", "sample 1", "sample 2", "sample 3"] and source == str(good) and len(digest) == 64
    plain = tmp_path / "plain.txt"
    plain.write_text("one line\n\nanother line\n")
    assert load_calibration(CalibrationConfig(dataset=str(plain)))[0] == ["one line", "another line"]


def test_an_identical_build_is_reused_and_a_different_one_needs_llmcompressor(tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("hello there\nhow are you\n")
    cfg = CalibrationConfig(dataset=str(calib), seq_len=128)
    texts, source, digest = load_calibration(cfg)
    out = tmp_path / "out"
    out.mkdir()
    write_metadata(out, QuantMetadata(format="awq", scheme="W4A16_ASYM", source_model="m", calibration_file=source,
                                      calibration_sha256=digest, num_samples=len(texts), seq_len=128,
                                      tool="llmcompressor test", built_at="2026-11-22T00:00:00Z", seconds=1.0))  # fmt: skip
    q = LlmCompressorQuantizer()
    result = q.build("m", "awq", out, calibration=cfg)
    assert result.reused and result.metadata_file == str(out / METADATA_FILE)
    meta = msgspec.json.decode((out / METADATA_FILE).read_bytes(), type=QuantMetadata)
    assert meta.scheme == "W4A16_ASYM"
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"--no-deps yap-engines-vllm, in a virtual environment without vLLM"):
            q.build("m", "w4a16", out, calibration=cfg)  # other format: must build, and cannot here
    with pytest.raises(ValueError, match="not built by llmcompressor"):
        q.build("m", "nvfp4", out, calibration=cfg)


def test_group_size_is_the_widest_that_divides_every_layer():
    """llmcompressor refuses a group size that does not divide a layer's
    input width (SmolLM2-135M is 576 wide: found building it for real)."""
    assert group_size([("q_proj", 2048), ("down_proj", 8192)]) == 128
    assert group_size([("q_proj", 576), ("down_proj", 1536)]) == 64
    assert group_size([("q_proj", 96)]) == 32
    with pytest.raises(ValueError, match=r"odd_proj takes 100 inputs.*\(128, 64, 32\)"):
        group_size([("q_proj", 128), ("odd_proj", 100)])


# --- settings ----------------------------------------------------------------


def core(**env: str) -> CoreSettings:
    return Config(env={"TEXT_API_KEY": "k", **env}, toml={}).section("core", CoreSettings)


def test_gpu_fraction_default_depends_on_deploy_mode():
    s = VllmSettings()
    assert gpu_fraction(s, core(DEPLOY_MODE="chat")) == 0.90
    assert gpu_fraction(s, core(DEPLOY_MODE="both")) == 0.70
    assert gpu_fraction(VllmSettings(chat_gpu_frac=0.5), core(DEPLOY_MODE="both")) == 0.5


def test_settings_from_env_and_toml_are_validated():
    s = load_settings(Config(env={"CHAT_GPU_FRAC": "0.6", "KV_DTYPE": "fp8", "ENFORCE_EAGER": "yes"},
                             toml={"vllm": {"max_num_seqs": 32, "attention_backend": "FLASH_ATTN"}}))  # fmt: skip
    assert (s.chat_gpu_frac, s.kv_dtype, s.enforce_eager, s.max_num_seqs, s.attention_backend) == (
        0.6, "fp8", True, 32, "FLASH_ATTN")
    assert load_settings(Config(env={"CHAT_MAX_LEN": ""}, toml={})).chat_max_len is None
    for env, field in (({"CHAT_GPU_FRAC": "1.5"}, "CHAT_GPU_FRAC"), ({"KV_DTYPE": "int2"}, "KV_DTYPE"),
                       ({"CHAT_MAX_LEN": "many"}, "CHAT_MAX_LEN"), ({"TENSOR_PARALLEL_SIZE": "0"}, "TENSOR_PARALLEL_SIZE")):  # fmt: skip
        with pytest.raises(SettingsError, match=field):
            load_settings(Config(env=env, toml={}))
    with pytest.raises(SettingsError, match="unknown key"):
        load_settings(Config(env={}, toml={"vllm": {"gpu_frac": 0.5}}))


def test_context_must_leave_room_for_the_reply():
    with pytest.raises(SettingsError, match="CHAT_MAX_OUT=150"):
        validate(VllmSettings(chat_max_len=150), core())
    validate(VllmSettings(chat_max_len=151), core())
    with pytest.raises(SettingsError, match="MAX_NUM_BATCHED_TOKENS"):
        validate(VllmSettings(chat_max_len=4096, enable_chunked_prefill=False, max_num_batched_tokens=2048), core())


def test_gguf_files_are_refused_with_the_way_out(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(SettingsError, match="does not load .gguf"):
        validate(VllmSettings(), core(CHAT_MODEL=str(gguf)))


def test_the_engine_needs_a_chat_model():
    host = PluginHost()
    host.load("vllm")
    with pytest.raises(SettingsError, match="CHAT_MODEL is required"):
        host.engine_factory("vllm")(Config(env={"TEXT_API_KEY": "k"}, toml={}))


def test_sampling_maps_every_core_key():
    kwargs = sampling_kwargs(Sampling(temperature=0.3, top_k=-1, stop=("END",), logit_bias={5: -100.0}, seed=3,
                                      max_tokens=9, ignore_eos=True, min_p=0.1))  # fmt: skip
    assert kwargs["top_k"] == 0 and kwargs["stop"] == ["END"] and kwargs["logit_bias"] == {5: -100.0}
    assert (kwargs["temperature"], kwargs["seed"], kwargs["max_tokens"], kwargs["ignore_eos"], kwargs["min_p"]) == (
        0.3, 3, 9, True, 0.1)
    assert sampling_kwargs(Sampling(top_k=40))["top_k"] == 40
    # every core key reaches vLLM under its own name, so unsupported_sampling() is honestly empty
    assert set(sampling_kwargs(Sampling(stop=("x",), logit_bias={1: 1.0}))) >= SAMPLING_KEYS
    assert "stop" not in sampling_kwargs(Sampling()) and "logit_bias" not in sampling_kwargs(Sampling())


def test_yap_quantize_lists_formats_and_refuses_cleanly(tmp_path):
    import subprocess

    from yap_core.server_process import yap_executable

    listed = subprocess.run([yap_executable(), "quantize", "m", "--engine", "vllm", "--sm", "9.0"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert listed.returncode == 0 and "vllm (llmcompressor) on SM 9.0: awq, w4a16" in listed.stdout
    refused = subprocess.run([yap_executable(), "quantize", str(checkpoint(tmp_path, "m")), "--engine", "vllm",
                              "--sm", "9.0", "--format", "awq", "--out", str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 1 and "calibration file is required" in refused.stderr
    assert "Traceback" not in refused.stderr
