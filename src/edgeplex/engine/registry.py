"""The registry of models: each model's state (loaded, failed, evicted), its runners per version,
its placement and its history, and the typed snapshot (`ModelView`) the rest of edgeplex reads.

Only the engine changes a state; everything outside it gets views, so no caller can write
engine-owned state behind the registry's lock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field, replace

from ..config import ModelConfig
from ..errors import EdgeplexError, ModelEvicted, ModelNotFound, ModelNotReady
from ..repository import Repository
from .binding import Binding
from .clock import Clock
from .placement import ModelPlacement
from .runner import ModelRunner
from .stats import ModelStats

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
EVICTED_REASON = "evicted to stay within the memory budget; loaded again on its next request"
RESIDENCY_LOADS = 10.0  # a model swapped in on request stays this many times its load time, at least
RESIDENCY_MAX_S = 3.0  # ... but no longer, so that a request waiting for its turn gets it in time


@dataclass(frozen=True)
class Decision:
    """One placement change of a model, for the placement endpoint and the logs."""

    at: float
    placement: str
    reason: str


@dataclass
class ModelState:
    """A model as the engine keeps it (mutable; under the registry's lock)."""

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
    # The largest resident-set figure measured per (backend, processor, variant, threads): a
    # reload into pages freed by an eviction measures less than the model really holds.
    measured: dict[tuple[str, str, str, int], int] = field(default_factory=dict)
    loaded_at: float = 0.0
    load_seconds: float = 0.0  # how long its last load took (open + warm-up of new instances)
    stats: dict[str, ModelStats] = field(default_factory=dict)  # kept across evictions
    decisions: deque[Decision] = field(default_factory=lambda: deque(maxlen=20))
    placements: int = 0  # placements installed, ever (loads and re-placements)
    # Reloads of an evicted model that failed in a row, and when the next may be tried: requests
    # for a model that cannot come back get its reason at once instead of each trying a load.
    reload_failures: int = 0
    retry_at: float = 0.0
    binding: Binding = field(default_factory=Binding)  # the allocation fields its config file sets

    @property
    def latest(self) -> str:
        return max(self.runners, key=int) if self.runners else ""

    @property
    def taking_turns(self) -> bool:
        return self.placement is not None and self.placement.turn

    @property
    def swappable_at(self) -> float:
        """When a swap on request may evict it: its load paid back RESIDENCY_LOADS times over
        (at most RESIDENCY_MAX_S after it came in)."""
        return self.loaded_at + min(RESIDENCY_LOADS * self.load_seconds, RESIDENCY_MAX_S)

    def view(self) -> ModelView:
        placement = self.placement
        return ModelView(
            name=self.name, state=self.state, reason=self.reason, evicted=self.evicted, config=self.config,
            versions=tuple(sorted(self.runners, key=int)),
            placement=replace(placement, groups=list(placement.groups)) if placement is not None else None,
            memory_bytes=self.memory_bytes if self.state == READY else 0, placements=self.placements,
            decisions=tuple(self.decisions), binding=self.binding,
        )


@dataclass(frozen=True)
class ModelView:
    """A snapshot of one model for queries: what the repository index, the placement report,
    the metrics and the allocator read. Changing it changes nothing in the engine."""

    name: str
    state: str
    reason: str = ""
    evicted: bool = False
    config: ModelConfig | None = None
    versions: tuple[str, ...] = ()  # the versions serving now (none while evicted)
    placement: ModelPlacement | None = None
    memory_bytes: int = 0
    placements: int = 0
    decisions: tuple[Decision, ...] = ()
    binding: Binding = field(default_factory=Binding)

    @property
    def ready(self) -> bool:
        return self.state == READY

    @property
    def servable(self) -> bool:
        """Serving, or evicted for memory and loaded again by its next request."""
        return self.state == READY or self.evicted


class ModelRegistry:
    """Every model the engine has tried to load, by name; thread-safe."""

    def __init__(self, repository: Repository, clock: Clock) -> None:
        self.repository = repository
        self.clock = clock
        self.lock = threading.Lock()
        self._states: dict[str, ModelState] = {}

    def states(self) -> list[ModelState]:
        """Every model known: loaded, failed, or present in the repository but not loaded."""
        with self.lock:
            known = dict(self._states)
        try:
            for name in self.repository.scan():
                known.setdefault(name, ModelState(name, state=UNAVAILABLE, reason="unloaded"))
        except EdgeplexError as exc:
            log.warning("cannot scan the repository: %s", exc)
        return [known[name] for name in sorted(known)]

    def loaded(self) -> list[ModelState]:
        """The models this registry holds a state for (tried to load), in no order."""
        with self.lock:
            return list(self._states.values())

    def state(self, name: str) -> ModelState:
        """The state of a model the engine has tried to load; ModelNotFound otherwise."""
        with self.lock:
            state = self._states.get(name)
        if state is None:
            raise ModelNotFound(f"model '{name}' is not loaded")
        return state

    def find(self, name: str) -> ModelState | None:
        with self.lock:
            return self._states.get(name)

    def entry(self, name: str) -> ModelState:
        """The state of `name`, created (UNAVAILABLE) if the engine never tried to load it."""
        with self.lock:
            return self._states.setdefault(name, ModelState(name))

    def runner(self, name: str, version: str = "") -> ModelRunner:
        """The runner serving `name` at `version` ("" = latest); 404 / 503 with the reason."""
        with self.lock:
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
        state.last_used = self.clock.monotonic()
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
            if state.config is None or state.retry_at > self.clock.monotonic():  # not while reloads fail
                raise
        versions = [str(v) for v in sorted(self.repository.source(name).versions)]
        if version and version not in versions:
            raise ModelNotFound(f"model '{name}' has no version '{version}' (versions: {', '.join(versions)})")
        return state.config, versions

    def config(self, name: str) -> ModelConfig:
        """The model's complete config, loaded or not (read from the repository if needed)."""
        with self.lock:
            state = self._states.get(name)
        if state is not None and state.config is not None:
            return state.config
        return self.repository.load_config(self.repository.source(name))

    def memory_used(self) -> int:
        with self.lock:
            return sum(r.memory_bytes for s in self._states.values() if s.state == READY for r in s.runners.values())

    def pinned_bytes(self, excluding: ModelState) -> int:
        """Memory held by pinned models other than `excluding`."""
        with self.lock:
            return sum(s.memory_bytes for s in self._states.values()
                       if s is not excluding and s.state == READY and s.config is not None and s.config.pinned)
