"""The trt engine against the TensorRT-LLM double (tests/trt_double): streaming
deltas from cumulative outputs, abort on close / cancel / abort(), finish
reasons, sampling mapping, KV config, start-up limits against engine metadata."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from yap_core.contracts import Engine, GenerationRequest, Sampling
from yap_core.settings import Config, SettingsError
from yap_engines_trt.engine import EngineStartError, TrtEngine, engine_from_config

REPLY = "Sure! This reply comes from the TensorRT-LLM double, one token at a time."


@pytest.fixture
def double_model(tmp_path: Path, smollm2_tokenizer_dir: Path) -> Path:
    """A checkpoint folder as far as the double needs: config.json + the real tokenizer."""
    out = tmp_path / "ckpt"
    shutil.copytree(smollm2_tokenizer_dir, out)
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 2048}))
    return out


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    """A trtllm-build output folder's config.json (the engine file itself is never read by the double)."""
    out = tmp_path / "engine"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({
        "version": "1.2.0",
        "pretrained_config": {"architecture": "LlamaForCausalLM", "vocab_size": 49152},
        "build_config": {"max_batch_size": 8, "max_input_len": 1024, "max_seq_len": 2048, "max_num_tokens": 4096},
    }))
    return out


def make(env: dict[str, str], chat_model: str | None) -> TrtEngine:
    return engine_from_config(Config(env={**env, **({"CHAT_MODEL": chat_model} if chat_model else {})}, toml={}))


async def started(env: dict[str, str], chat_model: str | None) -> TrtEngine:
    engine = make(env, chat_model)
    await engine.start()
    return engine


def request(engine: TrtEngine, rid: str = "r1", text: str = "Hello, how are you?", **sampling) -> GenerationRequest:
    ids = tuple(engine.tokenizer.encode(text, add_special_tokens=False))
    return GenerationRequest(request_id=rid, prompt_token_ids=ids, sampling=Sampling(**{"temperature": 0.0, **sampling}))


async def collect(engine: TrtEngine, req: GenerationRequest):
    return [d async for d in engine.stream(req)]


def test_plugin_and_engine_import_no_tensorrt_llm():
    import yap_engines_trt.engine  # noqa: F401
    import yap_engines_trt.plugin  # noqa: F401

    assert "tensorrt_llm" not in sys.modules


async def test_start_without_tensorrt_llm_is_a_clear_error(double_model: Path):
    engine = make({}, str(double_model))
    with pytest.raises(EngineStartError, match="needs tensorrt-llm 1.2.x"):
        await engine.start()


async def test_streams_deltas_of_the_cumulative_output(trt_double, double_model: Path):
    engine = await started({}, str(double_model))
    try:
        assert isinstance(engine, Engine)
        assert engine.version.endswith("+double") and engine.max_model_len == 2048
        req = request(engine)
        deltas = await collect(engine, req)
        assert "".join(d.text for d in deltas) == REPLY
        assert len(deltas) > 5  # token by token, not one blob
        assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
        assert deltas[-1].finish_reason == "stop"
        counts = [d.completion_tokens for d in deltas]
        assert counts == sorted(counts) and counts[-1] == len(engine.tokenizer.encode(REPLY, add_special_tokens=False)) + 1
        assert all(d.prompt_tokens == len(req.prompt_token_ids) for d in deltas)
        assert (await engine.stats()).running == 0
    finally:
        await engine.close()


async def test_max_tokens_ends_with_length(trt_double, double_model: Path):
    engine = await started({}, str(double_model))
    try:
        deltas = await collect(engine, request(engine, max_tokens=4))
        assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 4
        ignore = await collect(engine, request(engine, "r2", max_tokens=40, ignore_eos=True))
        assert ignore[-1].finish_reason == "length" and ignore[-1].completion_tokens == 40
    finally:
        await engine.close()


async def test_stop_string_ends_with_stop(trt_double, double_model: Path):
    engine = await started({}, str(double_model))
    try:
        # " doub" ends inside a token: TRT's token-id stop words would miss it; the engine matches text
        deltas = await collect(engine, request(engine, stop=(" doub", "zzz")))
        assert deltas[-1].finish_reason == "stop"
        assert "".join(d.text for d in deltas) == "Sure! This reply comes from the TensorRT-LLM"
        assert deltas[-1].completion_tokens < len(engine.tokenizer.encode(REPLY, add_special_tokens=False))
        assert (await engine.stats()).running == 0
    finally:
        await engine.close()


async def test_barge_in_closing_the_stream_aborts_the_request(trt_double, double_model: Path):
    engine = await started({}, str(double_model))
    try:
        stream = engine.stream(request(engine, max_tokens=200, ignore_eos=True))
        first = [await anext(stream) for _ in range(3)]
        assert all(d.finish_reason is None for d in first)
        assert (await engine.stats()).running == 1
        results = list(engine._live.values())
        await stream.aclose()  # the user talked over the reply
        assert results[0].aborted()
        assert (await engine.stats()).running == 0
        # the engine keeps serving
        assert (await collect(engine, request(engine, "r2")))[-1].finish_reason == "stop"
    finally:
        await engine.close()


async def test_cancelling_the_consuming_task_aborts(trt_double, double_model: Path):
    engine = await started({}, str(double_model))
    try:
        seen = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.stream(request(engine, max_tokens=200, ignore_eos=True)):
                seen.set()

        task = asyncio.create_task(consume())
        await seen.wait()
        result = next(iter(engine._live.values()))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert result.aborted() and (await engine.stats()).running == 0
    finally:
        await engine.close()


async def test_abort_by_id_ends_the_stream_with_abort(trt_double, double_model: Path):
    engine = await started({}, str(double_model))
    try:
        deltas = []
        async for d in engine.stream(request(engine, "turn-7", max_tokens=200, ignore_eos=True)):
            deltas.append(d)
            if len(deltas) == 2:
                await engine.abort("turn-7")
                assert (await engine.stats()).running == 0
        assert deltas[-1].finish_reason == "abort"  # TRT's finish_reason 'cancelled'
        assert deltas[-1].completion_tokens < 200
        await engine.abort("never-seen")  # unknown ids are ignored
    finally:
        await engine.close()


async def test_temperature_zero_is_deterministic_and_logit_bias_applies(trt_double, double_model: Path):
    engine = await started({}, str(double_model))
    try:
        a = "".join(d.text for d in await collect(engine, request(engine, "a")))
        b = "".join(d.text for d in await collect(engine, request(engine, "b")))
        assert a == b == REPLY
        first = engine.tokenizer.encode(REPLY, add_special_tokens=False)[0]
        biased = await collect(engine, request(engine, "c", max_tokens=5, logit_bias={first: -100.0}))
        assert not "".join(d.text for d in biased).startswith("Sure")
    finally:
        await engine.close()


async def test_kv_cache_config_and_llm_arguments(trt_double, double_model: Path):
    engine = await started({"CHAT_GPU_FRAC": "0.55", "KV_DTYPE": "fp8", "TRT_MAX_BATCH_SIZE": "16",
                            "TRT_BATCH_SIZE": "4", "CHAT_MAX_LEN": "1024"}, str(double_model))
    try:
        kv = engine._llm.kv_cache_config
        assert kv.enable_block_reuse is True and kv.free_gpu_memory_fraction == 0.55 and kv.dtype == "fp8"
        assert engine._llm.args["max_batch_size"] == 4 and engine._llm.args["max_seq_len"] == 1024
        assert engine._llm.args["sampler_type"] == "TRTLLMSampler"
        assert engine.max_model_len == 1024
    finally:
        await engine.close()


async def test_prefill_fills_the_prefix_cache(trt_double, double_model: Path):
    engine = await started({}, str(double_model))
    try:
        prompt = tuple(range(1000, 1100))  # 100 tokens: 3 full blocks of 32
        assert await engine.prefill(prompt) == 0
        assert await engine.prefill(prompt) == 96
        longer = GenerationRequest(request_id="p", prompt_token_ids=prompt + (5, 6), sampling=Sampling(max_tokens=3))
        deltas = await collect(engine, longer)
        assert {d.cached_prompt_tokens for d in deltas} == {96}
        stats = await engine.stats()
        assert stats.prefix_cache_hits == 192 and stats.prefix_cache_queries == 288
    finally:
        await engine.close()


async def test_batch_size_limits_concurrency_and_stats_show_waiting(trt_double, double_model: Path):
    engine = await started({"TRT_BATCH_SIZE": "1"}, str(double_model))
    try:
        s1 = engine.stream(request(engine, "one", max_tokens=1500, ignore_eos=True))
        await anext(s1)
        s2 = engine.stream(request(engine, "two", max_tokens=5))
        waiter = asyncio.create_task(anext(s2))
        await asyncio.sleep(0.05)
        stats = await engine.stats()
        assert stats.running == 1 and stats.waiting == 1
        assert not waiter.done()
        await s1.aclose()
        assert (await waiter).finish_reason in (None, "length")
        await s2.aclose()
    finally:
        await engine.close()


async def test_torch_sampler_reports_and_refuses_ignored_keys(trt_double, double_model: Path):
    engine = await started({"TRT_SAMPLER": "TorchSampler"}, str(double_model))
    try:
        assert "repetition_penalty" in engine.unsupported_sampling()
        with pytest.raises(ValueError, match="repetition_penalty"):
            await collect(engine, request(engine, repetition_penalty=1.1))
        assert engine._live == {}
    finally:
        await engine.close()
    default = make({}, "/models/x")
    assert default.unsupported_sampling() == frozenset()


async def test_bad_requests_are_refused_before_reaching_the_engine(trt_double, double_model: Path):
    engine = await started({"CHAT_MAX_LEN": "64"}, str(double_model))
    try:
        with pytest.raises(ValueError, match="exceeds the context of 64"):
            await collect(engine, request(engine, max_tokens=100))
        with pytest.raises(ValueError, match="empty prompt"):
            await collect(engine, GenerationRequest(request_id="e", prompt_token_ids=()))
        assert (await collect(engine, request(engine, max_tokens=8)))[-1].completion_tokens == 8
    finally:
        await engine.close()


async def test_engine_dir_runs_on_the_tensorrt_backend(trt_double, engine_dir: Path, smollm2_tokenizer_dir: Path):
    engine = await started({"TRT_ENGINE_DIR": str(engine_dir), "TRT_TOKENIZER": str(smollm2_tokenizer_dir),
                            "TRT_MAX_BATCH_SIZE": "8", "TRT_BATCH_SIZE": "2"}, None)
    try:
        assert type(engine._llm).__name__ == "_TrtLLM" and engine.backend == "tensorrt"
        assert engine.max_model_len == 2048 and engine._llm.args["max_batch_size"] == 2
        assert "dtype" not in vars(engine._llm.kv_cache_config) or engine._llm.kv_cache_config.dtype == "auto"
        first = engine.tokenizer.encode(REPLY, add_special_tokens=False)[0]
        deltas = await collect(engine, request(engine, max_tokens=5, logit_bias={first: -100.0}))
        assert not "".join(d.text for d in deltas).startswith("Sure")  # embedding_bias path
    finally:
        await engine.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRT_MAX_BATCH_SIZE": "16"}, "TRT_MAX_BATCH_SIZE=16 but the engine .* max_batch_size=8"),
        ({"TRT_BATCH_SIZE": "9"}, "TRT_BATCH_SIZE=9 exceeds the max_batch_size=8"),
        ({"CHAT_MAX_LEN": "4096"}, "CHAT_MAX_LEN=4096 exceeds the max_seq_len=2048"),
        ({"TRT_MAX_NUM_TOKENS": "8192"}, "TRT_MAX_NUM_TOKENS=8192 but the engine .* max_num_tokens=4096"),
    ],
)
async def test_engine_limits_are_checked_at_start(trt_double, engine_dir: Path, smollm2_tokenizer_dir: Path, env, message):
    engine = make({"TRT_ENGINE_DIR": str(engine_dir), "TRT_TOKENIZER": str(smollm2_tokenizer_dir), **env}, None)
    with pytest.raises(SettingsError, match=message):
        await engine.start()
    assert engine._llm is None


def test_configuration_errors_at_construction(engine_dir: Path):
    with pytest.raises(SettingsError, match="CHAT_MODEL"):
        make({}, None)
    with pytest.raises(SettingsError, match="TRT_TOKENIZER"):
        make({"TRT_ENGINE_DIR": str(engine_dir)}, None)
    with pytest.raises(SettingsError, match="KV_DTYPE=fp8"):
        make({"TRT_ENGINE_DIR": str(engine_dir), "KV_DTYPE": "fp8"}, "/tok")
    with pytest.raises(SettingsError, match="TRT_BATCH_SIZE=9 exceeds TRT_MAX_BATCH_SIZE=4"):
        make({"TRT_BATCH_SIZE": "9", "TRT_MAX_BATCH_SIZE": "4"}, "/m")
    with pytest.raises(SettingsError, match="CHAT_GPU_FRAC"):
        make({"CHAT_GPU_FRAC": "1.5"}, "/m")
    with pytest.raises(SettingsError, match="TRT_SAMPLER"):
        make({"TRT_ENGINE_DIR": str(engine_dir), "TRT_SAMPLER": "TorchSampler"}, "/tok")


async def test_missing_engine_metadata_is_a_clear_error(trt_double, tmp_path: Path, smollm2_tokenizer_dir: Path):
    engine = make({"TRT_ENGINE_DIR": str(tmp_path), "TRT_TOKENIZER": str(smollm2_tokenizer_dir)}, None)
    with pytest.raises(SettingsError, match="no config.json"):
        await engine.start()
