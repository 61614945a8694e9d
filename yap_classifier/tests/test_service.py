"""The classifier as the server uses it: real model, real worker thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from yap_classifier.model import SequenceClassifier
from yap_classifier.service import ScreenshotClassifier
from yap_core.contracts import Classifier
from yap_core.settings import Config, CoreSettings


def _classifier(cache_dir: Path, **env: str) -> ScreenshotClassifier:
    config = Config(env={"YAP_CACHE_DIR": str(cache_dir), **env})
    return ScreenshotClassifier(config.section("core", CoreSettings), device="cpu")


SESSIONS = [
    ["can you look at my screen"],
    ["set a timer for five minutes"],
    ["what's on my screen right now"],
    ["my screen time is too high"],
    ["which of these phones should i get", "what about this one"],
    ["tell me a joke", "what about tomorrow"],
    ["open spotify"],
    ["is this email a scam"],
]


async def test_concurrent_sessions_each_get_their_own_answer(cache_dir: Path, built_model: Path) -> None:
    clf = _classifier(cache_dir, TOOL_BATCH_WAIT_MS="20", TOOL_TIMEOUT_S="30")
    await clf.start()
    try:
        assert isinstance(clf, Classifier)
        turns = SESSIONS * 4  # 32 concurrent sessions
        decisions = await asyncio.gather(*(clf.classify(t) for t in turns))
        alone = SequenceClassifier.load(str(built_model), window_tokens=clf.window_tokens, device="cpu")
        expected = [s.positive for s in alone.predict(SESSIONS)]
        for t, d in zip(turns, decisions, strict=True):
            p = expected[SESSIONS.index(t)]
            assert d.raw["p_screenshot"] == pytest.approx(p, abs=1e-4)
            assert d.screenshot == (p >= 0.5)
            assert d.confidence == pytest.approx(p if d.screenshot else 1 - p)
            assert not d.timed_out
        assert clf.batcher.stats.largest_batch > 1  # they were batched together
        assert clf.batcher.stats.items == len(turns)
    finally:
        await clf.close()


async def test_timeout_decides_no_without_growing_threads_or_queue(cache_dir: Path, built_model: Path) -> None:
    clf = _classifier(cache_dir, TOOL_TIMEOUT_S="0.0005", TOOL_BATCH_WAIT_MS="5")
    await clf.start()
    try:
        threads = threading.active_count()
        for _ in range(5):
            decisions = await asyncio.gather(*(clf.classify(["can you see my screen"]) for _ in range(20)))
            assert all(d.timed_out and not d.screenshot for d in decisions)
        assert clf.counters.timeouts == 100
        assert clf.batcher.stats.timeouts == 100
        await asyncio.sleep(0.2)  # let the worker drain what is left
        assert clf.batcher.pending == 0
        assert clf.batcher.stats.dropped > 0  # abandoned waiters never reached the model
        assert threading.active_count() == threads
    finally:
        await clf.close()
    assert not any(t.name == "yap-classifier" for t in threading.enumerate())


async def test_bad_input_gives_a_safe_decision_or_a_clear_error(cache_dir: Path, built_model: Path) -> None:
    clf = _classifier(cache_dir, TOOL_TIMEOUT_S="30")
    await clf.start()
    try:
        empty = await clf.classify(["look at this", "   "])
        assert not empty.screenshot and empty.raw["reason"] == "empty utterance"
        huge = await clf.classify([" ".join(["blah"] * 10_000) + " can you read what's on my screen"])
        assert huge.screenshot  # the tail, where the request is, was kept
        broken = await clf.classify(["\ud800 what's on my \udfff screen"])
        assert not broken.timed_out and 0.5 <= broken.confidence <= 1
        with pytest.raises(ValueError, match="empty"):
            await clf.classify([])
        with pytest.raises(TypeError):
            await clf.classify("a bare string")  # type: ignore[arg-type]
        # the worker is alive and well after all that
        ok = await clf.classify(["set an alarm for 7 am"])
        assert not ok.screenshot and not ok.timed_out
        assert clf.batcher.stats.errors == 0
    finally:
        await clf.close()
