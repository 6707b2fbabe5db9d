"""A profile: what one execution config of one model measured, solo.

The unit every part of tuning speaks: the profiler writes them, the store keeps them, the
Pareto front filters them and the allocation policies plan with them.

How far a figure can be trusted travels in `extra` (JSON in the store, so older rows simply lack
it): `spread` (coefficient of variation of the timed runs), `foreign_cpu` (the share of a
measuring core other work took), `attempts` and `confidence` ("high", or "low" when every
attempt was disturbed). A row without them reads as confident.
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

    @property
    def key(self) -> ProfileKey:
        """What the store keys it by: (model hash, config, batch, backend version, machine)."""
        return (self.model_hash, self.config, self.batch, self.backend_version, self.machine)

    @property
    def confident(self) -> bool:
        """False when it was measured disturbed on every attempt (`extra["confidence"] == "low"`);
        True otherwise, also for rows stored before confidence was recorded."""
        return self.extra.get("confidence") != "low"

    @property
    def spread(self) -> float | None:
        """Coefficient of variation of its timed runs, None when not recorded."""
        return _number(self.extra.get("spread"))

    @property
    def foreign_cpu(self) -> float | None:
        """The share of a measuring core that other work took while it was measured, None when not recorded."""
        return _number(self.extra.get("foreign_cpu"))

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = asdict(self.config)
        return data


# (model hash, execution config, batch, backend version, machine): one stored figure.
ProfileKey = tuple[str, ExecutionConfig, int, str, str]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
