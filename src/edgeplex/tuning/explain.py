"""Why each model runs as it does, in words an operator understands.

For every model the allocator plans, an `Explanation`: what runs and the figure that decided
(observed beside the other tenants, or profiled alone), the configs that lost and why (slower
per request, p99 over `slo_ms`, fidelity over `max_fidelity_loss`, excluded by a field the
model's config sets, no room in memory), and what would change the decision. Pure functions:
the allocator hands in what it planned with. `edgeplex placement` and the dashboard show it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ..backends import ExecutionConfig
from ..config import ModelConfig
from ..engine import Binding, Explanation, ModelPlacement
from .learning import Learned
from .policies import Candidate
from .profile import Profile

MAX_REJECTED = 8  # configs listed as rejected per model (the closest runners-up first)


def short(config: ExecutionConfig) -> str:
    """A config as an operator reads it: `openvino t1`, `onnxruntime int8 t2 batch 8`, `... on cuda:0`."""
    parts = [config.backend]
    if config.variant != "fp32":
        parts.append(config.variant)
    parts.append(f"t{config.threads}")
    if config.max_batch > 0:
        parts.append(f"batch {config.max_batch}")
    if config.processor != "cpu":
        parts.append(f"on {config.processor}")
    return " ".join(parts)


def _unbatched(config: ExecutionConfig) -> ExecutionConfig:
    return replace(config, max_batch=0)


@dataclass(frozen=True)
class Context:
    """What one round of planning knew, for explaining it."""

    learned: Learned | None
    demand: Mapping[str, float]
    interval_s: float
    min_gain: float


def explain_planned(model: str, placement: ModelPlacement, config: ModelConfig, binding: Binding,
                    profiles: Iterable[Profile], context: Context) -> Explanation:
    """The explanation of a model the planner placed."""
    group = max(placement.groups, key=lambda g: g.count)
    chosen = group.config
    candidates = context.learned.candidates.get(model, []) if context.learned else []
    mine = next((c for c in candidates if c.config == chosen), None)
    belief = context.learned.beliefs.get((model, chosen)) if context.learned else None
    source = "observed" if belief is not None and belief.source == "observed" else "profiled"
    runs = " + ".join(f"{g.count}x {short(g.config)}" for g in placement.groups)
    if mine is None:
        summary = f"{runs}: kept (no figures for it this round)"
    else:
        summary = (f"{runs}: {mine.rate:.1f} req/s per instance {source}, "
                   f"{_core_ms(mine):.1f} core-ms per request")
        rivals = sorted((c for c in candidates if c.config != chosen), key=_core_ms)
        if rivals:
            summary += f"; next best {short(rivals[0].config)} {_core_ms(rivals[0]):.1f} core-ms"
    rejected = _rejected(model, chosen, config, binding, profiles, candidates, context)
    change = (f"re-planned every {context.interval_s:g} s from what is observed; another config takes over when the "
              f"mix is predicted to sustain {context.min_gain:.0%} more (a config runs faster than believed, "
              "or demand shifts)")
    if binding.fields:
        change += "; the fields the config sets stay as they are"
    return Explanation(summary, source, tuple(binding.describe()), rejected, change)


def explain_unplaced(model: str, placement: ModelPlacement | None, config: ModelConfig, binding: Binding,
                     profiles: Iterable[Profile], why: str, context: Context) -> Explanation:
    """The explanation of a model the planner could not place: it keeps what it runs."""
    profiles = list(profiles)
    runs = " + ".join(f"{g.count}x {short(g.config)}" for g in placement.groups) if placement else "nothing"
    rejected = _rejected(model, None, config, binding, profiles, [], context)
    if not profiles:
        summary = f"{runs}, as its config says: not profiled yet"
        change = "its profile, measured in the background (about a minute after start)"
    else:
        summary = f"{runs}, as its config says: {why}"
        slowest_ok = _fastest_p99(profiles, binding)
        change = (f"slo_ms of at least {slowest_ok:.0f} ms (its fastest allowed config's p99)"
                  if config.slo_ms is not None and slowest_ok is not None and slowest_ok > config.slo_ms
                  else "a config that meets its bounds, or room in memory")
    return Explanation(summary, "config", tuple(binding.describe()), rejected, change)


def explain_default(placement: ModelPlacement | None, binding: Binding, policy: str) -> Explanation:
    """The explanation of a placement no plan chose: the model's config, or a baseline policy."""
    runs = " + ".join(f"{g.count}x {short(g.config)}" for g in placement.groups) if placement else "nothing"
    reason = placement.reason if placement and placement.reason else "model config"
    source = "config" if reason.startswith("model config") else "default"
    change = ("the allocator's first plan, once profiles exist (policy pareto)" if policy == "pareto"
              else f"nothing: policy {policy} does not re-place")
    return Explanation(f"{runs}: {reason}", source, tuple(binding.describe()), (), change)


def _core_ms(candidate: Candidate) -> float:
    return 1000.0 * candidate.threads / candidate.rate if candidate.rate > 0 else float("inf")


def _fastest_p99(profiles: list[Profile], binding: Binding) -> float | None:
    allowed = [p.p99_ms for p in profiles if binding.allows(p.config)]
    return min(allowed) if allowed else None


def _rejected(model: str, chosen: ExecutionConfig | None, config: ModelConfig, binding: Binding,
              profiles: Iterable[Profile], candidates: list[Candidate], context: Context
              ) -> tuple[tuple[str, str], ...]:
    """Each other profiled config (all batch caps as one) with why it does not run."""
    by_config: dict[ExecutionConfig, list[Profile]] = {}
    for p in profiles:
        by_config.setdefault(_unbatched(p.config), []).append(p)
    usable = {_unbatched(c.config): c for c in candidates}
    best = next((c for c in candidates if chosen is not None and c.config == chosen), None)
    out: list[tuple[float, str, str]] = []
    for base, measured in by_config.items():
        if chosen is not None and base == _unbatched(chosen):
            continue
        order, reason = _why_not(base, measured, config, binding, usable.get(base), best)
        out.append((order, short(base), reason))
    out.sort()
    return tuple((label, reason) for _, label, reason in out[:MAX_REJECTED])


def _why_not(base: ExecutionConfig, measured: list[Profile], config: ModelConfig, binding: Binding,
             usable: Candidate | None, best: Candidate | None) -> tuple[float, str]:
    """(sort key, reason) for one config that does not run."""
    if not binding.allows(base) and not binding.allows(replace(base, max_batch=1)):
        return 3.0, "excluded by the model's config (" + ", ".join(binding.describe()) + ")"
    lossy = min(p.fidelity_loss for p in measured)
    if lossy > config.max_fidelity_loss:
        return 2.0, f"fidelity loss {lossy:.3f} over max_fidelity_loss {config.max_fidelity_loss:g}"
    p99 = min(p.p99_ms for p in measured)
    if config.slo_ms is not None and p99 > config.slo_ms:
        return 1.0, f"p99 {p99:.1f} ms over slo_ms {config.slo_ms:g}"
    if usable is None:
        return 1.5, "no usable measurement"
    if best is None:
        return 0.0, f"{_core_ms(usable):.1f} core-ms per request"
    mb = f", {usable.memory_bytes / 1e6:.0f} MB" if usable.memory_bytes else ""
    return _core_ms(usable) / 1e6, f"{_core_ms(usable):.1f} core-ms per request vs {_core_ms(best):.1f}{mb}"
