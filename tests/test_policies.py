"""The allocation policies, checked against an independent brute force on hand-made profiles."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from edgeplex.backends.base import ExecutionConfig
from edgeplex.config import ModelConfig
from edgeplex.engine.placement import InstanceGroup, ModelPlacement
from edgeplex.tuning import policies
from edgeplex.tuning.policies import (
    Candidate,
    balance_placement,
    candidates_for_models,
    candidates_from_profiles,
    plan,
    predicted_lam,
    should_switch,
    static_placement,
    update_slowdown,
)
from edgeplex.tuning.profile import Profile

MiB = 2**20


def cand(backend: str, threads: int, rate: float, mem: int = 0, proc: str = "cpu", variant: str = "fp32") -> Candidate:
    return Candidate(ExecutionConfig(backend, proc, variant, threads, 0), rate, threads, mem * MiB)


def brute_force(demand, candidates, cores, memory_budget, slowdown=None, capacities=None, models=None):
    """max over every instance-count vector within the budgets of min over models with demand of
    cap/d; every model (of `models`, default all) has >= 1 instance. None if nothing fits."""
    slowdown = slowdown or {}
    everyone = set(demand) | set(candidates)
    names = sorted(models if models is not None else everyone)
    d = {m: demand.get(m, 0.0) for m in everyone}  # shares are over every model, placed or not
    if not any(d.values()):
        d = dict.fromkeys(everyone, 1.0)
    limit = {"cpu": cores, **{k: v for k, v in (capacities or {}).items() if k != "cpu"}}

    def fits(tokens, memory):
        return all(t <= limit.get(p, 1) for p, t in tokens.items()) and (memory_budget is None or memory <= memory_budget)

    def vectors(m):  # every instance-count vector of m alone within the budgets, as its totals
        cs = candidates[m]
        for counts in itertools.product(*(range(limit.get(c.config.processor, 1) // c.threads + 1) for c in cs)):
            tokens: dict[str, int] = {}
            for c, n in zip(cs, counts):
                tokens[c.config.processor] = tokens.get(c.config.processor, 0) + n * c.threads
            memory = sum(n * c.memory_bytes for c, n in zip(cs, counts))
            if any(counts) and fits(tokens, memory):
                s = [slowdown.get(f"{m}@{c.config.processor}", slowdown.get(m, 1.0)) for c in cs]
                yield tokens, memory, sum(n * c.rate * f for c, n, f in zip(cs, counts, s))

    options = [list(vectors(m)) for m in names]
    best = None

    def walk(i, tokens, memory, lam):  # exhaustive, cutting only what already exceeds a budget
        nonlocal best
        if i == len(names):
            lam = 0.0 if lam == math.inf else lam  # no placed model has demand
            best = lam if best is None else max(best, lam)
            return
        for t, mem, cap in options[i]:
            total = {p: tokens.get(p, 0) + t.get(p, 0) for p in set(tokens) | set(t)}
            if fits(total, memory + mem):
                walk(i + 1, total, memory + mem, min(lam, cap / d[names[i]]) if d[names[i]] > 0 else lam)

    walk(0, {}, 0, math.inf)
    return best


def check_feasible(result, candidates, cores, memory_budget, capacities=None):
    limit = {"cpu": cores, **(capacities or {})}
    tokens: dict[str, int] = {}
    memory = 0
    for m, mp in result.placement.items():
        assert sum(g.count for g in mp.groups) >= 1
        by_config = {c.config: c for c in candidates[m]}
        for g in mp.groups:
            c = by_config[g.config]
            tokens[c.config.processor] = tokens.get(c.config.processor, 0) + g.count * c.threads
            memory += g.count * c.memory_bytes
    assert all(t <= limit.get(p, 1) for p, t in tokens.items()), tokens
    assert memory_budget is None or memory <= memory_budget


def assert_optimal(demand, candidates, cores, memory_budget=None, slowdown=None, capacities=None):
    result = plan(demand, candidates, cores, memory_budget, slowdown, capacities=capacities)
    check_feasible(result, candidates, cores, memory_budget, capacities)
    expected = brute_force(demand, candidates, cores, memory_budget, slowdown, capacities, models=result.placement)
    assert result.lam == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert predicted_lam(result.placement, demand, candidates, slowdown, models=result.placement) == pytest.approx(
        result.lam, rel=1e-9
    )
    return result


# The DESIGN.md table (2-core box): OpenVINO wins on the detector and recogniser, ORT 2 threads
# does not scale for yolo, OpenVINO 2 threads does.
YOLO = [cand("onnxruntime", 1, 85), cand("onnxruntime", 2, 45), cand("openvino", 1, 146), cand("openvino", 2, 208)]
OCRDET = [cand("onnxruntime", 1, 83), cand("onnxruntime", 2, 117), cand("openvino", 1, 121), cand("openvino", 2, 130)]
MAGIKA = [cand("onnxruntime", 1, 241), cand("onnxruntime", 2, 138), cand("openvino", 1, 410), cand("openvino", 2, 358)]


def test_openvino_faster_for_one_model_not_the_other() -> None:
    cands = {"a": [cand("onnxruntime", 1, 200), cand("openvino", 1, 120)], "b": [cand("onnxruntime", 1, 80), cand("openvino", 1, 150)]}
    result = assert_optimal({"a": 1.0, "b": 1.0}, cands, cores=2)
    assert [g.config.backend for g in result.placement["a"].groups] == ["onnxruntime"]
    assert [g.config.backend for g in result.placement["b"].groups] == ["openvino"]
    assert result.lam == pytest.approx(150)
    assert result.placement["b"].reason.startswith("bottleneck: 1× openvino/cpu t1 (150/s each)")


def test_design_table_mix_on_two_and_four_cores() -> None:
    cands = {"yolo": YOLO, "ocrdet": OCRDET, "magika": MAGIKA}
    assert_optimal({"yolo": 2.0, "ocrdet": 1.0, "magika": 1.0}, cands, cores=4)
    assert_optimal({"yolo": 1.0, "ocrdet": 0.0, "magika": 0.0}, {"yolo": YOLO, "ocrdet": OCRDET}, cores=2)


def test_two_thread_config_chosen_only_when_it_scales() -> None:
    scales = {"m": [cand("ort", 1, 100), cand("ort", 2, 230)]}  # super-linear: one 2-thread instance
    result = assert_optimal({"m": 1.0}, scales, cores=2)
    assert [(g.config.threads, g.count) for g in result.placement["m"].groups] == [(2, 1)]
    flat = {"m": [cand("ort", 1, 100), cand("ort", 2, 120)]}  # does not scale: two 1-thread instances
    result = assert_optimal({"m": 1.0}, flat, cores=2)
    assert [(g.config.threads, g.count) for g in result.placement["m"].groups] == [(1, 2)]
    mixed = assert_optimal({"m": 1.0}, {"m": [cand("ort", 1, 100), cand("ort", 2, 230)]}, cores=3)
    assert sorted((g.config.threads, g.count) for g in mixed.placement["m"].groups) == [(1, 1), (2, 1)]


def test_memory_budget_forces_the_smaller_config() -> None:
    cands = {
        "a": [cand("ov", 1, 300, mem=400), cand("ort", 1, 200, mem=100)],
        "b": [cand("ov", 1, 300, mem=400), cand("ort", 1, 150, mem=100)],
    }
    result = assert_optimal({"a": 1.0, "b": 1.0}, cands, cores=2, memory_budget=500 * MiB)
    assert [g.config.backend for g in result.placement["a"].groups] == ["ort"]
    assert [g.config.backend for g in result.placement["b"].groups] == ["ov"]


def test_zero_demand_model_still_gets_an_instance() -> None:
    cands = {"busy": [cand("ort", 1, 100)], "idle": [cand("ort", 1, 50), cand("ort", 2, 60)]}
    result = assert_optimal({"busy": 10.0}, cands, cores=4)
    assert sum(g.count for g in result.placement["idle"].groups) == 1
    assert result.placement["idle"].reason.startswith("no demand")
    assert result.placement["busy"].groups[0].count == 3 and result.lam == pytest.approx(30.0)


def test_no_demand_at_all_means_equal_shares() -> None:
    cands = {"a": [cand("ort", 1, 100)], "b": [cand("ort", 1, 50)]}
    result = assert_optimal({}, cands, cores=3)
    assert result.capacity == {"a": 100.0, "b": 100.0} and result.lam == 100.0


def test_model_that_cannot_fit_is_reported() -> None:
    cands = {"small": [cand("ort", 1, 100, mem=100)], "huge": [cand("ort", 1, 100, mem=900)], "none": []}
    result = assert_optimal({"small": 1.0, "huge": 1.0, "none": 1.0}, cands, cores=2, memory_budget=512 * MiB)
    assert set(result.placement) == {"small"}
    assert "900 MiB" in result.unplaced["huge"] and "no candidate" in result.unplaced["none"]
    assert result.lam == pytest.approx(200.0)
    # Each fits alone, not both: the one with more demand is kept.
    cands = {"a": [cand("ort", 1, 100, mem=300)], "b": [cand("ort", 1, 100, mem=300)]}
    result = assert_optimal({"a": 1.0, "b": 2.0}, cands, cores=2, memory_budget=512 * MiB)
    assert set(result.placement) == {"b"} and "beside" in result.unplaced["a"]


def test_slowdown_changes_the_decision() -> None:
    cands = {"a": [cand("ort", 1, 100)], "b": [cand("ort", 1, 110)]}
    solo = assert_optimal({"a": 1.0, "b": 2.0}, cands, cores=3)  # a 1 (100), b 2 (220/2)
    assert (solo.placement["a"].groups[0].count, solo.lam) == (1, pytest.approx(100.0))
    slowed = assert_optimal({"a": 1.0, "b": 2.0}, cands, cores=3, slowdown={"a": 0.4})  # a 2 (80), b 1
    assert (slowed.placement["a"].groups[0].count, slowed.lam) == (2, pytest.approx(55.0))
    assert "slowdown 0.40" in slowed.placement["a"].reason
    # a per-processor factor ("model@processor") wins over the model-wide one
    gpu = {"a": [cand("ort", 1, 100), cand("ort", 1, 150, proc="cuda:0")], "b": [cand("ort", 1, 100)]}
    first = assert_optimal({"a": 1.0, "b": 1.0}, gpu, cores=2)  # a on the GPU, b 2 instances on the CPU
    assert [g.config.processor for g in first.placement["a"].groups] == ["cuda:0"]
    slow_gpu = {"a@cuda:0": 0.3, "a": 1.0}
    moved = assert_optimal({"a": 1.0, "b": 1.0}, gpu, cores=2, slowdown=slow_gpu)  # a takes a core
    assert [(g.config.processor, g.count) for g in moved.placement["a"].groups] == [("cpu", 1), ("cuda:0", 1)]
    assert moved.lam == pytest.approx(100.0) and first.lam == pytest.approx(150.0)


def test_gpu_like_second_processor() -> None:
    cands = {
        "det": [cand("ort", 1, 50), cand("ort", 1, 400, proc="cuda:0")],
        "rec": [cand("ort", 1, 100), cand("ort", 1, 300, proc="cuda:0")],
    }
    result = assert_optimal({"det": 1.0, "rec": 1.0}, cands, cores=2)
    assert result.placement["det"].groups[0].config.processor == "cuda:0"
    assert all(g.config.processor == "cpu" for g in result.placement["rec"].groups)
    assert_optimal({"det": 1.0, "rec": 1.0}, cands, cores=2, capacities={"cuda:0": 2})


def test_random_instances_match_brute_force() -> None:
    rng = random.Random(20240611)
    for _ in range(300):
        cores = rng.randint(1, 5)
        budget = rng.choice([None, rng.randint(1, 6) * 100 * MiB])
        caps = rng.choice([None, {"cuda:0": rng.randint(1, 2)}])
        cands, demand = {}, {}
        for m in range(rng.randint(1, 3)):
            name = f"m{m}"
            cands[name] = [
                cand(f"b{i}", rng.randint(1, 3), rng.uniform(10, 300), rng.randint(0, 4) * 50, rng.choice(["cpu", "cpu", "cuda:0"]))
                for i in range(rng.randint(1, 4))
            ]
            demand[name] = rng.choice([0.0, rng.uniform(0.1, 5)])
        slowdown = {m: rng.uniform(0.3, 1.0) for m in cands if rng.random() < 0.5}
        result = plan(demand, cands, cores, budget, slowdown, capacities=caps)
        check_feasible(result, cands, cores, budget, caps)
        # as many models as can fit together are placed, and λ over them is the optimum
        most = max(
            (k for k in range(len(cands) + 1) for s in itertools.combinations(sorted(cands), k)
             if brute_force(demand, cands, cores, budget, slowdown, caps, models=s) is not None),
            default=0,
        )
        assert len(result.placement) == most and len(result.unplaced) == len(cands) - most
        if most:
            expected = brute_force(demand, cands, cores, budget, slowdown, caps, models=result.placement)
            assert result.lam == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_greedy_fallback_when_the_space_is_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    cands = {"yolo": YOLO, "ocrdet": OCRDET, "magika": MAGIKA}
    demand = {"yolo": 2.0, "ocrdet": 1.0, "magika": 1.0}
    monkeypatch.setattr(policies, "BUNDLE_LIMIT", 0)
    greedy = plan(demand, cands, 4, None)
    assert greedy.method == "greedy"
    check_feasible(greedy, cands, 4, None)
    assert 0 < greedy.lam <= brute_force(demand, cands, 4, None) + 1e-9
    monkeypatch.setattr(policies, "NODE_LIMIT", 0)  # the seed search gives up too: first fit
    first_fit = plan(demand, cands, 4, None)
    assert set(first_fit.placement) == set(cands) and first_fit.method == "greedy"


def test_realistic_size_is_solved_exactly() -> None:
    rng = random.Random(7)
    cands = {
        f"m{m}": [cand(f"b{i}", t, rng.uniform(20, 400) * (1 + 0.5 * (t - 1)), rng.randint(20, 300), variant=f"v{i}")
                  for i in range(4) for t in (1, 2, 4)][:10]
        for m in range(8)
    }
    demand = {m: rng.uniform(0.5, 3) for m in cands}
    result = plan(demand, cands, 16, 1500 * MiB)
    assert result.method == "exact" and len(result.placement) == 8
    check_feasible(result, cands, 16, 1500 * MiB)


def test_plan_keeps_an_equally_good_current_placement() -> None:
    cands = {"m": [cand("a", 1, 100), cand("b", 1, 100)]}
    current = {"m": ModelPlacement("m", [InstanceGroup(cands["m"][1].config, 2)])}
    result = plan({"m": 1.0}, cands, 2, None, current=current)
    assert result.method == "current" and result.placement["m"].same_configs(current["m"])


def test_hysteresis_and_predicted_lam() -> None:
    assert not should_switch(100.0, 105.0)
    assert should_switch(100.0, 115.0)
    assert not should_switch(100.0, 90.0)
    assert should_switch(0.0, 1.0) and not should_switch(0.0, 0.0)
    cands = {"a": [cand("ort", 1, 100), cand("ov", 1, 150)], "b": [cand("ort", 1, 100)]}
    current = {
        "a": ModelPlacement("a", [InstanceGroup(cands["a"][0].config, 1)]),
        "b": ModelPlacement("b", [InstanceGroup(cands["b"][0].config, 1)]),
    }
    assert predicted_lam(current, {"a": 1.0, "b": 1.0}, cands) == pytest.approx(100.0)
    assert predicted_lam(current, {"a": 2.0, "b": 1.0}, cands) == pytest.approx(50.0)
    assert predicted_lam(current, {"a": 1.0, "b": 1.0}, cands, {"b": 0.5}) == pytest.approx(50.0)
    assert predicted_lam({"a": current["a"]}, {"a": 1.0, "b": 1.0}, cands) == 0.0  # b not placed
    new = plan({"a": 2.0, "b": 1.0}, cands, 2, None, current=current)
    assert new.lam == pytest.approx(75.0) and should_switch(50.0, new.lam)


def test_update_slowdown_smooths_and_clamps() -> None:
    assert update_slowdown(1.0, 20.0, 10.0) == pytest.approx(0.85)  # 0.7 * 1 + 0.3 * 0.5
    s = 1.0
    for _ in range(50):
        s = update_slowdown(s, 20.0, 10.0)
    assert s == pytest.approx(0.5)
    assert update_slowdown(1.0, 5.0, 10.0) == 1.0  # faster than solo is noise: capped at 1
    assert update_slowdown(0.06, 1000.0, 1.0, alpha=1.0) == 0.05
    assert update_slowdown(0.7, 0.0, 10.0) == 0.7  # no measurement, no change
    with pytest.raises(ValueError):
        update_slowdown(1.0, 1.0, 1.0, alpha=0.0)


def test_candidates_from_profiles() -> None:
    fast, slow = ExecutionConfig("openvino", "cpu", "fp32", 0, 8), ExecutionConfig("onnxruntime", "cpu", "int8", 1, 8)

    def prof(config: ExecutionConfig, batch: int, p99: float, tput: float, loss: float = 0.0) -> Profile:
        return Profile("m", "h", config, batch, p99 / 2, p99, tput, 10 * MiB, "1", "box", loss)

    profiles = [prof(fast, 1, 5, 100), prof(fast, 4, 20, 300), prof(fast, 8, 60, 400), prof(slow, 1, 8, 90, 0.02)]
    cands = candidates_from_profiles(profiles, cores=4, slo_ms=30)
    assert [(c.config, c.batch, c.rate, c.threads) for c in cands] == [(fast, 4, 300, 4), (slow, 1, 90, 1)]
    assert [c.config for c in candidates_from_profiles(profiles, 4, max_fidelity_loss=0.01)] == [fast]
    assert candidates_from_profiles(profiles, 4, slo_ms=1) == []
    with pytest.raises(ValueError):
        candidates_from_profiles([*profiles, Profile("other", "h", fast, 1, 1, 1, 1, 1, "1", "box")], 4)


def test_candidates_for_models_reads_slo_and_fidelity_bound() -> None:
    fp32, int8 = ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 0), ExecutionConfig("onnxruntime", "cpu", "int8", 1, 0)
    profiles = [
        Profile("a", "h", fp32, 1, 4, 8, 100, MiB, "1", "box"),
        Profile("a", "h", int8, 1, 2, 3, 200, MiB, "1", "box", 0.05),
        Profile("b", "h", fp32, 1, 40, 80, 10, MiB, "1", "box"),
    ]
    models = {
        "a": ModelConfig(name="a", parameters={"max_fidelity_loss": "0.01"}),
        "b": ModelConfig(name="b", slo_ms=50),
        "c": ModelConfig(name="c"),
    }
    cands = candidates_for_models(profiles, models, cores=2)
    assert [c.config for c in cands["a"]] == [fp32] and cands["b"] == [] and cands["c"] == []
    assert "no candidate" in plan({}, cands, 2, None).unplaced["b"]


def test_static_and_balance_baselines() -> None:
    models = {"a": ModelConfig(name="a", max_batch_size=4), "b": ModelConfig(name="b")}
    static = static_placement(models)
    assert set(static) == {"a", "b"}
    assert static["a"].groups == [InstanceGroup(ExecutionConfig("onnxruntime", "cpu", "fp32", 0, 4), 1)]
    balance = balance_placement(models, ["onnxruntime", "openvino", "onnxruntime/cuda:0"])
    groups = balance["b"].groups
    assert [(g.config.backend, g.config.processor, g.config.threads, g.count) for g in groups] == [
        ("onnxruntime", "cpu", 1, 1),
        ("openvino", "cpu", 1, 1),
        ("onnxruntime", "cuda:0", 1, 1),
    ]
    with pytest.raises(ValueError):
        balance_placement(models, [])
