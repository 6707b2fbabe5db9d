"""Pareto fronts on hand-made profiles: dominance, ties, three objectives, custom keys."""

from __future__ import annotations

import itertools

import pytest

from edgeplex.backends import ExecutionConfig
from edgeplex.tuning.pareto import dominates, latency_per_row_ms, pareto_front, solo_service_rate
from edgeplex.tuning.profile import Profile

_ids = itertools.count(1)


def make(p50: float, mem_mb: float, loss: float = 0.0, batch: int = 1, throughput: float = 0.0) -> Profile:
    return Profile(model="m", model_hash="h", config=ExecutionConfig(threads=next(_ids)), batch=batch, p50_ms=p50,
                   p99_ms=p50 * 1.5, throughput=throughput, memory_bytes=int(mem_mb * 1e6), backend_version="1",
                   machine="x", fidelity_loss=loss)


def test_dominates() -> None:
    assert dominates((1, 1), (1, 2)) and dominates((1, 1), (2, 2))
    assert not dominates((1, 1), (1, 1)) and not dominates((1, 3), (2, 2))


def test_two_objectives_keeps_trade_offs_in_input_order() -> None:
    fast_big, slow_small, mid, beaten = make(1, 100), make(10, 10), make(5, 50), make(6, 60)
    assert pareto_front([slow_small, beaten, fast_big, mid]) == [slow_small, fast_big, mid]


def test_ties_are_kept_once_and_stably() -> None:
    a, twin, other = make(2, 20), make(2, 20), make(1, 40)
    front = pareto_front([a, other, twin])
    assert front == [a, other] and front[0] is a  # the first of equal points stays
    assert pareto_front([]) == []
    assert pareto_front([a]) == [a]


def test_equal_on_one_objective_better_on_another_dominates() -> None:
    a, b = make(2, 20), make(2, 30)
    assert pareto_front([b, a]) == [a]


def test_three_objectives() -> None:
    fp32 = make(10, 100, 0.0)
    int8 = make(10, 25, 0.02)  # smaller but less faithful: stays
    fp16 = make(10, 60, 0.02)  # beaten by int8 (same latency and loss, more memory)
    fast = make(4, 120, 0.0)
    worse = make(12, 110, 0.01)  # beaten by fp32 on all three
    front = pareto_front([fp32, int8, fp16, fast, worse])
    assert front == [fp32, int8, fast]
    # with fidelity ignored, int8 alone beats fp32
    two = pareto_front([fp32, int8, fp16, fast, worse], keys=(latency_per_row_ms, lambda p: p.memory_bytes))
    assert two == [int8, fast]


def test_latency_is_per_request_row() -> None:
    single = make(4, 50, batch=1)
    batched = make(16, 50, batch=8)  # 2 ms per row: beats 4 ms per row at the same memory
    assert latency_per_row_ms(batched) == 2.0
    assert pareto_front([single, batched]) == [batched]


def test_front_matches_brute_force_definition() -> None:
    import random

    rng = random.Random(7)
    profiles = [make(rng.choice([1, 2, 3, 4]), rng.choice([10, 20, 30]), rng.choice([0.0, 0.1])) for _ in range(40)]
    front = pareto_front(profiles)
    vec = [(p.p50_ms, p.memory_bytes, p.fidelity_loss) for p in profiles]
    expected, seen = [], set()
    for p, v in zip(profiles, vec):
        beaten = any(all(o <= x for o, x in zip(w, v)) and w != v for w in vec)
        if not beaten and v not in seen:
            seen.add(v)
            expected.append(p)
    assert front == expected


def test_solo_service_rate() -> None:
    assert solo_service_rate(make(5, 10, throughput=180.0)) == 180.0
    assert solo_service_rate(make(5, 10, batch=4)) == pytest.approx(800.0)  # fallback: batch / p50
    assert solo_service_rate(make(0, 10)) == 0.0
