"""The runtime's start-up choices that every turn then relies on: which plugins
a deployment selects, and the banned-phrase bias riding on the default sampling.

A real scripted engine and classifier; the engine is handed the real SmolLM2
tokenizer (its own is byte-level, where no phrase has a distinctive token)."""

from __future__ import annotations

from typing import Any

import pytest
from yap_core.banned import load_phrases, logit_bias
from yap_core.frames import WireSampling
from yap_core.runtime import Runtime
from yap_core.session import SessionHost
from yap_core.settings import Config, CoreSettings


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"DEPLOY_MODE": "both", "INFERENCE_ENGINE": "vllm", "TOOL_CLASSIFIER": "classifier"}, ["vllm", "classifier"]),
        ({"DEPLOY_MODE": "chat", "INFERENCE_ENGINE": "vllm"}, ["vllm"]),
        ({"DEPLOY_MODE": "tool", "INFERENCE_ENGINE": "vllm"}, ["classifier"]),
        ({"DEPLOY_MODE": "both", "INFERENCE_ENGINE": "scripted", "TOOL_CLASSIFIER": "scripted"}, ["scripted"]),
    ],
)
def test_plugin_names_follow_the_deploy_mode(env: dict[str, str], names: list[str]) -> None:
    assert Config(env).section("core", CoreSettings).plugin_names() == names


async def _started(env: dict[str, str], tokenizer: Any) -> Runtime:
    config = Config({"INFERENCE_ENGINE": "scripted", "TOOL_CLASSIFIER": "scripted", **env})
    runtime = Runtime(config, config.section("core", CoreSettings))
    assert runtime.selected == ["scripted"]
    runtime.engine._tokenizer = tokenizer  # type: ignore[union-attr]
    await runtime.start(lambda _line: None)
    return runtime


async def test_every_turn_samples_with_the_banned_phrase_bias(smollm2_tokenizer: Any) -> None:
    runtime = await _started({}, smollm2_tokenizer)
    try:
        bias = logit_bias(smollm2_tokenizer, load_phrases(None))
        assert bias and runtime.chat is not None and runtime.chat.logit_bias == bias
        host = SessionHost(runtime, lambda _text: True, lambda *_args: True)
        for wire in (None, WireSampling(), WireSampling(temperature=0.2, max_tokens=7, sanitize_output=False)):
            sampling, _ = host.resolve(wire)
            assert sampling.logit_bias == bias
        sampling, sanitize = host.resolve(WireSampling(temperature=0.2, max_tokens=7, sanitize_output=False))
        assert (sampling.temperature, sampling.max_tokens, sanitize) == (0.2, 7, False)
    finally:
        await runtime.close()


async def test_an_engine_without_logit_bias_gets_none(smollm2_tokenizer: Any) -> None:
    runtime = await _started({"SCRIPTED_UNSUPPORTED": "logit_bias"}, smollm2_tokenizer)
    try:
        host = SessionHost(runtime, lambda _text: True, lambda *_args: True)
        assert host.resolve(None)[0].logit_bias == {}
        assert host.resolve(WireSampling(top_p=0.5))[0].logit_bias == {}
    finally:
        await runtime.close()
