"""The vLLM engine's own logic, run against the vLLM DOUBLE (see vllm_double/README.md)."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest
from vllm_test_support import engine_config, make_vllm_engine, purge_vllm_modules
from yap_core.contracts import Delta, Engine, GenerationRequest, Sampling
from yap_core.settings import SettingsError
from yap_engines_vllm.engine import untested_version


def request(engine, text: str = "Tell me about the weather today, please.", **sampling) -> GenerationRequest:
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    return GenerationRequest(request_id=f"t-{uuid.uuid4().hex}", prompt_token_ids=tuple(ids),
                             sampling=Sampling(**sampling))  # fmt: skip


async def collect(engine, req: GenerationRequest) -> list[Delta]:
    return [d async for d in engine.stream(req)]


async def wait_idle(engine, within_s: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while (await engine.stats()).running or (await engine.stats()).waiting:
        assert asyncio.get_running_loop().time() < deadline, "requests still scheduled after abort"
        await asyncio.sleep(0.005)


async def test_starts_on_the_double_and_satisfies_the_protocol(engine):
    assert isinstance(engine, Engine)
    assert engine.name == "vllm"
    assert engine.version == "0.25.1+double"
    assert engine.max_model_len == 1024
    assert engine.unsupported_sampling() == frozenset()
    stats = await engine.stats()
    assert stats.prefix_cache_queries > 0, "the warm-up request went through the engine"


async def test_stream_deltas_add_up(engine):
    deltas = await collect(engine, request(engine, max_tokens=40, temperature=0.0, ignore_eos=True))
    assert deltas[-1].finish_reason == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts) and counts[-1] == 40
    text = "".join(d.text for d in deltas)
    assert text.strip(), "the double produces words"
    assert {d.prompt_tokens for d in deltas} == {len(request(engine).prompt_token_ids)}


async def test_greedy_is_deterministic_and_seeded_sampling_repeats(engine):
    greedy = [await collect(engine, request(engine, max_tokens=30, temperature=0.0)) for _ in range(2)]
    assert "".join(d.text for d in greedy[0]) == "".join(d.text for d in greedy[1])
    seeded = [await collect(engine, request(engine, max_tokens=30, temperature=0.9, seed=7)) for _ in range(2)]
    assert "".join(d.text for d in seeded[0]) == "".join(d.text for d in seeded[1])


async def test_stop_string_cuts_the_reply_before_it(engine):
    full = "".join(d.text for d in await collect(engine, request(engine, max_tokens=40, temperature=0.0, ignore_eos=True)))
    words = full.split()
    assert len(words) > 6
    stop = " " + words[5]
    cut = full[: full.index(stop)]
    deltas = await collect(engine, request(engine, max_tokens=40, temperature=0.0, ignore_eos=True, stop=(stop,)))
    assert deltas[-1].finish_reason == "stop"
    assert "".join(d.text for d in deltas) == cut


async def test_logit_bias_reaches_the_sampler(engine):
    forced = engine.tokenizer.encode(" banana", add_special_tokens=False)[0]
    deltas = await collect(engine, request(engine, max_tokens=5, temperature=0.7, logit_bias={forced: 100.0}))
    assert "".join(d.text for d in deltas).split() == ["banana"] * 5


async def test_one_sampling_params_per_sampling_and_streams_still_follow_theirs(engine):
    """SamplingParams are built once per distinct sampling (VllmEngine._params)
    and handed to vLLM again (it clones them); each stream must still follow
    its own sampling, cached or not."""
    banned = {engine.tokenizer.encode(" banana", add_special_tokens=False)[0]: 100.0}
    base = dict(max_tokens=6, temperature=0.7, seed=11, ignore_eos=True, logit_bias=banned)
    params = engine._params(Sampling(**base))
    assert engine._params(Sampling(**base)) is params, "an equal sampling reuses one SamplingParams"
    assert engine._params(Sampling(**{**base, "max_tokens": 9})) is not params
    assert engine._params(Sampling(**{**base, "logit_bias": dict(banned)})) is not params, "another dict: its own"
    first = await collect(engine, request(engine, **base))
    again = await collect(engine, request(engine, **base))
    longer = await collect(engine, request(engine, **{**base, "max_tokens": 9}))
    unbiased = await collect(engine, request(engine, **{**base, "logit_bias": {}}))
    assert params.max_tokens == 6, "what vLLM changes, it changes on its own clone"
    assert "".join(d.text for d in first).split() == ["banana"] * 6 == "".join(d.text for d in again).split()
    assert longer[-1].completion_tokens == 9
    assert "".join(d.text for d in unbiased).split() != ["banana"] * 6


async def test_abort_by_id_ends_the_stream_and_frees_the_scheduler(engine):
    req = request(engine, max_tokens=500, ignore_eos=True)
    seen: list[Delta] = []

    async def consume() -> None:
        async for delta in engine.stream(req):
            seen.append(delta)
            if len(seen) == 3:
                await engine.abort(req.request_id)

    await asyncio.wait_for(consume(), 5)
    assert seen[-1].finish_reason == "abort"
    assert seen[-1].completion_tokens < 500
    await wait_idle(engine)
    assert not engine._llm.engine_core.requests, "the double's scheduler still holds the request"


async def test_closing_the_stream_aborts_inside_the_engine(engine):
    stream = engine.stream(request(engine, max_tokens=500, ignore_eos=True))
    async for _ in stream:
        break
    assert (await engine.stats()).running == 1
    await stream.aclose()
    await wait_idle(engine)
    assert not engine._llm.engine_core.requests


async def test_cancelling_the_consumer_aborts_inside_the_engine(engine):
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.stream(request(engine, max_tokens=500, ignore_eos=True)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_idle(engine)
    assert not engine._llm.engine_core.requests


async def test_abort_of_an_unknown_id_is_ignored(engine):
    await engine.abort("no-such-request")
    deltas = await collect(engine, request(engine, max_tokens=3, temperature=0.0, ignore_eos=True))
    assert deltas[-1].finish_reason == "length"


async def test_prefill_warms_the_prefix_cache(engine):
    system = engine.tokenizer.encode("You are a calm assistant. " * 12, add_special_tokens=False)
    assert await engine.prefill(system) == 0
    assert await engine.prefill(system) == (len(system) - 1) // 16 * 16
    user = engine.tokenizer.encode(" What time is it?", add_special_tokens=False)
    req = GenerationRequest(request_id="p1", prompt_token_ids=tuple(system + user), sampling=Sampling(max_tokens=4))
    deltas = await collect(engine, req)
    assert deltas[-1].cached_prompt_tokens == len(system) // 16 * 16
    assert deltas[-1].cached_prompt_tokens <= deltas[-1].prompt_tokens
    stats = await engine.stats()
    assert stats.prefix_cache_hits >= deltas[-1].cached_prompt_tokens
    assert stats.prefix_cache_queries >= stats.prefix_cache_hits


async def test_concurrent_streams_beyond_max_num_seqs_queue_and_all_finish(engine):
    waiting_seen = 0

    async def watch() -> None:
        nonlocal waiting_seen
        while True:
            waiting_seen = max(waiting_seen, (await engine.stats()).waiting)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(
        *[collect(engine, request(engine, f"Question number {i}?", max_tokens=20, ignore_eos=True)) for i in range(20)]
    )
    watcher.cancel()
    assert all(r[-1].finish_reason == "length" and r[-1].completion_tokens == 20 for r in results)
    assert waiting_seen > 0, "MAX_NUM_SEQS=8 should queue some of 20 requests"
    await wait_idle(engine)


async def test_bad_prompts_raise_clear_errors_and_the_engine_keeps_serving(engine):
    with pytest.raises(ValueError, match="empty"):
        await collect(engine, GenerationRequest(request_id="e", prompt_token_ids=()))
    too_long = GenerationRequest(request_id="l", prompt_token_ids=(100,) * 2000)
    with pytest.raises(ValueError, match="maximum model length"):
        await collect(engine, too_long)
    deltas = await collect(engine, request(engine, max_tokens=2, ignore_eos=True))
    assert deltas[-1].completion_tokens == 2


async def test_reply_runs_into_the_context_end_with_length(engine):
    ids = (100,) * (engine.max_model_len - 5)
    deltas = await collect(engine, GenerationRequest(request_id="c", prompt_token_ids=ids,
                                                     sampling=Sampling(max_tokens=50, ignore_eos=True)))  # fmt: skip
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].completion_tokens == 5


async def test_plugin_loading_does_not_import_vllm(vllm_double, double_model_dir):
    purge_vllm_modules()  # earlier tests of this module started engines
    assert "vllm" not in sys.modules
    eng = make_vllm_engine(engine_config(double_model_dir))
    assert "vllm" not in sys.modules, "the factory must not import vllm; start() does"
    with pytest.raises(RuntimeError, match="not started"):
        _ = eng.tokenizer


async def test_a_vllm_release_the_plugin_never_ran_on_is_named_at_start(vllm_double, double_model_dir, caplog):
    """``vllm>=0.25.1`` lets pip install a newer release than the plugin ran on:
    start says so, once, as a warning; the tested release (any local part) says nothing."""
    assert untested_version("0.25.1") is None and untested_version("0.25.1+cu130") is None
    import vllm

    tested = vllm.__version__
    vllm.__version__ = "0.34.0"  # what pip took for vllm>=0.25.1 on 2026-12-05
    eng = make_vllm_engine(engine_config(double_model_dir))
    try:
        with caplog.at_level("WARNING", logger="yap_engines_vllm.engine"):
            await eng.start()
    finally:
        vllm.__version__ = tested
        await eng.close()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["vllm 0.34.0: this plugin was tested with vLLM 0.25.1 only; "
                      "for the tested release: pip install 'vllm==0.25.1' (docs/vllm.md)"]  # fmt: skip
    assert eng.version == "0.34.0"


async def test_settings_reach_the_engine_args(vllm_double, double_model_dir):
    eng = make_vllm_engine(engine_config(double_model_dir, KV_DTYPE="fp8", MAX_NUM_SEQS="4", ENFORCE_EAGER="1",
                                         ATTENTION_BACKEND="FLASH_ATTN", MAX_NUM_BATCHED_TOKENS="512",
                                         ENABLE_PREFIX_CACHING="0", CHAT_MAX_LEN="800", STREAM_INTERVAL="4"))  # fmt: skip
    await eng.start()
    try:
        cfg = eng._llm.vllm_config
        assert cfg.cache_config.cache_dtype == "fp8"
        assert cfg.cache_config.enable_prefix_caching is False
        assert cfg.scheduler_config.max_num_seqs == 4
        assert cfg.scheduler_config.max_num_batched_tokens == 512
        assert cfg.scheduler_config.stream_interval == 4
        assert cfg.model_config.enforce_eager is True
        assert cfg.attention_config.backend == "FLASH_ATTN"
        assert cfg.load_config.load_format == "dummy"
        assert eng.max_model_len == 800
        assert cfg.cache_config.gpu_memory_utilization == 0.90  # DEPLOY_MODE=chat
        assert eng.quant_plan.reason == "float checkpoint; GPU capability unknown"
        system = eng.tokenizer.encode("You are a calm assistant. " * 12, add_special_tokens=False)
        await eng.prefill(system)
        assert await eng.prefill(system) == 0, "prefix caching is off"
        req = GenerationRequest(request_id="si", prompt_token_ids=tuple(system),
                                sampling=Sampling(max_tokens=13, ignore_eos=True))  # fmt: skip
        counts = [d.completion_tokens for d in await collect(eng, req)]
        assert counts == [1, 5, 9, 13], "one delta for the first token, then every 4 (and the last)"
    finally:
        await eng.close()


async def test_cudagraph_mode_reaches_the_compilation_config(vllm_double, double_model_dir):
    eng = make_vllm_engine(engine_config(double_model_dir, CUDAGRAPH_MODE="FULL"))
    assert eng.engine_kwargs(None)["compilation_config"] == {"cudagraph_mode": "FULL"}
    await eng.start()
    try:
        assert eng._llm.vllm_config.compilation_config.cudagraph_mode == "FULL"
    finally:
        await eng.close()
    plain = make_vllm_engine(engine_config(double_model_dir))
    assert "compilation_config" not in plain.engine_kwargs(None), "unset: vLLM's own default"


def test_cudagraph_mode_with_enforce_eager_is_refused(vllm_double, double_model_dir):
    # vLLM itself would quietly run no graphs at all
    with pytest.raises(SettingsError, match="ENFORCE_EAGER"):
        make_vllm_engine(engine_config(double_model_dir, CUDAGRAPH_MODE="FULL", ENFORCE_EAGER="1"))


def test_unknown_cudagraph_mode_is_refused(vllm_double, double_model_dir):
    with pytest.raises(SettingsError, match="(?i)cudagraph_mode"):
        make_vllm_engine(engine_config(double_model_dir, CUDAGRAPH_MODE="SOMETIMES"))


async def test_context_larger_than_the_model_is_refused_at_start(vllm_double, double_model_dir):
    eng = make_vllm_engine(engine_config(double_model_dir, CHAT_MAX_LEN="4096"))
    with pytest.raises(ValueError, match="max_model_len"):
        await eng.start()


async def test_unknown_attention_backend_is_refused_at_start(vllm_double, double_model_dir):
    eng = make_vllm_engine(engine_config(double_model_dir, ATTENTION_BACKEND="NO_SUCH"))
    with pytest.raises(ValueError, match="attention backend"):
        await eng.start()


async def test_a_dead_engine_core_fails_stats_and_new_requests(vllm_double, double_model_dir):
    eng = make_vllm_engine(engine_config(double_model_dir))
    await eng.start()
    try:
        assert (await eng.stats()).running == 0
        eng._llm.engine_core.shutdown()  # the double's stand-in for the engine core process dying
        with pytest.raises(RuntimeError, match="engine core is dead"):
            await eng.stats()
        with pytest.raises(Exception, match="EngineCore encountered an issue"):
            await collect(eng, request(eng, max_tokens=2))
    finally:
        await eng.close()


async def test_a_slow_consumer_gets_merged_deltas_with_exact_counts(engine):
    deltas = []
    async for delta in engine.stream(request(engine, max_tokens=30, temperature=0.0, ignore_eos=True)):
        deltas.append(delta)
        await asyncio.sleep(0.02)  # ~10 engine steps per delta: vLLM merges what piled up
    steps = [b.completion_tokens - a.completion_tokens for a, b in zip(deltas, deltas[1:], strict=False)]
    assert max(steps) > 1, "DELTA outputs merge while the consumer lags"
    assert deltas[-1].completion_tokens == 30 and deltas[-1].finish_reason == "length"
    greedy = "".join(d.text for d in await collect(engine, request(engine, max_tokens=30, temperature=0.0, ignore_eos=True)))
    assert "".join(d.text for d in deltas) == greedy, "merging loses no text"


async def test_stats_stay_exact_when_vllms_own_counts_go_stale(engine):
    # With async scheduling vLLM sends no scheduler stats for the step that
    # empties the batch (the double does the same), so its counts can stay stale.
    stream = engine.stream(request(engine, max_tokens=500, ignore_eos=True))
    await anext(stream)
    await asyncio.sleep(0.05)
    await engine.abort("no-such-id")
    req_id = next(iter(engine._inflight))
    await engine.abort(req_id)
    await asyncio.sleep(0.05)
    assert engine.scheduler_snapshot().running == 1, "the double reproduces vLLM's stale idle counts"
    assert (await engine.stats()).running == 0
    await stream.aclose()


async def test_a_worker_attaches_as_one_client_of_the_shared_engine_core(vllm_double, double_model_dir):
    """SERVER_WORKERS: what a worker hands vLLM (the double records it; the
    engine core shared across processes ran on the GPU only)."""
    eng = make_vllm_engine(engine_config(double_model_dir, MAX_NUM_SEQS="8"))
    attachment = {"input_address": "ipc:///tmp/yap-in-1", "output_address": "ipc:///tmp/yap-out-1",
                  "client_index": 1, "client_count": 2}  # fmt: skip
    eng.attach(attachment)
    await eng.start()
    try:
        llm = eng.async_llm
        assert llm.client_addresses == {"input_address": "ipc:///tmp/yap-in-1", "output_address": "ipc:///tmp/yap-out-1"}
        assert (llm.client_count, llm.client_index) == (2, 1)
        parallel = llm.vllm_config.parallel_config
        assert (parallel._api_process_count, parallel._api_process_rank) == (2, 1)
        deltas = await collect(eng, request(eng, max_tokens=5, temperature=0.0, ignore_eos=True))
        assert deltas[-1].finish_reason == "length"
    finally:
        await eng.close()


def test_attach_refuses_a_malformed_attachment(vllm_double, double_model_dir):
    import msgspec

    eng = make_vllm_engine(engine_config(double_model_dir))
    with pytest.raises(msgspec.ValidationError):
        eng.attach({"client_index": 0, "client_count": 2})  # no addresses
