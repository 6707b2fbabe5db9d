"""ModelManager: loads, places, evicts and unloads models, and keeps their state.

A model that fails to load is kept as UNAVAILABLE with its reason, visible in the repository
index; it never stops the others. Loads are serialised so that each model's resident-set
delta (its measured memory) is its own. A placement change (or a reload) opens and warms the
new sessions before the old ones retire, under the same queue: no request is lost, refused or
answered twice because of it.

Memory: an instance is accounted at the bytes its placement carries (the profiled figure the
allocator planned with: one figure plans and enforces the budget), else at what its load
measured (resident-set delta of open + first run, floored by the largest measured before for
the same config and by the file's size: a reload into freed pages under-counts otherwise).
Within a budget, loading evicts the least recently used model that is neither pinned nor busy,
after it has finished what it has queued; a request for an evicted model loads it again. "Busy"
for a swap on request means loaded less than RESIDENCY_LOADS times its load time ago (at most
RESIDENCY_MAX_S), and models taking turns go before placed ones: when the
models with traffic cannot all be resident, they take turns at that pace instead of thrashing
or one of them starving, and a request waits (bounded) for its model's turn.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backends import Backend, ExecutionConfig, get_backend
from ..backends.base import measure_held, prime
from ..config import ModelConfig
from ..errors import (
    BackendError,
    EdgeplexError,
    MemoryFull,
    ModelEvicted,
    ModelNotFound,
    ModelNotReady,
    OverMemoryBudget,
)
from ..repository import ModelSource, Repository
from .executor import TokenPool
from .placement import TURN, InstanceGroup, ModelPlacement
from .runner import Instance, ModelRunner, warmup_inputs
from .scheduler import Discipline
from .stats import ModelStats

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 60.0  # back-off of failed reloads
EVICTED_REASON = "evicted to stay within the memory budget; loaded again on its next request"
RESIDENCY_LOADS = 10.0  # a model swapped in on request stays this many times its load time, at least
RESIDENCY_MAX_S = 3.0  # ... but no longer, so that a request waiting for its turn gets it in time
RELOAD_WAIT_S = 10.0  # how long a request (without a timeout of its own) waits for its model's turn


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
    next_placement: ModelPlacement | None = None  # one that takes effect at its next load
    evicted: bool = False
    last_used: float = 0.0
    memory_bytes: int = 0  # accounted for its instances now
    # The largest resident-set figure measured per (backend, variant, threads): a reload into
    # pages freed by an eviction measures less than the model really holds.
    measured: dict[tuple[str, str, int], int] = field(default_factory=dict)
    loaded_at: float = 0.0
    load_seconds: float = 0.0  # how long its last load took (open + warm-up of new instances)
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

    @property
    def swappable_at(self) -> float:
        """When a swap on request may evict it: its load paid back RESIDENCY_LOADS times over
        (at most RESIDENCY_MAX_S after it came in)."""
        return self.loaded_at + min(RESIDENCY_LOADS * self.load_seconds, RESIDENCY_MAX_S)


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
        # Evicted models waiting for a turn: name -> (waiting since, last try). A turn that ends
        # goes to the one waiting longest, not to whichever request polls first.
        self._waiting: dict[str, tuple[float, float]] = {}

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

    def servable(self, name: str, version: str = "") -> tuple[ModelConfig, list[str]]:
        """The config and versions of a model that takes requests: a READY one, or one evicted
        for memory that its next request loads again (metadata, config and readiness answer for
        it without loading it, as stock clients ask for them before inferring)."""
        try:
            runner = self.runner(name, version)
            return runner.config, sorted(self.state(name).runners, key=int)
        except ModelEvicted:
            state = self.state(name)
            if state.config is None or state.retry_at > time.monotonic():  # not while reloads fail
                raise
        versions = [str(v) for v in sorted(self.repository.source(name).versions)]
        if version and version not in versions:
            raise ModelNotFound(f"model '{name}' has no version '{version}' (versions: {', '.join(versions)})")
        return state.config, versions

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
    def load(self, name: str, protect_recent: bool = False) -> ModelState:
        """(Re)load a model under its placement; on failure it is UNAVAILABLE with the reason.
        `protect_recent`: evict only models whose residency is paid back (a swap on request)."""
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
                    if state.next_placement is not None:
                        state.placement, state.next_placement = state.next_placement, None
                    state.placement = state.placement or default_placement(config)
                self._install(state, source, config, state.placement, reuse=False, protect_recent=protect_recent)
        except EdgeplexError as exc:
            with self._lock:
                if not serving:
                    state.state, state.reason = UNAVAILABLE, exc.message
            if isinstance(exc, MemoryFull):  # a turn to wait for, not a failure
                log.info("model %s waits for room: %s", name, exc.message)
            else:
                log.error("model %s failed to load: %s", name, exc.message)
            raise
        return state

    def ensure_loaded(self, name: str, on_request: bool = True, wait_s: float = RELOAD_WAIT_S) -> None:
        """Load an evicted model again; counted in its statistics when a request waits for it.
        When the resident models are all within their minimum residency, wait up to `wait_s`
        for one to be swappable (a fair turn, not a refusal). After a failed reload (an error of
        the model's own, or a budget no eviction can satisfy), further tries wait an exponential
        back-off (0.5 s doubling to 60 s) and are refused with the last reason meanwhile."""
        give_up = time.monotonic() + wait_s
        while True:
            # Another load or a drain may hold the lock for a while: wait for it within the bound.
            if not self._load_lock.acquire(timeout=max(give_up - time.monotonic(), 0.0)):
                raise MemoryFull(f"model '{name}' waits for another model's load or eviction to finish",
                                 retry_in_s=0.05)
            try:
                state = self.state(name)
                if state.state == READY or not state.evicted:
                    return
                wait = state.retry_at - time.monotonic()
                if wait > 0:
                    raise ModelNotReady(
                        f"model '{name}' could not be loaded back ({state.reload_failures} tries failed: "
                        f"{state.reason}); next try in {wait:.1f} s"
                    )
                try:
                    self.load(name, protect_recent=True)
                except MemoryFull as exc:  # its turn has not come yet: not a failure of the model
                    with self._lock:
                        state.evicted, state.reason = True, EVICTED_REASON
                        since = self._waiting.get(name, (time.monotonic(), 0.0))[0]
                        self._waiting[name] = (since, time.monotonic())
                    pause = exc.retry_in_s
                    if time.monotonic() + pause > give_up:
                        raise
                except EdgeplexError as exc:
                    with self._lock:
                        state.reload_failures += 1
                        state.retry_at = time.monotonic() + min(
                            RETRY_MAX_S, RETRY_FIRST_S * 2 ** (state.reload_failures - 1))
                        state.evicted, state.reason = True, exc.message  # still evicted: a later try may fit
                    raise
                else:
                    with self._lock:
                        self._waiting.pop(name, None)
                    state.reload_failures, state.retry_at = 0, 0.0
                    for stats in state.stats.values() if on_request else ():
                        stats.reloads += 1
                    return
            finally:
                self._load_lock.release()
            time.sleep(max(pause, 0.001))  # outside the lock: the swap that frees room needs it

    def apply(self, placement: ModelPlacement) -> None:
        """Run a model under `placement`: new sessions warm up, then the old ones retire. A
        placement for a model taking turns in memory (TURN) takes effect at its next load: a
        warm swap would hold its old and new instances at once in the room the others left."""
        with self._load_lock:
            state = self.state(placement.model)
            state.next_placement = None
            if (placement.extra.get(TURN) and state.state == READY and state.placement is not None
                    and not state.placement.same_configs(placement)):
                state.placement.extra[TURN] = 1.0  # evicted first from now on
                state.next_placement = placement
                return
            if state.placement is not None and state.placement.same_configs(placement) and state.state == READY:
                state.placement.capacity, state.placement.reason = placement.capacity, placement.reason
                state.placement.extra = dict(placement.extra)  # e.g. whether it takes turns now
                state.placement.groups = list(placement.groups)  # the same configs, with their profiled bytes
                growth = _growth(placement, [i for r in state.runners.values() for i in r.instances])
                try:
                    self._make_room(state, growth, protect_recent=False)
                except ModelNotReady as exc:  # the instances are resident anyway: account the truth
                    log.warning("model %s: its profiled memory puts the models over the budget: %s", state.name,
                                exc.message)
                self._account(state, placement)
                return
            previous, state.placement = state.placement, placement
            if state.state == READY and state.config is not None:
                try:
                    self._install(state, self.repository.source(placement.model), state.config, placement, reuse=True,
                                  protect_recent=False)
                except OverMemoryBudget:
                    state.placement = previous
                    source = self.repository.source(placement.model)
                    whole = self._estimate(state, source, state.config, {str(v): placement.groups for v in source.versions})
                    if self._pinned_bytes(state) + whole > self.memory_budget:  # type: ignore[operator]
                        raise
                    # No room for its old and new instances at once: swap cold. It finishes what
                    # it has queued, and comes back under the new placement on its next request.
                    state.next_placement = placement
                    self.unload(placement.model, EVICTED_REASON, evicted=True)
                    log.info("model %s: placement %s applies at its next load (no room for a warm swap)",
                             placement.model, _describe(placement))
                except BaseException:  # it keeps running what it ran: report that, and let a retry happen
                    state.placement = previous
                    raise

    def unload(self, name: str, reason: str = "unloaded", evicted: bool = False) -> None:
        """Stop taking requests for `name`, finish those queued, release its sessions. An
        eviction holds the load lock, so that no reload starts while the model drains."""
        if evicted:
            with self._load_lock:
                self._unload(name, reason, evicted)
        else:
            self._unload(name, reason, evicted)

    def _unload(self, name: str, reason: str, evicted: bool) -> None:
        with self._lock:
            state = self._states.get(name)
            if state is None or state.state != READY:
                if state is None:
                    self.repository.source(name)  # 404 if it does not even exist
                elif state.evicted and not evicted:  # unloaded for good: no reload on request
                    state.evicted, state.reason = False, reason
                return
            # Evicted from now on: requests arriving while it drains wait for its reload.
            state.state, state.reason, state.evicted = UNLOADING, "", evicted
            runners = state.runners
        for runner in runners.values():
            runner.close(evicted=evicted)
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
        self, state: ModelState, source: ModelSource, config: ModelConfig, placement: ModelPlacement, reuse: bool,
        protect_recent: bool,
    ) -> None:
        """Give every version's runner `placement`'s instances. With `reuse` (a placement change)
        those it already has under the same config are kept and only the missing ones are opened
        and warmed before the surplus retires: a count change costs no reload and no memory
        spike. Without (a reload), every instance is opened afresh from the files."""
        plan = {str(v): _reuse(state.runners.get(str(v)) if reuse and state.state == READY else None, placement)
                for v in source.versions}
        to_open = {v: missing for v, (_, missing) in plan.items()}
        # Kept instances are accounted at the placement's figure from now on: room for any growth.
        regrowth = _growth(placement, [inst for kept, _ in plan.values() for inst in kept])
        self._make_room(state, self._estimate(state, source, config, to_open) + regrowth, protect_recent)
        started = time.monotonic()
        opened = self._open(source, config, to_open, state.measured)
        load_seconds = time.monotonic() - started
        grown = sum(inst.memory_bytes for instances in opened.values() for inst in instances)
        try:
            self._make_room(state, grown + regrowth, protect_recent)  # measured now: what it really took
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
            if not reuse:
                state.loaded_at, state.load_seconds = time.monotonic(), load_seconds
            self._account(state, placement)
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

    def _ahead_of(self, name: str, now: float) -> str:
        """The model waiting for a turn longer than `name` (its requests still trying), if any."""
        with self._lock:
            for stale in [m for m, (_, tried) in self._waiting.items() if now - tried > RESIDENCY_MAX_S + 1.0]:
                del self._waiting[stale]  # its requests gave up
            mine = self._waiting.get(name, (now, now))[0]
            earlier = [(since, m) for m, (since, _) in self._waiting.items()
                       if m != name and since < mine and self._states[m].evicted]
        return min(earlier)[1] if earlier else ""

    def _pinned_bytes(self, excluding: ModelState) -> int:
        with self._lock:
            return sum(s.memory_bytes for s in self._states.values()
                       if s is not excluding and s.state == READY and s.config is not None and s.config.pinned)

    @staticmethod
    def _account(state: ModelState, placement: ModelPlacement) -> None:
        """Account each instance at its group's profiled bytes where the placement has them."""
        planned = _planned_bytes(placement)
        for runner in state.runners.values():
            for inst in runner.instances:
                inst.memory_bytes = planned.get(inst.config, inst.memory_bytes)
        state.memory_bytes = sum(r.memory_bytes for r in state.runners.values())

    def _estimate(self, state: ModelState, source: ModelSource, config: ModelConfig,
                  to_open: dict[str, list[InstanceGroup]]) -> int:
        """Bytes the instances to open will take: the placement's profiled figure, else what an
        instance of the same config measured before, else the file's size (its weights at least:
        a variant's file may be a quarter of the original's); a wrong guess is corrected once
        the load has been measured."""
        total = 0
        for version, groups in to_open.items():
            for group in groups:
                each = group.memory_bytes or state.measured.get(_memo_key(group.config), 0)
                if not each:
                    each = model_file(source.versions[int(version)], config, group.config).stat().st_size
                total += each * group.count
        return total

    def _make_room(self, loading: ModelState, need: int, protect_recent: bool) -> None:
        """Evict least recently used models (not pinned, not being replaced; with
        `protect_recent`, only those whose residency is paid back) until `need` more bytes fit.
        Raises MemoryFull when room will come once a resident model's turn ends, and
        ModelNotReady when no eviction could ever make it."""
        if self.memory_budget is None:
            return
        while self.memory_used() + need > self.memory_budget:
            now = time.monotonic()
            with self._lock:
                others = [s for s in self._states.values() if s is not loading and s.state == READY]
                candidates = [s for s in others if not (s.config and s.config.pinned)]
            pinned = self._pinned_bytes(loading)
            own = loading.memory_bytes if loading.state == READY else 0
            if not candidates or pinned + own + need > self.memory_budget:
                raise OverMemoryBudget(
                    f"model '{loading.name}' needs about {need / 1e6:.1f} MB; the memory budget is "
                    f"{self.memory_budget / 1e6:.1f} MB and {(pinned + own) / 1e6:.1f} MB are held by models that "
                    "are pinned or being replaced"
                )
            # Those taking turns go first: the planned models are the ones worth keeping resident,
            # so while the turn-takers' room would do, a swap waits for their turns to end.
            turns = [s for s in candidates if s.placement and s.placement.extra.get(TURN)]
            free = self.memory_budget - self.memory_used()
            pool = turns if turns and free + sum(s.memory_bytes for s in turns) >= need else candidates
            ripe = [s for s in pool if not protect_recent or s.swappable_at <= now]
            if ripe and protect_recent and (ahead := self._ahead_of(loading.name, now)):
                raise MemoryFull(f"model '{loading.name}' waits for its turn in memory behind {ahead}", retry_in_s=0.05)
            if ripe and protect_recent and free + sum(s.memory_bytes for s in ripe) < need:
                ripe = []  # evicting those would not make room yet: evict none, wait for more turns to end
            if not ripe:
                later = [s.swappable_at - now for s in pool if s.swappable_at > now]
                turn = min(later) if later else 0.05
                raise MemoryFull(
                    f"model '{loading.name}' needs about {need / 1e6:.1f} MB of the {self.memory_budget / 1e6:.1f} MB "
                    f"memory budget, held by models loaded too recently to be swapped out "
                    f"({', '.join(sorted(s.name for s in pool))}); the next can be in {turn:.1f} s",
                    retry_in_s=max(turn, 0.0),
                )
            taking_turns = {s.name for s in turns}
            victim = min(ripe, key=lambda s: (s.name not in taking_turns, s.last_used))
            self.unload(victim.name, EVICTED_REASON, evicted=True)

    def _open(
        self, source: ModelSource, config: ModelConfig, wanted: dict[str, list[InstanceGroup]],
        measured: dict[tuple[str, str, int], int],
    ) -> dict[str, list[Instance]]:
        """Open `wanted[version]` instances of each version, all or none."""
        opened: dict[str, list[Instance]] = {}
        try:
            for version, folder in sorted(source.versions.items()):
                instances: list[Instance] = []
                opened[str(version)] = instances
                for group in wanted.get(str(version), []):
                    backend = get_backend(group.config.backend)
                    path = model_file(folder, config, group.config)
                    for _ in range(group.count):
                        instances.append(self._open_instance(backend, path, group, config, measured))
        except BaseException:
            # A later version or instance failed: release what was opened.
            for instances in opened.values():
                for inst in instances:
                    inst.session.close()
            raise
        return opened

    def _open_instance(self, backend: Backend, path: Path, group: InstanceGroup, config: ModelConfig,
                       measured: dict[tuple[str, str, int], int]) -> Instance:
        """Open one session and run it once, measuring the resident memory both took."""
        inputs: dict[str, np.ndarray] | None = None
        try:
            inputs = warmup_inputs(config)
        except EdgeplexError as exc:
            log.info("model %s: warm-up run skipped (%s)", config.name, exc.message)
        prime(backend, path, group.config, inputs)
        session, opened = measure_held(lambda: backend.open(path, group.config))
        warmed = 0
        if inputs is not None:
            warm = inputs
            try:
                _, warmed = measure_held(lambda: session.run(warm))
            except EdgeplexError as exc:
                log.info("model %s: warm-up run skipped (%s)", config.name, exc.message)
        # The backend's own figure, the file's size and earlier loads are floors of the delta.
        key = _memo_key(group.config)
        figure = max(opened + warmed, session.memory_bytes, path.stat().st_size, measured.get(key, 0))
        measured[key] = figure
        return Instance(session, group.config, group.memory_bytes or figure)


def _growth(placement: ModelPlacement, instances: list[Instance]) -> int:
    """Bytes by which accounting `instances` at `placement`'s profiled figures grows."""
    planned = _planned_bytes(placement)
    return sum(max(0, planned.get(i.config, i.memory_bytes) - i.memory_bytes) for i in instances)


def _planned_bytes(placement: ModelPlacement) -> dict[ExecutionConfig, int]:
    """Per config, the profiled bytes of one instance where the placement carries them."""
    return {g.config: g.memory_bytes for g in placement.groups if g.memory_bytes > 0}


def _memo_key(config: ExecutionConfig) -> tuple[str, str, int]:
    return config.backend, config.variant, config.threads


def model_file(folder: Path, config: ModelConfig, exec_config: ExecutionConfig) -> Path:
    """The file an execution config runs: the original for fp32, else `variants/<variant>.onnx`."""
    if exec_config.variant == "fp32":
        path = folder / config.default_model_filename
    else:
        path = folder / "variants" / f"{exec_config.variant}.onnx"
    if not path.is_file():
        raise BackendError(f"model '{config.name}': {path} is missing")
    return path


def _reuse(runner: ModelRunner | None, placement: ModelPlacement) -> tuple[list[Instance], list[InstanceGroup]]:
    """(instances of `runner` that `placement` keeps, groups of those still to open)."""
    spare = list(runner.instances) if runner is not None else []
    kept: list[Instance] = []
    missing: list[InstanceGroup] = []
    for group in placement.groups:
        same = [inst for inst in spare if inst.config == group.config][: group.count]
        for inst in same:
            spare.remove(inst)
        kept += same
        if group.count > len(same):
            missing.append(InstanceGroup(group.config, group.count - len(same), group.memory_bytes))
    return kept, missing


def _describe(placement: ModelPlacement) -> str:
    return " + ".join(f"{g.count}x {g.config.backend}/{g.config.processor}/{g.config.variant}/t{g.config.threads}"
                      for g in placement.groups)
