"""The few statistics the benchmarks report: percentiles, medians over rounds, ratios.

One home for them so that every report computes "median of per-round ratios" the same way. A
missing figure is NaN (a window that answered nothing), and the helpers carry it through
instead of raising, so one empty window never loses a whole run's results.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (numpy's linear interpolation); NaN when there are no values."""
    return float(np.percentile(values, q)) if len(values) else float("nan")


def median_high(values: Sequence[float]) -> float:
    """The upper of the two middle values (for an odd count, the middle one), NaN values
    skipped; NaN when none is left. Always a value some round measured, never an average."""
    finite = sorted(v for v in values if v == v)
    return finite[len(finite) // 2] if finite else float("nan")


def median(values: Sequence[float]) -> float:
    """The usual median: the mean of the two middle values for an even count; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def rounded_ratio(a: float, b: float, digits: int = 3) -> float:
    """a / b rounded; NaN when either is NaN or b is 0 (a ratio to nothing is not a figure)."""
    return round(a / b, digits) if b and a == a and b == b else float("nan")


def ratio(a: float, b: float) -> float | None:
    """a / b; None when both are 0 (nothing to compare: neither served), inf when only b is."""
    if b == 0:
        return None if a == 0 else float("inf")
    return a / b
