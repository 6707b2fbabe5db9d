"""Reading a server's log for the benchmarks' reports (pure helpers on captured lines)."""

from __future__ import annotations

from edgeplex.bench.serverlog import error_kinds, installed, problems


def test_installed_placement_is_read_from_the_managers_last_ready_line_per_model() -> None:
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


ERRORS = [
    "2026-11-23 06:20:56,989 ERROR edgeplex.tuning.allocator: allocator step failed",
    "Traceback (most recent call last):",
    "ValueError: demand must be finite and >= 0: {'magika': -11.04}",
    "2026-11-23 06:21:00,311 ERROR edgeplex.engine.manager: model ppocr_rec failed to load: needs about 10.9 MB",
    "2026-11-23 06:21:02,311 ERROR edgeplex.engine.manager: model ppocr_rec failed to load: needs about 12.9 MB",
    "2026-11-23 06:21:03,000 INFO edgeplex.engine.manager: model ppocr_rec ready",
]


def test_error_kinds_groups_errors_with_numbers_masked_and_names_a_failed_steps_exception() -> None:
    assert error_kinds(ERRORS) == {
        "edgeplex.tuning.allocator: allocator step failed: ValueError: demand must be finite and >= #: "
        "{'magika': #}": 1,
        "edgeplex.engine.manager: model ppocr_rec failed to load: needs about # MB": 2}


def test_problems_keeps_error_records_with_their_tracebacks_and_only_the_last_ones() -> None:
    assert problems(ERRORS) == ERRORS[:5]
    assert problems(ERRORS, limit=2) == ERRORS[3:5]
