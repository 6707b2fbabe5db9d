"""An explicit model config binds the allocator: the fields its file sets survive `pareto`, the
rest is chosen; the engine reports the placement that runs, and every decision explains itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from models import slow_model, write_config

from edgeplex.backends import ExecutionConfig, available_backends
from edgeplex.config import ModelConfig
from edgeplex.engine import Engine, InferRequest
from edgeplex.engine.binding import binding_of, stated_fields
from edgeplex.tuning.allocator import Allocator
from edgeplex.tuning.profile import Profile
from edgeplex.tuning.profiler import current_backend_versions
from edgeplex.tuning.store import ProfileStore, file_hash, machine_id

needs_openvino = pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO not installed")


def _profile(model: str, path: Path, backend: str, threads: int, rate: float, p99_ms: float | None = None) -> Profile:
    config = ExecutionConfig(backend, "cpu", "fp32", threads, 0)
    return Profile(model, file_hash(path), config, 1, 1000 / rate, p99_ms or 1200 / rate, rate, 10_000_000,
                   current_backend_versions()[backend], machine_id())


def _groups(engine: Engine, model: str) -> list[tuple[str, int, int]]:
    placement = engine.model(model).placement
    assert placement is not None
    return sorted((g.config.backend, g.config.threads, g.count) for g in placement.groups)


def test_binding_holds_exactly_the_fields_the_file_states(tmp_path: Path) -> None:
    config = ModelConfig(name="m", backend="openvino", instance_count=3, threads=2,
                         parameters={"variant": "int8"})
    binding = binding_of(config, {"name", "backend", "instance_count"} | {"parameters"})
    assert binding.fields == {"backend", "instance_count", "variant"}
    assert binding.count == 3
    assert binding.allows(ExecutionConfig("openvino", "cpu", "int8", 4, 0))  # threads are free
    assert not binding.allows(ExecutionConfig("onnxruntime", "cpu", "int8", 2, 0))
    assert not binding.allows(ExecutionConfig("openvino", "cpu", "fp32", 2, 0))
    assert binding.describe() == ["backend=openvino", "variant=int8", "instance_count=3"]
    free = binding_of(config, {"name"})
    assert free.fields == {"variant"} and free.count is None  # parameters.variant binds on its own
    # A file that states nothing of how to run: nothing is bound.
    write_config(tmp_path / "m", name="m", max_batch_size=4)
    assert stated_fields(tmp_path / "m" / "config.yaml", "m") == {"name", "max_batch_size"}
    assert stated_fields(None, "m") == frozenset()


@needs_openvino
def test_explicit_backend_and_count_survive_pareto_and_are_what_config_reports(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in ("bound", "free"):
        slow_model(repo / name / "1" / "model.onnx", size=64, layers=2 if name == "bound" else 3)
    write_config(repo / "bound", backend="openvino", instance_count=3)
    write_config(repo / "free", max_batch_size=0)
    engine = Engine(repo, cores=2)
    try:
        engine.load_all()
        store = ProfileStore(tmp_path / "profiles.sqlite")
        for name in ("bound", "free"):
            model_file = repo / name / "1" / "model.onnx"
            # ONNX Runtime is profiled far faster for both: only the unbound model may take it.
            store.put(_profile(name, model_file, "onnxruntime", 1, 400.0))
            store.put(_profile(name, model_file, "openvino", 1, 100.0))
        allocator = Allocator(engine, "pareto", store, profile_missing=False, explore=False)
        result = allocator.step(force=True)
        assert result is not None
        assert _groups(engine, "bound") == [("openvino", 1, 3)]  # the operator's backend and count
        assert _groups(engine, "free") == [("onnxruntime", 1, 2)]  # the allocator's choice
        x = np.ones((1, 64), np.float32)
        assert engine.infer(InferRequest("bound", {"x": x})).outputs["y"].shape == (1, 64)
        # The config reported is the one that runs; the operator's is kept beside it.
        running = engine.config("free")
        assert (running.backend, running.instance_count, running.threads) == ("onnxruntime", 2, 1)
        assert engine.operator_config("free").instance_count == 1
        assert engine.metadata("free")["platform"] == "onnxruntime_onnx"
        assert engine.metadata("bound")["platform"] == "openvino_onnx"
        assert engine.config("bound").instance_count == 3
        # Each decision explains itself: the bound fields, the figures, the loser and why.
        report = {entry["model"]: entry["explanation"] for entry in engine.placement_report()}
        bound = report["bound"]
        assert bound["bound"] == ["backend=openvino", "instance_count=3"]
        assert "3x openvino t1" in bound["summary"]
        assert any(r["config"] == "onnxruntime t1" and "excluded by the model's config" in r["reason"]
                   for r in bound["rejected"])
        free = report["free"]
        assert free["bound"] == [] and free["source"] == "profiled"
        assert any(r["config"] == "openvino t1" and "core-ms per request vs" in r["reason"] for r in free["rejected"])
        assert free["would_change"]
    finally:
        engine.close()


def test_a_model_whose_every_config_misses_its_slo_says_so(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    slow_model(repo / "tight" / "1" / "model.onnx", size=64, layers=2)
    write_config(repo / "tight", slo_ms=20)
    engine = Engine(repo, cores=2)
    try:
        engine.load_all()
        store = ProfileStore(tmp_path / "profiles.sqlite")
        store.put(_profile("tight", repo / "tight" / "1" / "model.onnx", "onnxruntime", 1, 40.0, p99_ms=31.0))
        Allocator(engine, "pareto", store, profile_missing=False, explore=False).step(force=True)
        (entry,) = engine.placement_report()
        why = entry["explanation"]
        assert why["source"] == "config"
        assert {"config": "onnxruntime t1", "reason": "p99 31.0 ms over slo_ms 20"} in why["rejected"]
        assert "slo_ms of at least 31 ms" in why["would_change"]
    finally:
        engine.close()


def test_the_planner_keeps_a_fixed_instance_count_and_trims_only_the_others() -> None:
    from edgeplex.tuning.policies import Candidate
    from edgeplex.tuning.timeshare import plan_shared

    def cand(rate: float) -> list[Candidate]:
        return [Candidate(ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 0), rate, 1, 10_000_000)]

    # Free, each model would get 4 instances (4 cores, 1 thread each); memory for 5 in all.
    free = plan_shared({"a": 1.0, "b": 1.0}, {"a": cand(50.0), "b": cand(50.0)}, 4, 50_000_000)
    assert sum(g.count for p in free.placement.values() for g in p.groups) == 5
    fixed = plan_shared({"a": 1.0, "b": 1.0}, {"a": cand(50.0), "b": cand(50.0)}, 4, 50_000_000, counts={"a": 4})
    assert fixed.placement["a"].groups[0].count == 4  # the operator's count, even over what trimming would pick
    assert fixed.placement["b"].groups[0].count == 1
    # A fixed count the budget cannot hold leaves the model out, rather than running another count.
    over = plan_shared({"a": 1.0}, {"a": cand(50.0)}, 4, 30_000_000, counts={"a": 4})
    assert "a" not in over.placement
