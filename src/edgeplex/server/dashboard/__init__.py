"""The live dashboard: the JSON documents it polls, and its static files (this folder).

`dashboard_document` is one snapshot of the engine (placement, counters, recent latency
percentiles, queues, memory, token pools, decisions); the page turns successive counters into
rates itself, so the server keeps no per-client state. `Fronts` reads each model's profiles
from the profile store and marks its Pareto front and the configs in use.

The chart library is plotly.js, served from the installed `plotly` Python package
(`plotly/package_data/plotly.min.js`): nothing vendored in this repository.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...backends import ExecutionConfig
from ...engine import Engine
from ...engine.stats import percentile_ms
from ...tuning.pareto import latency_per_row_ms, pareto_front
from ...tuning.profile import Profile
from ...tuning.profiler import current_backend_versions
from ...tuning.store import ProfileStore, file_hash
from ...tuning.variants import variant_files

STATIC_DIR = Path(__file__).parent
# The page's own files: name -> media type (nothing else in this folder is served).
ASSETS = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
LATENCY_WINDOW_S = 10.0  # p50/p99 over the requests answered in the last this many seconds
MAX_DECISIONS = 40
NO_STORE_NOTE = ("no profile store: measure the models with `edgeplex profile`, or serve with --policy pareto "
                 "(it profiles what it has not measured)")


def plotly_js() -> Path | None:
    """plotly.min.js inside the installed `plotly` package (found without importing it), or None."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def dashboard_document(engine: Engine, window_s: float = LATENCY_WINDOW_S) -> dict[str, Any]:
    """A snapshot of everything the dashboard shows but the fronts."""
    states = {state.name: state for state in engine.models()}
    models = []
    decisions = []
    for entry in engine.placement_report():
        state = states.get(entry["model"])
        stats = list(state.stats.values()) if state is not None else []
        runners = list(state.runners.values()) if state is not None else []
        triton = [s.as_triton() for s in stats]
        latencies = [ns for s in stats for ns in s.recent_latencies_ns(window_s)]
        models.append({
            **entry,
            "reason_unavailable": state.reason if state is not None else "",
            "requests": sum(t["inference_stats"]["success"]["count"] for t in triton),
            "failures": sum(t["inference_stats"]["fail"]["count"] for t in triton),
            "inferences": sum(t["inference_count"] for t in triton),
            "executions": sum(t["execution_count"] for t in triton),
            "rejected": sum(s.rejected for s in stats),
            "deadline_misses": sum(s.deadline_misses for s in stats),
            "queue": sum(len(r.queue) for r in runners),
            "latency": {"window_s": window_s, "count": len(latencies),
                        "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99)},
        })
        for decision in list(state.decisions) if state is not None else []:
            decisions.append({"model": entry["model"], "at": decision.at, "placement": decision.placement,
                              "reason": decision.reason})
    decisions.sort(key=lambda d: d["at"], reverse=True)
    return {
        "time": time.time(),
        "clock": time.monotonic(),  # for rates: counters' deltas over this clock's
        "cores": engine.cores,
        "memory": {"used": engine.manager.memory_used(), "budget": engine.manager.memory_budget},
        "pools": [{"processor": name, "capacity": pool.capacity, "in_use": pool.in_use, "waiting": pool.waiting,
                   "busy_seconds": pool.busy_seconds} for name, pool in engine.pools.items()],
        "models": models,
        "decisions": decisions[:MAX_DECISIONS],
    }


class Fronts:
    """Each model's stored profiles, its Pareto front (latency per row, memory, fidelity loss, as
    the allocator weighs them) and the configs it runs now. File hashes are cached per file
    (path, size, mtime), so polling does not re-read the models."""

    def __init__(self, store: ProfileStore | None) -> None:
        self.store = store
        self._hashes: dict[Path, tuple[tuple[int, int], str]] = {}
        self._lock = threading.Lock()

    def document(self, engine: Engine) -> dict[str, Any]:
        if self.store is None:
            return {"store": None, "note": NO_STORE_NOTE, "models": []}
        versions = current_backend_versions()
        models = []
        for state in engine.models():
            if state.config is None:
                continue
            in_use = {g.config for g in state.placement.groups} if state.placement is not None else set()
            profiles = self._profiles(engine, state.name, state.config.default_model_filename, versions)
            front = {id(p) for p in pareto_front(profiles)}
            models.append({
                "model": state.name,
                "in_use": sorted(c.label() for c in in_use),
                "profiles": [_point(p, id(p) in front, p.config in in_use) for p in profiles],
            })
        note = "" if any(m["profiles"] for m in models) else f"no profiles in {self.store.path} for these models yet"
        return {"store": str(self.store.path), "note": note, "models": models}

    def _profiles(self, engine: Engine, name: str, filename: str, versions: dict[str, str]) -> list[Profile]:
        """The model's profiles, original and variants, measured with the backends installed now."""
        assert self.store is not None
        source = engine.manager.repository.source(name)
        if not source.versions:
            return []
        folder = source.versions[source.latest_version]
        if not (folder / filename).is_file():
            return []
        profiles: list[Profile] = []
        for variant, (path, loss) in variant_files(folder, filename).items():
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


def _point(profile: Profile, on_front: bool, in_use: bool) -> dict[str, Any]:
    config: ExecutionConfig = profile.config
    return {
        "label": config.label(), "backend": config.backend, "processor": config.processor, "variant": config.variant,
        "threads": config.threads, "max_batch": config.max_batch, "batch": profile.batch,
        "p50_ms": profile.p50_ms, "p99_ms": profile.p99_ms, "latency_per_row_ms": latency_per_row_ms(profile),
        "throughput": profile.throughput, "memory_bytes": profile.memory_bytes,
        "fidelity_loss": profile.fidelity_loss, "front": on_front, "in_use": in_use,
    }
