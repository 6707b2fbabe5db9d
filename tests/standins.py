"""Backends that stand in for what this machine lacks or cannot control: real ONNX Runtime
underneath, with a known service time per config (a synthetic one the tests can reason about)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeplex.backends import ExecutionConfig, register_backend, unregister_backend
from edgeplex.backends.onnxruntime import OnnxRuntimeBackend
from edgeplex.errors import BackendError


class WrappedSession:
    """A real session with its `run` changed by a subclass; memory and close are the real ones."""

    def __init__(self, session: Any) -> None:
        self._session = session

    @property
    def memory_bytes(self) -> int:
        return int(self._session.memory_bytes)

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return dict(self._session.run(inputs, outputs))

    def close(self) -> None:
        self._session.close()


class _Paced(WrappedSession):
    """A session that takes a fixed time per run (a synthetic service time), then computes."""

    def __init__(self, session: Any, seconds: float) -> None:
        super().__init__(session)
        self._seconds = seconds

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        time.sleep(self._seconds)
        return super().run(inputs, outputs)


class PacedBackend(OnnxRuntimeBackend):
    """ONNX Runtime with a known service time per thread count: 1 thread 8 ms, 2 threads 30 ms."""

    name = "paced"
    SECONDS = {1: 0.008, 2: 0.030}

    def open(self, model_path: Path, config: ExecutionConfig) -> Any:
        session = super().open(model_path, ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 0))
        return _Paced(session, self.SECONDS[config.threads])


@pytest.fixture
def paced() -> Iterator[None]:
    register_backend(PacedBackend())
    try:
        yield
    finally:
        unregister_backend("paced")


class _Broken(WrappedSession):
    """A session whose every run fails at once (a config that loads but cannot run)."""

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        raise BackendError("this stand-in instance always fails")


class BrokenBackend(OnnxRuntimeBackend):
    """Opens fine, fails every run, instantly."""

    name = "broken"

    def open(self, model_path: Path, config: ExecutionConfig) -> Any:
        return _Broken(super().open(model_path, ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 0)))


@pytest.fixture
def broken() -> Iterator[None]:
    register_backend(BrokenBackend())
    try:
        yield
    finally:
        unregister_backend("broken")
