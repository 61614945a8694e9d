"""The screenshot classifier as the server sees it (``contracts.Classifier``).

``classify(user_turns)`` checks the input on the event loop, then waits for a
micro-batch on the worker thread, at most TOOL_TIMEOUT_S. Whatever happens,
the caller gets a Decision or a clear error:

- a decision past the timeout, or a full queue: "no", ``timed_out=True``,
  logged and counted;
- an empty current utterance: "no" with ``raw["reason"]``, without the model;
- a list that is not user turns: ``TypeError``/``ValueError`` naming the problem.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from yap_core.contracts import Decision, Progress
from yap_core.settings import CoreSettings

from yap_classifier import window
from yap_classifier.batching import BatcherClosed, MicroBatcher, Overloaded
from yap_classifier.model import Scores, SequenceClassifier
from yap_classifier.train import build_default, default_cache_dir, default_model_dir, is_built

log = logging.getLogger(__name__)
TOOL = "take_screenshot"


@dataclass
class Counters:
    decisions: int = 0
    yes: int = 0
    timeouts: int = 0
    empty: int = 0


class ScreenshotClassifier:
    name = "classifier"

    def __init__(self, settings: CoreSettings, *, device: str | None = None) -> None:
        self._settings = settings
        self._device = device
        self._cache_dir = default_cache_dir(settings.yap_cache_dir)
        self._default = settings.tool_model is None
        self.model_id = settings.tool_model or str(default_model_dir(self._cache_dir))
        self.threshold = settings.tool_decision_threshold
        self.timeout_s = settings.tool_timeout_s
        self.counters = Counters()
        self._model: SequenceClassifier | None = None
        self._batcher: MicroBatcher[list[str], Scores] | None = None

    @property
    def batcher(self) -> MicroBatcher[list[str], Scores]:
        if self._batcher is None:
            raise RuntimeError("the classifier is not started: await start() first")
        return self._batcher

    @property
    def window_tokens(self) -> int:
        """The input window in tokens after clamping to the model's maximum."""
        if self._model is None:
            raise RuntimeError("the classifier is not started: await start() first")
        return self._model.max_tokens

    async def start(self, progress: Progress | None = None) -> None:
        """Load the model (building the default first if it is missing) and warm it."""
        if self._batcher is not None:
            return
        if self._default and not is_built(Path(self.model_id)):
            if progress:
                progress("classifier: building the default model (once; cached after)")
            path = await asyncio.to_thread(build_default, self._cache_dir, on_step=_step_reporter(progress))
            self.model_id = str(path)
        if progress:
            progress(f"classifier: loading {self.model_id}")
        s = self._settings
        model = await asyncio.to_thread(
            SequenceClassifier.load,
            self.model_id,
            window_tokens=s.tool_history_tokens,
            device=self._device,
            dtype=s.tool_dtype,
            cuda_graphs=s.tool_cuda_graphs,
            batch_size=s.tool_batch_size,
        )
        await asyncio.to_thread(model.predict, [["warm up"]])
        batcher: MicroBatcher[list[str], Scores] = MicroBatcher(
            model.predict,
            batch_size=s.tool_batch_size,
            max_wait_s=s.tool_batch_wait_ms / 1000,
            # Room for a few full batches; beyond that a caller would wait
            # past its timeout anyway, so it is refused at once.
            queue_size=max(64, 4 * s.tool_batch_size),
        )
        batcher.start()
        self._model, self._batcher = model, batcher
        if progress:
            graphs = "CUDA graphs" if model.cuda_graphs else "eager"
            progress(f"classifier: ready ({model.max_tokens}-token window, on {model.device}, {model.dtype}, {graphs})")

    async def close(self) -> None:
        if self._batcher is not None:
            await asyncio.to_thread(self._batcher.close)
            self._batcher = None

    async def classify(self, user_turns: Sequence[str]) -> Decision:
        try:
            turns = window.check_turns(user_turns)
        except window.EmptyUtterance:
            self.counters.empty += 1
            return Decision(screenshot=False, confidence=1.0, raw={"reason": "empty utterance"})
        try:
            scores = await self.batcher.submit(turns, self.timeout_s)
        except TimeoutError:
            return self._timed_out("timeout", f"no decision within TOOL_TIMEOUT_S={self.timeout_s}s")
        except Overloaded as exc:
            return self._timed_out("overloaded", str(exc))
        except BatcherClosed:
            raise RuntimeError("the classifier is closed") from None
        return self._decide(scores)

    def _decide(self, scores: Scores) -> Decision:
        yes = scores.positive >= self.threshold
        self.counters.decisions += 1
        self.counters.yes += int(yes)
        return Decision(
            screenshot=yes,
            confidence=scores.positive if yes else 1.0 - scores.positive,
            raw={
                "labels": scores.probabilities,
                "p_screenshot": scores.positive,
                "threshold": self.threshold,
                "tool": TOOL if yes else None,
            },
        )

    def _timed_out(self, reason: str, detail: str) -> Decision:
        self.counters.timeouts += 1
        log.warning("classifier: %s (%s); deciding no", reason, detail)
        return Decision(screenshot=False, confidence=0.0, raw={"reason": reason}, timed_out=True)


def _step_reporter(progress: Progress | None):  # type: ignore[no-untyped-def]
    """Turn training steps into a line per 10%: the server's progress lines."""
    last = [-1]

    def on_step(done: int, total: int) -> None:
        tenth = done * 10 // total
        if progress and tenth != last[0]:
            last[0] = tenth
            progress(f"classifier: training {done}/{total} steps ({tenth * 10}%)")

    return on_step
