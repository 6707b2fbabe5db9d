"""Placement changes (warm swap) and the memory budget, on tiny models in-process."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_for
from models import add_model, slow_model, write_config

from edgeplex.backends import ExecutionConfig
from edgeplex.engine import Engine, InferRequest, ManualClock
from edgeplex.engine.placement import InstanceGroup, ModelPlacement
from edgeplex.engine.registry import RESIDENCY_MAX_S

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def placement(model: str, *groups: tuple[int, int], reason: str = "test") -> ModelPlacement:
    """(threads, count) groups on onnxruntime/cpu/fp32."""
    return ModelPlacement(
        model, [InstanceGroup(ExecutionConfig("onnxruntime", "cpu", "fp32", t, 8), n) for t, n in groups], reason=reason
    )


def test_warm_swap_under_load_answers_every_request_exactly_once(tmp_path: Path) -> None:
    slow_model(tmp_path / "slow" / "1" / "model.onnx", size=128, layers=8)
    write_config(tmp_path / "slow", max_batch_size=8)
    engine = Engine(tmp_path, cores=2)
    engine.load_all()
    answered: list[int] = []
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        sent = 0
        while not stop.is_set():
            x = rng.standard_normal((1, 128)).astype(np.float32)
            x[0, 0] = seed * 100_000 + sent  # a tag: the answer must be this request's own
            try:
                y = engine.infer(InferRequest("slow", {"x": x})).outputs["y"]
                reference = engine.infer(InferRequest("slow", {"x": x})).outputs["y"]
                if not np.allclose(y, reference, rtol=1e-5):
                    raise AssertionError("wrong rows")
            except Exception as exc:  # collected and asserted below
                with lock:
                    failures.append(repr(exc))
            else:
                with lock:
                    answered.append(1)
            sent += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    runner = engine.manager.runner("slow")
    for groups in ([(1, 2)], [(2, 1)], [(1, 1), (1, 1)], [(1, 1)]):
        before = len(answered)
        engine.apply(placement("slow", *groups))
        wait_for(lambda before=before: len(answered) > before + 5)
        assert [i.config.threads for i in runner.instances] == [t for t, n in groups for _ in range(n)]
    stop.set()
    for thread in threads:
        thread.join(10)
    assert failures == []
    stats = runner.stats.as_triton()
    # Every request answered once: two engine calls per answered client step.
    assert stats["inference_stats"]["success"]["count"] == 2 * len(answered)
    assert stats["inference_stats"]["fail"]["count"] == 0
    decisions = engine.manager.state("slow").decisions
    assert [d.reason for d in decisions][-4:] == ["test"] * 4
    engine.close()


def test_apply_with_the_same_configs_swaps_nothing(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", max_batch_size=8, instance_count=2)
    engine = Engine(tmp_path, cores=2)
    engine.load_all()
    runner = engine.manager.runner("add")
    before = runner.instances
    engine.apply(placement("add", (1, 2), reason="same again"))
    assert runner.instances == before
    assert engine.manager.state("add").placement.reason == "same again"
    engine.close()


def _budget_repo(root: Path) -> Path:
    for name in ("a", "b", "c"):
        slow_model(root / name / "1" / "model.onnx", size=512, layers=4)  # 4 MB of weights each
        write_config(root / name, max_batch_size=8)
    return root


def _file_size(root: Path, name: str) -> int:
    return (root / name / "1" / "model.onnx").stat().st_size


def test_memory_budget_evicts_least_recently_used_and_reloads_on_request(tmp_path: Path) -> None:
    root = _budget_repo(tmp_path)
    # The engine's clock is stepped by hand: which model is least recently used, and whether its
    # residency is paid back (a busy machine's slow load would protect it longer), are then the
    # test's, not the machine's.
    clock = ManualClock()
    engine = Engine(root, cores=2, clock=clock)
    manager = engine.manager
    assert engine.load_all(["c"]) == {}
    c = manager.state("c").memory_bytes  # measured: weights, and what the runtime adds
    assert c > _file_size(root, "c")
    engine.unload("c")
    assert engine.load_all(["a", "b"]) == {}
    for name in ("a", "b"):  # accounted at the (made-up) bytes their placement carries
        engine.apply(ModelPlacement(name, [InstanceGroup(ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 8), 1,
                                                         10_000_000)]))
    assert manager.memory_used() == 20_000_000
    manager.memory_budget = 20_000_000 + c - 5_000_000  # three cannot stay; one eviction makes room
    x = np.ones((1, 512), np.float32)
    clock.advance(1.0)
    engine.infer(InferRequest("a", {"x": x}))  # a is now more recent than b
    clock.advance(1.0)
    engine.load("c")  # no room for three: b (least recently used) goes
    clock.advance(RESIDENCY_MAX_S)  # every residency paid back: the least recently used goes next
    states = {s.name: s for s in engine.models()}
    assert states["b"].state == "UNAVAILABLE" and states["b"].evicted and "memory budget" in states["b"].reason
    assert states["a"].state == "READY" and states["c"].state == "READY"
    assert manager.memory_used() <= manager.memory_budget
    # A request for b loads it again (evicting the LRU of a and c), and is answered.
    y = engine.infer(InferRequest("b", {"x": x})).outputs["y"]
    assert y.shape == (1, 512)
    states = {s.name: s for s in engine.models()}
    assert states["b"].state == "READY"
    assert states["a"].evicted  # a was used before c was loaded
    (stats,) = engine.statistics("b")
    assert manager.state("b").stats["1"].reloads == 1 and stats["inference_count"] == 1
    assert manager.memory_used() <= manager.memory_budget
    engine.close()


def test_pinned_models_are_never_evicted(tmp_path: Path) -> None:
    root = _budget_repo(tmp_path)
    write_config(root / "a", max_batch_size=8, pinned=True)
    engine = Engine(root, cores=2)
    assert engine.load_all(["a"]) == {}
    engine.manager.memory_budget = engine.manager.memory_used() + _file_size(root, "b") // 2
    failures = engine.load_all(["b"])
    assert "pinned or being replaced" in failures["b"]
    assert {s.name: s.state for s in engine.models()}["a"] == "READY"
    engine.close()


def test_monitor_reports_arrivals_and_service_time(tmp_path: Path) -> None:
    import time

    from edgeplex.engine.monitor import Monitor

    slow_model(tmp_path / "slow" / "1" / "model.onnx", size=128, layers=8)
    write_config(tmp_path / "slow", max_batch_size=8)
    engine = Engine(tmp_path, cores=2)
    engine.load_all()
    monitor = Monitor(engine, smoothing=1.0)  # no smoothing: the window's own figures
    monitor.sample()
    began = time.monotonic()
    for _ in range(40):
        engine.infer(InferRequest("slow", {"x": np.ones((1, 128), np.float32)}))
    time.sleep(0.05)
    loads = monitor.sample()
    window = time.monotonic() - began
    load = loads["slow"]
    assert 40 / window * 0.8 <= load.arrival_rate <= 40 / (window - 0.05) * 1.2
    assert load.completion_rate == pytest.approx(load.arrival_rate, rel=0.01)
    assert load.service_ms > 0 and load.queued == 0
    engine.close()


def test_placement_report_shows_groups_memory_and_the_last_decision(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", max_batch_size=8)
    engine = Engine(tmp_path, cores=2)
    engine.load_all()
    engine.apply(placement("add", (2, 1), (1, 1), reason="bottleneck: add"))
    (entry,) = engine.placement_report()
    assert entry["model"] == "add" and entry["state"] == "READY"
    assert [(g["threads"], g["instances"]) for g in entry["groups"]] == [(2, 1), (1, 1)]
    assert entry["memory_bytes"] > 0
    assert entry["last_decision"]["reason"] == "bottleneck: add"
    assert "2x" not in entry["last_decision"]["placement"] and "onnxruntime/cpu/fp32/t2" in entry["last_decision"]["placement"]
    engine.close()


def test_a_count_change_keeps_the_serving_instances_and_opens_only_the_missing(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", max_batch_size=8)
    engine = Engine(tmp_path, cores=2)
    engine.load_all()
    runner = engine.manager.runner("add")
    (first,) = runner.instances
    engine.apply(placement("add", (1, 2)))
    assert len(runner.instances) == 2 and runner.instances[0] is first  # kept, one more opened
    engine.apply(placement("add", (1, 1)))
    (left,) = runner.instances
    assert left is first
    engine.apply(placement("add", (2, 1)))  # another config: a new instance, the old one retires
    (new,) = runner.instances
    assert new is not first and new.config.threads == 2
    np.testing.assert_array_equal(engine.infer(InferRequest("add", {"x": X})).outputs["y"], X + X)
    engine.close()
