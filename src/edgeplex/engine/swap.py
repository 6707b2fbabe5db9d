"""Warm swap: putting a placement's instances under a model's running queues.

A placement change keeps the instances it can (same config) and opens only the missing ones;
the new ones start serving before the surplus retires, under the same queue, so no request is
lost, refused or answered twice. Memory is accounted at the figure the placement carries (the
profiled bytes the allocator planned with), else at what the load measured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..backends import ExecutionConfig
from ..config import ModelConfig
from .clock import Clock
from .placement import InstanceGroup, ModelPlacement
from .processors import Processors
from .registry import READY, Decision, ModelState
from .runner import Instance, ModelRunner
from .scheduler import Discipline

log = logging.getLogger(__name__)


@dataclass
class SwapPlan:
    """Per version: the instances kept, and the groups still to open."""

    kept: dict[str, list[Instance]]
    to_open: dict[str, list[InstanceGroup]]

    @property
    def kept_instances(self) -> list[Instance]:
        return [inst for kept in self.kept.values() for inst in kept]


def plan_swap(state: ModelState, versions: list[str], placement: ModelPlacement, reuse: bool) -> SwapPlan:
    """With `reuse` (a placement change of a serving model) the instances it has under the same
    configs are kept; without (a load), every instance is opened afresh from the files."""
    kept: dict[str, list[Instance]] = {}
    to_open: dict[str, list[InstanceGroup]] = {}
    for version in versions:
        runner = state.runners.get(version) if reuse and state.state == READY else None
        kept[version], to_open[version] = _reuse(runner, placement)
    return SwapPlan(kept, to_open)


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


def growth(placement: ModelPlacement, instances: list[Instance]) -> int:
    """Bytes by which accounting `instances` at `placement`'s profiled figures grows."""
    planned = planned_bytes(placement)
    return sum(max(0, planned.get(i.config, i.memory_bytes) - i.memory_bytes) for i in instances)


def planned_bytes(placement: ModelPlacement) -> dict[ExecutionConfig, int]:
    """Per config, the profiled bytes of one instance where the placement carries them."""
    return {g.config: g.memory_bytes for g in placement.groups if g.memory_bytes > 0}


def account(state: ModelState, placement: ModelPlacement) -> None:
    """Account each instance at its group's profiled bytes where the placement has them."""
    planned = planned_bytes(placement)
    for runner in state.runners.values():
        for inst in runner.instances:
            inst.memory_bytes = planned.get(inst.config, inst.memory_bytes)
    state.memory_bytes = sum(r.memory_bytes for r in state.runners.values())


def install(state: ModelState, config: ModelConfig, plan: SwapPlan, opened: dict[str, list[Instance]],
            placement: ModelPlacement, processors: Processors, order: Discipline | None, clock: Clock,
            load_seconds: float | None) -> None:
    """Serve every version from its kept and opened instances (caller holds the registry's lock).
    `load_seconds`: how long a load took (None for a placement change, which keeps its residency)."""
    state.config = config
    for version, instances in opened.items():
        runner = state.runners.get(version)
        if runner is not None and state.state == READY:
            runner.replace_instances(plan.kept[version] + instances)
        else:
            runner = ModelRunner(config, version, instances, processors, state.stats.get(version), order)
            state.stats[version] = runner.stats
            state.runners[version] = runner
    if load_seconds is not None:
        state.loaded_at, state.load_seconds = clock.monotonic(), load_seconds
    account(state, placement)
    state.state, state.reason, state.evicted = READY, "", False
    state.last_used = clock.monotonic()
    state.decisions.append(Decision(time.time(), describe(placement), placement.reason))
    state.placements += 1


def describe(placement: ModelPlacement) -> str:
    return " + ".join(f"{g.count}x {g.config.backend}/{g.config.processor}/{g.config.variant}/t{g.config.threads}"
                      for g in placement.groups)
