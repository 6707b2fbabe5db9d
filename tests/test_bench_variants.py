"""The variants benchmark's budget choice (a pure helper; the benchmark itself runs real servers)."""

from __future__ import annotations

from edgeplex.backends import ExecutionConfig
from edgeplex.bench.variants import PLAN_SHARE, choose_budgets
from edgeplex.tuning.profile import Profile

MB = 1_000_000


def _p(model: str, variant: str, memory_mb: float, loss: float = 0.0, p99_ms: float = 10.0,
       backend: str = "onnxruntime") -> Profile:
    return Profile(model, f"{model}-{variant}", ExecutionConfig(backend, "cpu", variant, 1, 0), 1, p99_ms / 2, p99_ms,
                   100.0, int(memory_mb * MB), "1", "m", loss)


def test_tight_is_a_fraction_of_the_smallest_fp32_instances_and_plannable_fits_the_admissible_variants() -> None:
    profiles = {
        "a": [_p("a", "fp32", 40), _p("a", "fp32", 45, backend="openvino"), _p("a", "int8-static", 18, loss=0.001)],
        "b": [_p("b", "fp32", 30), _p("b", "int8-static", 10, loss=0.3)],  # too lossy: not admissible
        "c": [_p("c", "fp32", 14), _p("c", "int8-dynamic", 7, p99_ms=50)],  # too slow for its slo
    }
    budgets = choose_budgets(profiles, {"a": 100, "b": 100, "c": 20}, dict.fromkeys("abc", 0.01), fraction=0.65)
    assert budgets.fp32 == {"a": 40 * MB, "b": 30 * MB, "c": 14 * MB}
    assert budgets.smallest == {"a": 18 * MB, "b": 30 * MB, "c": 14 * MB}
    assert budgets.tight == int(0.65 * 84 * MB)
    assert budgets.plannable == int(1.1 * 62 * MB / PLAN_SHARE)
    assert PLAN_SHARE * budgets.plannable < sum(budgets.fp32.values())  # fp32 cannot be planned there
    assert budgets.admissible == {"a": ["onnxruntime/fp32", "openvino/fp32", "onnxruntime/int8-static"],
                                  "b": ["onnxruntime/fp32"], "c": ["onnxruntime/fp32"]}
    # The server accounting less than the profiles: the budget must bind where it is enforced.
    accounted = choose_budgets(profiles, {}, dict.fromkeys("abc", 0.01), {"a": 30 * MB, "b": 5 * MB, "c": 5 * MB})
    assert accounted.tight == int(0.65 * 40 * MB)


def test_no_plannable_budget_when_variants_already_fit_the_tight_one_or_fp32_fits_too() -> None:
    small = {"a": [_p("a", "fp32", 100), _p("a", "int8-static", 10)]}
    assert choose_budgets(small, {}, {"a": 0.01}).plannable is None  # 1.1 * 10 / 0.8 <= 65
    near = {"a": [_p("a", "fp32", 100), _p("a", "fp16", 95)]}
    assert choose_budgets(near, {}, {"a": 0.01}).plannable is None  # 0.8 * 1.1 * 95 / 0.8 >= 100: fp32 plannable too
