"""Processors are first-class: each has its own token pool, its own capacity and its own
statistics, and a placement on one never takes another's capacity.

The machine has no accelerator, so a stand-in plays one: ONNX Runtime computing for real on the
host, declared by its backend as a processor of its own kind (`standin:0`, capacity 1), beside
the CPU — the same path a CUDA device takes through ONNX Runtime's providers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from models import slow_model, write_config
from standins import WrappedSession

from edgeplex.backends import ExecutionConfig, register_backend, unregister_backend
from edgeplex.backends.onnxruntime import OnnxRuntimeBackend
from edgeplex.engine import Engine, InferRequest, InstanceGroup, ModelPlacement
from edgeplex.engine.processors import Processor, discover
from edgeplex.errors import BackendError
from edgeplex.server.http import build_app

X = {"x": np.ones((1, 256), np.float32)}
ACCELERATOR = "standin:0"


class Concurrency:
    """How many executions run at once on one processor, and the most ever."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *_: object) -> None:
        with self.lock:
            self.now -= 1


class _Counted(WrappedSession):
    """A session whose runs are counted (everything else is the real ONNX Runtime session's)."""

    def __init__(self, session: Any, counter: Concurrency) -> None:
        super().__init__(session)
        self._counter = counter

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        with self._counter:
            return super().run(inputs, outputs)


class StandInAccelerator(OnnxRuntimeBackend):
    """An accelerator for a machine without one: its own processor, ONNX Runtime underneath."""

    name = "standin"

    def __init__(self) -> None:
        self.running = Concurrency()

    def processors(self) -> list[str]:
        return [ACCELERATOR]

    def providers_for(self, processor: str) -> list[str | tuple[str, dict[str, str]]]:
        if processor != ACCELERATOR:
            raise BackendError(f"standin cannot use processor '{processor}'")
        return ["CPUExecutionProvider"]

    def open(self, model_path: Path, config: ExecutionConfig) -> Any:
        return _Counted(super().open(model_path, replace(config, threads=1)), self.running)


@pytest.fixture
def standin() -> Iterator[StandInAccelerator]:
    backend = StandInAccelerator()
    register_backend(backend)
    try:
        yield backend
    finally:
        unregister_backend(backend.name)


@pytest.fixture
def engine(tmp_path: Path, standin: StandInAccelerator) -> Iterator[Engine]:
    for name in ("a", "b"):
        slow_model(tmp_path / name / "1" / "model.onnx", size=256, layers=24)
        write_config(tmp_path / name, max_batch_size=0)
    engine = Engine(tmp_path, cores=2)
    assert engine.load_all() == {}
    on_accelerator = ExecutionConfig("standin", ACCELERATOR, "fp32", 1, 0)
    engine.apply(ModelPlacement("a", [InstanceGroup(on_accelerator, 3)], reason="test: the accelerator"))
    engine.apply(ModelPlacement("b", [InstanceGroup(ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 0), 2)]))
    try:
        yield engine
    finally:
        engine.close()


def test_discovery_finds_the_cpu_and_every_processor_a_backend_offers(standin: StandInAccelerator) -> None:
    found = {p.name: p for p in discover(3)}
    assert found["cpu"].capacity == 3 and "onnxruntime" in found["cpu"].backends and found["cpu"].pinned
    assert found[ACCELERATOR] == Processor(ACCELERATOR, 1, ("standin",))
    assert found[ACCELERATOR].kind == "standin" and not found[ACCELERATOR].pinned
    assert {p.name: p.capacity for p in discover(3, capacities={ACCELERATOR: 4})}[ACCELERATOR] == 4


def test_a_placement_on_one_processor_never_takes_another_s_capacity(engine: Engine, standin: StandInAccelerator) -> None:
    """Three instances on a processor of capacity 1 run one at a time; the CPU's two cores serve
    the other model meanwhile; with every CPU token held elsewhere, the accelerator still serves."""
    pools = engine.pools
    for _ in range(3):  # bursts until the CPU model has run on both cores at once (a busy box may delay it)
        with ThreadPoolExecutor(12) as clients:
            futures = [clients.submit(engine.infer, InferRequest(m, X)) for _ in range(12) for m in ("a", "b")]
            assert all(f.result(60).outputs["y"].shape == (1, 256) for f in futures)
        if pools["cpu"].peak == 2:
            break
    assert standin.running.most == 1 and pools[ACCELERATOR].peak == 1
    assert pools["cpu"].peak == 2
    views = {p.name: p for p in engine.processors()}
    assert views[ACCELERATOR].models == ("a",) and views["cpu"].models == ("b",)
    assert views[ACCELERATOR].busy_seconds > 0

    taken = pools["cpu"].acquire(2)  # every core busy with someone else's work
    try:
        assert engine.submit(InferRequest("a", X)).result(30).outputs["y"].shape == (1, 256)
        waiting = engine.submit(InferRequest("b", X))
        with pytest.raises(TimeoutError):
            waiting.result(0.5)  # b needs a core: it waits
    finally:
        pools["cpu"].release(taken)
    assert waiting.result(30).outputs["y"].shape == (1, 256)


def test_processors_are_listed_with_their_use_and_labelled_in_the_metrics(engine: Engine) -> None:
    engine.infer(InferRequest("a", X))

    async def fetch() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=build_app(engine))
        async with httpx.AsyncClient(transport=transport, base_url="http://edgeplex") as client:
            return [await client.get(p) for p in ("/v2/edgeplex/processors", "/metrics", "/v2/edgeplex/placement")]

    listing, metrics, placement = asyncio.run(fetch())
    processors = {p["name"]: p for p in listing.json()["processors"]}
    assert processors["cpu"]["kind"] == "cpu" and processors["cpu"]["capacity"] == 2
    assert processors[ACCELERATOR]["kind"] == "standin" and processors[ACCELERATOR]["capacity"] == 1
    assert processors[ACCELERATOR]["models"] == ["a"] and processors[ACCELERATOR]["busy_seconds"] > 0
    text = metrics.text
    assert 'edgeplex_processor_tokens_capacity{kind="standin",processor="standin:0"} 1.0' in text
    assert 'edgeplex_processor_tokens_capacity{kind="cpu",processor="cpu"} 2.0' in text
    report = {m["model"]: m for m in placement.json()["models"]}
    assert report["a"]["groups"][0]["processor"] == ACCELERATOR


def test_a_processor_the_machine_lacks_runs_on_the_cpu_and_says_why(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # Issue 15: a config that asks for what cannot run says why and what runs instead.
    slow_model(tmp_path / "g" / "1" / "model.onnx", size=16, layers=1)
    write_config(tmp_path / "g", max_batch_size=0, processor="cuda:7")
    engine = Engine(tmp_path, cores=1)
    try:
        with caplog.at_level(logging.WARNING, logger="edgeplex"):
            assert engine.load_all() == {}
        placement = engine.model("g").placement
        assert placement is not None and placement.groups[0].config.processor == "cpu"
        assert "processor 'cuda:7' is not on this machine (processors: cpu" in placement.reason
        assert "running on cpu instead" in placement.reason
        assert [r.getMessage() for r in caplog.records].count(
            f"model g: its config asks for what cannot run here: {placement.reason.removeprefix('model config; ')}") == 1
        assert engine.is_ready("g")
        assert engine.config("g").processor == "cpu" and engine.operator_config("g").processor == "cuda:7"
    finally:
        engine.close()


def test_a_backend_refuses_a_processor_it_cannot_run_on(engine: Engine) -> None:
    wrong = ExecutionConfig("onnxruntime", ACCELERATOR, "fp32", 1, 0)
    with pytest.raises(BackendError, match="backend 'onnxruntime' cannot run on processor 'standin:0'"):
        engine.apply(ModelPlacement("b", [InstanceGroup(wrong, 1)]))
    assert engine.infer(InferRequest("b", X)).outputs["y"].shape == (1, 256)  # it keeps what it ran
