"""The backend contract: one small protocol every engine (ONNX Runtime, OpenVINO, ...) fulfils.

A Backend opens a Session for one execution config; a Session runs named numpy tensors and
reports the memory it took. Nothing here knows about requests, queues or transports.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class ExecutionConfig:
    """One measurable way to run a model: (backend, processor, variant, threads, max batch)."""

    backend: str = "onnxruntime"
    processor: str = "cpu"
    variant: str = "fp32"
    # Intra-op threads; 0 lets the backend choose (ONNX Runtime: one per physical core).
    threads: int = 1
    max_batch: int = 0

    def label(self) -> str:
        return f"{self.backend}/{self.processor}/{self.variant}/t{self.threads}/b{self.max_batch}"


@runtime_checkable
class Session(Protocol):
    """A loaded model, ready to run. `run` must release the GIL while it computes."""

    @property
    def memory_bytes(self) -> int:
        """Resident memory this session took when it was opened (measured, not guessed)."""

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run once; returns the requested outputs (all outputs when None), by name."""

    def close(self) -> None:
        """Release what the session holds. Further runs are an error."""


@runtime_checkable
class Backend(Protocol):
    """An engine that can open sessions on some processors of this machine."""

    name: str

    def available(self) -> bool:
        """True if the engine's library imports and can run here."""

    def version(self) -> str:
        """The engine's version, part of every profile's key."""

    def processors(self) -> list[str]:
        """The processors it can use on this machine, e.g. ["cpu", "cuda:0"]."""

    def open(self, model_path: Path, config: ExecutionConfig) -> Session:
        """Open `model_path` under `config`; raises BackendError with the reason on failure."""


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set size, from /proc (cheap enough to call around a load)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE


def measure_rss(fn: Callable[[], T]) -> tuple[T, int]:
    """Run `fn` and return its result with the resident-set growth it caused (never negative)."""
    before = resident_bytes()
    result = fn()
    return result, max(0, resident_bytes() - before)


def measure_held(fn: Callable[[], T]) -> tuple[T, int]:
    """Run `fn` and return its result with the resident memory it still holds afterwards: freed
    heap is given back before and after, so neither pages it reused nor its transient garbage
    (a parsed model file, say) count."""
    release_freed_memory(collect=False)
    before = resident_bytes()
    result = fn()
    release_freed_memory(collect=False)
    return result, max(0, resident_bytes() - before)


def release_freed_memory(collect: bool = True) -> None:
    """Give freed heap back to the OS so the next RSS delta is not hidden by reused pages.
    `collect`: run the cycle collector first (tens of ms in a big process: not on a load path)."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the session's own figure is the floor anyway
        pass


_primed: set[tuple[str, str]] = set()
_priming = threading.Lock()


def prime(backend: Backend, model_file: Path, config: ExecutionConfig,
          inputs: Mapping[str, np.ndarray] | None) -> None:
    """Open (and run once, if `inputs`) unmeasured, the first time a (backend, processor) is used
    in this process, so its one-off initialisation (runtime environment, plugins, device
    context, thread pools) is not charged to the first model measured."""
    with _priming:
        if (backend.name, config.processor) in _primed:
            return
        session = backend.open(model_file, config)
        _primed.add((backend.name, config.processor))
        try:
            if inputs is not None:
                session.run(inputs)
        except Exception:  # noqa: BLE001 - a warm-up the model refuses still initialised the runtime
            pass
        finally:
            session.close()
