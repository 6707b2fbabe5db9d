"""A picture of a model's profiles: latency per row vs memory, the Pareto front highlighted.

Drawn on an explicit Agg canvas (no pyplot): no global backend switch, no GUI, safe off the
main thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .pareto import latency_per_row_ms
from .profile import Profile


def point_label(profile: Profile) -> str:
    """backend/threads/batch (processor and variant only when not the plain cpu / fp32)."""
    c = profile.config
    where = "" if c.processor == "cpu" else f"@{c.processor}"
    variant = "" if c.variant == "fp32" else f"/{c.variant}"
    return f"{c.backend}{where}{variant}/t{c.threads}/b{profile.batch}"


def plot_front(model: str, profiles: Sequence[Profile], front: Sequence[Profile], chosen: Profile | None = None,
               *, path: Path) -> Path:
    """Write a PNG scatter of `profiles` (front in colour, `chosen` starred) to `path`; returns it."""
    fig = Figure(figsize=(8, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    on_front = {id(p) for p in front}
    rest = [p for p in profiles if id(p) not in on_front]

    def xy(items: Sequence[Profile]) -> tuple[list[float], list[float]]:
        return [latency_per_row_ms(p) for p in items], [p.memory_bytes / 1e6 for p in items]

    if rest:
        ax.scatter(*xy(rest), s=28, color="0.6", label="measured", zorder=2)
    if front:
        ordered = sorted(front, key=latency_per_row_ms)
        ax.scatter(*xy(ordered), s=46, color="tab:blue", label="Pareto front", zorder=3)
        ax.plot(*xy(ordered), color="tab:blue", linewidth=0.8, alpha=0.5, zorder=2)
    if chosen is not None:
        ax.scatter(*xy([chosen]), s=220, marker="*", color="tab:red", label="chosen", zorder=4)
    for p in profiles:
        x, y = latency_per_row_ms(p), p.memory_bytes / 1e6
        ax.annotate(point_label(p), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=7,
                    color="black" if id(p) in on_front else "0.45")
    xs = [latency_per_row_ms(p) for p in profiles]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("p50 latency per request row (ms) = p50 of a call / batch")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title(f"{model}: {len(profiles)} configs, {len(front)} on the front")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    if profiles:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
