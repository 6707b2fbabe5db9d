"""The live dashboard: the JSON documents it polls, and its static files (this folder).

`dashboard_document` is one snapshot of the engine (placement, counters, recent latency
percentiles, queues, memory, processors, decisions); the page turns successive counters into
rates itself, so the server keeps no per-client state. The Pareto fronts come from a
`FrontsSource` given to the app at start (the tuning's profile store implements it): the server
never imports the tuning.

The chart library is plotly.js, served from the installed `plotly` Python package
(`plotly/package_data/plotly.min.js`): nothing vendored in this repository.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any, Protocol

from ...engine import Engine
from ...engine.stats import percentile_ms

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


class FrontsSource(Protocol):
    """What the dashboard needs of the tuning: each model's Pareto front, as a JSON document."""

    def document(self, engine: Engine) -> dict[str, Any]:
        """`{"store": ..., "note": ..., "models": [{"model", "in_use", "profiles": [...]}]}`."""


def no_fronts() -> dict[str, Any]:
    return {"store": None, "note": NO_STORE_NOTE, "models": []}


def dashboard_document(engine: Engine, window_s: float = LATENCY_WINDOW_S) -> dict[str, Any]:
    """A snapshot of everything the dashboard shows but the fronts."""
    views = {view.name: view for view in engine.models()}
    activity: dict[str, list[Any]] = {}
    for version in engine.activity():
        activity.setdefault(version.model, []).append(version)
    models = []
    decisions = []
    for entry in engine.placement_report():
        view = views.get(entry["model"])
        versions = activity.get(entry["model"], [])
        stats = [v.stats for v in versions]
        triton = [s.as_triton() for s in stats]
        latencies = [ns for s in stats for ns in s.recent_latencies_ns(window_s)]
        models.append({
            **entry,
            "reason_unavailable": view.reason if view is not None else "",
            "requests": sum(t["inference_stats"]["success"]["count"] for t in triton),
            "failures": sum(t["inference_stats"]["fail"]["count"] for t in triton),
            "inferences": sum(t["inference_count"] for t in triton),
            "executions": sum(t["execution_count"] for t in triton),
            "rejected": sum(s.rejected for s in stats),
            "deadline_misses": sum(s.deadline_misses for s in stats),
            "queue": sum(v.queued for v in versions),
            "latency": {"window_s": window_s, "count": len(latencies),
                        "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99)},
        })
        for decision in view.decisions if view is not None else ():
            decisions.append({"model": entry["model"], "at": decision.at, "placement": decision.placement,
                              "reason": decision.reason})
    decisions.sort(key=lambda d: d["at"], reverse=True)
    memory = engine.memory()
    processors = engine.processors()
    return {
        "time": time.time(),
        "clock": time.monotonic(),  # for rates: counters' deltas over this clock's
        "cores": engine.cores,
        "memory": {"used": memory.used, "budget": memory.budget},
        "pools": [{"processor": p.name, "kind": p.kind, "capacity": p.capacity, "in_use": p.in_use,
                   "waiting": p.waiting, "busy_seconds": p.busy_seconds, "models": list(p.models)}
                  for p in processors],
        "models": models,
        "decisions": decisions[:MAX_DECISIONS],
    }


