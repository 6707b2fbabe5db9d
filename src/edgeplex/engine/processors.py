"""Processors: the compute resources of the box, discovered at start, each with its own pool.

A processor is named by kind and index — `cpu`, `cuda:0` (ONNX Runtime's CUDA / TensorRT
providers), `gpu:0` and `npu:0` (OpenVINO's devices), `remote:<name>` (a neighbour server) — and
has a capacity counted in tokens: the CPU its cores (an instance holds one per intra-op thread
while it computes), an accelerator the executions it runs at once. Resources are counted per
device, as Triton's rate limiter does (`src/rate_limiter.cc`): a placement on one processor
never takes another's capacity. Only CPU threads are pinned to the cores they were granted; an
accelerator's executor thread floats.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from ..backends import Backend, ExecutionConfig, registered_backends
from ..errors import BackendError
from .pools import Grant, TokenPool

CPU = "cpu"
# Executions an accelerator runs at once unless told otherwise: two lets one copy in while the
# other computes (Triton's usual two instances per GPU); an NPU runs one.
DEFAULT_CAPACITY = {"cuda": 2, "gpu": 2, "npu": 1, "remote": 4}


def kind_of(processor: str) -> str:
    """`cuda:0` -> `cuda`; `cpu` -> `cpu`."""
    return processor.partition(":")[0]


@dataclass(frozen=True)
class Processor:
    """One compute resource: its name, kind, capacity (tokens) and the backends that run on it."""

    name: str
    capacity: int
    backends: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return kind_of(self.name)

    @property
    def pinned(self) -> bool:
        """Whether computing threads are bound to the cores they hold (the CPU only)."""
        return self.kind == CPU

    def tokens(self, config: ExecutionConfig) -> int:
        """Tokens one execution under `config` holds: its threads on the CPU (0: every core), one
        elsewhere (an accelerator counts executions, not host threads)."""
        wanted = (config.threads or self.capacity) if self.kind == CPU else 1
        return max(1, min(wanted, self.capacity))


@dataclass(frozen=True)
class ProcessorView:
    """A processor as `/v2/edgeplex/processors`, the metrics and the dashboard report it."""

    name: str
    kind: str
    capacity: int
    in_use: int
    waiting: int
    peak: int
    busy_seconds: float
    backends: tuple[str, ...]
    models: tuple[str, ...]  # models with an instance placed on it

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "capacity": self.capacity, "in_use": self.in_use,
                "waiting": self.waiting, "peak": self.peak, "busy_seconds": self.busy_seconds,
                "backends": list(self.backends), "models": list(self.models)}


def discover(cores: int, backends: Iterable[Backend] | None = None,
             capacities: Mapping[str, int] | None = None) -> list[Processor]:
    """The processors this machine offers: the CPU (`cores`), then every other processor an
    available backend can use. `capacities` overrides a processor's capacity by name."""
    found: dict[str, list[str]] = {CPU: []}
    for backend in registered_backends() if backends is None else backends:
        if not backend.available():
            continue
        for name in backend.processors():
            found.setdefault(name, []).append(backend.name)
    overrides = capacities or {}
    processors = []
    for name, names in found.items():
        default = cores if name == CPU else DEFAULT_CAPACITY.get(kind_of(name), 1)
        processors.append(Processor(name, max(1, int(overrides.get(name, default))), tuple(names)))
    return processors


class Processors:
    """The processors of one engine and the token pool of each: the only place tokens are lent."""

    def __init__(self, processors: Iterable[Processor]) -> None:
        self._processors = {p.name: p for p in processors}
        if CPU not in self._processors:
            raise ValueError("the processors must include the cpu")
        cpu_ids = sorted(os.sched_getaffinity(0))
        self._pools = {p.name: TokenPool(p.name, p.capacity, cpu_ids if p.pinned else None)
                       for p in self._processors.values()}

    def __iter__(self) -> Iterator[Processor]:
        return iter(self._processors.values())

    def __contains__(self, name: object) -> bool:
        return name in self._processors

    def get(self, name: str) -> Processor:
        processor = self._processors.get(name)
        if processor is None:
            raise BackendError(f"processor '{name}' is not on this machine (processors: {', '.join(self._processors)})")
        return processor

    def pool(self, name: str) -> TokenPool:
        self.get(name)
        return self._pools[name]

    def check(self, config: ExecutionConfig) -> None:
        """BackendError unless `config`'s backend can run on its processor here."""
        processor = self.get(config.processor)
        if processor.backends and config.backend not in processor.backends:
            raise BackendError(f"backend '{config.backend}' cannot run on processor '{config.processor}' "
                               f"(there: {', '.join(processor.backends)})")

    def capacities(self) -> dict[str, int]:
        return {name: p.capacity for name, p in self._processors.items()}

    @property
    def cores(self) -> int:
        return self._processors[CPU].capacity

    @contextmanager
    def hold(self, config: ExecutionConfig, priority: int) -> Iterator[Grant]:
        """Hold what one execution under `config` takes of its processor, at `priority` (work
        outside the request path, such as profiling, waits behind every request)."""
        processor = self.get(config.processor)
        with self._pools[processor.name].hold(processor.tokens(config), priority) as grant:
            yield grant

    def views(self, placed: Mapping[str, Iterable[str]]) -> list[ProcessorView]:
        """Each processor's state now; `placed`: processor -> models with instances on it."""
        views = []
        for name, processor in self._processors.items():
            pool = self._pools[name]
            views.append(ProcessorView(name, processor.kind, processor.capacity, pool.in_use, pool.waiting, pool.peak,
                                       pool.busy_seconds, processor.backends, tuple(sorted(set(placed.get(name, ()))))))
        return views
