"""The variants benchmark's report: its Markdown tables, and its pictures (latency vs size per zoo
model, colour = fidelity loss; the memory-tight mix's throughput with and without variants, on
explicit Agg canvases)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from .report import table

CHURN = ("evictions", "reloads", "placement_changes", "failed_swaps")  # per model, per server
LOSS_FLOOR = 1e-5  # fp32 (loss 0) and near-lossless variants are drawn at this colour
MARKERS = {"ort": ("o", "ONNX Runtime"), "ov": ("^", "OpenVINO")}


def plot_variants(rows: Sequence[dict[str, Any]], path: Path, bound: float = 0.01) -> Path:
    """One panel per model: p50 latency (1 thread, batch 1) vs file size, per backend; `bound` (the
    default max_fidelity_loss) is marked on the colour scale."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    cols = min(3, max(len(models), 1))
    grid_rows = math.ceil(len(models) / cols) if models else 1
    fig = Figure(figsize=(5.2 * cols, 4.2 * grid_rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    norm = LogNorm(LOSS_FLOOR, 1.0)
    mappable = None
    for index, model in enumerate(models):
        ax = fig.add_subplot(grid_rows, cols, index + 1)
        for row in (r for r in rows if r["model"] == model and r["status"] == "ok"):
            for short, (marker, _) in MARKERS.items():
                p50 = row.get(f"{short}_p50_ms")
                if p50 is None:
                    continue
                mappable = ax.scatter([row["size_mb"]], [p50], c=[max(row["loss"], LOSS_FLOOR)], cmap="viridis",
                                      norm=norm, marker=marker, s=60, edgecolors="black", linewidths=0.5,
                                      zorder=4 if row["variant"] == "fp32" else 3)  # fp32 over same-size pruned
                ax.annotate(row["variant"], (row["size_mb"], p50), xytext=(4, 3), textcoords="offset points", fontsize=7)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(model)
        ax.set_xlabel("file size (MB)")
        ax.set_ylabel("p50 latency, 1 thread, batch 1 (ms)")
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.2, y=0.15)
        if index == 0:
            for marker, label in MARKERS.values():
                ax.scatter([], [], marker=marker, color="0.5", label=label)
            ax.legend(fontsize=7, loc="best")
    if mappable is not None:
        bar = fig.colorbar(mappable, ax=fig.axes, label=f"fidelity loss (log; fp32 and < {LOSS_FLOOR:g} at the floor)")
        bar.ax.axhline(bound, color="red", linewidth=1.5)
        bar.ax.text(-0.1, bound, f"bound {bound:g}", transform=bar.ax.get_yaxis_transform(), color="red",
                    fontsize=7, ha="right", va="center")
    fig.suptitle("Variants of the zoo models: latency vs size, colour = fidelity loss")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_mix(mix: dict[str, Any], path: Path) -> Path:
    """Per-model throughput and the sustained equal-share rate: no budget, then each budget with and
    without variants."""
    models = list(mix["models"])
    reference = mix["reference"]
    runs = [("no budget, fp32", reference["throughput"], reference["sustained"], "0.6")]
    colours = {"with": ("tab:blue", "lightsteelblue"), "without": ("tab:red", "lightsalmon")}
    for index, (name, run) in enumerate(mix["runs"].items()):
        for kind in ("with", "without"):
            summary = run["summary"][kind]
            runs.append((f"{name} {run['budget'] / 1e6:.0f} MB, {kind} variants", summary["throughput"],
                         summary["sustained"], colours[kind][index % 2]))
    fig = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [*models, "sustained (min)"]
    width = 0.8 / len(runs)
    for i, (label, per_model, sustained, colour) in enumerate(runs):
        values = [per_model[m] for m in models] + [sustained]
        xs = [x + (i - (len(runs) - 1) / 2) * width for x in range(len(labels))]
        ax.bar(xs, values, width, label=label, color=colour, edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("throughput (req/s), median of windows")
    ratios = ", ".join(f"{name}: {run['ratio']}x" for name, run in mix["runs"].items())
    ax.set_title(f"The four-model mix under a memory budget, with / without variants ({ratios})")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _mb(values: Mapping[str, int]) -> str:
    return f"{sum(values.values()) / 1e6:.1f} MB (" + ", ".join(f"{m} {b / 1e6:.1f}" for m, b in values.items()) + ")"


def render(result: dict[str, Any]) -> str:
    columns = ["model", "variant", "size_mb", "size_ratio", "ort_p50_ms", "ort_x_fp32", "ov_p50_ms", "ov_x_fp32",
               "ort_mem_mb", "ov_mem_mb", "loss", "cosine", "task", "agreement"]
    ok = [r for r in result["variants"] if r["status"] == "ok"]
    failed = [r for r in result["variants"] if r["status"] != "ok"]
    lines = [
        "## Variants: size, latency and fidelity of every zoo model's variants",
        "",
        f"Solo, 1 thread, batch 1 (p50 of up to 50 calls within 1 s, realistic inputs); fidelity against fp32 on "
        f"{result['samples']} calibration inputs (loss = 1 - task agreement where the model has a task metric, "
        "else 1 - cosine). x_fp32 = p50 / p50 of fp32 on the same backend; mem = resident memory of one instance "
        "(profiler: RSS delta of open + first run).",
        "",
        table(ok, columns),
        "",
    ]
    lines += [f"- {r['model']} {r['variant']}: {r['status']}" for r in failed]
    lines += [f"- profile failed: {key}: {reason}" for key, reason in result["profile_failures"].items()]
    lines += ["", "![variants](variants.png)"]
    if result.get("mix"):
        lines += ["", *render_mix(result["mix"])]
    return "\n".join(lines)


def render_mix(mix: dict[str, Any]) -> list[str]:
    budgets, reference, models = mix["budgets"], mix["reference"], mix["models"]
    lines = [
        "## Variants: the memory-tight mix (pareto with variants vs without)",
        "",
        f"{', '.join(models)}; {mix['clients_per_model']} closed-loop gRPC clients per model; each server pair "
        f"started once, {mix['rounds']} alternating windows of {mix['duration_s']:.0f} s per server; medians.",
        "",
        "One fp32 instance of each model takes, by the solo profiles (what pareto plans with): "
        f"{_mb(budgets['fp32_profile_bytes'])}; as the server's manager accounts it, loaded as the configs say "
        f"(1x onnxruntime each, before any request): {_mb(budgets['fp32_accounted_bytes'])}; under pareto's "
        f"unconstrained placement (memory / instances): {_mb(budgets['fp32_pareto_accounted_bytes'])}.",
        "Admissible candidates (fidelity loss <= max_fidelity_loss, solo p99 <= slo_ms): "
        + "; ".join(f"{m}: {', '.join(c)}" for m, c in budgets["admissible"].items())
        + f"; the smallest of each take {_mb(budgets['smallest_admissible_bytes'])} by the profiles. "
        f"Pareto plans within {mix['plan_share']:.0%} of the budget (the rest is swap headroom).",
        "",
        f"- tight budget: {budgets['fraction']:.2f} x the smaller fp32 total = **{budgets['tight'] / 1e6:.1f} MB**",
    ]
    if budgets["plannable"] is not None:
        lines.append(f"- plannable budget: the least at which pareto can plan the mix with variants (1.1 x smallest "
                     f"admissible / {mix['plan_share']}) = **{budgets['plannable'] / 1e6:.1f} MB**; fp32 alone cannot "
                     "be planned within it")
    rows = [{"run": "no budget, fp32 only (1 window)", **reference["throughput"], "sustained": reference["sustained"],
             "errors": reference["errors"]}]
    for name, run in mix["runs"].items():
        rows += [{"run": f"{name} {run['budget'] / 1e6:.0f} MB, {kind} variants", **run["summary"][kind]["throughput"],
                  "sustained": run["summary"][kind]["sustained"], "errors": run["summary"][kind]["errors"]}
                 for kind in ("with", "without")]
    lines += ["", table(rows, ["run", *models, "sustained", "errors"]), "",
              "sustained = the equal-share rate every model keeps up with (min over models), req/s; errors = "
              "failed requests (a client whose warm-up request fails gives up for the window, so a model the "
              "server cannot load shows 0 req/s and 2 errors)", ""]
    lines += [f"- {name}: with / without variants = **{run['ratio']}x** (per-round ratios {run['ratios']})"
              for name, run in mix["runs"].items()]
    lines += [f"- disturbance, {name} windows (cores used by other processes / by the idle partner server), with: "
              + ", ".join(f"{w['disturbance'].get('foreign_cores')} / {w['disturbance'].get('partner_cores')}"
                          for w in run["windows"]["with"])
              + "; without: " + ", ".join(f"{w['disturbance'].get('foreign_cores')} / "
                                           f"{w['disturbance'].get('partner_cores')}" for w in run["windows"]["without"])
              for name, run in mix["runs"].items()]
    placed = reference["placement"]
    lines += ["- no budget, pareto placed: " + "; ".join(f"{m} {e['installed']} ({e['memory_bytes'] / 1e6:.1f} MB)"
                                                       for m, e in placed["models"].items())]
    def cell(churn: dict[str, dict[str, int]], between: dict[str, dict[str, int]], m: str) -> str:
        return " / ".join(f"{churn[k][m]}" + (f" (+{between[k][m]})" if between[k][m] else "") for k in CHURN)

    churn = [{"run": f"{name}, {kind} variants",
              **{m: cell(run["summary"][kind]["churn"], run["summary"][kind]["churn_between"], m) for m in models}}
             for name, run in mix["runs"].items() for kind in ("with", "without")]
    memory = [{"run": f"{name}, {kind} variants", "budget_mb": round(run["budget"] / 1e6, 1),
               "accounted_mb": round(w["placement"]["memory_used"] / 1e6, 1),
               "server_rss_mb": round(w["placement"]["server_rss"] / 1e6, 1),
               "installed": "; ".join(f"{m} {e['installed'] or e['state']}" for m, e in w["placement"]["models"].items())}
              for name, run in mix["runs"].items() for kind in ("with", "without") for w in [run["windows"][kind][-1]]]
    lines += ["", "Evictions / reloads on request / placements installed / failed swaps or reloads, summed over the "
              "measured windows (+ between them, while the other server was measured):", "",
              table(churn, ["run", *models]), "",
              "Memory at the end of the last window: the budget, what the manager accounts for, the server's resident set:",
              "", table(memory, ["run", "budget_mb", "accounted_mb", "server_rss_mb", "installed"])]
    for name, run in mix["runs"].items():
        lines += ["", f"What pareto chose with variants under the {name} budget (end of the last window):", "",
                  table(run["chosen"], ["model", "state", "installed", "endpoint_says", "variant", "loss",
                                        "max_fidelity_loss", "within", "accounted_mb"])]
    lines += ["", "Errors the servers logged (whole run, settle included; numbers masked as #):", ""]
    for name, run in mix["runs"].items():
        for kind in ("with", "without"):
            found = run["server_errors"][kind]
            lines += [f"- {name}, {kind} variants: " + ("; ".join(f"{count}x `{what}`" for what, count in found.items())
                                                        if found else "none")]
    lines += ["", "![memory-tight mix](variants_mix.png)"]
    return lines
