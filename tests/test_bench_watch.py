"""What a server did in a window, from two snapshots of its Triton statistics."""

from __future__ import annotations

import math
from typing import Any

from edgeplex.bench.watch import StatsDelta


def _stats(queue: tuple[int, int], batches: dict[int, tuple[int, int]]) -> dict[str, Any]:
    return {"inference_stats": {"queue": {"count": queue[0], "ns": queue[1]}},
            "batch_stats": [{"batch_size": size, "compute_infer": {"count": n, "ns": ns}}
                            for size, (n, ns) in batches.items()]}


def test_stats_delta_diffs_queue_time_executions_and_batch_sizes() -> None:
    before = _stats((10, 10_000_000), {1: (10, 50_000_000)})
    after = _stats((30, 50_000_000), {1: (12, 60_000_000), 4: (2, 30_000_000)})
    delta = StatsDelta.between(before, after)
    assert delta.queue_ms == 2.0  # 40 ms over 20 requests
    assert delta.executions == 4
    assert delta.compute_ms == 10.0  # 40 ms over 4 executions
    assert delta.mean_batch == 2.5  # (2 x 1 + 2 x 4) / 4


def test_stats_delta_of_an_idle_window_is_nan_not_an_error() -> None:
    idle = _stats((5, 1_000_000), {1: (5, 1_000_000)})
    delta = StatsDelta.between(idle, idle)
    assert delta.executions == 0
    assert math.isnan(delta.queue_ms) and math.isnan(delta.compute_ms) and math.isnan(delta.mean_batch)
    assert StatsDelta.between({}, {}).executions == 0  # a model with no statistics yet
