"""What a server did during a measured window, by its own account: the Triton statistics of a
model diffed over the window (time queued vs computing, batch sizes), and the churn of its
placements (reloads, installs, evictions, failed swaps) from /metrics and its log. Client-side
latency says how slow a request was; these say where the time and the memory went.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .process import ServerProcess


def model_stats(server: ServerProcess, model: str) -> dict[str, Any]:
    """The server's Triton statistics of `model` (its first entry; empty before any)."""
    entries = server.get_json(f"/v2/models/{model}/stats")["model_stats"]
    return dict(entries[0]) if entries else {}


@dataclass
class StatsDelta:
    """What the server says it did for one model during a window (Triton statistics, diffed)."""

    queue_ms: float = float("nan")  # mean wait from admission to compute (queue + cores)
    compute_ms: float = float("nan")  # mean compute time per execution
    executions: int = 0
    mean_batch: float = float("nan")

    @classmethod
    def between(cls, before: dict[str, Any], after: dict[str, Any]) -> StatsDelta:
        def duration(stats: dict[str, Any], key: str) -> tuple[int, int]:
            entry = stats.get("inference_stats", {}).get(key, {"count": 0, "ns": 0})
            return int(entry["count"]), int(entry["ns"])

        def batches(stats: dict[str, Any]) -> dict[int, int]:
            return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}

        (q1, qn1), (q0, qn0) = duration(after, "queue"), duration(before, "queue")
        sizes0, sizes1 = batches(before), batches(after)
        runs = {size: count - sizes0.get(size, 0) for size, count in sizes1.items()}
        executions = sum(runs.values())
        infer_ns = sum(int(b["compute_infer"]["ns"]) for b in after.get("batch_stats", [])) - sum(
            int(b["compute_infer"]["ns"]) for b in before.get("batch_stats", []))
        return cls(
            queue_ms=(qn1 - qn0) / (q1 - q0) / 1e6 if q1 > q0 else float("nan"),
            compute_ms=infer_ns / executions / 1e6 if executions else float("nan"),
            executions=executions,
            mean_batch=sum(size * n for size, n in runs.items()) / executions if executions else float("nan"),
        )


@contextmanager
def watching(server: ServerProcess, models: tuple[str, ...], into: dict[str, StatsDelta]) -> Iterator[None]:
    """The StatsDelta of each of `models` over the block, put into `into` when it ends."""
    before = {m: model_stats(server, m) for m in models}
    yield
    into.update({m: StatsDelta.between(before[m], model_stats(server, m)) for m in models})


def metric_counters(server: ServerProcess) -> dict[str, dict[str, float]]:
    """Per-model counters from /metrics: reloads and placements installed. A model evicted at the
    moment of the scrape has no series (they are per loaded version); the caller keeps the last seen."""
    from prometheus_client.parser import text_string_to_metric_families

    text = server.get_text("/metrics")
    found: dict[str, dict[str, float]] = {"reloads": {}, "placement_changes": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edgeplex_model_reload_total":
                model = sample.labels["model"]
                found["reloads"][model] = found["reloads"].get(model, 0.0) + sample.value
            elif sample.name == "edgeplex_placement_changes_total":
                found["placement_changes"][sample.labels["model"]] = sample.value
    return found


class ChurnWatch:
    """Churn of one server between calls of `delta`: reloads on request and placements installed
    (/metrics; a model evicted at the moment of a scrape keeps its last value) and evictions and
    failed swaps or reloads (its log lines)."""

    def __init__(self, server: ServerProcess, models: Sequence[str]) -> None:
        self.server = server
        self.models = models
        self.seen: dict[str, dict[str, float]] = {"reloads": dict.fromkeys(models, 0.0),
                                                  "placement_changes": dict.fromkeys(models, 0.0)}
        self.lines = 0

    def delta(self) -> dict[str, dict[str, int]]:
        before = {k: dict(v) for k, v in self.seen.items()}
        for key, values in metric_counters(self.server).items():
            for model, value in values.items():
                if model in self.seen[key]:
                    self.seen[key][model] = max(self.seen[key][model], value)
        lines = list(self.server.output)
        self.lines, new = len(lines), lines[self.lines:]
        out = {key: {m: int(self.seen[key][m] - before[key][m]) for m in self.models} for key in self.seen}
        out["evictions"] = {m: sum(1 for line in new if f"model {m} evicted" in line) for m in self.models}
        out["failed_swaps"] = {m: sum(1 for line in new if f"placement of {m} failed" in line
                                      or f"model {m} could not" in line or f"model {m} failed to load" in line)
                               for m in self.models}
        return out
