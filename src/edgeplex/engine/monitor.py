"""Monitor: each model's load, smoothed, from counters the request path already keeps.

The control path reads it every few seconds; the request path never waits on it. Arrivals
are the requests admitted to a model's queue, so the demand it reports is what clients asked
for, not what the model managed to serve.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .engine import Engine, VersionActivity


@dataclass(frozen=True)
class ModelLoad:
    """One model's load over the last window (rates smoothed across windows)."""

    model: str
    arrival_rate: float  # requests/s asked for
    completion_rate: float  # requests/s answered
    service_ms: float  # mean compute time per row (batch row), as observed with the other tenants
    queue_ms: float  # mean time a request waited for an instance
    queued: int  # requests waiting now


@dataclass
class _Counters:
    at: float
    submitted: int
    rows: int  # batch rows computed
    compute_ns: int  # compute time of the executions (a batch counted once)
    successes: int
    queue_ns: int
    queued: int  # waiting now


class Monitor:
    """Per-model load from the engine's statistics; `sample()` closes a window."""

    def __init__(self, engine: Engine, smoothing: float = 0.5) -> None:
        self.engine = engine
        self.smoothing = smoothing
        self._last: dict[str, _Counters] = {}
        self._loads: dict[str, ModelLoad] = {}
        self._lock = threading.Lock()

    def loads(self) -> dict[str, ModelLoad]:
        """The latest sample of every model (empty until `sample` ran twice)."""
        with self._lock:
            return dict(self._loads)

    def sample(self) -> dict[str, ModelLoad]:
        now = time.monotonic()
        by_model: dict[str, list[VersionActivity]] = {}
        for version in self.engine.activity():
            if version.serving:
                by_model.setdefault(version.model, []).append(version)
        with self._lock:
            for name, versions in by_model.items():
                counters = self._read(versions, now)
                previous = self._last.get(name)
                self._last[name] = counters
                if previous is None or counters.at <= previous.at:
                    continue
                self._loads[name] = self._window(name, previous, counters)
            return dict(self._loads)

    @staticmethod
    def _read(versions: list[VersionActivity], now: float) -> _Counters:
        submitted = rows = compute_ns = successes = queue_ns = queued = 0
        for version in versions:
            stats = version.stats.as_triton()
            inference = stats["inference_stats"]
            submitted += version.submitted
            queued += version.queued
            for batch in stats["batch_stats"]:
                rows += batch["batch_size"] * batch["compute_infer"]["count"]
                compute_ns += batch["compute_infer"]["ns"]
            successes += inference["success"]["count"]
            queue_ns += inference["queue"]["ns"]
        return _Counters(now, submitted, rows, compute_ns, successes, queue_ns, queued)

    def _window(self, name: str, before: _Counters, after: _Counters) -> ModelLoad:
        seconds = after.at - before.at
        rows = after.rows - before.rows
        successes = after.successes - before.successes
        old = self._loads.get(name)
        # A reload makes a new runner whose counters start again at 0: count from there.
        arrivals = (after.submitted - (before.submitted if after.submitted >= before.submitted else 0)) / seconds
        completions = successes / seconds
        service = (after.compute_ns - before.compute_ns) / rows / 1e6 if rows else (old.service_ms if old else 0.0)
        queue = (after.queue_ns - before.queue_ns) / successes / 1e6 if successes else 0.0
        if old is not None:
            keep = 1.0 - self.smoothing
            arrivals = keep * old.arrival_rate + self.smoothing * arrivals
            completions = keep * old.completion_rate + self.smoothing * completions
        return ModelLoad(name, arrivals, completions, service, queue, after.queued)
