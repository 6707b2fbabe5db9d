"""A placement: for every model, which execution configs it runs under and how many instances
of each. The allocation policies (tuning) produce it; the ModelManager applies it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backends.base import ExecutionConfig


@dataclass(frozen=True)
class InstanceGroup:
    """`count` instances of a model under one execution config."""

    config: ExecutionConfig
    count: int = 1
    # Resident bytes of one instance as profiled, which the manager then accounts it at, so that
    # planning and enforcing the memory budget use one figure; 0 = unknown: measured at load.
    memory_bytes: int = field(default=0, compare=False)

    @property
    def threads(self) -> int:
        return self.config.threads * self.count


@dataclass
class ModelPlacement:
    """How one model is run, with the estimate and the reason that chose it."""

    model: str
    groups: list[InstanceGroup]
    # Requests per second the allocator expects this placement to sustain (0 = unknown).
    capacity: float = 0.0
    reason: str = ""
    # The model takes turns in memory with others the budget cannot hold at once (the planner
    # left it out): a swap evicts such a model before a placed one.
    turn: bool = False
    share: float = 0.0  # its share of the mix's demand when it was planned
    # Service time observed with the other tenants over the solo profile's (1 = as profiled).
    slowdown: float = 1.0

    @property
    def processors(self) -> set[str]:
        return {g.config.processor for g in self.groups}

    def same_configs(self, other: ModelPlacement) -> bool:
        """True if both run the same configs with the same counts (nothing to swap)."""
        return sorted(self.groups, key=_key) == sorted(other.groups, key=_key)


def _key(group: InstanceGroup) -> tuple[str, str, str, int, int, int]:
    c = group.config
    return (c.backend, c.processor, c.variant, c.threads, c.max_batch, group.count)


Placement = dict[str, ModelPlacement]
