"""Allocation policies: the pieces every policy shares, and the two baselines.

Candidates (what one instance of a config costs and delivers, from profiles, bounded by the
model's slo_ms and fidelity tolerance), hysteresis, the smoothed slowdown, demand shares, and
the `static` and `balance` placements. `pareto`'s planner is `timeshare.plan_shared`. All pure
and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..backends.base import ExecutionConfig
from ..config import ModelConfig
from ..engine import InstanceGroup, ModelPlacement, Placement
from .profile import Profile


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
    confident: bool = True  # False: its profile was measured disturbed on every attempt

    def __post_init__(self) -> None:
        if self.threads < 1 or not self.rate >= 0 or self.memory_bytes < 0:
            raise ValueError(f"candidate {self.config.label()}: need threads >= 1, rate >= 0, memory >= 0")


@dataclass
class PlanResult:
    placement: Placement  # the placed models only
    lam: float  # min over placed models with demand of capacity / share (0.0 if there are none)
    capacity: dict[str, float]  # requests/s per placed model, slowdown included
    unplaced: dict[str, str]  # model -> why it could not be placed within the budgets
    method: str = ""  # which planner produced it
    # Models the memory budget cannot hold with the others: each in its smallest config, one
    # instance, so that taking turns (swapped in on request) costs the others least.
    turns: Placement = field(default_factory=dict)


def resolve_tokens(config: ExecutionConfig, cores: int, capacities: Mapping[str, int] | None = None) -> int:
    """Tokens an instance holds, as the engine's processors grant them (`Processor.tokens`): on
    the CPU its threads, 0 meaning every core; on an accelerator one execution."""
    if config.processor != "cpu":
        return 1
    return max(1, min(config.threads or cores, cores))


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
        if held is None or _better(p, held):
            best[p.config] = p
    if len(models) > 1:
        raise ValueError(f"profiles of one model expected, got {sorted(models)}")
    tokens = {c: resolve_tokens(c, cores, capacities) for c in best}
    # The batcher is capped at the batch size that earned the rate: a model whose best rate is
    # at batch 1 is not batched (batching would add latency and no throughput).
    out = [Candidate(replace(c, max_batch=p.batch) if c.max_batch > 0 else c, p.throughput, tokens[c],
                     p.memory_bytes, p.fidelity_loss, p.p99_ms, p.batch, p.confident) for c, p in best.items()]
    return sorted(out, key=lambda c: (-c.rate, c.config.label()))


BATCH_GAIN = 1.10  # a larger batch must beat a smaller one by this much to be chosen


def _better(p: Profile, held: Profile) -> bool:
    """Whether `p` earns its place over `held` (same config, other batch size): batching adds
    latency, so a larger batch must be clearly faster per row, not ahead by measurement noise."""
    if p.batch > held.batch:
        return p.throughput >= BATCH_GAIN * held.throughput
    if p.batch < held.batch:
        return held.throughput < BATCH_GAIN * p.throughput
    return p.throughput > held.throughput


def candidates_for_models(
    profiles: Iterable[Profile], models: Mapping[str, ModelConfig], cores: int, capacities: Mapping[str, int] | None = None
) -> dict[str, list[Candidate]]:
    """Candidates per configured model, bounded by its `slo_ms` and `max_fidelity_loss`."""
    profiles = list(profiles)
    out = {}
    for name, cfg in models.items():
        own = [p for p in profiles if p.model == name]
        out[name] = candidates_from_profiles(own, cores, cfg.slo_ms, cfg.max_fidelity_loss, capacities)
    return out


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
