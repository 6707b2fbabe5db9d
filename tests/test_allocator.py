"""The allocator on tiny models: baselines, pareto planning from stored profiles, re-planning
when the demand shifts, and hysteresis."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from models import slow_model, write_config

from edgeplex.backends import ExecutionConfig, available_backends
from edgeplex.engine import Engine, InferRequest
from edgeplex.tuning.allocator import Allocator
from edgeplex.tuning.profile import Profile
from edgeplex.tuning.profiler import current_backend_versions
from edgeplex.tuning.store import ProfileStore, file_hash, machine_id


def _repo(root: Path) -> Path:
    for name, layers in (("a", 2), ("b", 3)):  # different files, so different profiles
        slow_model(root / name / "1" / "model.onnx", size=64, layers=layers)
        write_config(root / name, max_batch_size=8)
    return root


def _profile(model: str, path: Path, backend: str, threads: int, rate: float) -> Profile:
    config = ExecutionConfig(backend, "cpu", "fp32", threads, 8)
    return Profile(model, file_hash(path), config, 1, 1000 / rate, 1200 / rate, rate, 10_000_000,
                   current_backend_versions()[backend], machine_id())


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = Engine(_repo(tmp_path / "repo"), cores=2)
    eng.load_all()
    yield eng
    eng.close()


def _groups(engine: Engine, model: str) -> list[tuple[str, int, int]]:
    placement = engine.manager.state(model).placement
    assert placement is not None
    return sorted((g.config.backend, g.config.threads, g.count) for g in placement.groups)


def test_static_runs_every_model_on_onnxruntime_defaults(engine: Engine) -> None:
    Allocator(engine, "static").start()
    for model in ("a", "b"):
        assert _groups(engine, model) == [("onnxruntime", 0, 1)]
        assert engine.manager.runner(model).instances[0].config.threads == 0


def test_balance_puts_an_instance_on_every_backend(engine: Engine) -> None:
    Allocator(engine, "balance").start()
    for model in ("a", "b"):
        assert _groups(engine, model) == sorted((b, 1, 1) for b in available_backends())
        y = engine.infer(InferRequest(model, {"x": np.ones((1, 64), np.float32)})).outputs["y"]
        assert y.shape == (1, 64)


def test_pareto_plans_from_profiles_and_follows_a_demand_shift(tmp_path: Path) -> None:
    # Room for three 10 MB instances: each model keeps one, the third follows the demand.
    # The planner keeps 20 % of the budget for warm swaps: 3 x 10 MB of instances to plan with.
    engine = Engine(_repo(tmp_path / "repo"), cores=2, memory_budget=int(3 * 10_000_000 / 0.8) + 1)
    engine.load_all()
    store = ProfileStore(tmp_path / "profiles.sqlite")
    repo = engine.manager.repository.root
    # Made-up but consistent profiles. Two threads never cost less core-time per request here
    # (a: 190/s on 2 cores vs 100/s on 1; b: 105/s vs 100/s), so t1 wins for both.
    for model, rates in (("a", {1: 100.0, 2: 190.0}), ("b", {1: 100.0, 2: 105.0})):
        for threads, rate in rates.items():
            store.put(_profile(model, repo / model / "1" / "model.onnx", "onnxruntime", threads, rate))
    allocator = Allocator(engine, "pareto", store, profile_missing=False)
    first = allocator.step(force=True)
    assert first is not None and set(first.placement) == {"a", "b"}
    # The least core-time per request: t1 for both; no traffic yet, so equal shares.
    assert {_groups(engine, m)[0][:2] for m in ("a", "b")} == {("onnxruntime", 1)}
    assert "pareto" in engine.manager.state("a").placement.reason

    def drive(model: str) -> None:
        x = np.ones((1, 64), np.float32)
        for _ in range(3):
            for _ in range(40):
                engine.infer(InferRequest(model, {"x": x}))
            time.sleep(0.02)
            allocator.step()

    drive("a")
    assert _groups(engine, "a") == [("onnxruntime", 1, 2)] and _groups(engine, "b") == [("onnxruntime", 1, 1)]
    decisions = len(engine.manager.state("a").decisions)
    drive("a")  # hysteresis: the same demand again changes nothing
    assert len(engine.manager.state("a").decisions) == decisions
    for _ in range(3):  # the demand moves to b (the smoothed rate of a decays)
        drive("b")
    assert _groups(engine, "b") == [("onnxruntime", 1, 2)] and _groups(engine, "a") == [("onnxruntime", 1, 1)]
    engine.close()


def test_pareto_profiles_unprofiled_models_in_the_background_within_the_token_pool(engine: Engine, tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "profiles.sqlite")
    allocator = Allocator(engine, "pareto", store, profile_seconds=0.05)
    allocator.profile_unprofiled()
    for model in ("a", "b"):
        assert allocator.candidates({model: engine.manager.config(model)})[model]
    assert engine.pools["cpu"].peak <= 2 and engine.pools["cpu"].in_use == 0


@pytest.mark.parametrize("max_loss", [0.01, 0.0])
def test_pareto_picks_a_smaller_variant_when_memory_is_tight(tmp_path: Path, max_loss: float) -> None:
    from dataclasses import replace

    from models import conv_model

    from edgeplex.engine.runner import ModelRunner
    from edgeplex.repository import Repository
    from edgeplex.tuning.variants import optimize

    root = tmp_path / "repo"
    conv_model(root / "conv" / "1" / "model.onnx")
    write_config(root / "conv", max_batch_size=8, max_fidelity_loss=max_loss)
    source = Repository(root).source("conv")
    fp16 = optimize(source.versions[1], Repository(root).load_config(source), "fp16", samples=4)
    assert 0 < fp16.loss < 0.001
    # The plan keeps 20 % of the budget for swaps: 40 MB to plan with. One fp32 instance (made-up
    # 45 MB) does not fit; two fp16 ones (20 MB each) do.
    engine = Engine(root, cores=2, memory_budget=int(40_000_000 / 0.8))
    try:
        assert engine.load_all() == {}
        store = ProfileStore(tmp_path / "profiles.sqlite")
        original = root / "conv" / "1" / "model.onnx"
        fp32 = replace(_profile("conv", original, "onnxruntime", 1, 100.0), memory_bytes=45_000_000)
        half = replace(_profile("conv", fp16.path, "onnxruntime", 1, 90.0), memory_bytes=20_000_000,
                       config=ExecutionConfig("onnxruntime", "cpu", "fp16", 1, 8))
        store.put(fp32)
        store.put(half)
        result = Allocator(engine, "pareto", store, profile_missing=False).step(force=True)
        assert result is not None
        if max_loss == 0.0:  # the variant loses more than the model allows: nothing fits
            assert result.placement == {} and "memory budget" in result.unplaced["conv"]
            return
        (group,) = result.placement["conv"].groups
        assert (group.config.variant, group.count) == ("fp16", 2)
        runner: ModelRunner = engine.manager.runner("conv")
        assert {i.config.variant for i in runner.instances} == {"fp16"}
        y = engine.infer(InferRequest("conv", {"x": np.ones((1, 3, 16, 16), np.float32)})).outputs
        assert next(iter(y.values())).shape == (1, 10)
    finally:
        engine.close()


def test_pareto_brings_an_evicted_model_back_with_smaller_variants(tmp_path: Path) -> None:
    from dataclasses import replace

    from edgeplex.engine import EVICTED_REASON
    from edgeplex.repository import Repository
    from edgeplex.tuning.variants import optimize

    root = tmp_path / "repo"
    for name in ("a", "b"):  # 25 MB of fp32 weights each
        slow_model(root / name / "1" / "model.onnx", size=512, layers=24)
        write_config(root / name, max_batch_size=8, instance_count=1)
    repository = Repository(root)
    for name in ("a", "b"):
        source = repository.source(name)
        assert optimize(source.versions[1], repository.load_config(source), "int8-dynamic", samples=2).loss < 0.01
    engine = Engine(root, cores=1)
    try:
        assert engine.load_all() == {}
        # The profiles below say (made-up figures) 100.7 MB per fp32 instance, 25.2 MB per int8
        # one: not two fp32 models within 190 MB, but one and an int8 one. Placed models are
        # accounted at their profiled bytes, so the figures hold whatever the loads measure.
        engine.manager.memory_budget = 190_000_000
        engine.manager.unload("a", EVICTED_REASON, evicted=True)
        states = {s.name: s for s in engine.models()}
        assert states["a"].evicted and states["b"].state == "READY"
        store = ProfileStore(tmp_path / "profiles.sqlite")
        for name in ("a", "b"):
            folder = root / name / "1"
            fp32 = _profile(name, folder / "model.onnx", "onnxruntime", 1, 100.0)
            store.put(replace(fp32, memory_bytes=100_700_000))
            int8 = _profile(name, folder / "variants" / "int8-dynamic.onnx", "onnxruntime", 1, 60.0)
            store.put(replace(int8, memory_bytes=25_200_000, config=replace(int8.config, variant="int8-dynamic")))
        result = Allocator(engine, "pareto", store, profile_missing=False).step()
        assert result is not None and set(result.placement) == {"a", "b"}
        for name in ("a", "b"):
            state = engine.manager.state(name)
            assert state.state == "READY" and not state.evicted
            assert state.stats["1"].reloads == 0  # brought back by the allocator, not by a request
        # Two fp32 models cannot fit: one of them (at least) now runs int8.
        variants = {m: {i.config.variant for i in engine.manager.runner(m).instances} for m in ("a", "b")}
        assert {"int8-dynamic"} in variants.values(), variants
        assert engine.manager.memory_used() <= 190_000_000
        y = engine.infer(InferRequest("a", {"x": np.ones((1, 512), np.float32)})).outputs["y"]
        assert y.shape == (1, 512)
    finally:
        engine.close()


def test_variants_beyond_the_fidelity_bound_are_not_profiled(tmp_path: Path) -> None:
    from edgeplex.repository import Repository
    from edgeplex.tuning.store import file_hash
    from edgeplex.tuning.variants import optimize

    root = tmp_path / "repo"
    slow_model(root / "a" / "1" / "model.onnx", size=64, layers=2)
    write_config(root / "a", max_batch_size=8, max_fidelity_loss=0.0)  # nothing but the original
    repository = Repository(root)
    source = repository.source("a")
    variant = optimize(source.versions[1], repository.load_config(source), "int8-dynamic", samples=2)
    assert variant.loss > 0.0
    engine = Engine(root, cores=2)
    try:
        assert engine.load_all() == {}
        store = ProfileStore(tmp_path / "profiles.sqlite")
        Allocator(engine, "pareto", store, profile_seconds=0.05).profile_unprofiled()
        assert store.for_model(file_hash(root / "a" / "1" / "model.onnx"))
        assert not store.for_model(file_hash(variant.path))  # it could never be chosen
    finally:
        engine.close()


def test_a_refuted_profile_is_measured_again_in_the_background(engine: Engine, tmp_path: Path) -> None:
    """A figure observation refuted (stored at 1 request/s: measured on a busy machine) is
    discarded and measured again by the next background pass; trusted figures stay as they were."""
    store = ProfileStore(tmp_path / "profiles.sqlite")
    allocator = Allocator(engine, "pareto", store, profile_seconds=0.05)
    allocator.profile_unprofiled()
    model_file = engine.model_files("a")["fp32"][0]
    (t1,) = [p for p in store.for_model(file_hash(model_file)) if p.config.threads == 1 and p.batch == 1
              and p.config.backend == "onnxruntime"]
    store.discard(t1)
    store.put(replace(t1, throughput=1.0, p50_ms=1000.0, p99_ms=1200.0))
    untouched = {p.key: p.measured_at for p in store.for_model(file_hash(model_file))
                 if p.config != t1.config and p.confident}  # (those measured disturbed are measured again too)
    allocator._doubt([("a", t1.config)])
    allocator.profile_unprofiled()
    stored = {p.key: p for p in store.for_model(file_hash(model_file))}
    (again,) = [p for p in stored.values() if p.config == t1.config and p.batch == 1]
    assert again.throughput > 10.0
    assert all(stored[key].measured_at == at for key, at in untouched.items() if key in stored)


def test_pareto_sizes_instances_from_observation_before_any_profile(engine: Engine, tmp_path: Path) -> None:
    # A cold start: the store is empty and nothing is profiled. What the running config (the
    # model's own: 1 instance, 1 thread) is observed to take is enough to give it the instances
    # the cores can run; the other model, never observed, keeps its config.
    store = ProfileStore(tmp_path / "empty.sqlite")
    allocator = Allocator(engine, "pareto", store, profile_missing=False, explore=False)
    assert allocator.step(force=True) is None  # nothing known of anything yet
    assert _groups(engine, "a") == [("onnxruntime", 1, 1)]
    x = np.ones((1, 64), np.float32)
    allocator.monitor.sample()
    for _ in range(30):
        engine.infer(InferRequest("a", {"x": x}))
    time.sleep(0.02)
    result = allocator.step()
    assert result is not None and set(result.placement) == {"a"}
    assert _groups(engine, "a") == [("onnxruntime", 1, 2)]
    assert _groups(engine, "b") == [("onnxruntime", 1, 1)]
    why = {e["model"]: e["explanation"] for e in engine.placement_report()}
    assert why["a"]["source"] == "observed" and "2x onnxruntime t1" in why["a"]["summary"]
    assert "not profiled yet" in why["b"]["summary"]
