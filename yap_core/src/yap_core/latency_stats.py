"""Latency summaries: average and percentiles of a sample, in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec


class Summary(msgspec.Struct, kw_only=True):
    count: int
    avg: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    min: float | None
    max: float | None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Sequence[float | None]) -> Summary:
    """Summary of the values that are present (None = the moment never came)."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return Summary(count=0, avg=None, p50=None, p90=None, p95=None, p99=None, min=None, max=None)
    return Summary(
        count=len(xs),
        avg=sum(xs) / len(xs),
        p50=percentile(xs, 50),
        p90=percentile(xs, 90),
        p95=percentile(xs, 95),
        p99=percentile(xs, 99),
        min=xs[0],
        max=xs[-1],
    )


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
