"""ModelManager: loads, places, evicts and unloads models, and keeps their state.

A model that fails to load is kept as UNAVAILABLE with its reason, visible in the repository
index; it never stops the others. Loads are serialised so that each model's resident-set
delta (its measured memory) is its own. A placement change (or a reload) opens and warms the
new sessions before the old ones retire, under the same queue: no request is lost, refused or
answered twice because of it. Within a memory budget, loading evicts the least recently used
model that is neither pinned nor busy; a request for an evicted model loads it again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..backends import Backend, ExecutionConfig, get_backend
from ..backends.base import measure_rss
from ..config import ModelConfig
from ..errors import BackendError, EdgeplexError, ModelNotFound, ModelNotReady
from ..repository import ModelSource, Repository
from .executor import TokenPool
from .placement import InstanceGroup, ModelPlacement
from .runner import Instance, ModelRunner, warmup_inputs
from .scheduler import Discipline
from .stats import ModelStats

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 60.0  # back-off of failed reloads
EVICTED_REASON = "evicted to stay within the memory budget; loaded again on its next request"


class ModelEvicted(ModelNotReady):
    """The model was evicted for memory; the engine loads it again and retries."""


@dataclass
class Decision:
    """One placement change of a model, for the placement endpoint and the logs."""

    at: float
    placement: str
    reason: str


@dataclass
class ModelState:
    """What the repository index and the placement endpoint report for a model."""

    name: str
    state: str = UNAVAILABLE
    reason: str = ""
    config: ModelConfig | None = None
    runners: dict[str, ModelRunner] = field(default_factory=dict)
    placement: ModelPlacement | None = None
    evicted: bool = False
    last_used: float = 0.0
    memory_bytes: int = 0  # measured at its last load; the estimate for the next one
    stats: dict[str, ModelStats] = field(default_factory=dict)  # kept across evictions
    decisions: deque[Decision] = field(default_factory=lambda: deque(maxlen=20))
    placements: int = 0  # placements installed, ever (loads and re-placements)
    # Reloads of an evicted model that failed in a row, and when the next may be tried: requests
    # for a model that cannot come back get its reason at once instead of each trying a load.
    reload_failures: int = 0
    retry_at: float = 0.0

    @property
    def latest(self) -> str:
        return max(self.runners, key=int) if self.runners else ""


def default_placement(config: ModelConfig) -> ModelPlacement:
    """What the model's own config asks for: its backend, threads and instance count."""
    exec_config = ExecutionConfig(config.backend, "cpu", "fp32", config.threads, config.max_batch_size)
    return ModelPlacement(config.name, [InstanceGroup(exec_config, config.instance_count)], reason="model config")


class ModelManager:
    """Owns every loaded model version; thread-safe."""

    def __init__(
        self, repository: Repository, pools: dict[str, TokenPool], memory_budget: int | None = None,
        order: Discipline | None = None,
    ) -> None:
        self.repository = repository
        self.pools = pools
        self.memory_budget = memory_budget
        self.order = order
        self._states: dict[str, ModelState] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.RLock()  # one load/apply at a time: memory deltas stay apart

    # -- queries -------------------------------------------------------------------------------
    def states(self) -> list[ModelState]:
        """Every model known: loaded, failed, or present in the repository but not loaded."""
        with self._lock:
            known = dict(self._states)
        try:
            for name in self.repository.scan():
                known.setdefault(name, ModelState(name, state=UNAVAILABLE, reason="unloaded"))
        except EdgeplexError as exc:
            log.warning("cannot scan the repository: %s", exc)
        return [known[name] for name in sorted(known)]

    def state(self, name: str) -> ModelState:
        """The state of a model this manager has tried to load; ModelNotFound otherwise."""
        with self._lock:
            state = self._states.get(name)
        if state is None:
            raise ModelNotFound(f"model '{name}' is not loaded")
        return state

    def runner(self, name: str, version: str = "") -> ModelRunner:
        """The runner serving `name` at `version` ("" = latest); 404 / 503 with the reason."""
        with self._lock:
            state = self._states.get(name)
        if state is None:
            try:
                self.repository.source(name)
            except ModelNotFound:
                raise ModelNotFound(f"model '{name}' is not in the repository") from None
            raise ModelNotReady(f"model '{name}' is not loaded")
        if state.state != READY:
            if state.evicted:
                raise ModelEvicted(f"model '{name}' was {EVICTED_REASON}")
            raise ModelNotReady(f"model '{name}' is not ready ({state.state.lower()}: {state.reason or 'no reason'})")
        runner = state.runners.get(version or state.latest)
        if runner is None:
            raise ModelNotFound(f"model '{name}' has no version '{version}' (versions: {', '.join(sorted(state.runners))})")
        state.last_used = time.monotonic()
        return runner

    def config(self, name: str) -> ModelConfig:
        """The model's complete config, loaded or not (read from the repository if needed)."""
        with self._lock:
            state = self._states.get(name)
        if state is not None and state.config is not None:
            return state.config
        return self.repository.load_config(self.repository.source(name))

    def memory_used(self) -> int:
        with self._lock:
            return sum(r.memory_bytes for s in self._states.values() if s.state == READY for r in s.runners.values())

    # -- control -------------------------------------------------------------------------------
    def load(self, name: str) -> ModelState:
        """(Re)load a model under its placement; on failure it is UNAVAILABLE with the reason."""
        source = self.repository.source(name)
        with self._lock:
            state = self._states.setdefault(name, ModelState(name))
            serving = state.state == READY
            if not serving:
                state.state, state.reason = LOADING, ""
        try:
            with self._load_lock:
                config = self.repository.load_config(source)
                if state.placement is None or not serving:
                    state.placement = state.placement or default_placement(config)
                self._install(state, source, config, state.placement, reuse=False)
        except EdgeplexError as exc:
            with self._lock:
                if not serving:
                    state.state, state.reason = UNAVAILABLE, exc.message
            log.error("model %s failed to load: %s", name, exc.message)
            raise
        return state

    def ensure_loaded(self, name: str, on_request: bool = True) -> None:
        """Load an evicted model again; counted in its statistics when a request waits for it.
        After a failed reload, further tries wait an exponential back-off (0.5 s doubling to
        60 s) and are refused with the last reason meanwhile."""
        with self._load_lock:
            state = self.state(name)
            if state.state == READY or not state.evicted:
                return
            wait = state.retry_at - time.monotonic()
            if wait > 0:
                raise ModelNotReady(
                    f"model '{name}' could not be loaded back ({state.reload_failures} tries failed: {state.reason}); "
                    f"next try in {wait:.1f} s"
                )
            try:
                self.load(name)
            except EdgeplexError as exc:
                with self._lock:
                    state.reload_failures += 1
                    state.retry_at = time.monotonic() + min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (state.reload_failures - 1))
                    state.evicted, state.reason = True, exc.message  # still evicted: a later try may fit
                raise
            state.reload_failures, state.retry_at = 0, 0.0
            for stats in state.stats.values() if on_request else ():
                stats.reloads += 1

    def apply(self, placement: ModelPlacement) -> None:
        """Run a model under `placement`: new sessions warm up, then the old ones retire."""
        with self._load_lock:
            state = self.state(placement.model)
            if state.placement is not None and state.placement.same_configs(placement) and state.state == READY:
                state.placement.capacity, state.placement.reason = placement.capacity, placement.reason
                return
            previous, state.placement = state.placement, placement
            if state.state == READY and state.config is not None:
                try:
                    self._install(state, self.repository.source(placement.model), state.config, placement, reuse=True)
                except BaseException:  # it keeps running what it ran: report that, and let a retry happen
                    state.placement = previous
                    raise

    def unload(self, name: str, reason: str = "unloaded", evicted: bool = False) -> None:
        """Stop taking requests for `name`, finish those queued, release its sessions."""
        with self._lock:
            state = self._states.get(name)
            if state is None or state.state != READY:
                if state is None:
                    self.repository.source(name)  # 404 if it does not even exist
                return
            state.state, state.reason = UNLOADING, ""
            runners = state.runners
        for runner in runners.values():
            runner.close()
        with self._lock:
            state.runners = {}
            state.state, state.reason, state.evicted = UNAVAILABLE, reason, evicted
        log.info("model %s %s", name, "evicted (memory budget)" if evicted else "unloaded")

    def close(self) -> None:
        for state in self.states():
            if state.state == READY:
                self.unload(state.name)

    # -- internals -----------------------------------------------------------------------------
    def _install(
        self, state: ModelState, source: ModelSource, config: ModelConfig, placement: ModelPlacement, reuse: bool
    ) -> None:
        """Give every version's runner `placement`'s instances. With `reuse` (a placement change)
        those it already has under the same config are kept and only the missing ones are opened
        and warmed before the surplus retires: a count change costs no reload and no memory
        spike. Without (a reload), every instance is opened afresh from the files."""
        plan = {str(v): _reuse(state.runners.get(str(v)) if reuse and state.state == READY else None, placement)
                for v in source.versions}
        to_open = {v: missing for v, (_, missing) in plan.items()}
        self._make_room(state, self._estimate(state, source, config, to_open))
        opened = self._open(source, config, to_open)
        grown = sum(inst.memory_bytes for instances in opened.values() for inst in instances)
        try:
            self._make_room(state, grown)  # measured now: make room for what it really took
        except ModelNotReady:
            for instances in opened.values():
                for inst in instances:
                    inst.session.close()
            raise
        with self._lock:
            state.config = config
            for version, instances in opened.items():
                kept = plan[version][0]
                runner = state.runners.get(version)
                if runner is not None and state.state == READY:
                    runner.replace_instances(kept + instances)
                else:
                    stats = state.stats.get(version)
                    runner = ModelRunner(config, version, instances, self.pools["cpu"], stats, self.order)
                    state.stats[version] = runner.stats
                    state.runners[version] = runner
            state.memory_bytes = sum(r.memory_bytes for r in state.runners.values())
            state.state, state.reason, state.evicted = READY, "", False
            state.last_used = time.monotonic()
            state.decisions.append(Decision(time.time(), _describe(placement), placement.reason))
            state.placements += 1
        log.info(  # one line per placement decision, with its fields for structured logs
            "model %s ready: versions %s, %s, %.1f MB (%s)",
            config.name, ", ".join(sorted(opened)), _describe(placement), state.memory_bytes / 1e6,
            placement.reason or "no reason given",
            extra={"event": "placement", "model": config.name, "placement": _describe(placement),
                   "memory_bytes": state.memory_bytes, "reason": placement.reason},
        )

    def _estimate(self, state: ModelState, source: ModelSource, config: ModelConfig,
                  to_open: dict[str, list[tuple[ExecutionConfig, int]]]) -> int:
        """Bytes the instances to open will take: what an instance of the same backend and variant
        measured, else the file's size (its weights at least: a variant's file may be a quarter
        of the original's); a wrong guess is corrected once the load has been measured."""
        measured = {(i.config.backend, i.config.variant): i.memory_bytes
                    for runner in state.runners.values() for i in runner.instances}
        total = 0
        for version, wanted in to_open.items():
            for exec_config, count in wanted:
                each = measured.get((exec_config.backend, exec_config.variant))
                if each is None:
                    path = model_file(source.versions[int(version)], config, exec_config)
                    each = path.stat().st_size
                total += each * count
        return total

    def _make_room(self, loading: ModelState, need: int) -> None:
        """Evict least recently used models (not pinned, not busy) until `need` more bytes fit."""
        if self.memory_budget is None:
            return
        while self.memory_used() + need > self.memory_budget:
            with self._lock:
                candidates = [
                    s for s in self._states.values()
                    if s is not loading and s.state == READY and not (s.config and s.config.pinned)
                    and not any(r.busy for r in s.runners.values())
                ]
            if not candidates:
                raise ModelNotReady(
                    f"model '{loading.name}' needs about {need / 1e6:.1f} MB; the memory budget is "
                    f"{self.memory_budget / 1e6:.1f} MB and {self.memory_used() / 1e6:.1f} MB are held by models "
                    "that are pinned, busy or being replaced"
                )
            victim = min(candidates, key=lambda s: s.last_used)
            self.unload(victim.name, EVICTED_REASON, evicted=True)

    def _open(
        self, source: ModelSource, config: ModelConfig, wanted: dict[str, list[tuple[ExecutionConfig, int]]]
    ) -> dict[str, list[Instance]]:
        """Open `wanted[version]` instances (config, count) of each version, all or none."""
        opened: dict[str, list[Instance]] = {}
        try:
            for version, folder in sorted(source.versions.items()):
                instances: list[Instance] = []
                opened[str(version)] = instances
                for exec_config, count in wanted.get(str(version), []):
                    backend = get_backend(exec_config.backend)
                    path = model_file(folder, config, exec_config)
                    for _ in range(count):
                        instances.append(self._open_instance(backend, path, exec_config, config))
        except BaseException:
            # A later version or instance failed: release what was opened.
            for instances in opened.values():
                for inst in instances:
                    inst.session.close()
            raise
        return opened

    def _open_instance(self, backend: Backend, path: Path, exec_config: ExecutionConfig, config: ModelConfig) -> Instance:
        """Open one session and run it once, measuring the resident memory both took."""
        session, opened = measure_rss(lambda: backend.open(path, exec_config))
        try:
            _, warmed = measure_rss(lambda: session.run(warmup_inputs(config)))
        except EdgeplexError as exc:
            log.info("model %s: warm-up run skipped (%s)", config.name, exc.message)
            warmed = 0
        # The backend's own figure is a floor where the resident-set delta misses reused pages.
        return Instance(session, exec_config, max(opened, session.memory_bytes) + warmed)


def model_file(folder: Path, config: ModelConfig, exec_config: ExecutionConfig) -> Path:
    """The file an execution config runs: the original for fp32, else `variants/<variant>.onnx`."""
    if exec_config.variant == "fp32":
        path = folder / config.default_model_filename
    else:
        path = folder / "variants" / f"{exec_config.variant}.onnx"
    if not path.is_file():
        raise BackendError(f"model '{config.name}': {path} is missing")
    return path


def _reuse(
    runner: ModelRunner | None, placement: ModelPlacement
) -> tuple[list[Instance], list[tuple[ExecutionConfig, int]]]:
    """(instances of `runner` that `placement` keeps, (config, count) still to open)."""
    spare = list(runner.instances) if runner is not None else []
    kept: list[Instance] = []
    missing: list[tuple[ExecutionConfig, int]] = []
    for group in placement.groups:
        same = [inst for inst in spare if inst.config == group.config][: group.count]
        for inst in same:
            spare.remove(inst)
        kept += same
        if group.count > len(same):
            missing.append((group.config, group.count - len(same)))
    return kept, missing


def _describe(placement: ModelPlacement) -> str:
    return " + ".join(f"{g.count}x {g.config.backend}/{g.config.processor}/{g.config.variant}/t{g.config.threads}"
                      for g in placement.groups)
