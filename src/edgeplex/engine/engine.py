"""Engine: the protocol-independent data plane, and the only object the transports and the tuning
talk to. HTTP and gRPC are thin adapters over it (as MLServer's endpoints and servicers over its
`DataPlane`); the allocator and the dashboard read typed snapshots of it and act through its
commands; tests and benchmarks drive it in-process, without a socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..backends import ExecutionConfig
from ..config import ModelConfig, default_cores
from ..errors import EdgeplexError, MemoryFull, ModelEvicted, ServerShuttingDown
from ..repository import Repository
from ..variant_layout import list_variants, variant_files, variant_summary
from .clock import SYSTEM_CLOCK, Clock
from .completions import loop_completions
from .manager import RELOAD_WAIT_S, ModelManager
from .placement import Explanation, ModelPlacement, config_as_placed
from .pools import Grant
from .processors import Processor, Processors, ProcessorView, discover
from .registry import READY, ModelView
from .request import InferRequest, InferResponse
from .scheduler import discipline
from .stats import ConfigCounters, ModelStats

log = logging.getLogger(__name__)

RELOAD_TRIES = 3  # a request whose model is evicted again between its reload and its submit retries


@dataclass(frozen=True)
class Memory:
    used: int
    budget: int | None


@dataclass(frozen=True)
class VersionActivity:
    """One model version's counters now: what the metrics, the dashboard and the monitor read."""

    model: str
    version: str
    serving: bool  # a runner serves it now (False while evicted: counters kept, queue empty)
    submitted: int  # requests admitted to its queue, ever (this runner's life)
    queued: int
    memory_bytes: int
    stats: ModelStats  # cumulative counters, kept across evictions
    # Per execution config, what its instances computed (this runner's life: a reload restarts it).
    configs: Mapping[ExecutionConfig, ConfigCounters] = field(default_factory=dict)
    runner_id: int = 0  # which runner's life the counters belong to (0: none serving)


class Engine:
    """Loads models from a repository and runs requests on them, concurrently, on the
    processors of the box (`cores` of the CPU, and every accelerator a backend finds)."""

    def __init__(
        self, repository: Path, cores: int | None = None, memory_budget: int | None = None,
        scheduling: str = "priority", processors: list[Processor] | None = None,
        capacities: Mapping[str, int] | None = None, clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`scheduling`: "priority" (priority level, then earliest deadline) or "fifo" (arrival).
        `processors`: what to run on (default: discovered); `capacities`: override a discovered
        processor's capacity by name; `clock`: the time the engine's timers run on."""
        self.scheduling = discipline(scheduling)
        self.clock = clock
        self._processors = Processors(processors or discover(cores or default_cores(), capacities=capacities))
        self._manager = ModelManager(Repository(repository), self._processors, memory_budget, self.scheduling, clock)
        self._closed = False
        self._wanted: set[str] = set()  # models asked to load and not unloaded since: readiness waits on them

    @property
    def cores(self) -> int:
        return self._processors.cores

    @property
    def manager(self) -> ModelManager:
        """The model lifecycle, for the engine's own tests; the server and tuning never use it."""
        return self._manager

    @property
    def pools(self) -> dict[str, Any]:
        """The token pools by processor, for the engine's own tests."""
        return {p.name: self._processors.pool(p.name) for p in self._processors}

    # -- queries -------------------------------------------------------------------------------
    def ready(self, strict: bool = False) -> bool:
        """Server readiness: up and not draining; `strict` (Triton's `--strict-readiness`) also
        needs every model asked to load to be servable. Not strict, a model that failed to load
        makes only itself not ready, never the whole server."""
        return not self._closed and not (strict and self.not_ready())

    def not_ready(self) -> dict[str, str]:
        """Models asked to load (at start or over the repository API, and not unloaded since)
        that cannot take requests now, with the reason: what strict readiness waits on."""
        missing: dict[str, str] = {}
        for name in sorted(self._wanted):
            try:
                view = self._manager.state(name).view()
            except EdgeplexError as exc:
                missing[name] = exc.message
                continue
            if not view.servable:
                missing[name] = view.reason or view.state.lower()
        return missing

    def is_ready(self, name: str, version: str = "") -> bool:
        """Ready to take requests: loaded, or evicted for memory and loaded again by its next one."""
        try:
            self._manager.servable(name, version)
        except EdgeplexError:
            return False
        return True

    def check_servable(self, name: str, version: str = "") -> None:
        """Raise what a request for `name` would get if it cannot be served (404 unknown model
        or version, 503 with the reason); nothing for a servable one."""
        self._manager.servable(name, version)

    def models(self) -> list[ModelView]:
        """Every model of the repository: loaded, evicted, failed or not loaded, as snapshots."""
        return [state.view() for state in self._manager.states()]

    def model(self, name: str) -> ModelView:
        """One model the engine has tried to load (ModelNotFound otherwise)."""
        return self._manager.state(name).view()

    def config(self, name: str, version: str = "") -> ModelConfig:
        """The model's config as it runs now: the operator's, with the backend, processor,
        threads, instance count, batching and variant of its placement (`config_as_placed`)."""
        config = self.operator_config(name, version)
        try:
            view = self._manager.state(name).view()
        except EdgeplexError:  # never loaded: as its file says
            return config
        return config_as_placed(config, view.placement) if view.servable else config

    def operator_config(self, name: str, version: str = "") -> ModelConfig:
        """The model's config as its file states it (completed from the model's signature)."""
        if version:
            return self._manager.servable(name, version)[0]
        return self._manager.config(name)

    def metadata(self, name: str, version: str = "", variants: bool = False) -> dict[str, Any]:
        """KServe V2 model metadata (shapes include the batch dimension as -1). `variants`: add
        `parameters.variants` (the version's variants, those in use marked) — JSON only: the
        gRPC message has no room for them."""
        config, versions = self._manager.servable(name, version)

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": config.full_dims(s)} for s in specs]

        document: dict[str, Any] = {
            "name": name,
            "versions": versions,
            "platform": f"{config_as_placed(config, self._manager.state(name).placement).backend}_onnx",
            "inputs": tensors(config.inputs),
            "outputs": tensors(config.outputs),
        }
        if variants:
            placement = self._manager.state(name).placement
            in_use = {g.config.variant for g in placement.groups} if placement is not None else set()
            folder = self._manager.repository.source(name).versions[int(version or versions[-1])]
            found = list_variants(folder)
            document["parameters"] = {"variants": [variant_summary(info, info.variant in in_use)
                                                   for info in found.values()],
                                      "in_use": sorted(in_use)}
        return document

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton statistics entries: one model (and version) or every loaded or evicted one."""
        if name:
            self._manager.servable(name, version)  # 404 / 503 with the reason
            kept = self._manager.state(name).stats  # kept across evictions
            return [kept[v].as_triton() for v in sorted(kept, key=int) if not version or v == version]
        return [stats.as_triton() for s in self._manager.states() if s.state == READY or s.evicted
                for _, stats in sorted(s.stats.items())]

    def activity(self) -> list[VersionActivity]:
        """The counters of every version of every loaded or evicted model."""
        found = []
        for state in self._manager.states():
            if state.state != READY and not state.evicted:  # unloaded: its series go, as in Triton
                continue
            runners = dict(state.runners)
            for version, stats in sorted(state.stats.items()):
                runner = runners.get(version)
                found.append(VersionActivity(
                    state.name, version, runner is not None, runner.submitted if runner else 0,
                    len(runner.queue) if runner else 0, runner.memory_bytes if runner else 0, stats,
                    runner.config_counters() if runner else {}, id(runner) if runner else 0))
        return found

    def memory(self) -> Memory:
        return Memory(self._manager.memory_used(), self._manager.memory_budget)

    def processors(self) -> list[ProcessorView]:
        """Each processor with its capacity, use and the models placed on it."""
        placed: dict[str, list[str]] = {}
        for state in self._manager.states():
            if state.state == READY and state.placement is not None:
                for processor in state.placement.processors:
                    placed.setdefault(processor, []).append(state.name)
        return self._processors.views(placed)

    def capacities(self) -> dict[str, int]:
        """Tokens per processor: what the planner divides."""
        return self._processors.capacities()

    def model_files(self, name: str) -> dict[str, tuple[Path, float]]:
        """variant -> (file, fidelity loss) of the latest version of a model ("fp32" = the original)."""
        source = self._manager.repository.source(name)
        if not source.versions:
            return {}
        config = self.operator_config(name)
        return variant_files(source.versions[source.latest_version], config.default_model_filename)

    def placement_report(self) -> list[dict[str, Any]]:
        """Per model: how it runs now, the capacity expected of it, and the last decision."""
        report = []
        for view in self.models():
            placement = view.placement
            last = view.decisions[-1] if view.decisions else None
            report.append({
                "model": view.name,
                "state": view.state,
                "groups": [
                    {"backend": g.config.backend, "processor": g.config.processor, "variant": g.config.variant,
                     "threads": g.config.threads, "max_batch": g.config.max_batch, "instances": g.count}
                    for g in (placement.groups if placement else [])
                ],
                "estimated_capacity": placement.capacity if placement else 0.0,
                "observed_slowdown": placement.slowdown if placement else 1.0,
                "taking_turns": placement.turn if placement else False,
                "memory_bytes": view.memory_bytes,
                "reason": placement.reason if placement else "",
                "explanation": _explanation(view).as_dict(),
                "last_decision": {"at": last.at, "placement": last.placement, "reason": last.reason} if last else None,
            })
        return report

    # -- commands ------------------------------------------------------------------------------
    def load_all(self, names: list[str] | None = None) -> dict[str, str]:
        """Load `names` (default: every model in the repository); returns failures by name."""
        wanted = names if names is not None else list(self._manager.repository.scan())
        failures: dict[str, str] = {}
        for name in wanted:
            self._wanted.add(name)
            try:
                self._manager.load(name)
            except EdgeplexError as exc:
                failures[name] = exc.message
        return failures

    def load(self, name: str) -> None:
        self._manager.repository.source(name)  # 404 for a model the repository lacks: never waited on
        self._wanted.add(name)
        self._manager.load(name)

    def unload(self, name: str) -> None:
        try:
            self._manager.unload(name)
        finally:
            self._wanted.discard(name)

    def apply(self, placement: ModelPlacement) -> None:
        """Run a model under a new placement (warm swap: nothing in flight is lost)."""
        self._manager.apply(placement)

    def restore(self, name: str) -> None:
        """Bring a model evicted for memory back now if its turn allows (not counted as a
        request's reload); MemoryFull when the resident models' turns are not over."""
        self._manager.ensure_loaded(name, on_request=False, wait_s=0.0)

    def report_slowdown(self, name: str, slowdown: float) -> None:
        """The slowdown observed of a model's placement with the other tenants (shown live)."""
        self._manager.set_slowdown(name, slowdown)

    def explain(self, name: str, explanation: Explanation) -> None:
        """Why a model runs as it does, as the allocator reasons it (shown in the placement report)."""
        self._manager.set_explanation(name, explanation)

    @contextmanager
    def compute_slot(self, config: Any, priority: int) -> Iterator[Grant]:
        """Hold what one execution under `config` (an ExecutionConfig) takes of its processor, at
        `priority`: work beside the request path (profiling) never oversubscribes a processor."""
        with self._processors.hold(config, priority) as grant:
            yield grant

    # -- inference -----------------------------------------------------------------------------
    def submit(self, request: InferRequest) -> Future[InferResponse]:
        """Validate and queue a request; the future resolves when it has run. A model evicted
        for memory is loaded again first, waiting for its turn within the request's timeout
        (blocking: use `infer_async` from an event loop)."""
        arrived = self.clock.monotonic()
        give_up = arrived + _reload_wait_s(request)
        for attempt in range(RELOAD_TRIES):
            try:
                return self.submit_nowait(self._less_wait(request, arrived))
            except ModelEvicted:
                if attempt == RELOAD_TRIES - 1:
                    raise
                self._manager.ensure_loaded(request.model_name, wait_s=max(give_up - self.clock.monotonic(), 0.0))
        raise AssertionError("unreachable")

    def infer(self, request: InferRequest) -> InferResponse:
        """Run a request and wait for it (from any thread but an event loop's)."""
        return self.submit(request).result()

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """Run a request without blocking the event loop: a reload happens in a worker thread,
        and waiting for the model's turn in memory holds no thread at all."""
        arrived = self.clock.monotonic()
        give_up = arrived + _reload_wait_s(request)
        for attempt in range(RELOAD_TRIES):
            try:
                future = self.submit_nowait(self._less_wait(request, arrived))
                break
            except ModelEvicted:
                if attempt == RELOAD_TRIES - 1:
                    raise
            while True:
                try:
                    await asyncio.to_thread(self._manager.ensure_loaded, request.model_name, True, 0.0)
                    break
                except MemoryFull as exc:
                    if self.clock.monotonic() + exc.retry_in_s > give_up:
                        raise
                    await asyncio.sleep(max(exc.retry_in_s, 0.001))
        # One loop wake-up per burst of results, not one per result (engine/completions.py).
        return await loop_completions(asyncio.get_running_loop()).watch(future)

    def submit_nowait(self, request: InferRequest) -> Future[InferResponse]:
        """Like `submit`, but raises ModelEvicted instead of loading the model again."""
        if self._closed:
            raise ServerShuttingDown("the server is shutting down")
        return self._manager.runner(request.model_name, request.model_version).submit(request)

    def close(self) -> None:
        """Refuse new requests, finish the queued ones, release every model."""
        self._closed = True
        self._manager.close()

    def _less_wait(self, request: InferRequest, arrived: float) -> InferRequest:
        """The request with its timeout less the time it waited for its model to be loaded again:
        the caller's deadline runs from its arrival, not from the end of that wait."""
        waited_us = int((self.clock.monotonic() - arrived) * 1e6)
        if request.timeout_us and waited_us > 1000:
            return replace(request, timeout_us=max(request.timeout_us - waited_us, 1))
        return request


def _reload_wait_s(request: InferRequest) -> float:
    """How long a request may wait for its evicted model's turn: its own timeout, else a bound."""
    return request.timeout_us / 1e6 if request.timeout_us else RELOAD_WAIT_S


def _explanation(view: ModelView) -> Explanation:
    """The allocator's explanation of a model's placement, else what its state says."""
    placement = view.placement
    bound = tuple(view.binding.describe())
    if placement is None or not view.servable:  # failed or unloaded: why, not a placement that does not run
        return Explanation(view.reason or view.state.lower(), "default", bound)
    if placement.explanation is not None:
        return placement.explanation
    runs = " + ".join(f"{g.count}x {g.config.backend} t{g.config.threads}" for g in placement.groups)
    return Explanation(f"{runs}: {placement.reason or 'model config'}", "config", bound)
