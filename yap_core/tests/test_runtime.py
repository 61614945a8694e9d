"""The runtime's start-up choices that every turn then relies on: which plugins
a deployment selects."""

from __future__ import annotations

import pytest
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
