"""Every turn that is cancelled counts in cancellation_total, also one stopped
before its task first ran: a barge-in or a `cancel` right behind its frame (the
server read both frames in one go). Such a turn never entered TurnRunner.run,
where cancellations were counted, so the counter missed it and the telemetry
test failed now and then. A real runtime on the scripted engine; the real
Telemetry object's cancellation() calls are recorded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from yap_core.runtime import Runtime
from yap_core.session import SessionHost
from yap_core.settings import Config, CoreSettings

from yap_core import frames


def _frame(type_: str, rid: str | None, payload: dict[str, Any]) -> frames.ClientFrame:
    return frames.decode(json.dumps({"type": type_, "session_id": "s", "request_id": rid, "payload": payload}))


async def test_turns_cancelled_before_they_ran_are_counted() -> None:
    config = Config({"INFERENCE_ENGINE": "scripted", "TOOL_CLASSIFIER": "scripted", "SCRIPTED_TOKEN_DELAY_MS": "20"})
    runtime = Runtime(config, config.section("core", CoreSettings))
    await runtime.start(lambda _line: None)
    reasons: list[str] = []
    runtime.telemetry.cancellation = reasons.append  # type: ignore[method-assign]
    sent: list[str] = []
    host = SessionHost(runtime, lambda text: sent.append(text) is None, lambda *_args: True)
    try:
        await host.start(_frame("start", "r0", {}), 0.0)
        # No await between these calls yields to the loop: each turn is stopped
        # before its task has run a single step.
        await host.message(_frame("message", "r1", {"user_utterance": "one"}), 0.0)
        await host.message(_frame("message", "r2", {"user_utterance": "two"}), 0.0)  # barges in on r1
        host.cancel(_frame("cancel", None, {"reason": "test"}))  # stops r2
        await asyncio.gather(*host.tasks, return_exceptions=True)
        assert sorted(reasons) == ["barge_in", "test"]
        cancelled = [json.loads(t)["request_id"] for t in sent if json.loads(t)["type"] == "cancelled"]
        assert cancelled == ["r1", "r2"]
    finally:
        await host.close()
        await runtime.close()
