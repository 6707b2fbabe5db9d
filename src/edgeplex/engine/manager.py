"""ModelManager: the lifecycle of models — load, place (warm swap), evict, load again, unload.

A model that fails to load is kept as UNAVAILABLE with its reason, visible in the repository
index; it never stops the others. Loads are serialised so that each model's resident-set delta
(its measured memory) is its own. Within a memory budget, `memory.plan_room` decides what to
evict and when to wait; a request for an evicted model loads it again (`ensure_loaded`), waiting
(bounded) for its turn. Failed reloads back off exponentially. Every timer runs on the injected
clock.

The pieces: `registry` (states and views), `loader` (open, warm up, measure), `memory` (the
policy, pure), `swap` (instances under running queues). This module only sequences them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from ..backends import ExecutionConfig
from ..config import ModelConfig
from ..errors import EdgeplexError, MemoryFull, ModelNotReady, OverMemoryBudget
from ..repository import ModelSource, Repository
from ..variant_layout import existing_variant_path
from .binding import binding_of, stated_fields, variant_of
from .clock import SYSTEM_CLOCK, Clock
from .loader import InstanceLoader, close_all
from .memory import Evict, Refuse, Resident, TurnLine, Wait, plan_room
from .placement import Explanation, InstanceGroup, ModelPlacement
from .processors import Processors
from .registry import (
    EVICTED_REASON,
    LOADING,
    READY,
    RESIDENCY_MAX_S,
    UNAVAILABLE,
    UNLOADING,
    ModelRegistry,
    ModelState,
)
from .runner import ModelRunner
from .scheduler import Discipline
from .swap import account, describe, growth, install, plan_swap

log = logging.getLogger(__name__)

RETRY_FIRST_S, RETRY_MAX_S = 0.5, 60.0  # back-off of failed reloads
RELOAD_WAIT_S = 10.0  # how long a request (without a timeout of its own) waits for its model's turn


def default_placement(config: ModelConfig, processors: Processors | None = None,
                      source: ModelSource | None = None) -> ModelPlacement:
    """What the model's own config asks for: its backend, processor, variant, threads and
    instance count. What cannot run here (a processor the box lacks, a backend that cannot run
    on it, a variant with no file) is replaced by what can, and the reason says so."""
    wanted = ExecutionConfig(config.backend, config.processor, variant_of(config), config.threads,
                             config.max_batch_size)
    exec_config, problems = wanted, []
    if processors is not None:
        try:
            processors.check(wanted)
        except EdgeplexError as exc:
            problems.append(f"{exc.message}: running on cpu instead")
            exec_config = replace(exec_config, processor="cpu")
    if source is not None and exec_config.variant != "fp32" and source.versions:
        folder = source.versions[source.latest_version]
        try:
            existing_variant_path(folder, exec_config.variant, config.default_model_filename, config.name)
        except EdgeplexError as exc:
            problems.append(f"{exc.message}: running fp32 instead")
            exec_config = replace(exec_config, variant="fp32")
    reason = "model config" + "".join(f"; {p}" for p in problems)
    if problems:
        log.warning("model %s: its config asks for what cannot run here: %s", config.name, "; ".join(problems))
    return ModelPlacement(config.name, [InstanceGroup(exec_config, config.instance_count)], reason=reason)


class ModelManager:
    """Owns every loaded model version; thread-safe."""

    def __init__(self, repository: Repository, processors: Processors, memory_budget: int | None = None,
                 order: Discipline | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.repository = repository
        self.processors = processors
        self.memory_budget = memory_budget
        self.order = order
        self.clock = clock
        self.registry = ModelRegistry(repository, clock)
        self.loader = InstanceLoader(processors)
        self._lock = self.registry.lock
        self._load_lock = threading.RLock()  # one load/apply at a time: memory deltas stay apart
        self._line = TurnLine(RESIDENCY_MAX_S)

    # -- queries (the registry's) --------------------------------------------------------------
    def states(self) -> list[ModelState]:
        return self.registry.states()

    def state(self, name: str) -> ModelState:
        return self.registry.state(name)

    def runner(self, name: str, version: str = "") -> ModelRunner:
        return self.registry.runner(name, version)

    def servable(self, name: str, version: str = "") -> tuple[ModelConfig, list[str]]:
        return self.registry.servable(name, version)

    def config(self, name: str) -> ModelConfig:
        return self.registry.config(name)

    def memory_used(self) -> int:
        return self.registry.memory_used()

    # -- control -------------------------------------------------------------------------------
    def load(self, name: str, protect_recent: bool = False) -> ModelState:
        """(Re)load a model under its placement; on failure it is UNAVAILABLE with the reason.
        `protect_recent`: evict only models whose residency is paid back (a swap on request)."""
        source = self.repository.source(name)
        state = self.registry.entry(name)
        with self._lock:
            serving = state.state == READY
            if not serving:
                state.state, state.reason = LOADING, ""
        try:
            with self._load_lock:
                config = self.repository.load_config(source)
                state.binding = binding_of(config, stated_fields(source.config_file, name))
                if state.placement is None or not serving:
                    if state.next_placement is not None:
                        state.placement, state.next_placement = state.next_placement, None
                    state.placement = state.placement or default_placement(config, self.processors, source)
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
        clock = self.clock
        give_up = clock.monotonic() + wait_s
        while True:
            # Another load or a drain may hold the lock for a while: wait for it within the bound.
            if not self._load_lock.acquire(timeout=max(give_up - clock.monotonic(), 0.0)):
                raise MemoryFull(f"model '{name}' waits for another model's load or eviction to finish",
                                 retry_in_s=0.05)
            try:
                state = self.state(name)
                if state.state == READY or not state.evicted:
                    return
                wait = state.retry_at - clock.monotonic()
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
                        self._line.waits(name, clock.monotonic())
                    pause = exc.retry_in_s
                    if clock.monotonic() + pause > give_up:
                        raise
                except EdgeplexError as exc:
                    with self._lock:
                        state.reload_failures += 1
                        state.retry_at = clock.monotonic() + min(
                            RETRY_MAX_S, RETRY_FIRST_S * 2 ** (state.reload_failures - 1))
                        state.evicted, state.reason = True, exc.message  # still evicted: a later try may fit
                    raise
                else:
                    with self._lock:
                        self._line.served(name)
                    state.reload_failures, state.retry_at = 0, 0.0
                    for stats in state.stats.values() if on_request else ():
                        stats.reloads += 1
                    return
            finally:
                self._load_lock.release()
            clock.sleep(max(pause, 0.001))  # outside the lock: the swap that frees room needs it

    def apply(self, placement: ModelPlacement) -> None:
        """Run a model under `placement`: new sessions warm up, then the old ones retire. A
        placement for a model taking turns in memory takes effect at its next load: a warm swap
        would hold its old and new instances at once in the room the others left."""
        with self._load_lock:
            state = self.state(placement.model)
            state.next_placement = None
            current = state.placement
            if placement.turn and state.state == READY and current is not None and not current.same_configs(placement):
                with self._lock:
                    current.turn = True  # evicted first from now on
                    state.next_placement = placement
                return
            if current is not None and current.same_configs(placement) and state.state == READY:
                self._annotate(state, placement)
                return
            state.placement = placement
            if state.state == READY and state.config is not None:
                self._swap(state, current, placement)

    def set_slowdown(self, name: str, slowdown: float) -> None:
        """Record the slowdown observed of a model's placement (shown live; plans read it back)."""
        state = self.state(name)
        with self._lock:
            if state.placement is not None:
                state.placement.slowdown = slowdown

    def set_explanation(self, name: str, explanation: Explanation) -> None:
        """Record why a model's placement is what it is (the allocator's latest reasoning)."""
        state = self.state(name)
        with self._lock:
            if state.placement is not None:
                state.placement.explanation = explanation

    def unload(self, name: str, reason: str = "unloaded", evicted: bool = False) -> None:
        """Stop taking requests for `name`, finish those queued, release its sessions. An
        eviction holds the load lock, so that no reload starts while the model drains."""
        if evicted:
            with self._load_lock:
                self._unload(name, reason, evicted)
        else:
            self._unload(name, reason, evicted)

    def close(self) -> None:
        for state in self.states():
            if state.state == READY:
                self.unload(state.name)

    # -- internals -----------------------------------------------------------------------------
    def _annotate(self, state: ModelState, placement: ModelPlacement) -> None:
        """The same configs: take the new estimate, reason, flags and profiled bytes, no swap."""
        with self._lock:
            assert state.placement is not None
            current = state.placement
            current.capacity, current.reason, current.turn = placement.capacity, placement.reason, placement.turn
            current.share, current.slowdown = placement.share, placement.slowdown
            current.explanation = placement.explanation
            current.groups = list(placement.groups)  # the same configs, with their profiled bytes
        extra = growth(placement, [i for r in state.runners.values() for i in r.instances])
        try:
            self._make_room(state, extra, protect_recent=False)
        except ModelNotReady as exc:  # the instances are resident anyway: account the truth
            log.warning("model %s: its profiled memory puts the models over the budget: %s", state.name, exc.message)
        with self._lock:
            account(state, placement)

    def _swap(self, state: ModelState, previous: ModelPlacement | None, placement: ModelPlacement) -> None:
        """A warm swap; without room for old and new at once, a cold one at its next load."""
        assert state.config is not None
        source = self.repository.source(placement.model)
        try:
            self._install(state, source, state.config, placement, reuse=True, protect_recent=False)
        except OverMemoryBudget:
            state.placement = previous
            whole = self.loader.estimate(source, state.config, {str(v): placement.groups for v in source.versions},
                                         state.measured)
            if self.registry.pinned_bytes(state) + whole > self.memory_budget:  # type: ignore[operator]
                raise
            # No room for its old and new instances at once: swap cold. It finishes what it has
            # queued, and comes back under the new placement on its next request.
            state.next_placement = placement
            self.unload(placement.model, EVICTED_REASON, evicted=True)
            log.info("model %s: placement %s applies at its next load (no room for a warm swap)",
                     placement.model, describe(placement))
        except BaseException:  # it keeps running what it ran: report that, and let a retry happen
            state.placement = previous
            raise

    def _unload(self, name: str, reason: str, evicted: bool) -> None:
        state = self.registry.find(name)
        with self._lock:
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

    def _install(self, state: ModelState, source: ModelSource, config: ModelConfig, placement: ModelPlacement,
                 reuse: bool, protect_recent: bool) -> None:
        """Give every version's runner `placement`'s instances: room first (estimated), then
        open and warm the missing ones, room again (measured), then swap them in."""
        plan = plan_swap(state, [str(v) for v in source.versions], placement, reuse)
        # Kept instances are accounted at the placement's figure from now on: room for any growth.
        regrowth = growth(placement, plan.kept_instances)
        self._make_room(state, self.loader.estimate(source, config, plan.to_open, state.measured) + regrowth,
                        protect_recent)
        started = self.clock.monotonic()
        opened = self.loader.open(source, config, plan.to_open, state.measured)
        load_seconds = self.clock.monotonic() - started
        grown = sum(inst.memory_bytes for instances in opened.values() for inst in instances)
        try:
            self._make_room(state, grown + regrowth, protect_recent)  # measured now: what it really took
            with self._lock:
                install(state, config, plan, opened, placement, self.processors, self.order, self.clock,
                        None if reuse else load_seconds)
        except BaseException:  # not installed: the sessions it opened are released
            close_all(opened)
            raise
        log.info(  # one line per placement decision, with its fields for structured logs
            "model %s ready: versions %s, %s, %.1f MB (%s)",
            config.name, ", ".join(sorted(opened)), describe(placement), state.memory_bytes / 1e6,
            placement.reason or "no reason given",
            extra={"event": "placement", "model": config.name, "placement": describe(placement),
                   "memory_bytes": state.memory_bytes, "reason": placement.reason},
        )

    def _make_room(self, loading: ModelState, need: int, protect_recent: bool) -> None:
        """Carry out the memory policy's verdict until `need` more bytes fit: evict its victims,
        or raise MemoryFull (a turn to wait for) / OverMemoryBudget (no eviction ever would)."""
        while True:
            now = self.clock.monotonic()
            known = self.registry.loaded()
            residents = [Resident(s.name, s.memory_bytes, bool(s.config and s.config.pinned), s.taking_turns,
                                  s.last_used, s.swappable_at) for s in known if s is not loading and s.state == READY]
            with self._lock:
                ahead = self._line.ahead_of(loading.name, now, {s.name for s in known if s.evicted}) if protect_recent else ""
            own = loading.memory_bytes if loading.state == READY else 0
            verdict = plan_room(loading.name, need, own, self.memory_used(), self.memory_budget, residents, now,
                                protect_recent, ahead)
            if isinstance(verdict, Refuse):
                raise OverMemoryBudget(verdict.why)
            if isinstance(verdict, Wait):
                raise MemoryFull(verdict.why, retry_in_s=verdict.retry_in_s)
            assert isinstance(verdict, Evict)
            if not verdict.victims:
                return
            for victim in verdict.victims:
                self.unload(victim, EVICTED_REASON, evicted=True)

