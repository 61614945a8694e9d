"""Tasks that start at once.

A turn's task and a socket's sender are started with ``start_task``. On Python
3.12 and later it makes an eager task: the coroutine runs inside the call that
creates it, up to its first wait that really suspends. So a turn's request
reaches the engine, and a token frame reaches the socket, within the call that
produced them instead of one event-loop pass later; that pass runs whatever
else is ready first and cost ~0.1 ms per hop on a turn after an idle pause
(docs/gpu-results.md, run 10). The work the pass would have run first (the
rest of the frame's read) runs after, while the engine computes.

On Python 3.11 (no eager tasks) it is ``loop.create_task``: the same order of
frames, one pass later. Callers must not rely on either: code after
``start_task`` may find the task already done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# asyncio.eager_task_factory exists from Python 3.12.
_eager = getattr(asyncio, "eager_task_factory", None)

EAGER = _eager is not None


def start_task(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """A task for ``coro``, started eagerly where Python can (see the module docstring)."""
    loop = asyncio.get_running_loop()
    if _eager is not None:
        return _eager(loop, coro, name=name)
    return loop.create_task(coro, name=name)
