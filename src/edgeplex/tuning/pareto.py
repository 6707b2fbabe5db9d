"""Pareto fronts of profiles: the configs worth considering, all others being beaten on every count.

The objectives (all lower-is-better) default to latency per request row, resident memory and
fidelity loss. Latency is the p50 of one call divided by its batch: what a row costs at that
batch size, so a batched config is compared with an unbatched one on equal terms (its full call
latency still matters for deadlines, which the allocator checks against p99 separately).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .profile import Profile

Objective = Callable[[Profile], float]


def latency_per_row_ms(profile: Profile) -> float:
    """p50 of one call at the profile's batch, per request row (ms)."""
    return profile.p50_ms / max(profile.batch, 1)


def memory(profile: Profile) -> float:
    return float(profile.memory_bytes)


def fidelity_loss(profile: Profile) -> float:
    return profile.fidelity_loss


DEFAULT_KEYS: tuple[Objective, ...] = (latency_per_row_ms, memory, fidelity_loss)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a dominates b: no worse on every objective and strictly better on at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(profiles: Iterable[Profile], keys: Sequence[Objective] = DEFAULT_KEYS) -> list[Profile]:
    """The profiles no other beats on all `keys`, in input order; of equal points only the first is kept.

    Quadratic, which is fine: a model has tens of configs, not thousands.
    """
    items = list(profiles)
    points = [tuple(key(p) for key in keys) for p in items]
    front: list[Profile] = []
    seen: set[tuple[float, ...]] = set()
    for profile, point in zip(items, points):
        if point in seen or any(dominates(other, point) for other in points):
            continue
        seen.add(point)
        front.append(profile)
    return front


def solo_service_rate(profile: Profile) -> float:
    """Request rows per second one instance of this config serves alone: the allocator's r(m, c).

    The profiler measures it as batch / mean call time; older or hand-made profiles with no
    throughput fall back to batch / p50.
    """
    if profile.throughput > 0:
        return profile.throughput
    if profile.p50_ms <= 0:
        return 0.0
    return max(profile.batch, 1) * 1000.0 / profile.p50_ms
