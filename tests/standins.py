"""Backends that stand in for what this machine lacks or cannot control: real ONNX Runtime
underneath, with a known service time per config (a synthetic one the tests can reason about)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeplex.backends as backends
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


class FakeSession:
    """A real session reporting a fixed memory figure; its runs fail on request."""

    def __init__(self, inner: object, fail: bool) -> None:
        self.inner, self.fail = inner, fail

    @property
    def memory_bytes(self) -> int:
        return 1000

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        if self.fail:
            raise BackendError("fake: run failed")
        return self.inner.run(inputs, outputs)  # type: ignore[attr-defined, no-any-return]

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


class CountingBackend:
    """ONNX Runtime underneath; counts opens and fails on request."""

    def __init__(self, name: str = "counting", processors: Sequence[str] = ("cpu",), fail_open: int = 0,
                 fail_run: int = 0) -> None:
        self.name, self._processors = name, list(processors)
        self.fail_open, self.fail_run = fail_open, fail_run
        self.opens = 0
        self.inner = OnnxRuntimeBackend()

    def available(self) -> bool:
        return True

    def version(self) -> str:
        return "fake-1"

    def processors(self) -> list[str]:
        return self._processors

    def open(self, model_path: Path, config: ExecutionConfig) -> FakeSession:
        self.opens += 1
        if config.threads == self.fail_open:
            raise BackendError(f"fake: cannot open with {config.threads} threads")
        session = self.inner.open(model_path, replace(config, backend="onnxruntime", processor="cpu"))
        return FakeSession(session, config.threads == self.fail_run)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> CountingBackend:
    backend = CountingBackend()
    monkeypatch.setitem(backends._BACKENDS, backend.name, backend)
    monkeypatch.setattr(backends.base, "_primed", set())
    return backend
