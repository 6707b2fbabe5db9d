"""Monitor: each model's load, smoothed, from counters the request path already keeps.

The control path reads it every few seconds; the request path never waits on it. Arrivals
are the requests admitted to a model's queue, so the demand it reports is what clients asked
for, not what the model managed to serve.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ..backends import ExecutionConfig
from .engine import Engine, VersionActivity
from .stats import ConfigCounters


@dataclass(frozen=True)
class ModelLoad:
    """One model's load over the last window (rates smoothed across windows)."""

    model: str
    arrival_rate: float  # requests/s asked for
    completion_rate: float  # requests/s answered
    service_ms: float  # mean compute time per row (batch row), as observed with the other tenants
    queue_ms: float  # mean time a request waited for an instance
    queued: int  # requests waiting now


@dataclass(frozen=True)
class ConfigLoad:
    """What one execution config of a model was observed to take, with the other tenants: the
    per-config feedback the allocator plans with where it has it (profiles where it has not)."""

    model: str
    config: ExecutionConfig
    service_ms: float  # compute time per batch row, smoothed over windows (weighted by rows)
    rows: int  # rows observed in all, ever (how much to trust `service_ms`)
    executions: int


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
        self._last_configs: dict[tuple[str, ExecutionConfig], ConfigCounters] = {}
        self._config_loads: dict[tuple[str, ExecutionConfig], ConfigLoad] = {}
        self._runners: dict[str, tuple[int, ...]] = {}  # the runners whose counters the baselines are
        self._lock = threading.Lock()

    def config_loads(self) -> dict[tuple[str, ExecutionConfig], ConfigLoad]:
        """(model, config) -> what that config was observed to take, for every config that ran."""
        with self._lock:
            return dict(self._config_loads)

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
                self._learn_configs(name, versions)
                counters = self._read(versions, now)
                previous = self._last.get(name)
                self._last[name] = counters
                if previous is None or counters.at <= previous.at:
                    continue
                self._loads[name] = self._window(name, previous, counters)
            return dict(self._loads)

    def _learn_configs(self, name: str, versions: list[VersionActivity]) -> None:
        """Fold each config's new executions into its smoothed service time per row: windows
        weigh by the rows they saw, so a busy window counts more than a trickle."""
        runners = tuple(sorted(v.runner_id for v in versions))
        if self._runners.get(name) != runners:  # a reload: new counters, from zero
            self._runners[name] = runners
            for key in [k for k in self._last_configs if k[0] == name]:
                del self._last_configs[key]
        totals: dict[ExecutionConfig, ConfigCounters] = {}
        for version in versions:
            for config, counters in version.configs.items():
                held = totals.get(config, ConfigCounters())
                totals[config] = ConfigCounters(held.executions + counters.executions, held.rows + counters.rows,
                                                held.compute_ns + counters.compute_ns)
        for config, now in totals.items():
            key = (name, config)
            before = self._last_configs.get(key, ConfigCounters())
            self._last_configs[key] = now
            new = now.minus(before)
            if new.rows <= 0:
                continue
            window_ms = new.compute_ns / new.rows / 1e6
            old = self._config_loads.get(key)
            if old is None:
                self._config_loads[key] = ConfigLoad(name, config, window_ms, new.rows, new.executions)
                continue
            weight = min(0.5, new.rows / (new.rows + min(old.rows, 50)))  # older evidence decays, never vanishes
            service = (1 - weight) * old.service_ms + weight * window_ms
            self._config_loads[key] = ConfigLoad(name, config, service, old.rows + new.rows,
                                                 old.executions + new.executions)

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
