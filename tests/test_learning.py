"""Feedback per execution config: what the planner believes each config delivers, from synthetic
observations (pure), and the monitor converging on real service times of two configs at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from models import add_model, write_config

from edgeplex.backends import ExecutionConfig
from edgeplex.engine import ConfigLoad, Engine, InferRequest, InstanceGroup, ModelPlacement, Monitor
from edgeplex.tuning.learning import CONTRADICTION, MIN_ROWS, learn
from edgeplex.tuning.policies import Candidate

T1 = ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 0)
T2 = ExecutionConfig("onnxruntime", "cpu", "fp32", 2, 0)
OV = ExecutionConfig("openvino", "cpu", "fp32", 1, 0)


def _cand(config: ExecutionConfig, rate: float) -> Candidate:
    return Candidate(config, rate, config.threads or 1, 10_000_000)


def _seen(model: str, config: ExecutionConfig, service_ms: float, rows: int = 100) -> ConfigLoad:
    return ConfigLoad(model, config, service_ms, rows, rows)


def test_an_observed_config_is_believed_at_its_observed_rate() -> None:
    learned = learn({"m": [_cand(T1, 50.0), _cand(T2, 60.0)]}, {("m", T1): _seen("m", T1, 25.0)})
    rates = {c.config: c.rate for c in learned.candidates["m"]}
    assert rates[T1] == pytest.approx(40.0)  # 1000 / 25 ms
    assert learned.beliefs[("m", T1)].source == "observed"
    # T2 has not run: its profile corrected by what T1 shows of this model (40 / 50 = 0.8).
    assert rates[T2] == pytest.approx(48.0) and learned.beliefs[("m", T2)].factor == pytest.approx(0.8)
    assert learned.factors == {"m@cpu": pytest.approx(0.8)} and learned.contradicted == []


def test_too_few_rows_leave_the_profile_as_it_is() -> None:
    learned = learn({"m": [_cand(T1, 50.0)]}, {("m", T1): _seen("m", T1, 25.0, rows=MIN_ROWS - 1)})
    assert learned.candidates["m"][0].rate == 50.0 and learned.beliefs[("m", T1)].source == "profile"


def test_a_model_with_nothing_observed_is_corrected_by_the_mix() -> None:
    learned = learn({"a": [_cand(T1, 100.0)], "b": [_cand(T1, 10.0)]}, {("a", T1): _seen("a", T1, 20.0)})
    assert learned.candidates["b"][0].rate == pytest.approx(5.0)  # the mix shows 0.5 of the profiles
    assert "mix" in learned.beliefs[("b", T1)].source


def test_an_observation_far_faster_than_the_profile_refutes_it() -> None:
    """A profile measured on a busy machine (poisoned): the config runs much faster with others."""
    poisoned = _cand(T1, 1000.0 / 104)  # stored p50 104 ms; it runs in 65 ms
    learned = learn({"m": [poisoned, _cand(OV, 12.0)]}, {("m", T1): _seen("m", T1, 65.0)})
    assert learned.contradicted == [("m", T1)]
    assert 1000.0 / 65 > CONTRADICTION * poisoned.rate
    rates = {c.config: c.rate for c in learned.candidates["m"]}
    assert rates[T1] == pytest.approx(1000.0 / 65)
    assert rates[OV] == pytest.approx(12.0 * 1.6, rel=0.01)  # the same model's factor, capped at 2


def test_an_observation_under_another_batch_cap_counts_for_the_config() -> None:
    batched = ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 8)
    learned = learn({"m": [_cand(batched, 50.0)]}, {("m", T1): _seen("m", T1, 10.0)})
    assert learned.candidates["m"][0].rate == pytest.approx(100.0)


# -- the monitor learning two configs at once, from real runs -------------------------------------


def test_the_monitor_learns_each_config_of_a_mixed_placement(tmp_path: Path, paced: None) -> None:
    add_model(tmp_path / "m" / "1" / "model.onnx")
    write_config(tmp_path / "m", max_batch_size=0)
    engine = Engine(tmp_path, cores=4)
    try:
        assert engine.load_all() == {}
        fast, slow = ExecutionConfig("paced", "cpu", "fp32", 1, 0), ExecutionConfig("paced", "cpu", "fp32", 2, 0)
        engine.apply(ModelPlacement("m", [InstanceGroup(fast, 1), InstanceGroup(slow, 1)]))
        monitor = Monitor(engine)
        monitor.sample()
        x = {"x": np.ones((1, 4), np.float32)}
        for _ in range(3):  # windows: the smoothed figure must hold steady across them
            with ThreadPoolExecutor(4) as clients:
                list(clients.map(lambda _: engine.infer(InferRequest("m", x)), range(40)))
            monitor.sample()
        seen = monitor.config_loads()
        assert seen[("m", fast)].service_ms == pytest.approx(8.0, rel=0.5)
        assert seen[("m", slow)].service_ms == pytest.approx(30.0, rel=0.3)
        assert seen[("m", fast)].rows + seen[("m", slow)].rows == 120
        assert seen[("m", fast)].rows > seen[("m", slow)].rows  # the fast instance frees more often
    finally:
        engine.close()
