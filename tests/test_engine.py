"""The engine in-process: exact outputs, validation, model control, statistics, deadlines,
concurrent instances and a shutdown that answers every queued request."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for
from models import add_model, int_model, slow_model, write_config

from edgeplex.engine import Engine, InferRequest, InferResponse
from edgeplex.errors import (
    DeadlineExceeded,
    EdgeplexError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    ServerShuttingDown,
)

X = np.arange(8, dtype=np.float32).reshape(2, 4) - 3.5


def _stats(engine: Engine, name: str) -> dict[str, Any]:
    (entry,) = engine.statistics(name)
    return entry


# -- inference -----------------------------------------------------------------------------------


def test_infer_sync_exact_outputs(engine: Engine) -> None:
    response = engine.infer(InferRequest("add", {"x": X}, id="req-7"))
    assert isinstance(response, InferResponse)
    assert (response.model_name, response.model_version, response.id) == ("add", "1", "req-7")
    assert list(response.outputs) == ["y", "z"]
    np.testing.assert_array_equal(response.outputs["y"], X + X)
    np.testing.assert_array_equal(response.outputs["z"], X * 3)
    assert response.outputs["y"].dtype == np.float32


def test_infer_async_exact_outputs(engine: Engine) -> None:
    async def main() -> list[InferResponse]:
        requests = [InferRequest("add", {"x": X * k}) for k in range(6)]
        requests.append(InferRequest("sub", {"a": np.array([[5, 6, 7]], np.int32), "b": np.array([[1, 1, 9]], np.int32)}))
        return await asyncio.gather(*(engine.infer_async(r) for r in requests))

    responses = asyncio.run(main())
    for k, response in enumerate(responses[:6]):
        np.testing.assert_array_equal(response.outputs["z"], X * k * 3)
    sub = responses[6].outputs["out"]
    assert sub.dtype == np.int32
    np.testing.assert_array_equal(sub, [[4, 5, -2]])


def test_infer_async_raises_the_engine_error(engine: Engine) -> None:
    async def main() -> None:
        await engine.infer_async(InferRequest("add", {"w": X}))

    with pytest.raises(InvalidInput, match="has no input 'w'"):
        asyncio.run(main())


def test_requested_output_subset(engine: Engine) -> None:
    response = engine.infer(InferRequest("add", {"x": X}, outputs=["z"]))
    assert list(response.outputs) == ["z"]
    np.testing.assert_array_equal(response.outputs["z"], X * 3)


def test_non_batchable_model_with_a_scalar(engine: Engine) -> None:
    x = np.array([[1, 2], [3, 4]], np.float32)
    response = engine.infer(InferRequest("fixed", {"x": x, "k": np.array(42, np.int64)}))
    np.testing.assert_array_equal(response.outputs["y"], x)
    assert response.outputs["y2"].shape == () and int(response.outputs["y2"]) == 42


@pytest.mark.parametrize(
    ("model", "inputs", "outputs", "pattern"),
    [
        ("add", {"x": X, "extra": X}, None, r"model 'add' has no input 'extra'"),
        ("sub", {"a": np.zeros((1, 3), np.int32)}, None, r"model 'sub': input 'b' is missing"),
        ("add", {"x": X.astype(np.float64)}, None, r"input 'x' must be FP32, got FP64"),
        ("add", {"x": np.zeros((2, 5), np.float32)}, None, r"input 'x' has shape \[2, 5\], expected \[-1, 4\]"),
        ("add", {"x": np.zeros(4, np.float32)}, None, r"input 'x' has shape \[4\]"),
        ("add", {"x": np.zeros((9, 4), np.float32)}, None, r"input 'x' shape \[9, 4\]: batch size must be 1\.\.8"),
        ("add", {"x": np.zeros((0, 4), np.float32)}, None, r"input 'x' shape \[0, 4\]: batch size must be 1\.\.8"),
        (
            "sub",
            {"a": np.zeros((1, 3), np.int32), "b": np.zeros((2, 3), np.int32)},
            None,
            r"model 'sub': inputs disagree on the batch size \(1 vs 2\)",
        ),
        ("add", {"x": X}, ["y", "w"], r"model 'add' has no output 'w'"),
        ("fixed", {"x": np.zeros((1, 2, 2), np.float32), "k": np.array(1, np.int64)}, None, r"input 'x' has shape"),
        ("fixed", {"x": np.zeros((2, 2), np.float32), "k": np.array([1], np.int64)}, None, r"input 'k' has shape \[1\]"),
    ],
)
def test_validation_errors_name_the_fault(
    engine: Engine, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None, pattern: str
) -> None:
    with pytest.raises(InvalidInput, match=pattern) as info:
        engine.infer(InferRequest(model, inputs, outputs=outputs))
    assert info.value.http_status == 400
    # Refused before it was queued: nothing was counted as run.
    assert _stats(engine, model)["execution_count"] == 0


def test_unknown_model_and_version(engine: Engine) -> None:
    with pytest.raises(ModelNotFound, match="'ghost'"):
        engine.infer(InferRequest("ghost", {"x": X}))
    with pytest.raises(ModelNotFound, match="no version '2'"):
        engine.infer(InferRequest("add", {"x": X}, model_version="2"))
    with pytest.raises(ModelNotFound):
        engine.infer(InferRequest("add", {"x": X}, model_version="latest"))
    assert engine.infer(InferRequest("add", {"x": X}, model_version="1")).model_version == "1"
    with pytest.raises(ModelNotFound):
        engine.statistics("ghost")


def test_unload_then_load_again(engine: Engine) -> None:
    assert engine.is_ready("add")
    engine.unload("add")
    assert not engine.is_ready("add")
    with pytest.raises(ModelNotReady, match="'add' is not ready .*unloaded"):
        engine.infer(InferRequest("add", {"x": X}))
    state = {s.name: s for s in engine.models()}["add"]
    assert (state.state, state.reason) == ("UNAVAILABLE", "unloaded")
    engine.unload("add")  # a second unload is harmless
    with pytest.raises(ModelNotFound):
        engine.unload("ghost")

    engine.load("add")
    assert engine.is_ready("add")
    np.testing.assert_array_equal(engine.infer(InferRequest("add", {"x": X})).outputs["y"], X + X)
    # Fresh statistics for the fresh runner.
    assert _stats(engine, "add")["inference_count"] == 2


def test_model_never_loaded_is_not_ready(tiny_repo: Path) -> None:
    engine = Engine(tiny_repo, cores=1)
    try:
        with pytest.raises(ModelNotReady, match="'add' is not loaded"):
            engine.infer(InferRequest("add", {"x": X}))
        assert {s.name: s.reason for s in engine.models()}["add"] == "unloaded"
    finally:
        engine.close()


def test_metadata_and_config(engine: Engine) -> None:
    meta = engine.metadata("add")
    assert meta == {
        "name": "add",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "z", "datatype": "FP32", "shape": [-1, 4]},
        ],
    }
    assert engine.config("sub").max_batch_size == 4  # auto-completed
    assert engine.metadata("fixed")["inputs"][1] == {"name": "k", "datatype": "INT64", "shape": []}


# -- statistics ----------------------------------------------------------------------------------


def test_statistics_move_exactly(engine: Engine) -> None:
    before = _stats(engine, "add")
    assert before["inference_count"] == before["execution_count"] == 0
    engine.infer(InferRequest("add", {"x": np.zeros((3, 4), np.float32)}))
    engine.infer(InferRequest("add", {"x": np.zeros((1, 4), np.float32)}))
    with pytest.raises(InvalidInput):
        engine.infer(InferRequest("add", {"x": np.zeros((1, 5), np.float32)}))
    stats = _stats(engine, "add")
    assert (stats["name"], stats["version"]) == ("add", "1")
    assert stats["inference_count"] == 4  # batch rows, as Triton counts them
    assert stats["execution_count"] == 2
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 2
    assert inference["queue"]["count"] == 2
    assert inference["compute_infer"]["count"] == 2
    assert inference["fail"]["count"] == 0
    assert inference["success"]["ns"] >= inference["compute_infer"]["ns"] > 0
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [(1, 1), (3, 1)]
    assert stats["last_inference"] > 0
    # Other models did not move.
    assert _stats(engine, "sub")["execution_count"] == 0
    assert len(engine.statistics()) == 4  # every loaded model version (broken is not loaded)


def test_non_batchable_model_counts_one_row(engine: Engine) -> None:
    engine.infer(InferRequest("fixed", {"x": np.zeros((2, 2), np.float32), "k": np.array(1, np.int64)}))
    assert _stats(engine, "fixed")["inference_count"] == 1


def test_deadline_exceeded_counts_as_a_failure(engine: Engine) -> None:
    pool = engine.pools["cpu"]
    runner = engine.manager.runner("add")
    assert len(runner.instances) == 1
    taken = pool.acquire(pool.capacity)  # nothing can compute until we release
    try:
        first = engine.submit(InferRequest("add", {"x": X}))
        wait_for(lambda: len(runner.queue) == 0)  # the only instance took it and waits for tokens
        late = engine.submit(InferRequest("add", {"x": X}, timeout_us=1))
        time.sleep(0.005)
    finally:
        pool.release(taken)
    np.testing.assert_array_equal(first.result(5).outputs["y"], X + X)
    with pytest.raises(DeadlineExceeded, match="past its timeout") as info:
        late.result(5)
    assert info.value.http_status == 504
    stats = _stats(engine, "add")
    assert stats["inference_stats"]["success"]["count"] == 1
    assert stats["inference_stats"]["fail"]["count"] == 1
    assert stats["inference_stats"]["fail"]["ns"] > 0
    assert stats["execution_count"] == 1 and stats["inference_count"] == 2


def test_generous_timeout_is_met(engine: Engine) -> None:
    response = engine.infer(InferRequest("add", {"x": X}, timeout_us=30_000_000))
    np.testing.assert_array_equal(response.outputs["y"], X + X)


# -- memory and instances ------------------------------------------------------------------------


def test_memory_of_loaded_models_is_measured(engine: Engine) -> None:
    for name in ("add", "sub", "fixed", "slow"):
        runner = engine.manager.runner(name)
        assert runner.memory_bytes > 0
        assert all(inst.memory_bytes > 0 for inst in runner.instances)
    # `slow` carries 24 256x256 FP32 weights in each of its two instances.
    weights = 24 * 256 * 256 * 4
    assert all(inst.memory_bytes >= weights for inst in engine.manager.runner("slow").instances)


def test_memory_is_measured_on_a_reload_too(engine: Engine) -> None:
    engine.unload("slow")
    engine.load("slow")
    assert all(inst.memory_bytes >= 24 * 256 * 256 * 4 for inst in engine.manager.runner("slow").instances)


class _TimedSession:
    """Wraps a session and records (thread, start, end) of every run."""

    def __init__(self, inner: Any, log: list[tuple[str, float, float]]) -> None:
        self.inner = inner
        self.log = log

    @property
    def memory_bytes(self) -> int:
        return int(self.inner.memory_bytes)

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        result: dict[str, np.ndarray] = self.inner.run(inputs, outputs)
        self.log.append((threading.current_thread().name, start, time.perf_counter()))
        return result

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def heavy_engine(tmp_path: Path) -> Iterator[Engine]:
    """A model taking a few ms per batch (512-wide MatMul chain), two single-thread instances."""
    slow_model(tmp_path / "heavy" / "1" / "model.onnx", size=512, layers=16)
    write_config(tmp_path / "heavy", max_batch_size=32, instance_count=2, threads=1)
    eng = Engine(tmp_path, cores=2)
    assert eng.load_all() == {}
    yield eng
    eng.close()


def test_two_instances_run_concurrently(heavy_engine: Engine) -> None:
    runner = heavy_engine.manager.runner("heavy")
    assert len(runner.instances) == 2
    log: list[tuple[str, float, float]] = []
    for inst in runner.instances:
        inst.session = _TimedSession(inst.session, log)
    x = np.random.default_rng(1).standard_normal((32, 512)).astype(np.float32)
    expected = heavy_engine.infer(InferRequest("heavy", {"x": x})).outputs["y"]
    log.clear()

    futures = [heavy_engine.submit(InferRequest("heavy", {"x": x})) for _ in range(8)]
    for future in futures:
        np.testing.assert_array_equal(future.result(10).outputs["y"], expected)

    assert len(log) == 8
    assert len({thread for thread, _, _ in log}) == 2  # both instances served
    overlap = any(
        a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for i, a in enumerate(log) for b in log[i + 1 :]
    )
    assert overlap, f"no two runs overlapped: {log}"
    assert heavy_engine.pools["cpu"].peak == 2


def test_two_instances_are_limited_by_one_core(tmp_path: Path) -> None:
    slow_model(tmp_path / "heavy" / "1" / "model.onnx", size=128, layers=4)
    write_config(tmp_path / "heavy", max_batch_size=8, instance_count=2, threads=1)
    engine = Engine(tmp_path, cores=1)
    try:
        engine.load_all()
        x = np.ones((8, 128), np.float32)
        futures = [engine.submit(InferRequest("heavy", {"x": x})) for _ in range(20)]
        assert all(f.result(10).outputs["y"].shape == (8, 128) for f in futures)
        assert engine.pools["cpu"].peak == 1
    finally:
        engine.close()


# -- queue limits and shutdown -------------------------------------------------------------------


def test_full_queue_is_refused_at_once(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", max_batch_size=8, max_queue_size=2)
    engine = Engine(tmp_path, cores=1)
    engine.load_all()
    pool = engine.pools["cpu"]
    runner = engine.manager.runner("add")
    taken = pool.acquire(1)
    try:
        first = engine.submit(InferRequest("add", {"x": X}))
        wait_for(lambda: len(runner.queue) == 0)
        queued = [engine.submit(InferRequest("add", {"x": X})) for _ in range(2)]
        with pytest.raises(Overloaded, match="max_queue_size 2") as info:
            engine.submit(InferRequest("add", {"x": X}))
        assert info.value.http_status == 429
    finally:
        pool.release(taken)
    for future in [first, *queued]:
        np.testing.assert_array_equal(future.result(5).outputs["y"], X + X)
    engine.close()


def test_close_answers_every_queued_request(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    int_model(tmp_path / "sub" / "1" / "model.onnx")
    engine = Engine(tmp_path, cores=1)
    assert engine.load_all() == {}
    pool = engine.pools["cpu"]
    taken = pool.acquire(1)  # everything queues behind this
    futures: list[tuple[Future[InferResponse], int]] = []
    for k in range(30):
        if k % 2:
            a = np.full((1, 3), k, np.int32)
            futures.append((engine.submit(InferRequest("sub", {"a": a, "b": np.ones((1, 3), np.int32)})), k))
        else:
            futures.append((engine.submit(InferRequest("add", {"x": np.full((1, 4), k, np.float32)})), k))
    closer = threading.Thread(target=engine.close)
    closer.start()
    wait_for(lambda: engine._closed)
    with pytest.raises(ServerShuttingDown):
        engine.submit(InferRequest("add", {"x": X}))
    assert closer.is_alive()  # it is draining, not dropping
    assert not any(f.done() for f, _ in futures[2:])
    pool.release(taken)
    closer.join(10)
    assert not closer.is_alive()
    for future, k in futures:
        response = future.result(0)  # every one answered
        if k % 2:
            np.testing.assert_array_equal(response.outputs["out"], np.full((1, 3), k - 1, np.int32))
        else:
            np.testing.assert_array_equal(response.outputs["y"], np.full((1, 4), 2 * k, np.float32))
    assert not engine.ready()
    assert not [t for t in threading.enumerate() if t.name.startswith(("edgeplex-add-", "edgeplex-sub-"))]


def test_reload_loses_no_queued_request(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    engine = Engine(tmp_path, cores=1)
    engine.load_all()
    runner = engine.manager.runner("add")
    old_instances = runner.instances
    pool = engine.pools["cpu"]
    taken = pool.acquire(1)
    futures = [engine.submit(InferRequest("add", {"x": X})) for _ in range(10)]
    reloader = threading.Thread(target=engine.load, args=("add",))
    reloader.start()
    wait_for(lambda: runner.instances != old_instances)
    # The same queue keeps serving; new requests join it while the instances are swapped.
    assert engine.manager.runner("add") is runner
    fresh = engine.submit(InferRequest("add", {"x": X}))
    pool.release(taken)
    reloader.join(10)
    for future in [*futures, fresh]:
        np.testing.assert_array_equal(future.result(5).outputs["y"], X + X)
    assert runner.stats.inference_count == 22  # 11 requests of 2 rows, each answered once
    engine.close()


# -- readiness -----------------------------------------------------------------------------------


def test_strict_readiness_waits_on_every_model_asked_to_load(engine: Engine) -> None:
    # The tiny repository has a broken model: strict readiness names it, lax readiness does not care.
    assert engine.ready() is True
    assert engine.ready(strict=True) is False
    assert set(engine.not_ready()) == {"broken"}
    assert engine.not_ready()["broken"] == engine.model("broken").reason != ""
    # Unloaded on purpose, it is no longer waited on; loading it again puts it back in the wait.
    engine.unload("broken")
    assert engine.not_ready() == {} and engine.ready(strict=True) is True
    with pytest.raises(EdgeplexError):
        engine.load("broken")
    assert set(engine.not_ready()) == {"broken"}
    engine.unload("add")
    assert "add" not in engine.not_ready()
    engine.load("add")
    assert "add" not in engine.not_ready()
    # A load of a model the repository lacks is a 404, and never something readiness waits on.
    with pytest.raises(ModelNotFound):
        engine.load("typo")
    assert "typo" not in engine.not_ready()
    # A failed model's report says why it failed, and its config is its file's, not a placement.
    (broken,) = [entry for entry in engine.placement_report() if entry["model"] == "broken"]
    assert broken["explanation"]["summary"] == engine.model("broken").reason
