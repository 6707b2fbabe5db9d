"""The allocator: the control path that keeps every model on the configs that make the whole
mix sustain the most, from profiles, measured demand and the slowdown observed when the
models run together.

Every `interval_s`: Monitor (demand, observed service time) -> observed slowdown per model ->
`timeshare.plan_shared` -> applied only when the predicted gain is worth a switch (hysteresis). The
request path never waits on it; a placement change is a warm swap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace

from ..backends import ExecutionConfig, available_backends
from ..config import ModelConfig
from ..engine import Binding, ConfigLoad, Engine, ModelPlacement, ModelView, Monitor, Placement
from ..errors import EdgeplexError, MemoryFull
from ..repository import file_hash
from .explain import Context, explain_default, explain_planned, explain_unplaced, short
from .explore import DOUBTFUL_EVERY_S, EVERY_S, Trial, pick_trial, start_trial, trial_over
from .learning import MIN_ROWS, Learned, learn, observed_candidates
from .policies import (
    Candidate,
    PlanResult,
    balance_placement,
    candidates_for_models,
    resolve_tokens,
    should_switch,
    static_placement,
)
from .profile import Profile
from .profiler import Step, current_backend_versions, profile_model
from .store import ProfileStore
from .timeshare import plan_shared, shared_lam

log = logging.getLogger(__name__)

POLICIES = ("config", "static", "balance", "pareto")
BACKGROUND_PRIORITY = 16  # profiling waits behind every request for cores
FIRST_PASS_PRIORITY = 1  # ... except a start's first few figures, which compete with requests
SPARE_WINDOW_S = 0.25  # a background measurement waits for a window this long with cores to spare ...
SPARE_MAX_WAIT_S = 60.0  # ... but no longer than this (a box never idle still learns, slowly)
REPROFILE_S = 60.0  # how often refuted or disturbed profiles are measured again in the background
MAX_ATTEMPTS = 9  # a figure still disturbed after this many attempts is left as it is (a box never quiet)
NO_CANDIDATE = "no profiled config of it meets its slo_ms, fidelity bound and the fields its config sets"
SWAP_HEADROOM = 0.2  # share of the memory budget left free for the instances a swap opens


class Allocator:
    """Chooses and applies placements for an engine's loaded models under one policy."""

    def __init__(
        self, engine: Engine, policy: str = "pareto", store: ProfileStore | None = None, interval_s: float = 2.0,
        min_gain: float = 0.10, profile_missing: bool = True, profile_seconds: float = 0.5, explore: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy '{policy}' (expected one of {', '.join(POLICIES)})")
        if policy == "pareto" and store is None:
            raise ValueError("the pareto policy needs a profile store")
        self.engine = engine
        self.policy = policy
        self.store = store
        self.interval_s = interval_s
        self.min_gain = min_gain
        self.profile_missing = profile_missing
        self.profile_seconds = profile_seconds
        self.monitor = Monitor(engine)
        # Observed / profiled rate of each model's config in use (what the placement report shows).
        self.slowdown: dict[str, float] = {}
        self.last_result: PlanResult | None = None
        self.last_learned: Learned | None = None
        self._doubted: set[tuple[str, ExecutionConfig]] = set()
        self._refuted: set[tuple[str, ExecutionConfig]] = set()
        self._profiler: threading.Thread | None = None
        # Exploration: one config on trial at a time, the first EVERY_S after start.
        self.explore = explore
        self._trial: Trial | None = None
        self._tried: dict[tuple[str, ExecutionConfig], float] = {}
        self._last_trial = engine.clock.monotonic()

        self._hashes: dict[str, tuple[tuple[int, int], str]] = {}  # file -> ((size, mtime), sha256)
        self._stop = threading.Event()
        # model -> (the placement that failed, when it may be tried again, failures in a row)
        self._failed: dict[str, tuple[ModelPlacement, float, int]] = {}
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Place every loaded model under the policy; `pareto` then keeps re-planning. `config`
        leaves each model as its own config says (backend, threads, instance_count)."""
        configs = self._configs()
        if self.policy == "static":
            self._apply_all(static_placement(configs))
        elif self.policy == "balance":
            self._apply_all(balance_placement(configs, available_backends()))
        self._explain_defaults()
        if self.policy == "pareto":
            self._thread = threading.Thread(target=self._run, name="edgeplex-allocator", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop re-planning, and wait for a background measurement to end: it holds a native
        session, which must not be torn down by the interpreter's exit."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        if self._profiler is not None:
            self._profiler.join(60)

    def _run(self) -> None:
        if self.profile_missing:
            # On a thread of its own from the start: until profiles exist, plans size each model's
            # instances from what its running config is observed to take.
            self._profiler = threading.Thread(target=self._reprofile, args=(True,), name="edgeplex-profiler",
                                              daemon=True)
            self._profiler.start()
        self.step(force=True)
        last_profiled = self.engine.clock.monotonic()
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
                now = self.engine.clock.monotonic()
                idle = self._profiler is None or not self._profiler.is_alive()
                if self.profile_missing and idle and now - last_profiled >= REPROFILE_S:
                    # What observation refuted, or was measured disturbed, on a thread of its own:
                    # under load its measurements wait for cores, and re-planning must not.
                    last_profiled = now
                    self._profiler = threading.Thread(target=self._reprofile, name="edgeplex-reprofiler", daemon=True)
                    self._profiler.start()
            except Exception:  # the control path must never die: log and try next round
                log.exception("allocator step failed")

    def _reprofile(self, first_pass: bool = False) -> None:
        try:
            self.profile_unprofiled(first_pass)
        except Exception:  # a background measurement must never take the allocator down
            log.exception("background re-profiling failed")

    # -- one round -----------------------------------------------------------------------------
    def step(self, force: bool = False) -> PlanResult | None:
        """Sample the load, re-plan, and apply the plan if it beats the current one enough; now
        and then put a config never observed on trial (see `explore.py`)."""
        configs = self._configs()
        bindings = self._bindings()
        loads = self.monitor.sample()
        now_s = self.engine.clock.monotonic()
        ended = self._trial
        if ended is not None:
            seen = self.monitor.config_loads().get((ended.model, ended.config))
            if not trial_over(ended, seen.rows if seen else 0, now_s, MIN_ROWS):
                return self.last_result  # no re-plan while a trial runs: it ends within TRIAL_S
            self._trial = None
        profiles = self.profiles(configs)
        allowed = self.candidates(configs, profiles, bindings)
        views = {view.name: view for view in self.engine.models()}
        observed = self.monitor.config_loads()
        for name, view in views.items():  # configs running without a profile: what they were seen to take
            if name in configs and view.placement is not None:
                allowed[name] = allowed.get(name, []) + self._observed_only(view, allowed.get(name, []), observed)
        profiled = {m: c for m, c in allowed.items() if c}
        if not profiled:
            self._explain_unplaced(configs, bindings, profiles, dict.fromkeys(configs, NO_CANDIDATE), None)
            return None
        # What each config delivers with the other tenants: observed where it ran, else its
        # profile corrected by what observation shows of the model (or the mix) on its processor.
        learned = learn(profiled, observed)
        self.last_learned = learned
        candidates = learned.candidates
        self._doubt(learned.contradicted)
        demand = {m: loads[m].arrival_rate if m in loads else 0.0 for m in candidates}
        current: Placement = {}
        for name in candidates:
            placement = views[name].placement if name in views else None
            if ended is not None and name == ended.model:
                placement = ended.before  # the trial's instance is going: judge the plan against what stays
            if placement is not None:
                current[name] = placement
                processor = placement.groups[0].config.processor if placement.groups else "cpu"
                self.slowdown[name] = learned.factors.get(f"{name}@{processor}", 1.0)
                self.engine.report_slowdown(name, round(self.slowdown[name], 3))  # shown live
        cores = self.engine.cores
        capacities = self.engine.capacities()
        hard_budget = self.engine.memory().budget
        # Plan within part of the budget: a warm swap holds old and new at once.
        budget = int(hard_budget * (1 - SWAP_HEADROOM)) if hard_budget is not None else None
        # The token pools time-share each processor between models: plan under that model of the box.
        fixed = {m: b.count for m, b in bindings.items() if b.count is not None and m in candidates}
        result = plan_shared(demand, candidates, cores, budget, None, current, capacities=capacities,
                             hard_budget=hard_budget, counts=fixed)
        self.last_result = result
        context = Context(learned, demand, self.interval_s, self.min_gain)
        unplaced = {m: result.unplaced.get(m, NO_CANDIDATE) for m in configs if m not in result.placement}
        self._explain_unplaced(configs, bindings, profiles, unplaced, context, views)
        # A planned model evicted for memory serves nothing: any plan that fits it back in is a
        # gain. (Those taking turns in memory are evicted by design, and come back on request.)
        evicted = sorted(m for m in candidates if m in views and views[m].evicted and m not in result.turns)
        now = 0.0 if evicted else shared_lam(current, demand, candidates, cores, None, capacities)
        log.debug("plan: demand %s, slowdown %s: current %.3f, planned %.3f (%s)",
                  {m: round(v, 1) for m, v in demand.items()}, {m: round(v, 2) for m, v in self.slowdown.items()},
                  now, result.lam, {m: p.groups[0].count for m, p in result.placement.items()})
        if not force and not should_switch(now, result.lam, self.min_gain):
            self._explain_kept(current, result, configs, bindings, profiles, context)
            if ended is not None and ended.model in current:  # the trial's instance goes; the rest stays
                self._apply_all({ended.model: replace(ended.before, reason=f"{ended.before.reason} (after a trial "
                                                      f"of {ended.config.label()})")})
            elif self.explore:
                self._maybe_trial(learned, current, demand, now_s)
            return result
        gain = (f"the mix is predicted to sustain {result.lam:.1f} req/s per unit of demand, "
                + (f"up from {now:.1f}" if now > 0 else "where nothing was known of the placement before"))
        for name, placement in result.placement.items():
            placement.reason = f"pareto: {placement.reason}; {gain}"
            placement.slowdown = round(self.slowdown.get(name, 1.0), 3)
            placement.explanation = explain_planned(name, placement, configs[name], bindings[name],
                                                    profiles.get(name, []), context)
        self._apply_all({**result.turns, **result.placement})
        for name in evicted:  # back in, under its new (smaller) placement
            if name in result.placement and not self._stop.is_set():
                try:
                    self.engine.restore(name)
                except MemoryFull as exc:  # the resident models' turns are not over: next round
                    log.info("model %s waits for room: %s", name, exc.message)
                except Exception as exc:  # it stays evicted; a request will try again
                    log.error("model %s could not be loaded back: %s", name, exc)
        return result

    def _maybe_trial(self, learned: Learned, current: Placement, demand: dict[str, float], now: float) -> None:
        """Start a trial of the most promising config never observed, at most one every EVERY_S
        (DOUBTFUL_EVERY_S when its profile was measured disturbed)."""
        if now - self._last_trial < DOUBTFUL_EVERY_S or self._stop.is_set():
            return
        picked = pick_trial(learned, current, demand, self._tried, now)
        if picked is None:
            return
        model, candidate = picked
        if candidate.confident and now - self._last_trial < EVERY_S:
            return
        memory = self.engine.memory()
        if memory.budget is not None and memory.used + candidate.memory_bytes > memory.budget:
            return  # a trial never evicts another model to make room for itself
        trial = start_trial(model, candidate, current[model], now)
        self._tried[(model, candidate.config)] = self._last_trial = now
        log.info("model %s: trial of %s beside its placement (%s)", model, candidate.config.label(),
                 learned.beliefs[(model, candidate.config)].source)
        try:
            self.engine.apply(trial.during)
        except Exception as exc:  # e.g. no memory for one more instance: nothing changed, no trial
            log.info("model %s: no trial of %s: %s", model, candidate.config.label(), exc)
            return
        self._trial = trial

    def _doubt(self, contradicted: list[tuple[str, ExecutionConfig]]) -> None:
        """Profiles that observation refutes (the config ran much faster beside the other tenants
        than its solo profile says: it was measured disturbed) are logged once; the planner
        already uses what it observes for them."""
        for model, config in contradicted:
            if (model, config) in self._doubted:
                continue
            self._doubted.add((model, config))
            self._refuted.add((model, config))  # measured again at the next background pass
            log.info("model %s: %s runs faster than its stored profile says; planning with what is observed",
                     model, config.label())

    def profiles(self, configs: dict[str, ModelConfig]) -> dict[str, list[Profile]]:
        """Each model's stored profiles, of its original and of its variants (at batch 1 and at
        the model's max batch); a variant's fidelity loss is the one its metadata holds now."""
        profiles: dict[str, list[Profile]] = {}
        versions = current_backend_versions()
        for name in configs:
            own = profiles.setdefault(name, [])
            for variant, (digest, loss) in self._variants(name).items():
                if self.store is None:
                    continue
                # Keyed by the file, not the name: a model with the same file shares its profiles.
                stored = self.store.for_model(digest, backend_versions=versions)
                own += [replace(p, model=name, fidelity_loss=loss) for p in stored if p.config.variant == variant]
        return profiles

    def candidates(self, configs: dict[str, ModelConfig], profiles: dict[str, list[Profile]] | None = None,
                   bindings: dict[str, Binding] | None = None) -> dict[str, list[Candidate]]:
        """Each model's candidates: its profiled configs within its slo_ms and fidelity bound and
        within what its config file binds (backend, processor, variant, threads, batching)."""
        profiles = self.profiles(configs) if profiles is None else profiles
        bindings = self._bindings() if bindings is None else bindings
        allowed = [p for name, own in profiles.items() for p in own
                   if name not in bindings or bindings[name].allows(p.config)]
        return candidates_for_models(allowed, configs, self.engine.cores, self.engine.capacities())

    def profile_unprofiled(self, first_pass: bool = False) -> None:
        """Briefly profile, in the background, what the store lacks or does not trust: every config
        a model may be placed under (within its `max_fidelity_loss` and the fields its config
        binds) that has no figure, figures measured disturbed on every attempt (low confidence),
        and figures observation refuted (discarded first). It holds the measured config's cores at
        the lowest priority, so serving is never oversubscribed and waits for no measurement.

        `first_pass` (a start with nothing stored): first, at the requests' own priority, the
        single-thread, batch-1 original of every backend — the few figures that decide most
        placements, in seconds even under load — then the rest at the lowest priority, measured
        while the box has cores to spare."""
        assert self.store is not None
        if first_pass:
            self._profile_pass(lambda c, b: c.threads == 1 and b == 1 and c.variant == "fp32", FIRST_PASS_PRIORITY)
        self._profile_pass(None, BACKGROUND_PRIORITY)

    def _profile_pass(self, select: Callable[[ExecutionConfig, int], bool] | None, priority: int) -> None:
        assert self.store is not None
        configs = self._configs()
        bindings = self._bindings()
        versions = current_backend_versions()

        def guard(config: ExecutionConfig) -> AbstractContextManager[object]:
            if priority == BACKGROUND_PRIORITY:
                self._wait_for_spare(config)
            return self.engine.compute_slot(config, priority)

        refuted = {(m, replace(c, max_batch=0)) for m, c in self._refuted}  # every batch cap of it
        self._refuted = set()
        for name, config in configs.items():
            if self._stop.is_set():
                return
            variants = self._variants(name)
            known = {v for v, (_, loss) in variants.items() if loss <= config.max_fidelity_loss}
            for digest, _ in (variants[v] for v in known):
                for stored in self.store.for_model(digest, backend_versions=versions):
                    if (name, replace(stored.config, max_batch=0)) in refuted:
                        self.store.discard(stored)
            binding = bindings.get(name)

            def wanted(c: ExecutionConfig, b: int, binding: Binding | None = binding) -> bool:
                return (binding is None or binding.allows(c)) and (select is None or select(c, b))

            try:
                files = {v: f for v, f in self.engine.model_files(name).items() if v in known}
            except EdgeplexError as exc:  # its folder went away meanwhile: the other models go on
                log.info("not profiling %s: %s", name, exc.message)
                continue
            if "fp32" not in files:
                continue
            measured = [0]

            def count(step: Step, measured: list[int] = measured) -> None:
                if step.outcome not in ("stored", "failed before"):
                    measured[0] += 1

            profile_model(
                name, files["fp32"][0], config, self.store, self.engine.cores, iterations=20, warmup=2,
                max_seconds=self.profile_seconds, guard=guard, variants=files,  # what is stored is skipped
                remeasure_low_confidence=True, select=wanted, progress=count,
            )
            if measured[0]:
                log.info("profiled %s in the background: %d figure(s) missing, refuted or measured disturbed",
                         name, measured[0])

    def _wait_for_spare(self, config: ExecutionConfig) -> None:
        """Before a background measurement, wait (at most SPARE_MAX_WAIT_S) until its processor
        has the cores to spare: busy, over a short window, no more than its capacity less what the
        measurement takes. A saturated box measures at most once a SPARE_MAX_WAIT_S, so learning
        costs its requests little; a box with slack measures at once."""
        view = {p.name: p for p in self.engine.processors()}.get(config.processor)
        if view is None:
            return
        tokens = resolve_tokens(config, self.engine.cores, self.engine.capacities())
        waited = 0.0
        while waited < SPARE_MAX_WAIT_S and not self._stop.is_set():
            before = view.busy_seconds
            self._stop.wait(SPARE_WINDOW_S)
            waited += SPARE_WINDOW_S
            view = {p.name: p for p in self.engine.processors()}[config.processor]
            if view.busy_seconds - before <= (view.capacity - tokens + 0.25) * SPARE_WINDOW_S:
                return

    # -- helpers -------------------------------------------------------------------------------
    def _configs(self) -> dict[str, ModelConfig]:
        """The models to place: those serving, and those evicted for memory (a placement with
        smaller variants may fit them all back in)."""
        return {s.name: s.config for s in self.engine.models() if s.servable and s.config is not None}

    def _observed_only(self, view: ModelView, known: list[Candidate],
                       observed: Mapping[tuple[str, ExecutionConfig], ConfigLoad]) -> list[Candidate]:
        """Candidates for the configs a model runs that no profile covers, from observation."""
        assert view.placement is not None
        instances = sum(g.count for g in view.placement.groups) or 1
        capacities = self.engine.capacities()
        running = [(g.config, resolve_tokens(g.config, self.engine.cores, capacities),
                    g.memory_bytes or view.memory_bytes // instances)
                   for g in view.placement.groups if view.binding.allows(g.config)]
        return observed_candidates(view.name, running, known, observed)

    def _bindings(self) -> dict[str, Binding]:
        """What each model's config file binds (the allocator chooses only the rest)."""
        return {view.name: view.binding for view in self.engine.models()}

    def _explain_defaults(self) -> None:
        """Explain placements no plan chose yet: the model's config, or a baseline policy."""
        for view in self.engine.models():
            if view.placement is not None:
                self.engine.explain(view.name, explain_default(view.placement, view.binding, self.policy))

    def _explain_unplaced(self, configs: dict[str, ModelConfig], bindings: dict[str, Binding],
                          profiles: dict[str, list[Profile]], unplaced: dict[str, str], context: Context | None,
                          views: dict[str, ModelView] | None = None) -> None:
        """Models the plan leaves as they are: say why (not profiled, nothing within bounds, memory)."""
        context = context or Context(None, {}, self.interval_s, self.min_gain)
        views = views if views is not None else {view.name: view for view in self.engine.models()}
        for name, why in unplaced.items():
            view = views.get(name)
            if view is None or view.placement is None or view.placement.turn:
                continue
            self.engine.explain(name, explain_unplaced(name, view.placement, configs[name], bindings[name],
                                                       profiles.get(name, []), why, context))

    def _explain_kept(self, current: Placement, result: PlanResult, configs: dict[str, ModelConfig],
                      bindings: dict[str, Binding], profiles: dict[str, list[Profile]], context: Context) -> None:
        """Placements kept this round (the plan would not gain enough): explained with today's figures."""
        for name, placement in current.items():
            if name in result.placement and name in configs:
                why = explain_planned(name, placement, configs[name], bindings[name], profiles.get(name, []), context)
                planned = result.placement[name]
                if not planned.same_configs(placement):
                    why = replace(why, would_change=(f"{why.would_change}. The plan prefers "
                                                     + " + ".join(f"{g.count}x {short(g.config)}"
                                                                  for g in planned.groups)
                                                     + f", but the mix would gain less than {self.min_gain:.0%}"))
                self.engine.explain(name, why)

    def _apply_all(self, placement: Placement) -> None:
        """Apply model by model, those that shrink first: memory they free is there for the rest."""

        views = {view.name: view for view in self.engine.models()}

        def growth(name: str) -> int:
            view = views.get(name)
            now = sum(g.count for g in view.placement.groups) if view and view.placement else 0
            return sum(g.count for g in placement[name].groups) - now

        for name in sorted(placement, key=growth):
            model_placement = placement[name]
            if self._stop.is_set():
                return
            failed = self._failed.get(name)
            if failed and failed[0].same_configs(model_placement) and self.engine.clock.monotonic() < failed[1]:
                continue  # this very placement failed a moment ago: back off instead of looping
            try:
                self.engine.apply(model_placement)
                self._failed.pop(name, None)
            except Exception as exc:  # one model's failed swap leaves it as it was; the rest go on
                tries = failed[2] + 1 if failed and failed[0].same_configs(model_placement) else 1
                self._failed[name] = (model_placement, self.engine.clock.monotonic() + min(60.0, 2.0 * 2 ** (tries - 1)),
                                      tries)
                log.error("placement of %s failed (%d in a row), it keeps its previous one: %s", name, tries, exc)

    def _variants(self, name: str) -> dict[str, tuple[str, float]]:
        """variant -> (file hash, fidelity loss) of the model's original and variants; each hash
        cached until its file changes (size, mtime)."""
        found: dict[str, tuple[str, float]] = {}
        for variant, (path, loss) in self.engine.model_files(name).items():
            if not path.is_file():
                continue
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            cached = self._hashes.get(str(path))
            if cached is None or cached[0] != stamp:
                cached = (stamp, file_hash(path))
                self._hashes[str(path)] = cached
            found[variant] = (cached[1], loss)
        return found
