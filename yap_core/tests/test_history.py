"""A long session forgets what no later turn reads (session.forget): the
history the prompt's budget walk stopped before, less the newest
TOOL_HISTORY_TOKENS user turns when a classifier is deployed. Before, a
session's history grew for as long as its socket lived, and every turn copied
all of it. A real runtime on the scripted engine and classifier; each turn's
prompt is checked against a render of the whole conversation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
from yap_core.contracts import Decision
from yap_core.prompt_types import Message
from yap_core.runtime import Runtime
from yap_core.session import FORGET_BATCH, SessionHost, classifier_floor, forget
from yap_core.settings import Config, CoreSettings

from yap_core import frames


def _frame(type_: str, payload: dict[str, Any]) -> frames.ClientFrame:
    return frames.decode(json.dumps({"type": type_, "session_id": "s", "request_id": None, "payload": payload}))


async def _settle(host: SessionHost) -> None:
    """Until the turn and the work after it (prepare, forget) are done."""
    while host.tasks:
        await asyncio.gather(*list(host.tasks))
        # A task done already (a turn started eagerly on Python 3.12 can end
        # inside the call) leaves host.tasks by a callback of the next pass.
        await asyncio.sleep(0)


async def _long_session(
    env: dict[str, str], turns: int, classified: list[list[str]] | None = None
) -> tuple[list[int], list[Message], int]:
    """``turns`` turns of one session: the history's length after each, the
    whole conversation as the client saw it, and the most history messages a
    prompt used. ``classified`` collects what the classifier was handed."""
    config = Config({"INFERENCE_ENGINE": "scripted", "TOOL_CLASSIFIER": "scripted", **env})
    runtime = Runtime(config, config.section("core", CoreSettings))
    await runtime.start(lambda _line: None)
    if classified is not None:
        assert runtime.classifier is not None
        real = runtime.classifier.classify

        async def recording(user_turns: Sequence[str]) -> Decision:
            classified.append(list(user_turns))
            return await real(user_turns)

        runtime.classifier.classify = recording  # type: ignore[method-assign]
    sent: list[dict] = []
    host = SessionHost(runtime, lambda text: sent.append(json.loads(text)) is None, lambda *_args: True)
    lengths: list[int] = []
    whole: list[Message] = []
    used = 0
    try:
        await host.start(_frame("start", {}), 0.0)
        await _settle(host)
        for i in range(turns):
            sent.clear()
            utterance = f"question number {i} about the weather"
            await host.message(_frame("message", {"user_utterance": utterance}), 0.0)
            await _settle(host)
            if runtime.engine is not None:
                final = next(f for f in sent if f["type"] == "final")
                done = next(f for f in sent if f["type"] == "done")
                assert runtime.chat is not None
                session = host.sessions["s"]
                # What the whole conversation renders to: the turn's prompt must be it.
                want = runtime.chat.builder.render(session.system, whole, utterance, runtime.settings.chat_max_out)
                assert done["payload"]["usage"]["prompt_tokens"] == len(want.token_ids), i
                used = max(used, want.history_used)
                whole += [Message("user", utterance), Message("assistant", final["payload"]["text"])]
            else:
                whole.append(Message("user", utterance))
            lengths.append(len(host.sessions["s"].history))
        return lengths, whole, used
    finally:
        await host.close()
        await runtime.close()


@pytest.mark.parametrize("mode", ["chat", "both"])
async def test_a_long_sessions_history_is_bounded_and_its_prompts_unchanged(mode: str) -> None:
    env = {"DEPLOY_MODE": mode, "HISTORY_MAX_TOKENS": "200", "TOOL_HISTORY_TOKENS": "16", "CHAT_MAX_OUT": "20",
           "SCRIPTED_REPLY": "It is sunny and warm today."}
    lengths, whole, used = await _long_session(env, 80)
    assert len(whole) == 160 and 0 < used < 20  # the budget binds
    floor = 2 * 16 if mode == "both" else used  # the classifier's 16 user turns, each with its reply
    # What the prompt or the classifier reads (and the message that stopped
    # the budget walk), and at most a batch more; never less.
    assert max(lengths[40:]) <= max(floor, used + 1) + FORGET_BATCH
    assert min(lengths[40:]) >= floor


async def test_a_classifier_only_sessions_history_keeps_the_classifiers_window() -> None:
    env = {"DEPLOY_MODE": "tool", "TOOL_HISTORY_TOKENS": "16"}
    lengths, whole, _ = await _long_session(env, 60)
    assert len(whole) == 60
    assert min(lengths[20:]) >= 16 and max(lengths) <= 2 * 16


@pytest.mark.parametrize("mode", ["tool", "both"])
async def test_the_classifier_is_handed_only_the_user_turns_it_can_read(mode: str) -> None:
    """At most TOOL_HISTORY_TOKENS earlier user turns (a turn is at least one
    token), newest last: a long session's decision costs what a short one's does."""
    classified: list[list[str]] = []
    await _long_session({"DEPLOY_MODE": mode, "TOOL_HISTORY_TOKENS": "16", "CHAT_MAX_OUT": "20"}, 40, classified)
    utterances = [f"question number {i} about the weather" for i in range(40)]
    assert len(classified) == 40
    for i, turns in enumerate(classified):
        assert turns == utterances[max(0, i - 16) : i + 1], i


def _msgs(roles: str) -> list[Message]:
    return [Message("user" if r == "u" else "assistant", f"{r}{i}") for i, r in enumerate(roles)]


def test_the_classifier_floor_keeps_the_newest_user_turns() -> None:
    history = _msgs("ua" * 10)
    assert classifier_floor(history, 18, 0) == 18  # no classifier
    assert classifier_floor(history, 18, 3) == 14  # the 3rd newest user message is at 14
    assert classifier_floor(history, 4, 3) == 4
    assert classifier_floor(history, 18, 11) == 0  # fewer user turns than the window


def test_forget_cuts_by_identity_from_a_snapshot() -> None:
    history = _msgs("ua" * 20)
    snapshot = tuple(history)
    history += _msgs("ua")  # the next turn ran meanwhile
    forget(history, snapshot, FORGET_BATCH - 1)
    assert len(history) == 42  # less than a batch: nothing cut
    forget(history, snapshot, 20)
    assert history[0] is snapshot[20] and len(history) == 22
    forget(history, snapshot, FORGET_BATCH)  # an older turn's call, after a later one cut more
    assert history[0] is snapshot[20] and len(history) == 22
