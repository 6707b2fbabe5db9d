"""Allocation policies: from profiles, budgets and measured demand to a placement.

`pareto` (edgeplex's own) is `plan`: choose configs and instance counts n(m,c) that maximise λ,
cap_m = Σ_c n(m,c)·rate(m,c)·s(m,proc) >= λ·d_m for every model with demand, within the tokens
of each processor and the memory budget (DESIGN.md, "The allocation problem, stated once").
Two solvers run and the better wins: an exact one (per model, the Pareto-optimal vectors of
instance counts; then a bisection over λ, each step a branch-and-bound search for one vector per
model within the budgets), unless the space is too large, and a greedy one ("the next instance
goes to the bottleneck model, under its best rate per token"), which also spends what the exact
solution leaves over. `static` and `balance` are the baselines. All pure and deterministic.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..backends.base import ExecutionConfig
from ..config import ModelConfig
from ..engine.placement import InstanceGroup, ModelPlacement, Placement
from .profile import Profile

BUNDLE_LIMIT = 5000  # Pareto count vectors of one model beyond which only the greedy solver runs
NODE_LIMIT = 50_000  # nodes of one branch-and-bound search beyond which it gives up
_TOL = 1e-12


@dataclass(frozen=True)
class Candidate:
    """A config a model may run under: what one instance of it costs and delivers, solo."""

    config: ExecutionConfig
    rate: float  # requests/s one instance sustains solo (its profile's throughput at `batch`)
    threads: int  # tokens one instance holds on its processor (config.threads, 0 resolved)
    memory_bytes: int = 0
    fidelity_loss: float = 0.0
    p99_ms: float = 0.0
    batch: int = 1  # the batch size `rate` was measured at

    def __post_init__(self) -> None:
        if self.threads < 1 or not self.rate >= 0 or self.memory_bytes < 0:
            raise ValueError(f"candidate {self.config.label()}: need threads >= 1, rate >= 0, memory >= 0")


@dataclass
class PlanResult:
    placement: Placement  # the placed models only
    lam: float  # min over placed models with demand of capacity / share (0.0 if there are none)
    capacity: dict[str, float]  # requests/s per placed model, slowdown included
    unplaced: dict[str, str]  # model -> why it could not be placed within the budgets
    method: str = ""  # the solver whose answer won: "current" (kept, topped up), "exact", "greedy"


def resolve_tokens(config: ExecutionConfig, cores: int, capacities: Mapping[str, int] | None = None) -> int:
    """Tokens an instance holds, as the executor's pool grants them: threads 0 means the whole
    processor ("cpu": `cores`; others: `capacities`, 1 by default), clamped to [1, capacity]."""
    capacity = cores if config.processor == "cpu" else (capacities or {}).get(config.processor, 1)
    return max(1, min(config.threads or capacity, capacity))


def candidates_from_profiles(
    profiles: Iterable[Profile],
    cores: int,
    slo_ms: float | None = None,
    max_fidelity_loss: float | None = None,
    capacities: Mapping[str, int] | None = None,
) -> list[Candidate]:
    """The candidates of ONE model. Per execution config, among its measured batch sizes whose
    p99 meets `slo_ms`, whose fidelity loss is within the bound and (for a batching config) that
    do not exceed its max_batch, the one with the highest throughput, the smaller on a tie: the
    rate one instance sustains when its queue is deep. A config left with none is dropped."""
    best: dict[ExecutionConfig, Profile] = {}
    models = set()
    for p in profiles:
        models.add(p.model)
        too_slow = slo_ms is not None and p.p99_ms > slo_ms
        too_lossy = max_fidelity_loss is not None and p.fidelity_loss > max_fidelity_loss
        if too_slow or too_lossy or p.throughput <= 0 or 0 < p.config.max_batch < p.batch:
            continue
        held = best.get(p.config)
        if held is None or (p.throughput, -p.batch) > (held.throughput, -held.batch):
            best[p.config] = p
    if len(models) > 1:
        raise ValueError(f"profiles of one model expected, got {sorted(models)}")
    tokens = {c: resolve_tokens(c, cores, capacities) for c in best}
    out = [Candidate(c, p.throughput, tokens[c], p.memory_bytes, p.fidelity_loss, p.p99_ms, p.batch) for c, p in best.items()]
    return sorted(out, key=lambda c: (-c.rate, c.config.label()))


def candidates_for_models(
    profiles: Iterable[Profile], models: Mapping[str, ModelConfig], cores: int, capacities: Mapping[str, int] | None = None
) -> dict[str, list[Candidate]]:
    """Candidates per configured model, bounded by its `slo_ms` and `parameters.max_fidelity_loss`."""
    profiles = list(profiles)
    out = {}
    for name, cfg in models.items():
        loss = cfg.parameters.get("max_fidelity_loss")
        own = [p for p in profiles if p.model == name]
        out[name] = candidates_from_profiles(own, cores, cfg.slo_ms, None if loss is None else float(loss), capacities)
    return out


def update_slowdown(previous: float, observed_service_ms: float, solo_service_ms: float, alpha: float = 0.3) -> float:
    """Smoothed co-location factor s = solo / observed service time of one model on one processor,
    clamped to [0.05, 1.0]; a measurement that says nothing (<= 0, not finite) changes nothing."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    ratio = solo_service_ms / observed_service_ms if observed_service_ms > 0 else math.nan
    if solo_service_ms > 0 and math.isfinite(ratio):
        previous = (1 - alpha) * previous + alpha * min(ratio, 1.0)
    return min(max(previous, 0.05), 1.0)


def should_switch(current_lam: float, new_lam: float, min_gain: float = 0.10) -> bool:
    """Hysteresis: switch only when the predicted relative gain is at least `min_gain`."""
    if current_lam <= 0:
        return new_lam > 0
    return (new_lam - current_lam) / current_lam >= min_gain


def slowdown_of(slowdown: Mapping[str, float] | None, model: str, processor: str) -> float:
    """The factor of `model` on `processor`: key "model@processor", else "model", else 1.0."""
    s = (slowdown or {}).get(f"{model}@{processor}", (slowdown or {}).get(model, 1.0))
    if not 0 < s < math.inf:
        raise ValueError(f"slowdown of {model} on {processor} must be > 0, got {s}")
    return s


def shares(demand: Mapping[str, float], models: Iterable[str]) -> dict[str, float]:
    """Demand share per model (0 where absent); equal shares when there is no demand at all."""
    d = {m: float(demand.get(m, 0.0)) for m in models}
    if any(not 0 <= v < math.inf for v in d.values()):
        raise ValueError(f"demand must be finite and >= 0: {d}")
    return d if any(d.values()) else dict.fromkeys(d, 1.0)


def predicted_lam(
    placement: Placement,
    demand: Mapping[str, float],
    candidates: Mapping[str, list[Candidate]],
    slowdown: Mapping[str, float] | None = None,
    models: Iterable[str] | None = None,
) -> float:
    """λ of `placement` under this demand and slowdown, scored as `plan` scores, over `models`
    (default: every model with a candidate); an absent model, or a config that is not a
    candidate, counts 0/s. Pass a plan's `placement.keys()` to compare over the same models."""
    d = shares(demand, set(demand) | set(candidates))
    lam = math.inf
    for m in sorted(set(models) if models is not None else {m for m in d if candidates.get(m)}):
        rates: dict[ExecutionConfig, float] = {}
        for c in candidates.get(m, []):
            rates.setdefault(c.config, c.rate * slowdown_of(slowdown, m, c.config.processor))
        if d.get(m, 0.0) > 0:
            groups = placement[m].groups if m in placement else []
            lam = min(lam, sum(g.count * rates.get(g.config, 0.0) for g in groups) / d[m])
    return 0.0 if lam == math.inf else lam


# --- the pareto planner -------------------------------------------------------------------

Vec = tuple[int, ...]  # tokens per processor, then memory bytes (always 0 when memory is unbounded)
Bundle = tuple[Vec, float, tuple[int, ...]]  # resources, capacity, instance count per candidate
Counts = dict[str, list[int]]  # model -> instance count per candidate


class _TooBig(Exception):
    pass


def _add(a: Vec, b: Vec, k: int = 1) -> Vec:
    return tuple(x + k * y for x, y in zip(a, b))


def _le(a: Vec, b: Vec) -> bool:
    return all(map(operator.le, a, b))


def _front(bundles: list[Bundle], key: Callable[[Bundle], Any]) -> list[Bundle]:
    """In `key` order, keep each bundle that no bundle kept before it undercuts on every
    resource (indexed by token vector, of which there are few, with the least memory of each)."""
    kept: list[Bundle] = []
    least: dict[Vec, int] = {}
    for b in sorted(set(bundles), key=key):
        tokens, mem = b[0][:-1], b[0][-1]
        if not any(m <= mem and _le(t, tokens) for t, m in least.items()):
            kept.append(b)
            least[tokens] = min(mem, least.get(tokens, mem))
    return kept


class _Planner:
    def __init__(
        self, d: dict[str, float], cands: dict[str, list[Candidate]], slowdown: Mapping[str, float] | None,
        caps: dict[str, int], budget: int | None,
    ) -> None:
        procs = sorted({"cpu"} | {c.config.processor for cs in cands.values() for c in cs})
        self.models, self.d, self.cands = sorted(d), d, cands
        self.limits: Vec = tuple(caps.get(p, 1) for p in procs) + (budget or 0,)
        mem = budget is not None

        def vec(c: Candidate) -> Vec:
            return tuple(c.threads * (p == c.config.processor) for p in procs) + (c.memory_bytes * mem,)

        self.vec = {m: [vec(c) for c in cs] for m, cs in cands.items()}
        self.eff = {m: [c.rate * slowdown_of(slowdown, m, c.config.processor) for c in cs] for m, cs in cands.items()}
        self.zero: Vec = tuple(0 for _ in self.limits)

    def singles(self, m: str) -> list[Bundle]:
        """One instance of each candidate that fits alone, best rate per token first."""
        n = len(self.cands[m])
        out = [(v, e, tuple(int(j == i) for j in range(n))) for i, (v, e) in enumerate(zip(self.vec[m], self.eff[m]))]
        return sorted((b for b in out if _le(b[0], self.limits)), key=lambda b: (-b[1] / sum(b[0][:-1]), b[2]))

    def bundles(self, m: str) -> list[Bundle]:
        """The Pareto-optimal (capacity up, resources down) count vectors of `m` that fit alone."""
        out: list[Bundle] = [(self.zero, 0.0, tuple(0 for _ in self.cands[m]))]
        for i, (v, e) in enumerate(zip(self.vec[m], self.eff[m])):
            grown = []
            for res, cap, counts in out:
                for k in itertools.count():
                    if not _le(r := _add(res, v, k), self.limits):
                        break
                    grown.append((r, cap + k * e, counts[:i] + (k,) + counts[i + 1 :]))
            out = _front(grown, lambda b: (-b[1], sum(b[0]), b[2]))
            if len(out) > BUNDLE_LIMIT:
                raise _TooBig
        return [b for b in out if any(b[2])]

    def search(self, options: dict[str, list[Bundle]]) -> dict[str, tuple[int, ...]] | None:
        """One option per model, all within the budgets: depth-first, fewest options first, cut
        where the cheapest options of the models left no longer fit. None if there is none."""
        if not all(options.values()):
            return None
        order = sorted(options, key=lambda m: (len(options[m]), m))
        floor = [self.zero] * (len(order) + 1)
        for i in range(len(order) - 1, -1, -1):
            floor[i] = _add(floor[i + 1], tuple(min(col) for col in zip(*(b[0] for b in options[order[i]]))))
        nodes = 0

        def go(i: int, used: Vec) -> dict[str, tuple[int, ...]] | None:
            nonlocal nodes
            if (nodes := nodes + 1) > NODE_LIMIT:
                raise _TooBig
            if i == len(order):
                return {}
            for res, _, counts in options[order[i]]:
                u = _add(used, res)
                if _le(_add(u, floor[i + 1]), self.limits) and (rest := go(i + 1, u)) is not None:
                    return {order[i]: counts, **rest}
            return None

        return go(0, self.zero)

    def exact(self, kept: Iterable[str]) -> Counts:
        """The largest λ some bundle ratio cap/d reaches with every model fitting: bisection."""
        bundles = {m: self.bundles(m) for m in kept}

        def at(lam: float) -> dict[str, tuple[int, ...]] | None:
            ok = {m: [b for b in bs if self.d[m] == 0 or b[1] / self.d[m] >= lam] for m, bs in bundles.items()}
            return self.search({m: _front(bs, lambda b: (sum(b[0][:-1]), b[0][-1], -b[1], b[2])) for m, bs in ok.items()})

        ratios = sorted({b[1] / self.d[m] for m, bs in bundles.items() if self.d[m] > 0 for b in bs})
        best, lo, hi = at(0.0), 0, len(ratios)  # at(ratios[lo]) is feasible, at(ratios[hi]) is not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if (found := at(ratios[mid])) is not None:
                best, lo = found, mid
            else:
                hi = mid
        if best is None:
            raise _TooBig  # not for a set that fits one instance each; the greedy answers anyway
        return {m: list(c) for m, c in best.items()}

    def used(self, counts: Counts) -> Vec:
        total = self.zero
        for m, row in counts.items():
            for k, v in zip(row, self.vec[m]):
                total = _add(total, v, k)
        return total

    def fill(self, counts: Counts) -> Counts:
        """Greedy: the next instance goes to the model with demand lowest in cap/d, under its
        fitting candidate with the best rate per token (then least memory), until none can grow."""
        used, full = self.used(counts), set()
        while grow := [m for m in counts if self.d[m] > 0 and m not in full]:
            m = min(grow, key=lambda m: (self.cap(m, counts[m]) / self.d[m], m))
            fits = [i for i, v in enumerate(self.vec[m]) if _le(_add(used, v), self.limits)]
            if not fits:
                full.add(m)
                continue
            i = max(fits, key=lambda i: (self.eff[m][i] / self.cands[m][i].threads, -self.vec[m][i][-1], -i))
            counts[m][i] += 1
            used = _add(used, self.vec[m][i])
        return counts

    def cap(self, m: str, row: list[int]) -> float:
        return sum(k * e for k, e in zip(row, self.eff[m]))

    def better(self, a: Counts, b: Counts) -> bool:
        """More models placed; then the ratios cap/d, smallest first, compared in turn."""
        if len(a) != len(b):
            return len(a) > len(b)
        ra, rb = ([self.cap(m, r) / self.d[m] for m, r in sorted(c.items()) if self.d[m] > 0] for c in (a, b))
        for x, y in zip(sorted(ra), sorted(rb)):
            if abs(x - y) > _TOL * max(1.0, abs(x), abs(y)):
                return x > y
        return False


def plan(
    demand: Mapping[str, float],
    candidates: Mapping[str, list[Candidate]],
    cores: int,
    memory_budget: int | None,
    slowdown: Mapping[str, float] | None = None,
    current: Placement | None = None,
    capacities: Mapping[str, int] | None = None,
) -> PlanResult:
    """The `pareto` placement of every model named in `demand` or `candidates`: each gets at
    least one instance where the budgets allow (as many models as fit together, those with the
    most demand first), then λ is maximised. `capacities`: tokens of processors other than
    "cpu" (which has `cores`), 1 each by default. `current`, where it scores as well as the
    best new answer, is kept (topped up with what is free), so an equal plan causes no churn."""
    d = shares(demand, set(demand) | set(candidates))
    listed = {m: candidates.get(m, []) for m in d}  # keep the first candidate of each config
    cands = {m: [c for i, c in enumerate(cs) if all(x.config != c.config for x in cs[:i])] for m, cs in listed.items()}
    caps = {**(capacities or {}), "cpu": cores}
    pl = _Planner(d, cands, slowdown, caps, memory_budget)
    unplaced = {m: _why(cands[m], caps, memory_budget) for m in pl.models if not pl.singles(m)}
    seed = _seed(pl, sorted((m for m in d if m not in unplaced), key=lambda m: (-d[m], m)))
    for m in pl.models:
        if m not in seed and m not in unplaced:
            unplaced[m] = "does not fit beside the other models within the core and memory budgets"
    contenders: list[tuple[str, Counts]] = []
    if current is not None and (counts := _counts_of(pl, current, list(seed))) is not None:
        contenders.append(("current", pl.fill(counts)))
    try:
        contenders.append(("exact", pl.fill(pl.exact(seed))))
    except _TooBig:
        pass
    contenders.append(("greedy", pl.fill({m: list(c) for m, c in seed.items()})))
    method, best = contenders[0]
    for name, counts in contenders[1:]:
        if pl.better(counts, best):
            method, best = name, counts
    return _result(pl, best, unplaced, method)


def _seed(pl: _Planner, order: list[str]) -> dict[str, tuple[int, ...]]:
    """One instance per model for the largest set that fits (earliest in `order` on ties)."""
    for size in range(len(order), 0, -1):
        for kept in itertools.combinations(order, size):
            try:
                found = pl.search({m: pl.singles(m) for m in kept})
            except _TooBig:  # first fit instead
                found, used = {}, pl.zero
                for m in kept:
                    if (b := next((b for b in pl.singles(m) if _le(_add(used, b[0]), pl.limits)), None)) is None:
                        break
                    found[m], used = b[2], _add(used, b[0])
                found = found if len(found) == size else None
            if found is not None:
                return found
    return {}


def _counts_of(pl: _Planner, current: Placement, kept: list[str]) -> Counts | None:
    """`current` as counts, if it runs every kept model under candidate configs within budgets."""
    counts = {}
    for m in kept:
        configs, row = [c.config for c in pl.cands[m]], [0] * len(pl.cands[m])
        for g in current[m].groups if m in current else []:
            if g.config not in configs:
                return None
            row[configs.index(g.config)] += max(g.count, 0)
        counts[m] = row
    return counts if all(map(any, counts.values())) and _le(pl.used(counts), pl.limits) else None


def _why(cands: list[Candidate], caps: Mapping[str, int], budget: int | None) -> str:
    if not cands:
        return "no candidate config (none profiled, or all exceed slo_ms or max_fidelity_loss)"
    why = [
        f"{c.config.label()} needs {c.memory_bytes / 2**20:.0f} MiB > budget {(budget or 0) / 2**20:.0f} MiB"
        if budget is not None and c.memory_bytes > budget
        else f"{c.config.label()} needs {c.threads} tokens > {caps.get(c.config.processor, 1)} on {c.config.processor}"
        for c in cands[:3]
    ]
    return "no config fits the budgets: " + "; ".join(why) + ("; ..." if len(cands) > 3 else "")


def _result(pl: _Planner, counts: Counts, unplaced: dict[str, str], method: str) -> PlanResult:
    capacity = {m: pl.cap(m, counts[m]) for m in pl.models if m in counts}
    ratios = {m: cap / pl.d[m] for m, cap in capacity.items() if pl.d[m] > 0}
    lam = min(ratios.values(), default=0.0)
    placement: Placement = {}
    for m, cap in capacity.items():
        parts = [_describe(c, k, e) for c, k, e in zip(pl.cands[m], counts[m], pl.eff[m]) if k]
        if m not in ratios:
            role = "no demand, one instance kept ready"
        elif ratios[m] <= lam * (1 + 1e-9):
            role = "bottleneck"
        else:
            role = f"headroom {ratios[m] / lam:.2f}×" if lam > 0 else "headroom"
        groups = [InstanceGroup(c.config, k) for c, k in zip(pl.cands[m], counts[m]) if k]
        extra = {"share": pl.d[m], "ratio": ratios.get(m, math.inf)}
        placement[m] = ModelPlacement(m, groups, cap, f"{role}: {' + '.join(parts)} = {cap:.0f}/s", extra)
    return PlanResult(placement, lam, capacity, unplaced, method)


def _describe(c: Candidate, count: int, eff: float) -> str:
    cfg = c.config
    variant = "" if cfg.variant == "fp32" else f"/{cfg.variant}"
    batch = f" b{c.batch}" if c.batch > 1 else ""
    slow = f", slowdown {eff / c.rate:.2f}" if eff < c.rate * (1 - 1e-9) else ""
    return f"{count}× {cfg.backend}/{cfg.processor}{variant} t{c.threads}{batch} ({eff:.0f}/s each{slow})"


# --- baselines ----------------------------------------------------------------------------


def static_placement(models: Mapping[str, ModelConfig]) -> Placement:
    """What a user gets today: ONNX Runtime on the CPU, fp32, its default threads (0: one per
    core, so models running at once oversubscribe the box), one instance per model."""
    return {
        name: _one_each(name, [("onnxruntime", "cpu")], 0, cfg, "static: ONNX Runtime defaults (threads = cores)")
        for name, cfg in models.items()
    }


def balance_placement(models: Mapping[str, ModelConfig], backends: list[str], threads: int = 1) -> Placement:
    """One instance of `threads` threads on every backend ("openvino", or "openvino/cuda:0" for
    another processor than the CPU). Sending each request to the instance with the shortest
    expected wait is the engine's part: every instance of a model pulls from the model's one
    shared queue, so a request runs on whichever instance frees first."""
    if not backends:
        raise ValueError("balance needs at least one backend")
    targets = [(b.split("/", 1) + ["cpu"])[:2] for b in backends]
    reason = f"balance: one instance on each of {', '.join(backends)}, fed by one shared queue"
    return {name: _one_each(name, targets, threads, cfg, reason) for name, cfg in models.items()}


def _one_each(name: str, targets: list[Any], threads: int, cfg: ModelConfig, reason: str) -> ModelPlacement:
    """One fp32 instance on each (backend, processor) of `targets`."""
    configs = [ExecutionConfig(backend, proc, "fp32", threads, cfg.max_batch_size) for backend, proc in targets]
    return ModelPlacement(name, [InstanceGroup(c) for c in configs], reason=f"{reason}, one instance each")
