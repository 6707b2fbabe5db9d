"""A profile: what one execution config of one model measured, solo.

The unit every part of tuning speaks: the profiler writes them, the store keeps them, the
Pareto front filters them and the allocation policies plan with them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..backends.base import ExecutionConfig


@dataclass(frozen=True)
class Profile:
    """Solo measurements of `config` on `model` at one batch size."""

    model: str
    model_hash: str  # sha256 of the model (or variant) file: a changed file is a new profile
    config: ExecutionConfig
    batch: int
    p50_ms: float
    p99_ms: float
    # Requests (batch rows) per second that ONE instance sustains solo at this batch size.
    throughput: float
    memory_bytes: int
    backend_version: str
    machine: str
    # 0.0 for the original (fp32); for a variant, its measured loss against fp32 (1 - agreement).
    fidelity_loss: float = 0.0
    measured_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def threads(self) -> int:
        return self.config.threads

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = asdict(self.config)
        return data
