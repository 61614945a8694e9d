"""Scoring a classifier on a labelled JSONL file: quality and decision latency.

Each example is decided alone (batch 1), the way a lone session's turn is,
and timed from the user turns to the decision (window, tokenize, forward,
softmax). The report is one JSON object.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import msgspec

from yap_classifier import window
from yap_classifier.examples import Example
from yap_classifier.model import SequenceClassifier


class Report(msgspec.Struct, kw_only=True):
    accuracy: float
    precision: float
    recall: float
    f1: float
    n: int
    p50_ms: float
    p95_ms: float
    tp: int
    fp: int
    tn: int
    fn: int
    threshold: float
    model: str
    window_tokens: int
    dtype: str = "float32"  # the weights' dtype the figures were measured at
    cuda_graphs: bool = False


def evaluate(classifier: SequenceClassifier, examples: Sequence[Example], *, threshold: float) -> Report:
    predicted: list[int] = []
    latencies: list[float] = []
    if examples:  # the first call pays one-off costs (allocations, kernels); keep it out of the figures
        _decide(classifier, [examples[0].utterance or "warm up"], threshold)
    for e in examples:
        started = time.perf_counter()
        predicted.append(_decide(classifier, [*e.history, e.utterance], threshold))
        latencies.append((time.perf_counter() - started) * 1000)
    return report(
        [e.label for e in examples],
        predicted,
        latencies,
        threshold=threshold,
        model=classifier.model_id,
        window_tokens=classifier.max_tokens,
        dtype=classifier.dtype,
        cuda_graphs=classifier.cuda_graphs is not None,
    )


def _decide(classifier: SequenceClassifier, turns: list[str], threshold: float) -> int:
    try:
        checked = window.check_turns(turns)
    except window.EmptyUtterance:
        return 0  # the plugin's safe decision for an empty utterance
    return int(classifier.predict([checked])[0].positive >= threshold)


def report(
    labels: Sequence[int],
    predicted: Sequence[int],
    latencies_ms: Sequence[float],
    *,
    threshold: float,
    model: str,
    window_tokens: int,
    dtype: str = "float32",
    cuda_graphs: bool = False,
) -> Report:
    tp = sum(1 for y, p in zip(labels, predicted, strict=True) if y and p)
    fp = sum(1 for y, p in zip(labels, predicted, strict=True) if not y and p)
    fn = sum(1 for y, p in zip(labels, predicted, strict=True) if y and not p)
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Report(
        accuracy=round((tp + tn) / len(labels), 4) if labels else 0.0,
        precision=round(precision, 4),
        recall=round(recall, 4),
        f1=round(f1, 4),
        n=len(labels),
        p50_ms=round(percentile(latencies_ms, 50), 2),
        p95_ms=round(percentile(latencies_ms, 95), 2),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        threshold=threshold,
        model=model,
        window_tokens=window_tokens,
        dtype=dtype,
        cuda_graphs=cuda_graphs,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
