"""A turn's task starts eagerly where Python has eager tasks (3.12+), so a
prepared turn reaches the engine inside the call that read its frame; on 3.11
it is a plain task, run one event-loop pass later (session.start_turn_task)."""

from __future__ import annotations

import asyncio
import sys

from yap_core.session import start_turn_task

EAGER = sys.version_info >= (3, 12)


async def test_a_turn_task_runs_to_its_first_wait_inside_the_call_where_python_can() -> None:
    steps: list[str] = []
    release = asyncio.Event()

    async def turn() -> None:
        steps.append("submitted")  # stands for render + engine call: no wait before it
        await release.wait()
        steps.append("streamed")

    task = start_turn_task(turn(), name="turn-x")
    # Eager: the body already ran up to its first real wait. Plain: not yet.
    assert steps == (["submitted"] if EAGER else [])
    assert task.get_name() == "turn-x"
    await asyncio.sleep(0)
    assert steps == ["submitted"]  # one pass later, a plain task has run too
    release.set()
    await task
    assert steps == ["submitted", "streamed"]


async def test_a_turn_that_ends_without_waiting_is_a_done_task_still_awaitable() -> None:
    async def failing_turn() -> None:
        raise ValueError("prompt rejected")

    task = start_turn_task(failing_turn(), name="turn-y")
    assert task.done() is EAGER
    try:
        await task
    except ValueError as exc:
        assert str(exc) == "prompt rejected"
    else:
        raise AssertionError("the turn's error was lost")


async def test_cancelling_an_eagerly_started_turn_reaches_its_wait() -> None:
    reached: list[str] = []

    async def turn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            reached.append("cancelled")
            raise

    task = start_turn_task(turn(), name="turn-z")
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert reached == ["cancelled"]
    assert task.cancelled()
