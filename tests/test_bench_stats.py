"""The benchmarks' statistics: a missing figure (NaN, no values) is carried through, never raised."""

from __future__ import annotations

import math

from edgeplex.bench.stats import median, median_high, percentile, ratio, rounded_ratio


def test_percentile_interpolates_and_is_nan_without_values() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert math.isnan(percentile([], 99))


def test_median_high_is_a_measured_value_and_skips_nan() -> None:
    assert median_high([4.0, 1.0, 3.0, 2.0]) == 3.0  # the upper middle, not 2.5
    assert median_high([2.0, float("nan"), 1.0, 3.0]) == 2.0
    assert math.isnan(median_high([float("nan")]))
    assert math.isnan(median_high([]))


def test_median_averages_the_two_middle_values() -> None:
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(median([]))


def test_rounded_ratio_is_nan_when_either_side_is_missing() -> None:
    assert rounded_ratio(2.0, 3.0) == 0.667
    assert math.isnan(rounded_ratio(1.0, 0.0))
    assert math.isnan(rounded_ratio(float("nan"), 1.0))
    assert math.isnan(rounded_ratio(1.0, float("nan")))


def test_ratio_skips_rounds_where_both_served_nothing() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(0.0, 0.0) is None
    assert ratio(1.0, 0.0) == float("inf")
