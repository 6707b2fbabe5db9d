"""Faults stay contained: a model that fails at run time, one that cannot come back under the
memory budget, a placement its backend cannot run; the others keep serving, and repeated
failures back off instead of looping."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import add_model, slow_model, write_config
from onnx import TensorProto, helper

from edgeplex.backends import ExecutionConfig
from edgeplex.engine import EVICTED_REASON, Engine, InferRequest, ManualClock
from edgeplex.engine.placement import InstanceGroup, ModelPlacement
from edgeplex.errors import BackendError, ModelNotReady
from edgeplex.tuning.allocator import Allocator


def reshape_model(path: Path) -> Path:
    """y = reshape(x, [-1, 3]) for x FP32 [B, 4]: fails at run time unless 4B is a multiple of 3."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 3])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_a_model_failing_at_run_time_answers_errors_and_the_others_serve(tmp_path: Path) -> None:
    reshape_model(tmp_path / "reshape" / "1" / "model.onnx")
    write_config(tmp_path / "reshape", max_batch_size=0, inputs=[{"name": "x", "datatype": "FP32", "dims": [-1, 4]}],
                 outputs=[{"name": "y", "datatype": "FP32", "dims": [-1, 3]}])
    add_model(tmp_path / "add" / "1" / "model.onnx")
    engine = Engine(tmp_path, cores=1)
    try:
        assert engine.load_all() == {}
        for _ in range(3):  # the executor thread survives every failure
            with pytest.raises(BackendError) as info:
                engine.infer(InferRequest("reshape", {"x": np.ones((1, 4), np.float32)}))
            assert info.value.http_status == 500 and "reshape" in info.value.message
        ok = engine.infer(InferRequest("reshape", {"x": np.ones((3, 4), np.float32)}))
        assert ok.outputs["y"].shape == (4, 3)
        assert engine.infer(InferRequest("add", {"x": np.ones((1, 4), np.float32)})).outputs["y"].shape == (1, 4)
        stats = engine.statistics("reshape")[0]["inference_stats"]
        assert (stats["fail"]["count"], stats["success"]["count"]) == (3, 1)
    finally:
        engine.close()


def test_a_model_that_cannot_come_back_is_refused_at_once_with_back_off(tmp_path: Path) -> None:
    for name, pinned in (("a", False), ("b", True)):
        slow_model(tmp_path / name / "1" / "model.onnx", size=512, layers=8)  # 8.4 MB each
        write_config(tmp_path / name, max_batch_size=8, pinned=pinned)
    clock = ManualClock()  # the back-off's timers, advanced instead of slept out
    engine = Engine(tmp_path, cores=1, clock=clock)
    try:
        assert engine.load_all() == {}
        # b (pinned) and half a's file fit; a cannot come back beside b.
        budget = engine.manager.state("b").memory_bytes + (tmp_path / "a" / "1" / "model.onnx").stat().st_size // 2
        engine.manager.memory_budget = budget
        engine.manager.unload("a", EVICTED_REASON, evicted=True)
        x = {"x": np.ones((1, 512), np.float32)}
        with pytest.raises(ModelNotReady, match=f"memory budget is {budget / 1e6:.1f} MB"):
            engine.infer(InferRequest("a", x))
        started = time.monotonic()
        with pytest.raises(ModelNotReady, match=r"could not be loaded back \(1 tries failed.*next try in 0\.5 s"):
            engine.infer(InferRequest("a", x))
        assert time.monotonic() - started < 0.1  # no load attempted
        clock.advance(0.6)
        with pytest.raises(ModelNotReady, match="memory budget"):  # tried again after the back-off
            engine.infer(InferRequest("a", x))
        with pytest.raises(ModelNotReady, match=r"2 tries failed.*next try in 1\.0 s"):
            engine.infer(InferRequest("a", x))
        assert engine.infer(InferRequest("b", x)).outputs["y"].shape == (1, 512)
        engine.unload("b")
        clock.advance(1.1)
        assert engine.infer(InferRequest("a", x)).outputs["y"].shape == (1, 512)  # room again: it comes back
        assert engine.manager.state("a").reload_failures == 0
    finally:
        engine.close()


def _on_a_missing_processor() -> ModelPlacement:
    """A placement of `add` on a processor this machine lacks: its install always fails."""
    return ModelPlacement("add", [InstanceGroup(ExecutionConfig("onnxruntime", "cuda:7", "fp32", 1, 4))],
                          reason="test: a processor this machine lacks")


def test_a_placement_that_fails_is_not_retried_in_a_loop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    clock = ManualClock()
    engine = Engine(tmp_path, cores=1, clock=clock)
    try:
        assert engine.load_all() == {}
        allocator = Allocator(engine, "static")
        impossible = _on_a_missing_processor()

        def failures() -> list[str]:
            return [r.getMessage() for r in caplog.records if "placement of add failed" in r.getMessage()]

        with caplog.at_level(logging.ERROR, logger="edgeplex.tuning.allocator"):
            for _ in range(5):
                allocator._apply_all({"add": impossible})
            assert len(failures()) == 1 and "cuda:7" in failures()[0] and "(1 in a row)" in failures()[0]
            clock.advance(1.9)  # within the 2 s back-off: still not retried
            allocator._apply_all({"add": impossible})
            assert len(failures()) == 1
            clock.advance(0.2)  # past it: tried again, and the next back-off doubles
            for _ in range(3):
                allocator._apply_all({"add": impossible})
            assert len(failures()) == 2 and "(2 in a row)" in failures()[1]
        (instance,) = engine.manager.runner("add").instances  # it keeps the placement it had
        assert instance.config.processor == "cpu"
        assert engine.infer(InferRequest("add", {"x": np.ones((1, 4), np.float32)})).outputs["y"].shape == (1, 4)
    finally:
        engine.close()


def test_a_failed_placement_leaves_the_previous_one_reported_and_retriable(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    engine = Engine(tmp_path, cores=1)
    try:
        assert engine.load_all() == {}
        before = engine.manager.state("add").placement
        impossible = _on_a_missing_processor()
        for _ in range(2):  # the second try really tries again (it is not taken as already applied)
            with pytest.raises(BackendError, match="cuda:7"):
                engine.apply(impossible)
            assert engine.manager.state("add").placement is before
        report = {m["model"]: m for m in engine.placement_report()}["add"]
        assert [g["processor"] for g in report["groups"]] == ["cpu"]
    finally:
        engine.close()


def test_the_monitor_survives_a_reload_resetting_the_arrival_counter(tmp_path: Path) -> None:
    from edgeplex.engine.monitor import Monitor

    add_model(tmp_path / "add" / "1" / "model.onnx")
    engine = Engine(tmp_path, cores=1)
    try:
        assert engine.load_all() == {}
        monitor = Monitor(engine)
        for _ in range(5):
            engine.infer(InferRequest("add", {"x": np.ones((1, 4), np.float32)}))
        monitor.sample()
        engine.unload("add")
        engine.load("add")  # a new runner: its arrival counter starts at 0
        engine.infer(InferRequest("add", {"x": np.ones((1, 4), np.float32)}))
        time.sleep(0.01)
        load = monitor.sample()["add"]
        assert load.arrival_rate >= 0
    finally:
        engine.close()
