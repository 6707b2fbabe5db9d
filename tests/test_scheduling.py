"""The request path's scheduler through the engine: dynamic batching, priority and deadline
order, deadline expiry, fair sharing under a flood, admission control under overload."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for
from models import add_model, free_model, slow_model, write_config

from edgeplex.engine import Engine
from edgeplex.engine.request import InferRequest, InferResponse
from edgeplex.errors import DeadlineExceeded, Overloaded


def _engine(root: Path, cores: int = 1, scheduling: str = "priority", **models: dict[str, Any]) -> Engine:
    """An engine over tiny models: `models` maps a name (add, free, slow, ...) to config fields."""
    builders = {"add": add_model, "free": free_model, "slow": slow_model}
    for name, fields in models.items():
        kind = fields.pop("kind", name)
        builders[kind](root / name / "1" / "model.onnx")
        write_config(root / name, **fields)
    engine = Engine(root, cores=cores, scheduling=scheduling)
    assert engine.load_all() == {}
    return engine


def _stats(engine: Engine, name: str) -> dict[str, Any]:
    return engine.statistics(name)[0]


def _plugged(engine: Engine, name: str) -> tuple[Any, Future[InferResponse]]:
    """Hold every core, and let the model's only instance take a first request and wait for
    cores: whatever is submitted next stays in the queue until the tokens are released."""
    pool = engine.pools["cpu"]
    taken = pool.acquire(pool.capacity)
    runner = engine.manager.runner(name)
    width = runner.config.inputs[0].dims[-1]
    plug = engine.submit(InferRequest(name, {"x": np.zeros((1, max(width, 1)), np.float32)}))
    wait_for(lambda: len(runner.queue) == 0 and pool.waiting == 1)
    return taken, plug


def _completion_order(futures: dict[str, Future[InferResponse]]) -> list[str]:
    """Filled in as the futures complete (register before they can)."""
    order: list[str] = []
    lock = threading.Lock()
    for label, future in futures.items():
        def done(_: object, label: str = label) -> None:
            with lock:
                order.append(label)
        future.add_done_callback(done)
    return order


# -- dynamic batching ----------------------------------------------------------------------------


def test_batched_outputs_are_each_callers_own_rows(tmp_path: Path) -> None:
    engine = _engine(tmp_path, add={"max_batch_size": 8, "dynamic_batching": {}})
    try:
        taken, plug = _plugged(engine, "add")
        rows = [1, 3, 2, 1, 1]
        inputs = [np.arange(n * 4, dtype=np.float32).reshape(n, 4) + 100 * k for k, n in enumerate(rows)]
        wanted: list[list[str] | None] = [None, ["z"], ["y"], None, ["z", "y"]]
        futures = [engine.submit(InferRequest("add", {"x": x}, outputs=w)) for x, w in zip(inputs, wanted)]
        engine.pools["cpu"].release(taken)
        plug.result(5)
        for x, w, future in zip(inputs, wanted, futures):
            outputs = future.result(5).outputs
            assert list(outputs) == (w or ["y", "z"])
            if "y" in outputs:
                np.testing.assert_array_equal(outputs["y"], x + x)
            if "z" in outputs:
                np.testing.assert_array_equal(outputs["z"], x * 3)
        stats = _stats(engine, "add")
        assert stats["inference_count"] == 1 + sum(rows)
        assert stats["execution_count"] == 2  # the plug, then all eight rows at once
        assert [(b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"]] == [(1, 1), (8, 1)]
    finally:
        engine.close()


def test_batches_respect_max_batch_size_and_shapes(tmp_path: Path) -> None:
    engine = _engine(tmp_path, free={"max_batch_size": 4, "dynamic_batching": {}})
    try:
        taken, plug = _plugged(engine, "free")
        inputs = [np.full((1, 3 if k % 2 else 5), k, np.float32) for k in range(10)]
        futures = [engine.submit(InferRequest("free", {"x": x})) for x in inputs]
        engine.pools["cpu"].release(taken)
        plug.result(5)
        for x, future in zip(inputs, futures):
            np.testing.assert_array_equal(future.result(5).outputs["y"], x + x)
        batches = {b["batch_size"]: b["compute_infer"]["count"] for b in _stats(engine, "free")["batch_stats"]}
        # 5 requests of each width: a batch of 4 and one of 1 per width, plus the plug (1 row).
        assert batches == {4: 2, 1: 3}
    finally:
        engine.close()


def test_without_dynamic_batching_every_request_runs_alone(tmp_path: Path) -> None:
    engine = _engine(tmp_path, add={"max_batch_size": 8, "dynamic_batching": None})
    try:
        taken, plug = _plugged(engine, "add")
        futures = [engine.submit(InferRequest("add", {"x": np.ones((2, 4), np.float32)})) for _ in range(4)]
        engine.pools["cpu"].release(taken)
        assert plug.result(5).outputs["y"].shape == (1, 4)
        assert all(f.result(5).outputs["y"].shape == (2, 4) for f in futures)
        assert _stats(engine, "add")["execution_count"] == 5
    finally:
        engine.close()


def test_a_partial_batch_waits_for_more_within_the_delay(tmp_path: Path) -> None:
    batching = {"max_queue_delay_microseconds": 400_000}
    engine = _engine(tmp_path, add={"max_batch_size": 8, "dynamic_batching": batching})
    try:
        x = np.ones((1, 4), np.float32)
        started = time.monotonic()
        futures = [engine.submit(InferRequest("add", {"x": x})) for _ in range(3)]
        assert all(f.result(5).outputs["y"].shape == (1, 4) for f in futures)
        assert time.monotonic() - started >= 0.3  # it waited for a fuller batch ...
        assert _stats(engine, "add")["execution_count"] == 1  # ... and sent the three together
    finally:
        engine.close()


def test_a_preferred_size_is_sent_without_waiting(tmp_path: Path) -> None:
    batching = {"max_queue_delay_microseconds": 5_000_000, "preferred_batch_size": [2]}
    engine = _engine(tmp_path, add={"max_batch_size": 8, "dynamic_batching": batching})
    try:
        x = np.ones((1, 4), np.float32)
        started = time.monotonic()
        futures = [engine.submit(InferRequest("add", {"x": x})) for _ in range(2)]
        assert all(f.result(5).outputs["y"].shape == (1, 4) for f in futures)
        assert time.monotonic() - started < 2.5
        assert _stats(engine, "add")["execution_count"] == 1
    finally:
        engine.close()


# -- order: priority, then earliest deadline ----------------------------------------------------


def test_higher_priority_is_served_first_then_earliest_deadline(tmp_path: Path) -> None:
    engine = _engine(tmp_path, add={"max_batch_size": 8, "dynamic_batching": None, "priority": 3})
    try:
        taken, plug = _plugged(engine, "add")
        x = np.ones((1, 4), np.float32)
        futures = {
            "default-late": engine.submit(InferRequest("add", {"x": x}, timeout_us=60_000_000)),
            "default-early": engine.submit(InferRequest("add", {"x": x}, timeout_us=30_000_000)),
            "default-none": engine.submit(InferRequest("add", {"x": x})),
            "urgent": engine.submit(InferRequest("add", {"x": x}, priority=1)),
            "background": engine.submit(InferRequest("add", {"x": x}, priority=5, timeout_us=1_000_000)),
        }
        order = _completion_order(futures)
        engine.pools["cpu"].release(taken)
        assert all(f.result(5) for f in [plug, *futures.values()])
        assert order == ["urgent", "default-early", "default-late", "default-none", "background"]
    finally:
        engine.close()


def test_fifo_scheduling_keeps_arrival_order(tmp_path: Path) -> None:
    engine = _engine(tmp_path, scheduling="fifo", add={"max_batch_size": 8, "dynamic_batching": None})
    try:
        taken, plug = _plugged(engine, "add")
        x = np.ones((1, 4), np.float32)
        futures = {
            "first": engine.submit(InferRequest("add", {"x": x}, priority=4)),
            "second": engine.submit(InferRequest("add", {"x": x}, priority=1)),
            "third": engine.submit(InferRequest("add", {"x": x}, timeout_us=1_000_000)),
        }
        order = _completion_order(futures)
        engine.pools["cpu"].release(taken)
        assert all(f.result(5) for f in [plug, *futures.values()])
        assert order == ["first", "second", "third"]
    finally:
        engine.close()


# -- deadlines -----------------------------------------------------------------------------------


def test_slo_is_the_default_deadline_and_expired_requests_are_not_computed(tmp_path: Path) -> None:
    engine = _engine(tmp_path, add={"max_batch_size": 8, "slo_ms": 20})
    try:
        taken, plug = _plugged(engine, "add")
        x = np.ones((1, 4), np.float32)
        expired = engine.submit(InferRequest("add", {"x": x}))  # slo_ms: 20 ms from now
        kept = engine.submit(InferRequest("add", {"x": x}, timeout_us=30_000_000))  # its own timeout wins
        time.sleep(0.05)
        engine.pools["cpu"].release(taken)
        with pytest.raises(DeadlineExceeded, match="past its timeout; not computed") as info:
            expired.result(5)
        assert (info.value.http_status, info.value.grpc_code.name) == (504, "DEADLINE_EXCEEDED")
        np.testing.assert_array_equal(kept.result(5).outputs["y"], x + x)
        with pytest.raises(DeadlineExceeded):  # its deadline passed while it waited for cores
            plug.result(5)
        stats = _stats(engine, "add")
        assert stats["execution_count"] == 1 and stats["inference_stats"]["fail"]["count"] == 2
        assert engine.manager.runner("add").stats.deadline_misses == 2
    finally:
        engine.close()


def test_timeout_action_run_computes_late_requests_and_counts_the_miss(tmp_path: Path) -> None:
    engine = _engine(tmp_path, add={"max_batch_size": 8, "timeout_action": "run"})
    try:
        taken, plug = _plugged(engine, "add")
        x = np.ones((1, 4), np.float32)
        late = engine.submit(InferRequest("add", {"x": x}, timeout_us=1))
        time.sleep(0.01)
        engine.pools["cpu"].release(taken)
        np.testing.assert_array_equal(late.result(5).outputs["y"], x + x)
        plug.result(5)
        assert engine.manager.runner("add").stats.deadline_misses == 1
        assert _stats(engine, "add")["inference_stats"]["fail"]["count"] == 0
    finally:
        engine.close()


# -- fair sharing and admission control ---------------------------------------------------------


def test_a_flood_on_one_model_does_not_starve_another(tmp_path: Path) -> None:
    engine = _engine(tmp_path, cores=1, slow={"max_batch_size": 8, "dynamic_batching": None, "instance_count": 3},
                     add={"max_batch_size": 8})
    try:
        x = np.ones((1, 256), np.float32)
        flood = [engine.submit(InferRequest("slow", {"x": x})) for _ in range(150)]
        runner = engine.manager.runner("slow")
        wait_for(lambda: runner.stats.as_triton()["execution_count"] >= 3)
        started = time.monotonic()
        answered = engine.infer(InferRequest("add", {"x": np.ones((1, 4), np.float32)}))
        waited = time.monotonic() - started
        still_queued = len(runner.queue)
        assert answered.outputs["y"].shape == (1, 4)
        # Three slow instances wait for the one core ahead of it, but fair queuing lets the
        # newcomer in after at most a few slow runs, not after the whole flood.
        assert still_queued > 100, f"the flood drained first ({still_queued} left, waited {waited:.3f} s)"
        for future in flood:
            future.result(30)
    finally:
        engine.close()


def test_shares_weight_the_cores_between_flooded_models(tmp_path: Path) -> None:
    flood = {"kind": "slow", "max_batch_size": 64, "dynamic_batching": None, "instance_count": 2}
    engine = _engine(tmp_path, cores=1, heavy={**flood, "share": 3.0}, light={**flood, "share": 1.0})
    try:
        x = np.ones((48, 256), np.float32)  # a few ms per run: the core, not Python, is the bottleneck
        futures = [engine.submit(InferRequest(name, {"x": x})) for _ in range(200) for name in ("heavy", "light")]
        busy = {name: engine.manager.runner(name) for name in ("heavy", "light")}
        wait_for(lambda: busy["heavy"].stats.as_triton()["execution_count"] >= 60, timeout=30)
        counts = {name: runner.stats.as_triton()["execution_count"] for name, runner in busy.items()}
        ratio = counts["heavy"] / max(counts["light"], 1)
        assert 2.0 <= ratio <= 4.5, counts  # 3:1 by share, with the granularity of whole runs
        for runner in busy.values():
            runner.queue.close()
        for future in futures:
            future.result(60)
    finally:
        engine.close()


def test_overload_is_refused_fast_and_every_admitted_request_is_answered(tmp_path: Path) -> None:
    engine = _engine(tmp_path, cores=1, slow={"max_batch_size": 8, "max_queue_size": 8})
    try:
        x = np.ones((1, 256), np.float32)
        admitted: list[Future[InferResponse]] = []
        refused: list[float] = []
        lock = threading.Lock()

        def client() -> None:
            for _ in range(25):
                started = time.monotonic()
                try:
                    future = engine.submit(InferRequest("slow", {"x": x}))
                except Overloaded as exc:
                    assert "max_queue_size 8" in exc.message and exc.http_status == 429
                    with lock:
                        refused.append(time.monotonic() - started)
                else:
                    with lock:
                        admitted.append(future)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(admitted) + len(refused) == 200
        assert len(refused) > 100  # ten times what one queue of 8 can hold
        assert max(refused) < 0.05  # refused at once, never after a wait
        answers = [future.result(30) for future in admitted]
        assert all(answer.outputs["y"].shape == (1, 256) for answer in answers)
        stats = engine.manager.runner("slow").stats
        assert stats.rejected == len(refused)
        assert stats.as_triton()["inference_stats"]["success"]["count"] == len(admitted)
    finally:
        engine.close()


def test_the_monitor_measures_service_per_row_when_batches_form(tmp_path: Path) -> None:
    from edgeplex.engine.monitor import Monitor

    engine = _engine(tmp_path, add={"max_batch_size": 8, "dynamic_batching": {}})
    try:
        monitor = Monitor(engine)
        monitor.sample()
        taken, plug = _plugged(engine, "add")
        futures = [engine.submit(InferRequest("add", {"x": np.ones((1, 4), np.float32)})) for _ in range(8)]
        engine.pools["cpu"].release(taken)
        assert all(f.result(5) for f in [plug, *futures])
        load = monitor.sample()["add"]
        batches = _stats(engine, "add")["batch_stats"]
        assert [b["batch_size"] for b in batches] == [1, 8]
        per_row = sum(b["compute_infer"]["ns"] for b in batches) / 9 / 1e6
        assert load.service_ms == pytest.approx(per_row)
    finally:
        engine.close()


def test_an_instance_picks_its_work_when_it_gets_its_cores(tmp_path: Path) -> None:
    engine = _engine(tmp_path, add={"max_batch_size": 8, "dynamic_batching": None})
    try:
        pool = engine.pools["cpu"]
        taken = pool.acquire(pool.capacity)
        runner = engine.manager.runner("add")
        x = np.ones((1, 4), np.float32)
        early = engine.submit(InferRequest("add", {"x": x}, priority=3))  # the instance takes it, waits for cores
        wait_for(lambda: len(runner.queue) == 0 and pool.waiting == 1)
        futures = {"early-low": early, "late-urgent": engine.submit(InferRequest("add", {"x": x}, priority=1))}
        order = _completion_order(futures)
        pool.release(taken)
        assert all(f.result(5) for f in futures.values())
        assert order == ["late-urgent", "early-low"]
    finally:
        engine.close()


def test_a_request_that_cannot_finish_before_its_deadline_is_not_run(tmp_path: Path) -> None:
    engine = _engine(tmp_path, slow={"max_batch_size": 64, "dynamic_batching": None})
    try:
        x = np.ones((48, 256), np.float32)
        for _ in range(5):  # the engine learns how long a run takes
            engine.infer(InferRequest("slow", {"x": x}))
        run_ms = engine.manager.runner("slow")._expected_run_ns / 1e6
        assert run_ms > 0.5
        with pytest.raises(DeadlineExceeded, match="less than a run takes"):
            engine.infer(InferRequest("slow", {"x": x}, timeout_us=int(run_ms * 1000 / 4)))
        assert engine.infer(InferRequest("slow", {"x": x}, timeout_us=int(run_ms * 1000 * 50))).outputs["y"].shape == (
            48, 256)
    finally:
        engine.close()


def test_fifo_scheduling_shares_no_flows_at_the_token_pool(tmp_path: Path) -> None:
    engine = _engine(tmp_path, scheduling="fifo", add={"max_batch_size": 8})
    try:
        engine.infer(InferRequest("add", {"x": np.ones((1, 4), np.float32)}))
        assert engine.manager.runner("add").flows == {}  # no claim is ever charged: arrival order only
    finally:
        engine.close()
    engine = _engine(tmp_path / "fair", add={"max_batch_size": 8})
    try:
        engine.infer(InferRequest("add", {"x": np.ones((1, 4), np.float32)}))
        assert engine.manager.runner("add").flows["cpu"].vtime > 0.0
    finally:
        engine.close()


def test_lower_priority_executor_threads_are_niced(tmp_path: Path) -> None:
    import os

    engine = _engine(tmp_path, add={"max_batch_size": 8, "priority": 4})
    try:
        (worker,) = engine.manager.runner("add")._workers
        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 6)  # 2 per level below 1
        wait_for(lambda: worker.thread.native_id is not None
                 and os.getpriority(os.PRIO_PROCESS, worker.thread.native_id) == expected)
    finally:
        engine.close()
