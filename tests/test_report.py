"""Benchmark reports: JSON with the machine, a Markdown report with its tables and PNG charts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgeplex.bench import report


def _allocation_like() -> dict[str, object]:
    per_model = {m: {"throughput": t, "p50_ms": 10.0 * t, "p99_ms": 20.0 * t} for m, t in (("a", 3.0), ("b", 5.0))}
    return {"runs": {p: {"per_model": per_model, "sustained": 3.0 * k} for k, p in enumerate(("static", "pareto"), 1)},
            "bound": {"per_model_rate": 7.5}}


def test_a_report_is_written_with_its_images(tmp_path: Path) -> None:
    path = report.write(tmp_path, "allocation", _allocation_like(), "# Allocation\n\n| a | b |")
    recorded = json.loads(path.read_text())
    assert recorded["machine"]["cores"] >= 1 and recorded["runs"]["pareto"]["sustained"] == 6.0
    markdown = (tmp_path / "allocation.md").read_text()
    images = re.findall(r"\]\(([\w.-]+\.png)\)", markdown)
    assert images == ["allocation.png", "allocation-sustained.png", "allocation-latency.png"]
    for image in images:
        assert (tmp_path / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| a | b |" in markdown and "Measured" in markdown and "onnxruntime" in markdown


def test_a_scenario_without_charts_still_gets_its_report(tmp_path: Path) -> None:
    report.write(tmp_path, "unknown", {"x": 1}, "text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unknown.json", "unknown.md"]
