"""Logs and progress output: structured JSON lines with each record's fields, one line per
placement decision, and plain output (no control characters) when not on a terminal."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from models import add_model

from edgeplex import logs
from edgeplex.backends import ExecutionConfig
from edgeplex.engine import Engine, InferRequest
from edgeplex.engine.placement import InstanceGroup, ModelPlacement


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_carry_each_placement_decision(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 restore_logging: object) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    logs.configure("info", "json")
    engine = Engine(tmp_path, cores=2)
    try:
        engine.load_all()
        engine.apply(ModelPlacement("add", [InstanceGroup(ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 4), 2)],
                                    reason="test: two instances"))
        engine.infer(InferRequest("add", {"x": np.ones((1, 4), np.float32)}))
    finally:
        engine.close()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    decisions = [line for line in lines if line.get("event") == "placement"]
    assert [d["model"] for d in decisions] == ["add", "add"]  # the load, then the re-placement
    assert decisions[-1]["reason"] == "test: two instances" and "2x onnxruntime/cpu" in decisions[-1]["placement"]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert decisions[-1]["level"] == "info" and decisions[-1]["logger"] == "edgeplex.engine.manager"


def test_text_logs_respect_the_level(capsys: pytest.CaptureFixture[str], restore_logging: object) -> None:
    logs.configure("warning", "text")
    logging.getLogger("edgeplex.test").info("hidden")
    logging.getLogger("edgeplex.test").warning("shown %d", 1)
    err = capsys.readouterr().err
    assert "hidden" not in err and "WARNING edgeplex.test: shown 1" in err


def test_progress_is_plain_when_not_on_a_terminal(zoo_repo: Path, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "edgeplex.cli", "zoo", "pull", "ppocr_cls", "--dest",
                          str(tmp_path / "zoo")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    output = run.stdout + run.stderr
    assert "ppocr_cls" in output
    assert not any(ch in output for ch in ("\r", "\x1b", "\x08")), repr(output[:300])
    quiet = subprocess.run([sys.executable, "-m", "edgeplex.cli", "--quiet", "zoo", "pull", "ppocr_cls", "--dest",
                            str(tmp_path / "zoo")], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_bench_progress_is_one_plain_line_per_phase_off_a_terminal(tiny_repo: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from edgeplex.bench import clients, progress
    from edgeplex.bench.loadgen import closed_loop

    engine = Engine(tiny_repo, cores=1)
    try:
        engine.load_all(["add"])
        inputs = {"add": {"x": np.ones((1, 4), np.float32)}}
        loads = closed_loop(clients.inprocess(engine), inputs, {"add": 1}, duration_s=0.3)
        err = capsys.readouterr().err
        assert err.strip() == f"edgeplex bench: add: {loads['add'].completed} answered"
        progress.ENABLED = False  # --quiet
        closed_loop(clients.inprocess(engine), inputs, {"add": 1}, requests_per_client=3)
        assert capsys.readouterr().err == ""
    finally:
        progress.ENABLED = True
        engine.close()


def test_a_multi_line_message_is_one_text_record(capsys: pytest.CaptureFixture[str], restore_logging: object) -> None:
    """A native runtime's error text spans lines; the record must not (grep, shippers)."""
    logs.configure("info", "text")
    logging.getLogger("edgeplex.test").info("warm-up skipped (%s)", "first line\n  second line\n\nthird")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].endswith("INFO edgeplex.test: warm-up skipped (first line | second line | third)")


def test_a_failure_keeps_its_traceback(capsys: pytest.CaptureFixture[str], restore_logging: object) -> None:
    logs.configure("info", "text")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("edgeplex.test").exception("step failed")
    err = capsys.readouterr().err
    assert "ERROR edgeplex.test: step failed" in err and "Traceback" in err and "RuntimeError: boom" in err
