"""The scripted engine's batched steps (SCRIPTED_STEP_MS): every running
stream gets its next token in the same step, in the order the streams waited,
a request that arrived during a step last; as vLLM hands a step's outputs
over (the running requests first, those it just admitted after).
``benchmarks/server_overhead.py --step-ms`` loads the server this way."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from yap_core.contracts import GenerationRequest, Sampling
from yap_core.scripted import ScriptedEngine, ScriptedSettings
from yap_core.settings import SettingsError

STEP_MS = 30.0


def engine(step_ms: float = STEP_MS) -> ScriptedEngine:
    reply = " ".join(f"w{i}" for i in range(40))
    return ScriptedEngine(ScriptedSettings(scripted_step_ms=step_ms, scripted_reply=reply))


def request(rid: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(request_id=rid, prompt_token_ids=(1, 2, 3), sampling=Sampling(max_tokens=max_tokens))


async def test_running_streams_take_one_token_a_step_and_a_newcomer_comes_last() -> None:
    eng = engine()
    arrivals: list[tuple[str, int]] = []  # (stream, its token number), in the order they arrived
    second_token = asyncio.Event()

    async def run(rid: str, max_tokens: int) -> None:
        async for delta in eng.stream(request(rid, max_tokens)):
            arrivals.append((rid, delta.completion_tokens))
            if rid == "b" and delta.completion_tokens == 2:
                second_token.set()

    older = [asyncio.create_task(run("a", 6)), asyncio.create_task(run("b", 6))]
    await second_token.wait()
    newcomer = asyncio.create_task(run("c", 3))  # arrives during step 3
    await asyncio.gather(*older, newcomer)
    await eng.close()

    # a and b alternate, one token each a step; c's tokens come with a's and
    # b's 3rd-5th, each time after both of theirs.
    assert arrivals == [
        ("a", 1), ("b", 1), ("a", 2), ("b", 2),
        ("a", 3), ("b", 3), ("c", 1),
        ("a", 4), ("b", 4), ("c", 2),
        ("a", 5), ("b", 5), ("c", 3),
        ("a", 6), ("b", 6),
    ]  # fmt: skip


async def test_a_stream_takes_a_step_for_each_token() -> None:
    eng = engine()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deltas = [d async for d in eng.stream(request("a", 5))]
    elapsed_ms = (loop.time() - t0) * 1000
    await eng.close()
    assert [d.completion_tokens for d in deltas] == [1, 2, 3, 4, 5]
    assert deltas[-1].finish_reason == "length"
    # A lower bound only: a slow machine makes steps late, never early.
    assert elapsed_ms >= 5 * STEP_MS * 0.9


async def test_an_aborted_stream_alone_still_gets_its_step() -> None:
    eng = engine()
    stream = eng.stream(request("a", 30))
    first = await anext(stream)
    assert first.completion_tokens == 1
    await eng.abort("a")
    rest = [d async for d in stream]
    await eng.close()
    assert [d.finish_reason for d in rest] == ["abort"]


async def test_steps_stop_when_no_stream_runs_and_start_again() -> None:
    eng = engine(step_ms=5.0)
    assert [d.completion_tokens async for d in eng.stream(request("a", 2))] == [1, 2]
    for _ in range(10):  # the stepper ends once its last stream has
        if eng._stepper is None:
            break
        await asyncio.sleep(0.01)
    assert eng._stepper is None
    assert [d.completion_tokens async for d in eng.stream(request("b", 2))] == [1, 2]
    await eng.close()


def test_steps_and_a_token_delay_together_are_refused() -> None:
    with pytest.raises(SettingsError, match="SCRIPTED_STEP_MS and SCRIPTED_TOKEN_DELAY_MS"):
        ScriptedEngine(ScriptedSettings(scripted_step_ms=3.0, scripted_token_delay_ms=1.0))
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"scripted_step_ms": -1.0}, ScriptedSettings)
