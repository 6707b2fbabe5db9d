"""The processor token pool: never over capacity, priority first, FIFO within a level; and an
engine serving several models at once within its cores."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import wait_for
from models import add_model, write_config
from onnx import numpy_helper

from edgeplex.engine import Engine, InferRequest
from edgeplex.engine.pools import Grant, TokenPool
from edgeplex.engine.thread_names import os_thread_name


def _waiting(pool: TokenPool) -> int:
    return pool.waiting


def _start_waiter(pool: TokenPool, tokens: int, priority: int, label: str, order: list[str]) -> threading.Thread:
    """A thread that acquires, records `label`, and releases; returns once it is queued."""
    queued = _waiting(pool)

    def take() -> None:
        with pool.hold(tokens, priority):
            order.append(label)

    thread = threading.Thread(target=take, name=f"waiter-{label}")
    thread.start()
    wait_for(lambda: _waiting(pool) == queued + 1)
    return thread


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        TokenPool("cpu", 0)


def test_clamp() -> None:
    pool = TokenPool("cpu", 4)
    assert [pool.clamp(n) for n in (-3, 0, 1, 3, 4, 5, 100)] == [1, 1, 1, 3, 4, 4, 4]
    big = pool.acquire(100)
    assert big.tokens == 4  # more than the processor: the whole processor, not a deadlock
    assert pool.in_use == 4
    pool.release(big)
    small = pool.acquire(0)
    assert small.tokens == 1
    assert pool.in_use == 1
    pool.release(small)
    assert pool.in_use == 0 and pool.peak == 4


def test_hold_releases_on_error() -> None:
    pool = TokenPool("cpu", 2)
    with pytest.raises(RuntimeError, match="boom"):
        with pool.hold(2) as taken:
            assert taken.tokens == 2 and pool.in_use == 2
            raise RuntimeError("boom")
    assert pool.in_use == 0


def test_never_over_capacity_under_concurrent_load() -> None:
    capacity = 3
    pool = TokenPool("cpu", capacity)
    lock = threading.Lock()
    held = {"now": 0, "peak": 0}
    violations: list[str] = []
    samples: list[int] = []
    stop = threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            want = rng.choice([0, 1, 1, 2, 3, 5])
            with pool.hold(want, priority=rng.randint(1, 3)) as taken:
                assert taken.tokens == max(1, min(want, capacity))
                with lock:  # an account independent of the pool's own counter
                    held["now"] += taken.tokens
                    held["peak"] = max(held["peak"], held["now"])
                    if held["now"] > capacity or pool.in_use > capacity:
                        violations.append(f"{held['now']} held, pool says {pool.in_use}")
                if rng.random() < 0.3:
                    time.sleep(0.0001)
                with lock:
                    held["now"] -= taken.tokens

    def sampler() -> None:
        while not stop.is_set():
            samples.append(pool.in_use)
            time.sleep(0.0001)  # a busy loop would hold the GIL and starve the clients

    watcher = threading.Thread(target=sampler)
    watcher.start()
    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(16)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(30)
    stop.set()
    watcher.join(5)

    assert not any(thread.is_alive() for thread in clients)
    assert violations == []
    assert pool.peak <= capacity and held["peak"] <= capacity
    assert held["peak"] >= 2  # the pool did let work run side by side
    assert samples and max(samples) <= capacity and min(samples) >= 0
    assert pool.in_use == 0 and _waiting(pool) == 0


def test_priority_one_goes_first() -> None:
    pool = TokenPool("cpu", 1)
    order: list[str] = []
    first = pool.acquire(1)
    low = _start_waiter(pool, 1, 3, "priority-3", order)
    high = _start_waiter(pool, 1, 1, "priority-1", order)
    assert order == []
    pool.release(first)
    for thread in (low, high):
        thread.join(5)
    assert order == ["priority-1", "priority-3"]


def test_fifo_within_a_priority_level() -> None:
    pool = TokenPool("cpu", 2)
    order: list[str] = []
    first = pool.acquire(2)
    threads = [_start_waiter(pool, 2, 2, label, order) for label in ("a", "b", "c", "d")]
    threads.append(_start_waiter(pool, 2, 1, "urgent", order))
    pool.release(first)
    for thread in threads:
        thread.join(5)
    assert order == ["urgent", "a", "b", "c", "d"]


def test_a_large_waiter_is_not_overtaken() -> None:
    """One free token is not given to a later small waiter while an earlier one needs two:
    otherwise a stream of small requests could starve a many-thread instance."""
    pool = TokenPool("cpu", 2)
    order: list[str] = []
    first = pool.acquire(1)
    big = _start_waiter(pool, 2, 1, "big", order)
    small = _start_waiter(pool, 1, 1, "small", order)
    time.sleep(0.01)
    assert order == [] and pool.in_use == 1
    pool.release(first)
    for thread in (big, small):
        thread.join(5)
    assert order == ["big", "small"]


def test_waiters_that_fit_together_run_together() -> None:
    pool = TokenPool("cpu", 2)
    first = pool.acquire(2)
    inside = threading.Barrier(3, timeout=5)

    def take() -> None:
        with pool.hold(1):
            inside.wait()  # both must be inside at once for this to pass

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: _waiting(pool) == 2)
    pool.release(first)
    inside.wait()
    for thread in threads:
        thread.join(5)
    assert pool.peak == 2


# -- the engine within its cores -----------------------------------------------------------------


def _slow_reference(path: Path, x: np.ndarray) -> np.ndarray:
    model = onnx.load(str(path))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    out = x.astype(np.float64)
    for node in model.graph.node:
        out = out @ weights[node.input[1]].astype(np.float64)
    return out


def test_engine_never_oversubscribes_its_cores(tiny_repo: Path) -> None:
    engine = Engine(tiny_repo, cores=2)
    assert set(engine.load_all()) == {"broken"}
    pool = engine.pools["cpu"]
    assert all(engine.config(n).threads == 1 for n in ("add", "sub", "fixed", "slow"))
    # Five single-thread instances in all (slow has two): enough to run five at once without the pool.
    assert sum(len(engine.manager.runner(n).instances) for n in ("add", "sub", "fixed", "slow")) == 5
    slow_path = tiny_repo / "slow" / "1" / "model.onnx"
    errors: list[str] = []
    samples: list[int] = []
    stop = threading.Event()

    def check(model: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(25):
            batch = int(rng.integers(1, 5))
            if model == "add":
                x = rng.standard_normal((batch, 4)).astype(np.float32)
                out = engine.infer(InferRequest(model, {"x": x})).outputs
                ok = np.array_equal(out["y"], x + x) and np.array_equal(out["z"], x * np.float32(3))
            elif model == "sub":
                a = rng.integers(-100, 100, (batch, 3)).astype(np.int32)
                b = rng.integers(-100, 100, (batch, 3)).astype(np.int32)
                ok = np.array_equal(engine.infer(InferRequest(model, {"a": a, "b": b})).outputs["out"], a - b)
            elif model == "fixed":
                x = rng.standard_normal((2, 2)).astype(np.float32)
                k = np.array(seed * 1000 + i, np.int64)
                out = engine.infer(InferRequest(model, {"x": x, "k": k})).outputs
                ok = np.array_equal(out["y"], x) and int(out["y2"]) == int(k)
            else:
                x = rng.standard_normal((batch, 256)).astype(np.float32)
                y = engine.infer(InferRequest(model, {"x": x}, priority=int(rng.integers(1, 4)))).outputs["y"]
                ok = y.shape == (batch, 256) and np.allclose(y, _slow_reference(slow_path, x), rtol=1e-3, atol=1e-3)
            if not ok:
                errors.append(f"{model} seed {seed} request {i}: wrong output")

    def sampler() -> None:
        while not stop.is_set():
            samples.append(pool.in_use)
            time.sleep(0.0002)

    watcher = threading.Thread(target=sampler)
    watcher.start()
    clients = [
        threading.Thread(target=check, args=(model, seed))
        for model in ("add", "sub", "fixed", "slow")
        for seed in range(3)
    ]
    try:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
    finally:
        stop.set()
        watcher.join(5)
        engine.close()
    assert not any(thread.is_alive() for thread in clients)
    assert errors == []
    assert 1 <= pool.peak <= 2
    assert samples and max(samples) <= 2
    assert pool.in_use == 0
    stats = {name: engine.manager.state(name) for name in ("add", "sub", "fixed", "slow")}
    assert all(state.state == "UNAVAILABLE" for state in stats.values())  # closed


def test_zero_threads_takes_the_whole_processor(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", max_batch_size=4, threads=0)
    engine = Engine(tmp_path, cores=2)
    try:
        assert engine.load_all() == {}
        x = np.ones((1, 4), np.float32)
        np.testing.assert_array_equal(engine.infer(InferRequest("add", {"x": x})).outputs["y"], x + x)
        assert engine.pools["cpu"].peak == 2
    finally:
        engine.close()


def test_tokens_stand_for_distinct_cores_and_pin_the_computing_thread() -> None:
    import os

    cpus = sorted(os.sched_getaffinity(0))
    pool = TokenPool("cpu", len(cpus), cpus)
    seen: list[tuple[tuple[int, ...], set[int]]] = []
    lock = threading.Lock()

    def compute() -> None:
        with pool.hold(1) as grant:
            with lock:
                seen.append((grant.cores, os.sched_getaffinity(0)))
            time.sleep(0.02)

    threads = [threading.Thread(target=compute) for _ in range(len(cpus) * 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(seen) == len(cpus) * 3
    for cores, affinity in seen:
        assert len(cores) == 1 and cores[0] in cpus
        assert affinity == set(cores)  # the thread computes only where its token is
    whole = pool.acquire(len(cpus))
    assert sorted(whole.cores) == cpus  # every core came back
    pool.release(whole)


def test_a_pool_larger_than_the_machine_lends_unpinned_tokens() -> None:
    pool = TokenPool("cpu", 4, [0])
    grant = pool.acquire(2)
    assert grant.tokens == 2 and grant.cores == ()
    pool.release(grant)


def test_a_reservation_keeps_cores_free_of_lower_priority_work_while_its_owner_is_active() -> None:
    pool = TokenPool("cpu", 2)
    pool.reservation_window_s = 0.3
    reservation = pool.reserve("urgent", priority=1, tokens=1)
    reservation.touch()
    low = pool.acquire(1, priority=3)  # one core is left to lower levels
    blocked: list[Grant] = []
    waiter = threading.Thread(target=lambda: blocked.append(pool.acquire(1, priority=3)))
    waiter.start()
    time.sleep(0.05)
    assert not blocked and pool.waiting == 1  # the reserved core stays free ...
    urgent = pool.acquire(1, priority=1)  # ... for its owner's level, at once
    pool.release(urgent)
    waiter.join(2)  # the owner went quiet: after the window the reservation lapses by itself
    assert len(blocked) == 1 and pool.in_use == 2
    pool.release(blocked[0])
    pool.release(low)
    pool.unreserve(reservation)


def test_reservations_never_close_the_last_core_to_lower_levels() -> None:
    pool = TokenPool("cpu", 2)
    for owner in ("a", "b", "c"):
        pool.reserve(owner, priority=1, tokens=2).touch()
    low = pool.acquire(1, priority=5)  # granted at once: at most capacity - 1 are reserved
    assert pool.in_use == 1
    pool.release(low)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux's /proc")
def test_executor_threads_carry_their_model_in_the_os_thread_name(engine: Engine) -> None:
    """`top -H` and /proc name the model a busy executor thread serves."""
    executors = [t for t in threading.enumerate() if t.name.startswith("edgeplex-add-")]
    assert executors
    deadline = time.monotonic() + 5
    for thread in executors:
        comm = Path(f"/proc/self/task/{thread.native_id}/comm")
        while comm.read_text().strip() != os_thread_name(thread.name.removeprefix("edgeplex-")):
            assert time.monotonic() < deadline, f"{thread.name} is named {comm.read_text().strip()!r} by the OS"
            time.sleep(0.01)


def test_long_model_names_keep_version_and_instance_in_the_os_thread_name() -> None:
    assert os_thread_name("yolov8n-1-2") == "yolov8n-1-2"
    assert os_thread_name("pose_landmark_full-1-2") == "pose_landma-1-2"
    assert os_thread_name("face-detector-12-3") == "face-detec-12-3"
    assert len(os_thread_name("x" * 40).encode()) == 15
