"""Per-model statistics in the shape of Triton's statistics extension.

Counts and cumulative nanoseconds, updated by executor threads under a lock; read by the
HTTP/gRPC statistics endpoints and by Prometheus. Beside them, a bounded ring of the latest
requests' end-to-end latencies (one append per request), from which the dashboard reads
recent percentiles that cumulative sums cannot give.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
RECENT_REQUESTS = 2048  # latencies kept per model version for recent percentiles


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(frozen=True)
class ConfigCounters:
    """What the instances of one execution config of a model have computed: the feedback the
    allocator learns each config's service time under co-location from (cumulative)."""

    executions: int = 0
    rows: int = 0
    compute_ns: int = 0  # wall time of the runs (a batch counted once)

    def plus(self, rows: int, compute_ns: int) -> ConfigCounters:
        return ConfigCounters(self.executions + 1, self.rows + rows, self.compute_ns + compute_ns)

    def minus(self, earlier: ConfigCounters) -> ConfigCounters:
        return ConfigCounters(self.executions - earlier.executions, self.rows - earlier.rows,
                              self.compute_ns - earlier.compute_ns)


@dataclass
class ModelStats:
    """Triton's `ModelStatistics` for one model version."""

    name: str
    version: str
    durations: dict[str, Duration] = field(default_factory=lambda: {k: Duration() for k in DURATIONS})
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    # Requests answered because the model had to be loaded again (edgeplex's own).
    reloads: int = 0
    # Requests refused at admission (queue full) and requests past their deadline (refused
    # without computing, or answered late): edgeplex's own, not in Triton's format.
    rejected: int = 0
    deadline_misses: int = 0
    batch: dict[int, dict[str, Duration]] = field(default_factory=dict)
    # (monotonic seconds at the answer, end-to-end ns) of the latest successful requests.
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_success(
        self, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int, total_ns: int, batch_size: int = 1
    ) -> None:
        """One request answered; `inference_count` counts its batch rows, as Triton does."""
        with self._lock:
            for key, value in (
                ("success", total_ns),
                ("queue", queue_ns),
                ("compute_input", input_ns),
                ("compute_infer", infer_ns),
                ("compute_output", output_ns),
            ):
                duration = self.durations[key]
                duration.count += 1
                duration.ns += value
            self.inference_count += batch_size
            self.last_inference_ms = int(time.time() * 1000)
            self.recent.append((time.monotonic(), total_ns))

    def recent_latencies_ns(self, window_s: float) -> list[int]:
        """End-to-end latencies of the requests answered in the last `window_s` seconds (at most
        the latest RECENT_REQUESTS of them), oldest first."""
        with self._lock:
            recent = list(self.recent)
        since = time.monotonic() - window_s
        return [ns for at, ns in recent if at >= since]

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        with self._lock:
            self.execution_count += 1
            entry = self.batch.setdefault(
                batch_size, {k: Duration() for k in ("compute_input", "compute_infer", "compute_output")}
            )
            for key, value in (("compute_input", input_ns), ("compute_infer", infer_ns), ("compute_output", output_ns)):
                entry[key].count += 1
                entry[key].ns += value

    def record_rejection(self) -> None:
        with self._lock:
            self.rejected += 1

    def record_deadline_miss(self) -> None:
        with self._lock:
            self.deadline_misses += 1

    def record_failure(self, total_ns: int) -> None:
        with self._lock:
            duration = self.durations["fail"]
            duration.count += 1
            duration.ns += total_ns

    def as_triton(self) -> dict[str, Any]:
        """The JSON of Triton's `/v2/models/{m}/stats` entry (also parsed into the gRPC proto)."""
        with self._lock:
            return {
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    **{key: d.as_dict() for key, d in self.durations.items()},
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {"batch_size": size, **{key: d.as_dict() for key, d in entry.items()}}
                    for size, entry in sorted(self.batch.items())
                ],
            }


def percentile_ms(latencies_ns: Sequence[int], q: float) -> float | None:
    """The q-th percentile (nearest rank, 0 < q <= 100) of `latencies_ns`, in ms; None if empty."""
    if not latencies_ns:
        return None
    ordered = sorted(latencies_ns)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1] / 1e6
