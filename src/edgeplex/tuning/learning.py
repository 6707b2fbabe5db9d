"""Feedback per execution config: what the planner believes each config of each model delivers.

A profile is one solo measurement, maybe taken on a busy machine; the monitor sees what each
running config really takes beside the other tenants. Where a config has run enough, its
observed service time is its rate; where it has not, its profile is corrected by what the
model's observed configs on the same processor show (observed / profiled), else by what the
whole mix shows, else taken as profiled. An observed config much faster than its own solo
profile says the profile was measured disturbed: it is reported, to be measured again.

Pure functions: the allocator passes the candidates and the observations in.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..backends import ExecutionConfig
from ..engine import ConfigLoad
from .policies import Candidate

MIN_ROWS = 10  # rows observed before a config's own figure replaces its profile (compute times vary little)
CONTRADICTION = 1.3  # observed this much faster than its solo profile: the profile was disturbed
FACTOR_RANGE = (0.05, 2.0)  # how far observation may move an unobserved config's profile


@dataclass(frozen=True)
class Belief:
    """The rate the planner uses for one config, and where it comes from."""

    rate: float
    source: str  # "observed", "profile corrected by N observed configs", "profile"
    factor: float = 1.0  # observed / profiled, applied to the profile (1.0 when observed or unknown)


@dataclass(frozen=True)
class Learned:
    candidates: dict[str, list[Candidate]]  # rates as believed: co-location included
    beliefs: dict[tuple[str, ExecutionConfig], Belief]
    contradicted: list[tuple[str, ExecutionConfig]]  # (model, config) whose profile observation refutes
    factors: dict[str, float]  # "model@processor" -> observed / profiled (what the dashboard shows)


def learn(candidates: Mapping[str, list[Candidate]], observed: Mapping[tuple[str, ExecutionConfig], ConfigLoad],
          min_rows: int = MIN_ROWS) -> Learned:
    """Candidates whose rates are what each config is believed to deliver with the other tenants."""
    ratios: dict[tuple[str, str], list[float]] = {}
    own: dict[tuple[str, ExecutionConfig], float] = {}
    contradicted: list[tuple[str, ExecutionConfig]] = []
    for model, cands in candidates.items():
        for cand in cands:
            seen = _observation(observed, model, cand.config)
            if seen is None or seen.rows < min_rows or seen.service_ms <= 0 or cand.rate <= 0:
                continue
            rate = 1000.0 / seen.service_ms
            own[(model, cand.config)] = rate
            ratios.setdefault((model, cand.config.processor), []).append(rate / cand.rate)
            if rate > CONTRADICTION * cand.rate:
                contradicted.append((model, cand.config))
    by_processor: dict[str, list[float]] = {}
    for (_, processor), values in ratios.items():
        by_processor.setdefault(processor, []).extend(values)
    factors = {f"{m}@{p}": _clamp(statistics.median(v)) for (m, p), v in ratios.items()}
    learned: dict[str, list[Candidate]] = {}
    beliefs: dict[tuple[str, ExecutionConfig], Belief] = {}
    for model, cands in candidates.items():
        out = []
        for cand in cands:
            key = (model, cand.config)
            processor = cand.config.processor
            if key in own:
                belief = Belief(own[key], "observed")
            elif (model, processor) in ratios:
                factor = factors[f"{model}@{processor}"]
                belief = Belief(cand.rate * factor, f"profile corrected by {len(ratios[(model, processor)])} "
                                                    "observed config(s) of the model", factor)
            elif by_processor.get(processor):
                factor = _clamp(statistics.median(by_processor[processor]))
                belief = Belief(cand.rate * factor, "profile corrected by the mix's observed configs", factor)
            else:
                belief = Belief(cand.rate, "profile")
            beliefs[key] = belief
            out.append(replace(cand, rate=belief.rate))
        learned[model] = out
    return Learned(learned, beliefs, contradicted, factors)


def observed_candidates(model: str, running: list[tuple[ExecutionConfig, int, int]], known: list[Candidate],
                        observed: Mapping[tuple[str, ExecutionConfig], ConfigLoad],
                        min_rows: int = MIN_ROWS) -> list[Candidate]:
    """Candidates for configs a model runs that no profile covers (a cold start: the store is
    empty), from what each was observed to take: `running` holds (config, tokens, bytes per
    instance). The planner can then size the model's instances before any profile exists."""
    covered = {replace(c.config, max_batch=0) for c in known}
    out = []
    for config, tokens, memory_bytes in running:
        if replace(config, max_batch=0) in covered:
            continue
        seen = _observation(observed, model, config)
        if seen is None or seen.rows < min_rows or seen.service_ms <= 0:
            continue
        out.append(Candidate(config, 1000.0 / seen.service_ms, max(tokens, 1), memory_bytes))
        covered.add(replace(config, max_batch=0))
    return out


def _observation(observed: Mapping[tuple[str, ExecutionConfig], ConfigLoad], model: str,
                 config: ExecutionConfig) -> ConfigLoad | None:
    """The observation of `config`, also under another max batch (the batcher's cap is not part
    of what one run of the session costs per row)."""
    seen = observed.get((model, config))
    if seen is not None:
        return seen
    matches = [load for (m, c), load in observed.items() if m == model and replace(c, max_batch=0) ==
               replace(config, max_batch=0)]
    return max(matches, key=lambda load: load.rows) if matches else None


def _clamp(factor: float) -> float:
    low, high = FACTOR_RANGE
    return min(max(factor, low), high)
