"""`edgeplex placement` as text: every line of the default view fits 100 columns whatever the
report holds (long names, several groups, turns, a failed model's long reason, no explanation),
the essentials stay readable, `--wide` shows everything and `--json` the raw report. One report
comes from a real engine over the real HTTP app; the others are hand-made to reach the edges."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import numpy as np
import pytest

from edgeplex.engine import Engine, InferRequest
from edgeplex.placement_view import (
    MAX_WIDTH,
    PlacementReportError,
    default_width,
    fit,
    render_placement,
    run_label,
)
from edgeplex.server.http import build_app

NOW = time.time()
LONG_FAILURE = ("failed to load: [ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model from /var/lib/edgeplex/"
                "repository/broken_model_with_a_rather_long_name/1/model.onnx failed: This is an invalid model. "
                "In Node, (\"\", Conv, \"\", -1) : (\"x\": tensor(float),) -> (\"y\",) , Error Unrecognized attribute")


def _group(backend: str = "onnxruntime", instances: int = 1, threads: int = 1, processor: str = "cpu",
           variant: str = "fp32", max_batch: int = 8) -> dict[str, Any]:
    return {"backend": backend, "processor": processor, "variant": variant, "threads": threads,
            "max_batch": max_batch, "instances": instances}


def _model(name: str, groups: list[dict[str, Any]], capacity: float = 0.0, state: str = "READY",
           **extra: Any) -> dict[str, Any]:
    model = {"model": name, "state": state, "groups": groups, "estimated_capacity": capacity,
             "observed_slowdown": 1.0, "taking_turns": False, "memory_bytes": 0, "reason": "",
             "last_decision": None}
    model.update(extra)
    return model


def realistic_report() -> dict[str, Any]:
    """The zoo under pressure: explained and unexplained models, mixed groups, turns, a failure."""
    yolo = _model(
        "yolov8n", [_group(instances=2)], 30.1, memory_bytes=48_300_000, observed_slowdown=1.18,
        reason="pareto: best rate within memory (observed 30.1 req/s)",
        last_decision={"at": NOW - 42, "placement": "2x onnxruntime/cpu/fp32/t1/b8", "reason": "pareto: re-placed"},
        explanation={
            "summary": "2x onnxruntime t1: 30.1 req/s observed, beats openvino t1 (24.0 profiled) and every "
                       "2-thread config, which costs two cores for 1.3x the rate",
            "source": "observed", "bound": ["max_batch_size", "instance_count"],
            "rejected": [{"config": "openvino/cpu/fp32/t1", "reason": "p99 31.0 ms over slo_ms 20"},
                         {"config": "onnxruntime/cpu/int8_dynamic/t1", "reason": "fidelity loss 0.041 over 0.01"}],
            "would_change": "more traffic on ppocr_rec, or slo_ms above 31 ms (openvino would then fit)"})
    ocr = _model(
        "ppocr_rec_with_an_unusually_long_model_name_for_the_table",
        [_group("openvino", 1, 1), _group("onnxruntime", 1, 1), _group("onnxruntime", 1, 2, variant="int8_dynamic")],
        0.0, memory_bytes=95_000_000, taking_turns=True, reason="pareto: takes turns (memory)",
        explanation={"summary": "three groups share its load while memory allows", "source": "profiled",
                     "bound": [], "rejected": [], "would_change": "a larger --memory-budget"})
    gpu = _model("magika", [_group("onnxruntime", 1, 1, processor="cuda:0", variant="fp16")], 812.4,
                 memory_bytes=12_500_000, reason="pareto: accelerator free",
                 last_decision={"at": NOW - 5, "placement": "1x onnxruntime/cuda:0/fp16/t1/b8", "reason": ""})
    broken = _model("broken_model_with_a_rather_long_name", [], state="UNAVAILABLE", reason=LONG_FAILURE)
    plain = _model("silero_vad", [_group("onnxruntime", 1, 1, max_batch=0)], 1234.5, memory_bytes=2_100_000,
                   reason="model config")  # no explanation at all: an older server
    return {
        "cores": 4, "memory_used": 158_000_000, "memory_budget": 160_000_000,
        "processors": [
            {"name": "cpu", "kind": "cpu", "capacity": 4, "in_use": 3, "waiting": 1, "peak": 4, "busy_seconds": 5123.4,
             "backends": ["onnxruntime", "openvino"],
             "models": ["yolov8n", "ppocr_rec_with_an_unusually_long_model_name_for_the_table", "silero_vad",
                        "ppocr_det", "ppocr_cls", "another_model", "and_one_more_model"]},
            {"name": "cuda:0", "kind": "cuda", "capacity": 2, "in_use": 0, "waiting": 0, "peak": 2,
             "busy_seconds": 12.0, "backends": ["onnxruntime"], "models": ["magika"]},
        ],
        "models": [yolo, ocr, gpu, broken, plain],
    }


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_default_view_fits_100_columns_and_keeps_the_essentials() -> None:
    text = render_placement(realistic_report(), width=100)
    lines = _lines(text)
    too_long = [(len(x), x) for x in lines if len(x) > 100]
    assert not too_long, too_long
    assert lines[0] == "cores 4 · memory 158 MB used of 160 MB (99%)"
    header = next(x for x in lines if x.startswith("model "))
    assert header.split() == ["model", "state", "runs", "req/s", "mem", "MB", "why"]
    row = {x.split()[0]: x for x in lines if x.split() and x.split()[0] in ("yolov8n", "magika", "silero_vad")}
    assert "2x ort t1" in row["yolov8n"] and "30.1" in row["yolov8n"] and "48.3" in row["yolov8n"]
    # The why wraps to two lines beside its row, then is cut with …
    why_column = header.index("why")
    at = lines.index(row["yolov8n"])
    why = " ".join(x[why_column:] for x in lines[at:at + 2])
    assert why.startswith("2x onnxruntime t1: 30.1 req/s observed, beats openvino") and why.endswith("…")
    assert lines[at + 1][:why_column].strip() == ""
    assert "1x ort cuda:0 fp16" in row["magika"] and " t1" not in row["magika"].split("fp16")[0]
    assert "1234.5" in row["silero_vad"] and "model config" in row["silero_vad"]  # no explanation: the reason
    # Several groups that do not fit side by side: one per line, in order.
    start = next(i for i, x in enumerate(lines) if x.startswith("ppocr_rec_with") and x.split()[0].endswith("…"))
    assert "1x ov t1 +" in lines[start] and "READY*" in lines[start]
    assert "1x ort t1 +" in lines[start + 1] and "1x ort int8_dynamic t2" in lines[start + 2]
    assert "three groups share" in lines[start] and "while memory allows" in lines[start + 1]
    # Unknown capacity is a dash, not 0.0; the slowdown is not in the default view.
    assert " – " in lines[start] and "0.0" not in lines[start]
    assert "1.18" not in text and "slowdown" not in text
    # The failed model: its long reason cut to fit, beginning kept.
    broken = next(x for x in lines if x.startswith("broken_model") and x.split()[0].endswith("…"))
    at = lines.index(broken)
    why = " ".join(x[why_column:] for x in lines[at:at + 2])
    assert "UNAVAILABLE" in broken and why.startswith("failed to load: [ONNXRuntimeError]") and why.endswith("…")
    # Processors: both, models listed and cut to fit.
    cpu = next(x for x in lines if x.startswith("cpu "))
    assert "5123.4" in cpu and "yolov8n" in cpu and cpu.endswith("…")
    assert any(x.startswith("cuda:0") and x.endswith("magika") for x in lines)
    assert any("taking turns" in x for x in lines) and any("capacity the allocator expects" in x for x in lines)


@pytest.mark.parametrize("width", [60, 80, 100])
def test_every_width_fits(width: int) -> None:
    for wide in (False, True):
        lines = _lines(render_placement(realistic_report(), wide=wide, width=width))
        assert max(len(x) for x in lines) <= width, (width, wide, max(lines, key=len))


def test_wide_view_has_everything() -> None:
    text = render_placement(realistic_report(), wide=True, width=100)
    assert max(len(x) for x in _lines(text)) <= 100
    flat = " ".join(text.split())  # wrapped lines joined back
    for expected in [
        "2x onnxruntime/cpu/fp32, 1 thread(s), batches of up to 8",
        "2x onnxruntime t1: 30.1 req/s observed, beats openvino t1 (24.0 profiled) and every 2-thread config, "
        "which costs two cores for 1.3x the rate",
        "figures observed", "1.18 (observed/profiled service time)", "48.3 MB resident",
        "bound max_batch_size, instance_count", "openvino/cpu/fp32/t1: p99 31.0 ms over slo_ms 20",
        "onnxruntime/cpu/int8_dynamic/t1: fidelity loss 0.041 over 0.01",
        "would change more traffic on ppocr_rec, or slo_ms above 31 ms (openvino would then fit)",
        time.strftime("%H:%M:%S", time.localtime(NOW - 42)) + " 2x onnxruntime/cpu/fp32/t1/b8: pareto: re-placed",
        "ppocr_rec_with_an_unusually_long_model_name_for_the_table READY",
        "1x onnxruntime/cpu/int8_dynamic, 2 thread(s)", "takes turns yes", "figures profiled",
        "1x onnxruntime/cuda:0/fp16", "812.4", LONG_FAILURE, "1x onnxruntime/cpu/fp32, 1 thread(s), no batching",
        "placed by model config", "last change none yet",
    ]:
        assert expected in flat, expected
    # Each model is one block, in the report's order.
    starts = [flat.index(name) for name in ("yolov8n READY", "magika READY", "silero_vad READY")]
    assert starts == sorted(starts)


def test_json_is_the_raw_report() -> None:
    report = realistic_report()
    text = render_placement(report, as_json=True)
    assert json.loads(text) == report and "\n  " in text


def test_compact_runs() -> None:
    assert run_label({"backend": "onnxruntime", "processor": "cpu", "variant": "fp32", "threads": 1,
                      "instances": 2}) == "2x ort t1"
    assert run_label({"backend": "openvino", "processor": "npu:0", "variant": "int8_static", "threads": 1,
                      "instances": 1}) == "1x ov npu:0 int8_static"
    assert run_label({"backend": "mybackend", "processor": "cpu", "variant": "fp32", "threads": 3,
                      "instances": 1}) == "1x mybackend t3"
    assert fit("a  b\nc", 10) == "a b c" and fit("abcdefghijk", 5) == "abcd…"


def test_bad_reports_are_named() -> None:
    with pytest.raises(PlacementReportError, match="'models' is missing"):
        render_placement({"cores": 2})
    with pytest.raises(PlacementReportError, match=r"models\[1\] has no 'model' name"):
        render_placement({"models": [_model("a", []), {"state": "READY"}]})
    with pytest.raises(PlacementReportError, match="a: 'groups' is not a list"):
        render_placement({"models": [_model("a", "2x ort")]})  # type: ignore[arg-type]
    with pytest.raises(PlacementReportError, match="expected a JSON object, got list"):
        render_placement([])  # type: ignore[arg-type]
    with pytest.raises(PlacementReportError, match="width 30 is too narrow"):
        render_placement(realistic_report(), width=30)


def test_default_width_never_exceeds_100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    assert default_width() == MAX_WIDTH == 100
    monkeypatch.setenv("COLUMNS", "72")
    assert default_width() == 72
    lines = _lines(render_placement(realistic_report()))
    assert max(len(x) for x in lines) <= 72


def test_a_real_servers_report(engine: Engine) -> None:
    """The report as a real engine and HTTP app answer it (no explanation yet: tolerated)."""
    engine.infer(InferRequest("add", {"x": np.ones((1, 4), np.float32)}))

    async def fetch() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=build_app(engine))
        async with httpx.AsyncClient(transport=transport, base_url="http://edgeplex") as client:
            response = await client.get("/v2/edgeplex/placement")
            response.raise_for_status()
            return dict(response.json())

    report = asyncio.run(fetch())
    text = render_placement(report, width=100)
    lines = _lines(text)
    assert max(len(x) for x in lines) <= 100
    assert lines[0].startswith("cores 2 · memory ") and lines[0].endswith("(no budget)")
    rows = {x.split()[0]: x for x in lines if x.split()}
    assert "1x ort t1" in rows["add"] and "model config" in rows["add"]
    assert "UNAVAILABLE" in rows["broken"]
    wide = render_placement(report, wide=True, width=100)
    assert "add READY" in wide and "(observed/profiled service time)" in wide
