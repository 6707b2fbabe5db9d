"""Safe exploration: configs never observed get a bounded trial, so a wrong profile cannot keep
a better config unused forever.

A profile measured on a busy machine can make the best config look bad, and a config that
never runs is never observed. Now and then (at most one trial every `every_s`), the most
promising config not yet observed — one whose believed cost per request is within reach of
what the model runs now — gets ONE extra instance beside the model's own, for `trial_s` or
until it has been observed enough. The model keeps all its instances meanwhile (the trial
only adds one, pulling from the same queue), so no model is starved; then the planner decides
with the observation. A config tried is not tried again for `retry_s`. A config whose profile was measured disturbed
(low confidence) is tried sooner (`DOUBTFUL_EVERY_S`): what it is believed to deliver is the
least trustworthy figure the planner has, and only observation settles it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..backends import ExecutionConfig
from ..engine import InstanceGroup, ModelPlacement, Placement
from .learning import Learned
from .policies import Candidate

TRIAL_S = 6.0
EVERY_S = 20.0
DOUBTFUL_EVERY_S = 8.0  # ... sooner when the config to try was profiled disturbed: its figure decides little
RETRY_S = 300.0
PROMISING = 0.6  # tried when its believed cost is at most 1/0.6 of the incumbent's


@dataclass(frozen=True)
class Trial:
    """One config on trial for one model: the placement with the extra instance, and before."""

    model: str
    config: ExecutionConfig
    started: float
    before: ModelPlacement
    during: ModelPlacement


def cost(candidate: Candidate) -> float:
    """Core-seconds (tokens x seconds) one request takes."""
    return candidate.threads / candidate.rate if candidate.rate > 0 else math.inf


def pick_trial(learned: Learned, current: Placement, demand: Mapping[str, float],
               tried: Mapping[tuple[str, ExecutionConfig], float], now: float,
               retry_s: float = RETRY_S, promising: float = PROMISING) -> tuple[str, Candidate] | None:
    """The most promising (model, config) never observed, among models with demand; None if none."""
    best: tuple[float, str, Candidate] | None = None
    for model, placement in current.items():
        if placement.turn or demand.get(model, 0.0) <= 0 or model not in learned.candidates:
            continue
        by_config = {c.config: c for c in learned.candidates[model]}
        in_use = [by_config[g.config] for g in placement.groups if g.config in by_config]
        if not in_use:
            continue
        incumbent = min(cost(c) for c in in_use)
        for cand in learned.candidates[model]:
            key = (model, cand.config)
            belief = learned.beliefs.get(key)
            if belief is None or belief.source == "observed" or cand.config in {g.config for g in placement.groups}:
                continue
            if now < tried.get(key, -math.inf) + retry_s or cost(cand) * promising > incumbent:
                continue
            score = cost(cand) / incumbent
            if best is None or score < best[0]:
                best = (score, model, cand)
    return (best[1], best[2]) if best is not None else None


def start_trial(model: str, candidate: Candidate, placement: ModelPlacement, now: float) -> Trial:
    """The model's placement with one instance of `candidate` beside its own."""
    extra = InstanceGroup(candidate.config, 1, candidate.memory_bytes)
    during = replace(placement, groups=[*placement.groups, extra],
                     reason=f"trial: one {candidate.config.label()} instance beside its own, to observe it "
                            f"(its profile predicts {candidate.rate:.1f}/s; not yet observed)")
    return Trial(model, candidate.config, now, placement, during)


def trial_over(trial: Trial, observed_rows: int, now: float, min_rows: int, trial_s: float = TRIAL_S) -> bool:
    return observed_rows >= min_rows or now - trial.started >= trial_s
