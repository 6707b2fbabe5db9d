"""The pareto planner for time-shared processors — how edgeplex's executor really runs.

An instance does not own cores: it holds its threads' tokens only while it computes, so the
models on a processor share its core-time. A request of model m under config c costs
u = threads / rate core-seconds (rate: solo requests/s of one instance; divided by the observed
slowdown s). An equal-share mix at λ requests/s per unit of demand is feasible when, on every
processor p,   Σ_m λ·d_m·u(m, c_m) / s_m  ≤  capacity_p,
and when each model has instances enough to run that fast: λ·d_m ≤ n_m·rate·s_m. Instances
beyond what the processor can run at once only cost memory, so each model gets as many as its
processor can use (capacity // threads), fewer where the memory budget binds.

DESIGN.md states the problem with Σ n·threads ≤ cores, as if instances owned their cores; with
the token pool they do not, and that constraint would allow only `cores` single-thread instances
for the whole mix.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..engine import InstanceGroup, ModelPlacement, Placement
from .policies import Candidate, PlanResult, shares, slowdown_of

# Combinations evaluated per plan (each costs up to ~0.3 ms: the allocator re-plans every few
# seconds). Within it the search is exhaustive; beyond, a local search from heuristic starts.
SEARCH_LIMIT = 1_000
SEARCH_SECONDS = 0.25  # ... and no longer than this (the local search stops; large mixes only)
EXACT_SUBSETS = 5  # up to this many models, every subset is tried when not all fit; beyond, greedy


def plan_shared(
    demand: Mapping[str, float],
    candidates: Mapping[str, list[Candidate]],
    cores: int,
    memory_budget: int | None,
    slowdown: Mapping[str, float] | None = None,
    current: Placement | None = None,
    capacities: Mapping[str, int] | None = None,
    hard_budget: int | None = None,
    counts: Mapping[str, int] | None = None,
) -> PlanResult:
    """One config per model and its instance count, maximising λ (ties: keep the current
    config, then use less memory). When the memory budget cannot hold every model even in its
    smallest config, the most models that fit are placed (the most demand among equals, then
    the best λ), leaving room within `hard_budget` (the budget the manager enforces; planning
    keeps a margin below it for warm swaps) for the largest of the others, which take turns
    in that room; only if no placement leaves it do they take turns with the placed models.
    The others are reported in `unplaced`, as are models with no candidate. `counts`: the
    instance counts the operator fixed (a model's config states `instance_count`)."""
    fixed = dict(counts or {})
    models = sorted(m for m in set(demand) | set(candidates) if candidates.get(m))
    unplaced = {m: "no candidate config (not profiled, or none meets its slo_ms / fidelity bound)"
                for m in set(demand) | set(candidates) if not candidates.get(m)}
    caps = {**(capacities or {}), "cpu": cores}
    choices = {m: _useful(candidates[m], m, slowdown, current) for m in models}
    raw = shares(demand, models)
    smallest = {m: min(c.memory_bytes for c in candidates[m]) for m in models}
    # The most models that fit and leave the rest a room to take turns in; else (no placement
    # leaves one) the most models that fit, the rest taking turns with them.
    best: tuple[tuple[bool, float, float, int, int], dict[str, tuple[Candidate, int]]] | None = None
    effort = _Effort(SEARCH_LIMIT, time.monotonic() + SEARCH_SECONDS)
    for size in range(len(models), 0, -1):
        for subset in _subsets(models, size, smallest, raw):
            if memory_budget is not None and sum(smallest[m] for m in subset) > memory_budget:
                continue  # not even their smallest configs fit
            d = shares(demand, subset)
            rest = [smallest[m] for m in models if m not in subset]
            found, room = None, not rest  # all placed: nobody needs a room
            if rest and memory_budget is not None and hard_budget is not None:  # leave the rest a turn room
                budget = min(memory_budget, hard_budget - max(rest))
                found = (_search(subset, choices, caps, budget, d, slowdown, current, effort, fixed)
                         if budget > 0 else None)
                room = found is not None
            if found is None and (best is None or len(best[1]) == size):  # a larger one without room stands
                found = _search(subset, choices, caps, memory_budget, d, slowdown, current, effort, fixed)
            if found is not None:
                score = (room, sum(raw[m] for m in subset), *found[0])
                if best is None or (score > best[0] if len(best[1]) == size else room and not best[0][0]):
                    best = (score, found[1])
        if best is not None and best[0][0]:
            break
    if best is not None:
        result = _result(best[1], shares(demand, best[1]), caps, slowdown, unplaced)
        for m in sorted(set(models) - set(best[1])):
            unplaced[m] = ("the memory budget cannot hold it with the others, even in their smallest configs: "
                           "it is loaded on request, taking turns " + ("in the room they leave" if best[0][0] else
                                                                       "with them"))
            small = min(candidates[m], key=lambda c: (c.memory_bytes, _cost(c, m, slowdown)))
            result.turns[m] = ModelPlacement(
                m, [InstanceGroup(small.config, 1, small.memory_bytes)], 0.0,
                f"takes turns in memory: 1x {small.config.backend}/{small.config.variant}, its smallest config "
                f"({small.memory_bytes / 1e6:.1f} MB)", turn=True, share=raw[m])
        return result
    for m in models:
        unplaced[m] = "no config of it fits the memory budget"
    return PlanResult({}, 0.0, {}, unplaced, "timeshare")


def _subsets(models: list[str], size: int, smallest: Mapping[str, int], share: Mapping[str, float]
             ) -> Iterator[tuple[str, ...]]:
    """The subsets of `size` models to try: all of them for a few models; else the one of the
    models whose smallest configs are smallest (the most models fit that way; ties: more demand)."""
    if len(models) <= EXACT_SUBSETS:
        yield from itertools.combinations(models, size)
    else:
        yield tuple(sorted(sorted(models, key=lambda m: (smallest[m], -share[m]))[:size]))


Score = tuple[float, int, int]


@dataclass
class _Effort:
    """What is left of a plan's search: evaluations, and time."""

    left: int
    until: float

    def spent(self) -> bool:
        return self.left <= 0 or time.monotonic() > self.until


def _search(
    models: tuple[str, ...], choices: Mapping[str, list[Candidate]], caps: Mapping[str, int], budget: int | None,
    d: Mapping[str, float], slowdown: Mapping[str, float] | None, current: Placement | None, effort: _Effort,
    fixed: Mapping[str, int] | None = None,
) -> tuple[Score, dict[str, tuple[Candidate, int]]] | None:
    """The best (λ, configs kept, -memory) combination of `models`' configs, None if none fits:
    every combination while `effort` (evaluations left for this plan) lasts, else a local search
    (one model's config changed at a time) from each model's most core-efficient config and
    from each one's smallest."""

    def score(chosen: dict[str, Candidate]) -> tuple[Score, dict[str, tuple[Candidate, int]]] | None:
        effort.left -= 1
        counts = _instances(chosen, caps, budget, d, slowdown, fixed)
        if counts is None:
            return None
        lam = _lam(chosen, counts, d, caps, slowdown)
        kept = sum(1 for m, c in chosen.items() if current and m in current and
                   any(g.config == c.config for g in current[m].groups))
        memory = sum(c.memory_bytes * counts[m] for m, c in chosen.items())
        return (round(lam, 9), kept, -memory), {m: (c, counts[m]) for m, c in chosen.items()}

    options = [choices[m] for m in models]
    best: tuple[Score, dict[str, tuple[Candidate, int]]] | None = None
    if math.prod(len(c) for c in options) <= effort.left:
        for combo in itertools.product(*options):
            found = score(dict(zip(models, combo)))
            if found is not None and (best is None or found[0] > best[0]):
                best = found
        return best
    starts = [{m: min(c, key=lambda x: _cost(x, m, slowdown)) for m, c in zip(models, options)},
              {m: min(c, key=lambda x: x.memory_bytes) for m, c in zip(models, options)}]
    for start in starts:
        here = score(start)
        chosen = dict(start)
        improved = True
        while improved and not effort.spent():
            improved = False
            for m, cands in zip(models, options):
                for cand in cands:
                    if cand is chosen[m] or effort.spent():
                        continue
                    found = score({**chosen, m: cand})
                    if found is not None and (here is None or found[0] > here[0]):
                        here, chosen[m], improved = found, cand, True
        if here is not None and (best is None or here[0] > best[0]):
            best = here
    return best


def shared_lam(
    placement: Placement, demand: Mapping[str, float], candidates: Mapping[str, list[Candidate]], cores: int,
    slowdown: Mapping[str, float] | None = None, capacities: Mapping[str, int] | None = None,
) -> float:
    """λ of an existing placement under this model (for hysteresis: like against like); a model
    whose config has no candidate counts as unable to serve (λ = 0)."""
    models = [m for m in placement if candidates.get(m)]
    d = shares(demand, models)
    chosen: dict[str, Candidate] = {}
    counts: dict[str, int] = {}
    for m in models:
        by_config = {c.config: c for c in candidates[m]}
        groups = [g for g in placement[m].groups if g.config in by_config]
        if not groups:
            return 0.0
        main = max(groups, key=lambda g: g.count)
        chosen[m], counts[m] = by_config[main.config], sum(g.count for g in groups)
    return _lam(chosen, counts, d, {**(capacities or {}), "cpu": cores}, slowdown) if chosen else 0.0


def _useful(cands: list[Candidate], model: str, slowdown: Mapping[str, float] | None,
            current: Placement | None) -> list[Candidate]:
    """The candidates that can be part of a best plan: those no other on the same processor beats
    on core-time per request, memory per instance and rate per instance (what an instance
    delivers when memory limits the instances) together — variants multiply the configs, and
    this keeps the exhaustive search small — and the one in use (a tie keeps it)."""
    in_use = {g.config for g in current[model].groups} if current and model in current else set()

    def key(c: Candidate) -> tuple[float, int, float]:
        return _cost(c, model, slowdown), c.memory_bytes, -c.rate

    def beaten(c: Candidate) -> bool:
        mine = key(c)
        return any(o.config.processor == c.config.processor and key(o) != mine
                   and all(a <= b for a, b in zip(key(o), mine)) for o in cands)

    return [c for c in cands if c.config in in_use or not beaten(c)]


def _cost(c: Candidate, model: str, slowdown: Mapping[str, float] | None) -> float:
    """Core-seconds one request takes (threads / effective rate)."""
    return c.threads / (c.rate * slowdown_of(slowdown, model, c.config.processor))


def _instances(chosen: dict[str, Candidate], caps: Mapping[str, int], budget: int | None,
               d: Mapping[str, float], slowdown: Mapping[str, float] | None,
               fixed: Mapping[str, int] | None = None) -> dict[str, int] | None:
    """As many instances as each processor can run at once (the operator's count where fixed),
    then, while over the memory budget, one instance less where that costs λ least (ties: where
    it frees the most memory); a fixed count is never trimmed."""
    fixed = fixed or {}
    counts = {m: fixed.get(m) or max(1, caps.get(c.config.processor, 1) // c.threads) for m, c in chosen.items()}
    if budget is None:
        return counts
    while sum(chosen[m].memory_bytes * n for m, n in counts.items()) > budget:
        trimmable = [m for m, n in counts.items() if n > 1 and m not in fixed]
        if not trimmable:
            return None

        def after_trim(m: str) -> tuple[float, int]:
            trial = {**counts, m: counts[m] - 1}
            return _lam(chosen, trial, d, caps, slowdown), chosen[m].memory_bytes

        counts[max(trimmable, key=after_trim)] -= 1
    return counts


def _lam(chosen: dict[str, Candidate], counts: dict[str, int], d: Mapping[str, float], caps: Mapping[str, int],
         slowdown: Mapping[str, float] | None) -> float:
    lam = math.inf
    load: dict[str, float] = {}
    for m, c in chosen.items():
        if d.get(m, 0.0) <= 0:
            continue
        load[c.config.processor] = load.get(c.config.processor, 0.0) + d[m] * _cost(c, m, slowdown)
        lam = min(lam, counts[m] * c.rate * slowdown_of(slowdown, m, c.config.processor) / d[m])
    for processor, used in load.items():
        lam = min(lam, caps.get(processor, 1) / used)
    return 0.0 if lam == math.inf else lam


def _result(best: dict[str, tuple[Candidate, int]], d: Mapping[str, float], caps: Mapping[str, int],
            slowdown: Mapping[str, float] | None, unplaced: dict[str, str]) -> PlanResult:
    chosen = {m: c for m, (c, _) in best.items()}
    counts = {m: n for m, (_, n) in best.items()}
    lam = _lam(chosen, counts, d, caps, slowdown)
    placement: Placement = {}
    capacity: dict[str, float] = {}
    for m, (c, n) in best.items():
        share = d.get(m, 0.0)
        capacity[m] = lam * share if share > 0 else 0.0
        cfg = c.config
        why = (f"{n}x {cfg.backend}/{cfg.processor}/{cfg.variant} t{c.threads}: {1000 * _cost(c, m, slowdown):.1f} "
               f"core-ms per request (the best of its configs for the {len(chosen)}-model mix)")
        placement[m] = ModelPlacement(m, [InstanceGroup(cfg, n, c.memory_bytes)], capacity[m], why, share=share)
    return PlanResult(placement, lam, capacity, unplaced, "timeshare")
