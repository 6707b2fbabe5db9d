"""The dashboard's Pareto fronts from the profile store: the `FrontsSource` the server is given at
start (the server never imports the tuning; the tuning reads the engine's typed queries)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..backends import ExecutionConfig
from ..engine import Engine
from ..repository import file_hash
from .pareto import latency_per_row_ms, pareto_front
from .profile import Profile
from .profiler import current_backend_versions
from .store import ProfileStore


class ProfileFronts:
    """Each model's stored profiles, its Pareto front (latency per row, memory, fidelity loss, as
    the allocator weighs them) and the configs it runs now. File hashes are cached per file
    (path, size, mtime), so polling does not re-read the models."""

    def __init__(self, store: ProfileStore) -> None:
        self.store = store
        self._hashes: dict[Path, tuple[tuple[int, int], str]] = {}
        self._lock = threading.Lock()

    def document(self, engine: Engine) -> dict[str, Any]:
        versions = current_backend_versions()
        models = []
        for state in engine.models():
            if state.config is None:
                continue
            in_use = {g.config for g in state.placement.groups} if state.placement is not None else set()
            profiles = self._profiles(engine, state.name, versions)
            front = {id(p) for p in pareto_front(profiles)}
            starred = star_in_use(in_use, profiles)
            star_of = {id(p): config for config, p in starred.items() if p is not None}
            models.append({
                "model": state.name,
                "in_use": sorted(c.label() for c in in_use),
                "unprofiled": sorted(c.label() for c, p in starred.items() if p is None),
                "profiles": [_point(p, id(p) in front, star_of.get(id(p))) for p in profiles],
            })
        note = "" if any(m["profiles"] for m in models) else f"no profiles in {self.store.path} for these models yet"
        return {"store": str(self.store.path), "note": note, "models": models}

    def _profiles(self, engine: Engine, name: str, versions: dict[str, str]) -> list[Profile]:
        """The model's profiles, original and variants, measured with the backends installed now."""
        profiles: list[Profile] = []
        for variant, (path, loss) in engine.model_files(name).items():
            if not path.is_file():
                continue
            stored = self.store.for_model(self._hash(path), backend_versions=versions)
            profiles += [replace(p, model=name, fidelity_loss=loss) for p in stored if p.config.variant == variant]
        return profiles

    def _hash(self, path: Path) -> str:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._hashes.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        digest = file_hash(path)
        with self._lock:
            self._hashes[path] = (stamp, digest)
        return digest


def star_in_use(in_use: set[ExecutionConfig], profiles: list[Profile]) -> dict[ExecutionConfig, Profile | None]:
    """Per config in use, the ONE profile point that stands for it (None when none was measured).

    Equality of configs misses and doubles: the store keeps each config at its model's
    max_batch_size and at several batch sizes (1 and the max), while pareto runs a config capped
    at the batch that earned its rate (`b1` for a rate at batch 1), so a running `t1/b1` equals
    no stored config and a running `t1/b8` equals two rows (batch 1 and 8). A config in use is
    therefore matched ignoring max_batch, at the batch it runs (its cap, 1 without batching):
    the nearest batch measured, the same stored cap, the latest measurement on a tie.
    """
    chosen: dict[ExecutionConfig, Profile | None] = {}
    taken: set[int] = set()
    for running in sorted(in_use, key=lambda c: c.label()):
        target = running.max_batch if running.max_batch > 0 else 1
        family = [p for p in profiles if id(p) not in taken
                  and replace(p.config, max_batch=0) == replace(running, max_batch=0)]
        best = min(family, default=None, key=lambda p: (abs(p.batch - target), p.config.max_batch != running.max_batch,
                                                         -p.measured_at))
        chosen[running] = best
        if best is not None:
            taken.add(id(best))
    return chosen


def _point(profile: Profile, on_front: bool, in_use_as: ExecutionConfig | None) -> dict[str, Any]:
    config: ExecutionConfig = profile.config
    return {
        "label": config.label(), "backend": config.backend, "processor": config.processor, "variant": config.variant,
        "threads": config.threads, "max_batch": config.max_batch, "batch": profile.batch,
        "p50_ms": profile.p50_ms, "p99_ms": profile.p99_ms, "latency_per_row_ms": latency_per_row_ms(profile),
        "throughput": profile.throughput, "memory_bytes": profile.memory_bytes,
        "fidelity_loss": profile.fidelity_loss, "front": on_front, "in_use": in_use_as is not None,
        "in_use_as": in_use_as.label() if in_use_as is not None else None,
    }
