"""Requests go to the instance with the earliest expected completion: among unequal instances of
one model (a mixed placement, a trial), a slower one leaves the work to a faster one that will
finish it sooner, unless there is more work than the faster ones can take."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from models import add_model, write_config

from edgeplex.backends import ExecutionConfig
from edgeplex.engine import Engine, InferRequest, InstanceGroup, ModelPlacement
from edgeplex.errors import BackendError

FAST = ExecutionConfig("paced", "cpu", "fp32", 1, 0)  # 8 ms a run (tests/standins.py)
SLOW = ExecutionConfig("paced", "cpu", "fp32", 2, 0)  # 30 ms a run
X = {"x": np.ones((1, 4), np.float32)}


def _engine(tmp_path: Path) -> Engine:
    add_model(tmp_path / "m" / "1" / "model.onnx")
    write_config(tmp_path / "m", max_batch_size=0)
    engine = Engine(tmp_path, cores=4)
    assert engine.load_all() == {}
    engine.apply(ModelPlacement("m", [InstanceGroup(FAST, 1), InstanceGroup(SLOW, 1)]))
    return engine


def _rows(engine: Engine) -> dict[ExecutionConfig, int]:
    (version,) = [v for v in engine.activity() if v.model == "m"]
    return {config: counters.rows for config, counters in version.configs.items()}


def test_one_request_at_a_time_goes_to_the_faster_instance(tmp_path: Path, paced: None) -> None:
    engine = _engine(tmp_path)
    try:
        with ThreadPoolExecutor(2) as clients:  # both instances run (and are timed) once
            list(clients.map(lambda _: engine.infer(InferRequest("m", X)), range(4)))
        before = _rows(engine)
        for _ in range(40):  # one at a time: the fast one is always done sooner
            engine.infer(InferRequest("m", X))
        after = _rows(engine)
        assert after[FAST] - before.get(FAST, 0) >= 38
    finally:
        engine.close()


def test_a_deep_queue_keeps_every_instance_busy(tmp_path: Path, paced: None) -> None:
    engine = _engine(tmp_path)
    try:
        with ThreadPoolExecutor(8) as clients:
            list(clients.map(lambda _: engine.infer(InferRequest("m", X)), range(120)))
        rows = _rows(engine)
        assert rows[FAST] + rows[SLOW] == 120 and rows[SLOW] >= 5  # the slow one helps when work piles up
        assert rows[FAST] > rows[SLOW]
    finally:
        engine.close()


def test_an_instance_that_fails_at_once_does_not_draw_the_work(tmp_path: Path, paced: None, broken: None) -> None:
    """A failing run computes nothing: it must not teach the router that its instance is fast."""
    engine = _engine(tmp_path)
    failing = ExecutionConfig("broken", "cpu", "fp32", 1, 0)
    engine.apply(ModelPlacement("m", [InstanceGroup(failing, 1), InstanceGroup(SLOW, 1)]))
    try:
        answered = failed = 0
        for _ in range(30):
            try:
                engine.infer(InferRequest("m", X))
                answered += 1
            except BackendError:
                failed += 1
        assert answered + failed == 30 and answered >= 8  # the working instance keeps its share
    finally:
        engine.close()
