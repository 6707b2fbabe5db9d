"""Safe exploration: a config whose profile was poisoned gets a bounded trial beside the model's
own instances, is observed, and wins; no request is lost or starved meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from models import add_model, write_config

from edgeplex.backends import ExecutionConfig
from edgeplex.engine import ConfigLoad, Engine, InferRequest, InstanceGroup, ManualClock, ModelPlacement
from edgeplex.repository import file_hash
from edgeplex.tuning.allocator import Allocator
from edgeplex.tuning.explore import DOUBTFUL_EVERY_S, EVERY_S, pick_trial, start_trial
from edgeplex.tuning.learning import learn
from edgeplex.tuning.policies import Candidate
from edgeplex.tuning.profile import Profile
from edgeplex.tuning.profiler import current_backend_versions
from edgeplex.tuning.store import ProfileStore, machine_id

FAST = ExecutionConfig("paced", "cpu", "fp32", 1, 0)  # 8 ms a run (tests/standins.py)
SLOW = ExecutionConfig("paced", "cpu", "fp32", 2, 0)  # 30 ms a run, holding 2 cores


def _candidates() -> dict[str, list[Candidate]]:
    return {"m": [Candidate(FAST, 50.0, 1), Candidate(SLOW, 40.0, 2)], "idle": [Candidate(FAST, 50.0, 1)]}


def _placed(config: ExecutionConfig) -> dict[str, ModelPlacement]:
    return {"m": ModelPlacement("m", [InstanceGroup(config, 1)]), "idle": ModelPlacement("idle", [InstanceGroup(FAST, 1)])}


def test_the_most_promising_unobserved_config_of_a_busy_model_is_picked() -> None:
    observed = {("m", SLOW): ConfigLoad("m", SLOW, 30.0, 100, 100)}
    learned = learn(_candidates(), observed)
    picked = pick_trial(learned, _placed(SLOW), {"m": 5.0, "idle": 0.0}, {}, now=100.0)
    assert picked is not None and picked[0] == "m" and picked[1].config == FAST
    # Not again within the retry period, never for a model without demand, never what it runs.
    assert pick_trial(learned, _placed(SLOW), {"m": 5.0}, {("m", FAST): 90.0}, now=100.0) is None
    assert pick_trial(learned, _placed(SLOW), {"idle": 5.0}, {}, now=100.0) is None
    trial = start_trial("m", picked[1], _placed(SLOW)["m"], now=100.0)
    assert [g.config for g in trial.during.groups] == [SLOW, FAST] and trial.before.groups == _placed(SLOW)["m"].groups


def test_a_hopeless_config_is_not_tried() -> None:
    candidates = {"m": [Candidate(FAST, 1.0, 1), Candidate(SLOW, 40.0, 2)]}  # 20x the incumbent's core-time
    learned = learn(candidates, {("m", SLOW): ConfigLoad("m", SLOW, 25.0, 100, 100)})
    assert pick_trial(learned, {"m": ModelPlacement("m", [InstanceGroup(SLOW, 1)])}, {"m": 5.0}, {}, now=0.0) is None


def _store(tmp_path: Path, model_file: Path, disturbed: bool = False) -> ProfileStore:
    """Profiles of the two paced configs, the fast one poisoned: measured on a busy machine at
    80 ms where it runs in 8, so the planner's first choice is the slow one (2 cores x 30 ms =
    60 core-ms a request, against a believed 80)."""
    store = ProfileStore(tmp_path / "profiles.sqlite")
    version = current_backend_versions(["paced"])["paced"]
    for config, ms in ((FAST, 80.0), (SLOW, 30.0)):
        extra = {"confidence": "low", "attempts": 3} if disturbed and config == FAST else {}
        store.put(Profile("m", file_hash(model_file), config, 1, ms, ms * 1.2, 1000.0 / ms, 5_000_000, version,
                          machine_id(), extra=extra))
    return store


@pytest.mark.parametrize("disturbed", [False, True], ids=["confident", "measured-disturbed"])
def test_a_poisoned_profile_is_recovered_by_a_trial_without_starving_the_model(tmp_path: Path, paced: None,
                                                                                disturbed: bool) -> None:
    model_file = add_model(tmp_path / "repo" / "m" / "1" / "model.onnx")
    write_config(tmp_path / "repo" / "m", max_batch_size=0)
    clock = ManualClock()
    engine = Engine(tmp_path / "repo", cores=2, clock=clock)
    served, failed = [0], []
    stop = threading.Event()
    clients: list[threading.Thread] = []

    def client() -> None:
        x = {"x": np.ones((1, 4), np.float32)}
        while not stop.is_set():
            try:
                engine.infer(InferRequest("m", x))
                served[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                failed.append(repr(exc))

    try:
        assert engine.load_all() == {}
        allocator = Allocator(engine, "pareto", _store(tmp_path, model_file, disturbed), profile_missing=False)

        def groups() -> list[tuple[ExecutionConfig, int]]:
            placement = engine.model("m").placement
            assert placement is not None
            return [(g.config, g.count) for g in placement.groups]

        allocator.step(force=True)
        assert groups() == [(SLOW, 1)]  # the poisoned profile makes the fast config look worse
        clients += [threading.Thread(target=client) for _ in range(2)]
        for thread in clients:
            thread.start()

        def settle() -> None:
            time.sleep(1.0)
            allocator.step()

        settle()
        assert groups() == [(SLOW, 1)]  # observed as profiled: nothing to gain by switching
        # A figure measured disturbed is tried sooner: it decides little until observed.
        clock.advance(DOUBTFUL_EVERY_S)
        settle()
        if not disturbed:
            assert groups() == [(SLOW, 1)]  # a confident figure waits its turn
            clock.advance(EVERY_S - DOUBTFUL_EVERY_S)
            settle()  # the trial: one fast instance beside the slow one, on the same queue
        assert groups() == [(SLOW, 1), (FAST, 1)]
        settle()  # observed: 8 ms, not 80 ms; the plan switches to it
        assert groups() == [(FAST, 2)]
        assert allocator.last_learned is not None
        assert allocator.last_learned.beliefs[("m", FAST)].source == "observed"
        assert "trial" in engine.model("m").decisions[-2].reason
    finally:
        stop.set()
        for thread in clients:
            thread.join(10)
        engine.close()
    assert failed == [] and served[0] > 50
