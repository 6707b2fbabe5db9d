"""PNG charts of recorded benchmark results, drawn from the same JSON the report records (so a
chart can never disagree with its numbers). `report.write` calls `charts_for(name, result)`
and links each PNG from the Markdown report."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .stats import median_high

Draw = Callable[[Any], None]  # draws on a matplotlib Axes


@dataclass(frozen=True)
class Chart:
    """One PNG of a report: its file stem, title and drawing."""

    stem: str
    title: str
    draw: Draw


def charts_for(name: str, result: dict[str, Any]) -> list[Chart]:
    """The charts of a scenario's result (none for a scenario that draws its own)."""
    makers: dict[str, Callable[[dict[str, Any]], list[Chart]]] = {
        "multitenancy": _multitenancy, "overhead": _overhead, "allocation": _allocation, "soak": _soak,
        "scheduling": _scheduling,
    }
    maker = makers.get(name)
    return maker(result) if maker else []


def save(chart: Chart, path: Any, size: tuple[float, float] = (7.5, 4.2)) -> None:
    """Draw `chart` into a PNG at `path` (the Agg canvas: no display needed)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=110)
    axes = figure.add_subplot()
    chart.draw(axes)
    axes.set_title(chart.title, fontsize=11)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def _grouped_bars(axes: Any, groups: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str) -> None:
    width = 0.8 / max(len(series), 1)
    for index, (label, values) in enumerate(series.items()):
        xs = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = axes.bar(xs, values, width, label=label)
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(ylabel)
    axes.legend(fontsize=8)


def _multitenancy(result: dict[str, Any]) -> list[Chart]:
    runs = result["runs"]

    def throughput(axes: Any) -> None:
        kinds = list(runs)
        per_round = {k: [sum(m["completed"] for m in r["per_model"]) / r["seconds"] for r in runs[k]] for k in kinds}
        for x, kind in enumerate(kinds):
            axes.scatter([x] * len(per_round[kind]), per_round[kind], color="black", s=10, zorder=3)
        medians = [median_high(v) for v in per_round.values()]
        bars = axes.bar(range(len(kinds)), medians, color=["#9aa5b1", "#c0a36e", "#3b7dd8"][: len(kinds)])
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
        axes.set_xticks(range(len(kinds)), kinds)
        axes.set_ylabel("requests/s, all four models (median; dots: rounds)")

    def latency(axes: Any) -> None:
        models = [m["model"] for m in runs["concurrent"][0]["per_model"]]
        series = {kind: [median_high([r["per_model"][i]["p99_ms"] for r in runs[kind]]) for i in range(len(models))]
                  for kind in runs}
        _grouped_bars(axes, models, series, "p99 latency, ms (median of rounds)")

    return [Chart("multitenancy", "Four models at once vs one after another", throughput),
            Chart("multitenancy-latency", "p99 latency per model", latency)]


def _overhead(result: dict[str, Any]) -> list[Chart]:
    models = result["models"]
    names = [m["model"] for m in models]

    def throughput(axes: Any) -> None:
        series = {"in-process engine": [m["inprocess_rps"] for m in models],
                  "gRPC, perf_analyzer": [m.get("pa_grpc_rps") or 0.0 for m in models],
                  "gRPC, tritonclient (Python)": [m["py_grpc_rps"] for m in models]}
        _grouped_bars(axes, names, series, "requests/s")

    def latency(axes: Any) -> None:
        series = {"in-process engine": [m["inprocess_p50_ms"] for m in models],
                  "gRPC, perf_analyzer": [m.get("pa_grpc_p50_ms") or 0.0 for m in models],
                  "gRPC, tritonclient (Python)": [m["py_grpc_p50_ms"] for m in models]}
        _grouped_bars(axes, names, series, "p50 latency, ms")

    return [Chart("overhead", f"Server vs in-process at concurrency {result['concurrency']}", throughput),
            Chart("overhead-latency", "p50 latency", latency)]


def _allocation(result: dict[str, Any]) -> list[Chart]:
    runs = result["runs"]
    policies = list(runs)
    models = list(runs[policies[0]]["per_model"])

    def throughput(axes: Any) -> None:
        series = {p: [runs[p]["per_model"][m]["throughput"] for m in models] for p in policies}
        _grouped_bars(axes, models, series, "requests/s per model")
        bound = result.get("bound", {}).get("per_model_rate")
        if bound:
            axes.axhline(bound, color="black", linestyle="--", linewidth=1, label=f"capacity bound {bound:.1f}/s")
            axes.legend(fontsize=8)

    def sustained(axes: Any) -> None:
        values = [runs[p]["sustained"] for p in policies]
        bars = axes.bar(policies, values, color=["#9aa5b1", "#c0a36e", "#3b7dd8", "#2a9d5c"][: len(policies)])
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
        axes.set_ylabel("equal-share sustained rate, requests/s per model")

    def latency(axes: Any) -> None:
        series = {p: [runs[p]["per_model"][m]["p99_ms"] for m in models] for p in policies}
        _grouped_bars(axes, models, series, "p99 latency, ms")

    return [Chart("allocation", "Per-model throughput by policy (same closed-loop load)", throughput),
            Chart("allocation-sustained", "What the whole mix sustains", sustained),
            Chart("allocation-latency", "p99 latency by policy", latency)]


def _soak(result: dict[str, Any]) -> list[Chart]:
    def memory(axes: Any) -> None:
        samples = result["rss_samples"]
        axes.plot([at for at, _ in samples], [rss / 1e6 for _, rss in samples], marker=".")
        axes.set_xlabel("seconds")
        axes.set_ylabel("server RSS, MB")

    def latency(axes: Any) -> None:
        windows = result["windows"]
        for model in (m["model"] for m in result["models"]):
            axes.plot([w["from_s"] for w in windows], [w[f"{model} p99 ms"] for w in windows], marker=".", label=model)
        axes.set_xlabel("window start, s")
        axes.set_ylabel("p99 latency, ms")
        axes.legend(fontsize=8)

    return [Chart("soak-memory", "Server resident memory during the soak", memory),
            Chart("soak-latency", "p99 latency per window", latency)]


def _scheduling(result: dict[str, Any]) -> list[Chart]:
    charts = []
    modes = result.get("isolation", {}).get("modes", {})
    if modes:
        def isolation(axes: Any) -> None:
            names = list(modes)
            series = {"solo p50": [modes[n]["solo_p50_ms"] for n in names],
                      "solo p99": [modes[n]["solo_p99_ms"] for n in names],
                      "loaded p50": [modes[n]["loaded_p50_ms"] for n in names],
                      "loaded p99": [modes[n]["loaded_p99_ms"] for n in names]}
            _grouped_bars(axes, [f"--scheduling {n}" for n in names], series, "priority-1 latency, ms")

        charts.append(Chart("scheduling-isolation", "Priority-1 latency, alone and under a saturating load", isolation))
    levels = result.get("deadlines", {}).get("levels", [])
    if levels:
        def deadlines(axes: Any) -> None:
            kinds = list(levels[0]["met"])
            series = {k: [level["met"][k] for level in levels] for k in kinds}
            _grouped_bars(axes, [f"load {level['overload']}x" for level in levels], series,
                          "fraction answered within the deadline")

        charts.append(Chart("scheduling-deadlines", "Deadlines met: earliest deadline first vs FIFO", deadlines))
    models = result.get("batching", {}).get("models", {})
    if models:
        def batching(axes: Any) -> None:
            arms = list(next(iter(models.values())))
            series = {arm: [models[m][arm]["throughput"] for m in models] for arm in arms}
            _grouped_bars(axes, list(models), series, "requests/s (closed loop)")

        charts.append(Chart("scheduling-batching", "Dynamic batching vs none, same concurrency", batching))
    return charts
