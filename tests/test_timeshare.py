"""The time-shared planner on hand-made candidates with known answers."""

from __future__ import annotations

import pytest

from edgeplex.backends import ExecutionConfig
from edgeplex.engine.placement import InstanceGroup, ModelPlacement
from edgeplex.tuning.policies import Candidate
from edgeplex.tuning.timeshare import plan_shared, shared_lam


def cand(backend: str, threads: int, rate: float, memory: int = 10, processor: str = "cpu") -> Candidate:
    return Candidate(ExecutionConfig(backend, processor, "fp32", threads, 8), rate, threads, memory)


MIX = {
    # OpenVINO is faster for the detector, ONNX Runtime for the classifier; two threads never pay.
    "det": [cand("onnxruntime", 1, 40), cand("openvino", 1, 70), cand("openvino", 2, 100)],
    "cls": [cand("onnxruntime", 1, 120), cand("openvino", 1, 100), cand("onnxruntime", 2, 200)],
}


def test_each_model_gets_its_least_core_time_config_and_the_bound_is_met() -> None:
    result = plan_shared({"det": 1, "cls": 1}, MIX, cores=2, memory_budget=None)
    chosen = {m: (p.groups[0].config.backend, p.groups[0].config.threads, p.groups[0].count)
              for m, p in result.placement.items()}
    assert chosen == {"det": ("openvino", 1, 2), "cls": ("onnxruntime", 1, 2)}
    # λ = cores / Σ d·u = 2 / (1/70 + 1/120): the capacity bound of this mix.
    assert result.lam == pytest.approx(2 / (1 / 70 + 1 / 120))


def test_demand_weights_the_shared_cores() -> None:
    result = plan_shared({"det": 3, "cls": 1}, MIX, cores=2, memory_budget=None)
    assert result.lam == pytest.approx(2 / (3 / 70 + 1 / 120))
    assert result.capacity["det"] == pytest.approx(3 * result.lam)


def test_memory_budget_trims_instances_where_demand_is_least() -> None:
    result = plan_shared({"det": 5, "cls": 1}, MIX, cores=2, memory_budget=30)
    counts = {m: p.groups[0].count for m, p in result.placement.items()}
    assert counts == {"det": 2, "cls": 1}
    # Too little memory for one instance each: nothing can be placed.
    assert plan_shared({"det": 1}, {"det": MIX["det"]}, cores=2, memory_budget=5).unplaced


def test_slowdown_and_a_missing_profile() -> None:
    result = plan_shared({"det": 1, "cls": 1, "new": 1}, {**MIX, "new": []}, cores=2, memory_budget=None,
                         slowdown={"det": 0.5})
    assert "new" in result.unplaced and "not profiled" in result.unplaced["new"]
    assert result.lam == pytest.approx(2 / (1 / 35 + 1 / 120))


def test_shared_lam_scores_the_current_placement_like_the_planner() -> None:
    best = plan_shared({"det": 1, "cls": 1}, MIX, cores=2, memory_budget=None)
    assert shared_lam(best.placement, {"det": 1, "cls": 1}, MIX, cores=2) == pytest.approx(best.lam)
    worse = {m: ModelPlacement(m, [InstanceGroup(ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 8), 2)])
             for m in ("det", "cls")}
    assert shared_lam(worse, {"det": 1, "cls": 1}, MIX, cores=2) == pytest.approx(2 / (1 / 40 + 1 / 120))
    unknown = {"det": ModelPlacement("det", [InstanceGroup(ExecutionConfig("tvm", "cpu", "fp32", 1, 8), 1)])}
    assert shared_lam(unknown, {"det": 1}, MIX, cores=2) == 0.0


def test_an_accelerator_is_its_own_processor() -> None:
    gpu = {"det": [cand("onnxruntime", 1, 40), cand("onnxruntime", 1, 400, processor="cuda:0")], "cls": MIX["cls"]}
    result = plan_shared({"det": 1, "cls": 1}, gpu, cores=2, memory_budget=None, capacities={"cuda:0": 1})
    assert result.placement["det"].groups[0].config.processor == "cuda:0"
    # cls alone on the two CPU cores: 2 x 120/s; det on the GPU: 400/s.
    assert result.lam == pytest.approx(240)


def test_instances_are_trimmed_where_it_costs_the_mix_least() -> None:
    # Room for three instances. Trimming by demand per instance would take the detector down to
    # one (53/2 < 57/2) and leave it the bottleneck at 40/53; one classifier costs far less.
    mix = {"det": [cand("onnxruntime", 1, 40, memory=30)], "cls": [cand("onnxruntime", 1, 120, memory=8)]}
    result = plan_shared({"det": 53, "cls": 57}, mix, cores=2, memory_budget=68)
    assert {m: p.groups[0].count for m, p in result.placement.items()} == {"det": 2, "cls": 1}
    assert result.lam == pytest.approx(2 / (53 / 40 + 57 / 120))


def _brute_force(demand: dict[str, float], mix: dict[str, list[Candidate]], cores: int, budget: int | None) -> float:
    """λ of the best (config, instance count) per model, by enumeration, under the same model."""
    import itertools
    import math

    models = sorted(mix)
    options = [[(c, n) for c in mix[m] for n in range(1, max(1, cores // c.threads) + 1)] for m in models]
    best = 0.0
    for combo in itertools.product(*options):
        if budget is not None and sum(c.memory_bytes * n for c, n in combo) > budget:
            continue
        lam, used = math.inf, 0.0
        for m, (c, n) in zip(models, combo):
            if demand[m] > 0:
                used += demand[m] * c.threads / c.rate
                lam = min(lam, n * c.rate / demand[m])
        best = max(best, min(lam, cores / used) if used else 0.0)
    return best


def test_matches_brute_force_on_random_mixes() -> None:
    import random

    rng = random.Random(7)
    for _ in range(300):
        cores = rng.choice([2, 3, 4])
        mix = {
            f"m{i}": [cand(rng.choice(["onnxruntime", "openvino"]) + str(j), rng.randint(1, cores),
                           rng.uniform(10, 200), memory=rng.randint(5, 40)) for j in range(rng.randint(1, 3))]
            for i in range(rng.randint(1, 3))
        }
        demand = {m: rng.choice([0.0, rng.uniform(1, 100)]) for m in mix}
        if not any(demand.values()):
            demand = dict.fromkeys(mix, 1.0)
        budget = rng.choice([None, rng.randint(20, 150)])
        expected = _brute_force(demand, mix, cores, budget)
        result = plan_shared(demand, mix, cores, budget)
        got = result.lam if not result.unplaced else 0.0
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9), (cores, budget, demand, mix)


def test_when_not_all_fit_the_most_models_are_placed_and_the_rest_take_turns() -> None:
    mix = {
        "det": [cand("onnxruntime", 1, 40, memory=30), cand("openvino", 1, 60, memory=45)],
        "cls": [cand("onnxruntime", 1, 120, memory=20)],
        "ocr": [cand("onnxruntime", 1, 50, memory=25)],
    }
    # 55 bytes: two in their smallest configs but not all three; the two with most demand stay.
    result = plan_shared({"det": 5, "cls": 1, "ocr": 3}, mix, cores=2, memory_budget=55)
    assert set(result.placement) == {"det", "ocr"} and result.lam > 0
    assert result.placement["det"].groups[0].config.backend == "onnxruntime"  # the 45-byte one cannot fit
    assert "taking turns" in result.unplaced["cls"]
    (turn,) = result.turns["cls"].groups
    assert (turn.count, turn.memory_bytes) == (1, 20)
    # Every placed group carries its profiled bytes, which the manager then accounts it at.
    assert all(g.memory_bytes == 30 for g in result.placement["det"].groups)
    # Without demand, shares are equal: the pair with the best λ (det is the slowest: it goes).
    idle = plan_shared({}, mix, cores=2, memory_budget=55)
    assert set(idle.placement) == {"cls", "ocr"} and set(idle.turns) == {"det"}
    # Not even one fits: nothing is placed, each says why.
    none = plan_shared({"det": 1}, mix, cores=2, memory_budget=10)
    assert none.placement == {} and none.turns == {} and "fits the memory budget" in none.unplaced["det"]


def test_the_placed_models_leave_the_turn_takers_room_within_the_hard_budget() -> None:
    mix = {"det": [cand("onnxruntime", 1, 40, memory=30)], "cls": [cand("onnxruntime", 1, 120, memory=50)],
           "ocr": [cand("onnxruntime", 1, 50, memory=25)]}
    demand = {"det": 5, "cls": 1, "ocr": 3}

    def used(result: object) -> int:
        return sum(g.memory_bytes * g.count for p in result.placement.values() for g in p.groups)  # type: ignore[attr-defined]

    # Planned within 100 (all three take 105): det and ocr, two instances where memory allows.
    loose = plan_shared(demand, mix, cores=2, memory_budget=100)
    assert set(loose.placement) == {"det", "ocr"} and used(loose) > 60
    # The manager enforces 110: the placed ones keep 50 free so that cls can come in by turns
    # without evicting them.
    roomy = plan_shared(demand, mix, cores=2, memory_budget=100, hard_budget=110)
    assert set(roomy.placement) == {"det", "ocr"} and used(roomy) + 50 <= 110
    assert "in the room they leave" in roomy.unplaced["cls"] and roomy.turns["cls"].turn
    # Two placed would leave cls no room within 80: one placed (det, the most demand) and a room
    # for the others beats two placed that the turn-takers would keep evicting.
    single = plan_shared(demand, mix, cores=2, memory_budget=55, hard_budget=80)
    assert set(single.placement) == {"det"} and set(single.turns) == {"cls", "ocr"}
    assert used(single) + 50 <= 80
    # Where no placement can leave that room, the rest take turns with the placed models.
    tight = plan_shared(demand, mix, cores=2, memory_budget=100, hard_budget=70)
    assert set(tight.placement) == {"det", "ocr"} and "taking turns with them" in tight.unplaced["cls"]


def test_a_large_mix_under_a_tight_budget_is_planned_quickly() -> None:
    import random
    import time

    rng = random.Random(1)
    mix = {f"m{i}": [Candidate(ExecutionConfig("onnxruntime", "cpu", f"v{j}", t, 1), rng.uniform(10, 200), t,
                               rng.randint(20, 60)) for j in range(3) for t in (1, 2)] for i in range(12)}
    started = time.monotonic()
    result = plan_shared(dict.fromkeys(mix, 1.0), mix, cores=4, memory_budget=120, hard_budget=130)
    assert time.monotonic() - started < 2.0  # every subset with every combination would take hours
    assert 0 < len(result.placement) < 12 and len(result.placement) + len(result.turns) == 12
    used = sum(g.memory_bytes * g.count for p in result.placement.values() for g in p.groups)
    assert used <= 120
