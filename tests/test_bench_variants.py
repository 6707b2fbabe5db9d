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


def test_installed_placement_is_read_from_the_managers_last_ready_line_per_model() -> None:
    from edgeplex.bench.variants import installed

    lines = [
        "2026-11-23 05:59:30,631 INFO edgeplex.engine.manager: model yolov8n ready: versions 1, "
        "1x onnxruntime/cpu/fp32/t1, 32.6 MB (model config)",
        "2026-11-23 05:59:32,832 ERROR edgeplex.tuning.allocator: placement of yolov8n failed (1 in a row)",
        "2026-11-23 05:59:31,191 INFO edgeplex.engine.manager: model magika ready: versions 1, "
        "1x onnxruntime/cpu/fp32/t1, 8.2 MB (model config)",
        "2026-11-23 05:59:31,191 INFO edgeplex.engine.manager: model magika ready: versions 1, "
        "2x onnxruntime/cpu/int8-static/t1 + 1x openvino/cpu/fp32/t1, 5.5 MB (pareto: 2x onnxruntime/cpu/int8-static t1)",
    ]
    assert installed(lines) == {"yolov8n": "1x onnxruntime/cpu/fp32/t1",
                                "magika": "2x onnxruntime/cpu/int8-static/t1 + 1x openvino/cpu/fp32/t1"}


def test_ratio_skips_rounds_where_both_served_nothing() -> None:
    from edgeplex.bench.variants import ratio

    assert ratio(3.0, 2.0) == 1.5
    assert ratio(0.0, 0.0) is None
    assert ratio(1.0, 0.0) == float("inf")


def test_error_kinds_groups_errors_with_numbers_masked_and_names_a_failed_steps_exception() -> None:
    from edgeplex.bench.variants import error_kinds

    lines = [
        "2026-11-23 06:20:56,989 ERROR edgeplex.tuning.allocator: allocator step failed",
        "Traceback (most recent call last):",
        "ValueError: demand must be finite and >= 0: {'magika': -11.04}",
        "2026-11-23 06:21:00,311 ERROR edgeplex.engine.manager: model ppocr_rec failed to load: needs about 10.9 MB",
        "2026-11-23 06:21:02,311 ERROR edgeplex.engine.manager: model ppocr_rec failed to load: needs about 12.9 MB",
        "2026-11-23 06:21:03,000 INFO edgeplex.engine.manager: model ppocr_rec ready",
    ]
    kinds = error_kinds(lines)
    assert kinds == {"edgeplex.tuning.allocator: allocator step failed: ValueError: demand must be finite and >= #: "
                     "{'magika': #}": 1,
                     "edgeplex.engine.manager: model ppocr_rec failed to load: needs about # MB": 2}
