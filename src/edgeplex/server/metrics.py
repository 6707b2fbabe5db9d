"""Prometheus metrics, collected from the engine's own statistics at scrape time.

Reading the counters the statistics extension already keeps means the request path does no
extra work for metrics, and /metrics can never disagree with /v2/models/stats.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..engine import Engine


class EngineCollector(Collector):
    """Per-model request counts and durations, per-processor tokens, per-model memory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["model", "version"]
        success = CounterMetricFamily("edgeplex_inference_request_success", "Successful inference requests", labels=labels)
        failure = CounterMetricFamily("edgeplex_inference_request_failure", "Failed inference requests", labels=labels)
        count = CounterMetricFamily("edgeplex_inference_count", "Inferences performed (batch rows)", labels=labels)
        executions = CounterMetricFamily("edgeplex_inference_exec_count", "Model executions (batches)", labels=labels)
        request_us = CounterMetricFamily(
            "edgeplex_inference_request_duration_us", "Cumulative end-to-end request time", labels=labels
        )
        queue_us = CounterMetricFamily("edgeplex_inference_queue_duration_us", "Cumulative time queued", labels=labels)
        compute_us = CounterMetricFamily(
            "edgeplex_inference_compute_infer_duration_us", "Cumulative compute time", labels=labels
        )
        pending = GaugeMetricFamily("edgeplex_pending_request_count", "Requests waiting in the queue", labels=labels)
        rejected = CounterMetricFamily(
            "edgeplex_inference_request_rejected", "Requests refused at admission (queue full, 429)", labels=labels
        )
        misses = CounterMetricFamily(
            "edgeplex_inference_deadline_miss", "Requests past their deadline (refused unrun, or answered late)",
            labels=labels,
        )
        reloads = CounterMetricFamily("edgeplex_model_reload", "Loads of an evicted model on request", labels=labels)
        memory = GaugeMetricFamily("edgeplex_model_memory_bytes", "Resident memory accounted for its instances (profiled, else measured at load)", labels=labels)
        # Counters are kept across evictions: an evicted model's series stay (pending and memory
        # at 0) instead of vanishing from a scrape and restarting after its reload.
        for version in self.engine.activity():
            model_stats = version.stats
            stats = model_stats.as_triton()
            inference = stats["inference_stats"]
            key = [version.model, version.version]
            success.add_metric(key, inference["success"]["count"])
            failure.add_metric(key, inference["fail"]["count"])
            count.add_metric(key, stats["inference_count"])
            executions.add_metric(key, stats["execution_count"])
            request_us.add_metric(key, inference["success"]["ns"] / 1000)
            queue_us.add_metric(key, inference["queue"]["ns"] / 1000)
            compute_us.add_metric(key, inference["compute_infer"]["ns"] / 1000)
            pending.add_metric(key, version.queued)
            rejected.add_metric(key, model_stats.rejected)
            misses.add_metric(key, model_stats.deadline_misses)
            reloads.add_metric(key, model_stats.reloads)
            memory.add_metric(key, version.memory_bytes)
        yield from (success, failure, count, executions, request_us, queue_us, compute_us, pending, rejected, misses,
                    reloads, memory)

        changes = CounterMetricFamily(
            "edgeplex_placement_changes", "Placements installed for the model (loads and re-placements)", labels=["model"]
        )
        for view in self.engine.models():
            if view.placements:
                changes.add_metric([view.name], view.placements)
        yield changes
        held = self.engine.memory()
        used = GaugeMetricFamily("edgeplex_memory_used_bytes", "Resident memory held by the loaded models")
        used.add_metric([], held.used)
        yield used
        if held.budget is not None:
            budget = GaugeMetricFamily("edgeplex_memory_budget_bytes", "The --memory-budget")
            budget.add_metric([], held.budget)
            yield budget

        processor = ["processor", "kind"]
        tokens = GaugeMetricFamily("edgeplex_processor_tokens_in_use",
                                   "Tokens held now (CPU: threads computing; accelerators: executions)", labels=processor)
        capacity = GaugeMetricFamily("edgeplex_processor_tokens_capacity",
                                     "Tokens of the processor (CPU: cores in the budget)", labels=processor)
        waiting = GaugeMetricFamily("edgeplex_processor_waiting", "Computations waiting for tokens", labels=processor)
        busy = CounterMetricFamily(
            "edgeplex_processor_busy_seconds", "Token-seconds held (rate / capacity = utilisation)", labels=processor
        )
        for processor_view in self.engine.processors():
            key = [processor_view.name, processor_view.kind]
            tokens.add_metric(key, processor_view.in_use)
            capacity.add_metric(key, processor_view.capacity)
            waiting.add_metric(key, processor_view.waiting)
            busy.add_metric(key, processor_view.busy_seconds)
        yield from (tokens, capacity, waiting, busy)


def metrics_registry(engine: Engine) -> CollectorRegistry:
    """A registry holding only `engine`'s collector (not the process-global default one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return registry
