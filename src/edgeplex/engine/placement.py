"""A placement: for every model, which execution configs it runs under and how many instances
of each. The allocation policies (tuning) produce it; the ModelManager applies it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backends.base import ExecutionConfig
from ..config import DynamicBatching, ModelConfig


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


@dataclass(frozen=True)
class Explanation:
    """Why a model runs as it does, in words for the operator: the figures that decided, the
    configs that lost and why, and what would change the decision."""

    summary: str
    source: str = "config"  # where the deciding figures come from: observed | profiled | config | default
    bound: tuple[str, ...] = ()  # the allocation fields its config file sets (`field=value`)
    rejected: tuple[tuple[str, str], ...] = ()  # (config, why not)
    would_change: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"summary": self.summary, "source": self.source, "bound": list(self.bound),
                "rejected": [{"config": c, "reason": r} for c, r in self.rejected], "would_change": self.would_change}


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
    explanation: Explanation | None = None

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


def config_as_placed(config: ModelConfig, placement: ModelPlacement | None) -> ModelConfig:
    """The model's config as it runs under `placement`: the backend, processor, threads and
    batching of its main group (the most instances), the instance count of all groups and the
    variant in `parameters.variant`. What `/v2/models/{m}/config` reports; the groups themselves
    are in the placement."""
    if placement is None or not placement.groups:
        return config
    main = max(placement.groups, key=lambda g: g.count).config
    batching = None
    if main.max_batch > 0 and config.max_batch_size > 0:
        batching = config.dynamic_batching or DynamicBatching(preferred_batch_size=[main.max_batch])
    parameters = {**config.parameters, "variant": main.variant}
    return config.model_copy(update={
        "backend": main.backend, "processor": main.processor, "threads": main.threads,
        "instance_count": sum(g.count for g in placement.groups), "dynamic_batching": batching,
        "parameters": parameters,
    })
