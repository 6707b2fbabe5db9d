"""Engine: the protocol-independent data plane. HTTP and gRPC are thin adapters over it;
tests and benchmarks drive it in-process, without a socket."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import ModelConfig, default_cores
from ..errors import EdgeplexError, MemoryFull, ModelEvicted, ServerShuttingDown
from ..repository import Repository
from .executor import TokenPool
from .manager import RELOAD_WAIT_S, ModelManager, ModelState
from .placement import ModelPlacement
from .request import InferRequest, InferResponse
from .scheduler import discipline

log = logging.getLogger(__name__)

RELOAD_TRIES = 3  # a request whose model is evicted again between its reload and its submit retries


class Engine:
    """Loads models from a repository and runs requests on them, concurrently and within `cores`."""

    def __init__(
        self, repository: Path, cores: int | None = None, memory_budget: int | None = None,
        scheduling: str = "priority",
    ) -> None:
        """`scheduling`: "priority" (priority level, then earliest deadline) or "fifo" (arrival)."""
        self.cores = cores or default_cores()
        self.scheduling = discipline(scheduling)
        self.pools = {"cpu": TokenPool("cpu", self.cores, sorted(os.sched_getaffinity(0)))}
        self.manager = ModelManager(Repository(repository), self.pools, memory_budget, self.scheduling)
        self._closed = False

    # -- model control -------------------------------------------------------------------------
    def load_all(self, names: list[str] | None = None) -> dict[str, str]:
        """Load `names` (default: every model in the repository); returns failures by name."""
        wanted = names if names is not None else list(self.manager.repository.scan())
        failures: dict[str, str] = {}
        for name in wanted:
            try:
                self.manager.load(name)
            except EdgeplexError as exc:
                failures[name] = exc.message
        return failures

    def load(self, name: str) -> None:
        self.manager.load(name)

    def unload(self, name: str) -> None:
        self.manager.unload(name)

    def models(self) -> list[ModelState]:
        return self.manager.states()

    def is_ready(self, name: str, version: str = "") -> bool:
        """Ready to take requests: loaded, or evicted for memory and loaded again by its next one."""
        try:
            self.manager.servable(name, version)
        except EdgeplexError:
            return False
        return True

    def ready(self) -> bool:
        """Server readiness: up and not draining. Like Triton's `--strict-readiness=false`, a model
        that failed to load makes only itself not ready, never the whole server."""
        return not self._closed

    def config(self, name: str, version: str = "") -> ModelConfig:
        if version:
            return self.manager.servable(name, version)[0]
        return self.manager.config(name)

    def metadata(self, name: str, version: str = "") -> dict[str, Any]:
        """KServe V2 model metadata (shapes include the batch dimension as -1)."""
        config, versions = self.manager.servable(name, version)

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": s.name, "datatype": s.datatype, "shape": config.full_dims(s)} for s in specs]

        return {
            "name": name,
            "versions": versions,
            "platform": f"{config.backend}_onnx",
            "inputs": tensors(config.inputs),
            "outputs": tensors(config.outputs),
        }

    def statistics(self, name: str = "", version: str = "") -> list[dict[str, Any]]:
        """Triton statistics entries: one model (and version) or every loaded one."""
        if name:
            self.manager.servable(name, version)  # 404 / 503 with the reason
            kept = self.manager.state(name).stats  # kept across evictions
            return [kept[v].as_triton() for v in sorted(kept, key=int) if not version or v == version]
        return [stats.as_triton() for s in self.manager.states() if s.state == "READY" or s.evicted
                for _, stats in sorted(s.stats.items())]

    # -- inference -----------------------------------------------------------------------------
    def placement_report(self) -> list[dict[str, Any]]:
        """Per model: how it runs now, the capacity expected of it, and the last decision."""
        report = []
        for state in self.manager.states():
            placement = state.placement
            last = state.decisions[-1] if state.decisions else None
            report.append({
                "model": state.name,
                "state": state.state,
                "groups": [
                    {"backend": g.config.backend, "processor": g.config.processor, "variant": g.config.variant,
                     "threads": g.config.threads, "max_batch": g.config.max_batch, "instances": g.count}
                    for g in (placement.groups if placement else [])
                ],
                "estimated_capacity": placement.capacity if placement else 0.0,
                "observed_slowdown": placement.extra.get("slowdown", 1.0) if placement else 1.0,
                "memory_bytes": state.memory_bytes if state.state == "READY" else 0,
                "reason": placement.reason if placement else "",
                "last_decision": {"at": last.at, "placement": last.placement, "reason": last.reason} if last else None,
            })
        return report

    def apply(self, placement: ModelPlacement) -> None:
        """Run a model under a new placement (warm swap: nothing in flight is lost)."""
        self.manager.apply(placement)

    def submit(self, request: InferRequest) -> Future[InferResponse]:
        """Validate and queue a request; the future resolves when it has run. A model evicted
        for memory is loaded again first, waiting for its turn within the request's timeout
        (blocking: use `infer_async` from an event loop)."""
        arrived = time.monotonic()
        give_up = arrived + _reload_wait_s(request)
        for attempt in range(RELOAD_TRIES):
            try:
                return self.submit_nowait(_less_wait(request, arrived))
            except ModelEvicted:
                if attempt == RELOAD_TRIES - 1:
                    raise
                self.manager.ensure_loaded(request.model_name, wait_s=max(give_up - time.monotonic(), 0.0))
        raise AssertionError("unreachable")

    def infer(self, request: InferRequest) -> InferResponse:
        """Run a request and wait for it (from any thread but an event loop's)."""
        return self.submit(request).result()

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """Run a request without blocking the event loop: a reload happens in a worker thread,
        and waiting for the model's turn in memory holds no thread at all."""
        arrived = time.monotonic()
        give_up = arrived + _reload_wait_s(request)
        for attempt in range(RELOAD_TRIES):
            try:
                future = self.submit_nowait(_less_wait(request, arrived))
                break
            except ModelEvicted:
                if attempt == RELOAD_TRIES - 1:
                    raise
            while True:
                try:
                    await asyncio.to_thread(self.manager.ensure_loaded, request.model_name, True, 0.0)
                    break
                except MemoryFull as exc:
                    if time.monotonic() + exc.retry_in_s > give_up:
                        raise
                    await asyncio.sleep(max(exc.retry_in_s, 0.001))
        return await asyncio.wrap_future(future)

    def submit_nowait(self, request: InferRequest) -> Future[InferResponse]:
        """Like `submit`, but raises ModelEvicted instead of loading the model again."""
        if self._closed:
            raise ServerShuttingDown("the server is shutting down")
        return self.manager.runner(request.model_name, request.model_version).submit(request)

    def close(self) -> None:
        """Refuse new requests, finish the queued ones, release every model."""
        self._closed = True
        self.manager.close()


def _reload_wait_s(request: InferRequest) -> float:
    """How long a request may wait for its evicted model's turn: its own timeout, else a bound."""
    return request.timeout_us / 1e6 if request.timeout_us else RELOAD_WAIT_S


def _less_wait(request: InferRequest, arrived: float) -> InferRequest:
    """The request with its timeout less the time it waited for its model to be loaded again:
    the caller's deadline runs from its arrival, not from the end of that wait."""
    waited_us = int((time.monotonic() - arrived) * 1e6)
    if request.timeout_us and waited_us > 1000:
        return replace(request, timeout_us=max(request.timeout_us - waited_us, 1))
    return request
