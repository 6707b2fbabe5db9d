"""The foundation's benchmarks, each printing ratios against a baseline measured in the same run.

- multitenancy: the four-model mix served concurrently vs one model after another, the same
  requests in total (the seed paper's "concurrent model executions").
- overhead: per model, throughput through the real server (gRPC, binary tensors) vs the
  in-process engine, at the same concurrency.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from ..engine import Engine
from ..zoo import example_inputs
from . import clients
from .loadgen import closed_loop
from .process import running_server
from .report import table
from .repos import repository_with
from .stats import median_high

MIX = ("yolov8n", "ppocr_det", "ppocr_rec", "magika")


def multitenancy(requests_per_model: int = 120, rounds: int = 3, cores: int | None = None) -> tuple[dict[str, Any], str]:
    """Concurrent vs sequential on one engine whose placement is the same in both runs.

    Each model has two single-thread instances, so one model alone can use two cores when it
    has two requests in flight. Sequential: one request at a time, model after model.
    Concurrent: two clients per model, all four models at once. Also measured, as a stronger
    baseline: sequential on a second engine with one two-thread instance per model (ONNX
    Runtime's intra-op parallelism instead of concurrency). The runs alternate over `rounds`
    on engines loaded once, so that drift on a shared machine hits every run alike; the ratio
    reported is the median of the per-round ratios.
    """
    inputs = {name: example_inputs(name) for name in MIX}
    per_round = max(2, requests_per_model // rounds)
    repos = {"concurrency": repository_with(MIX, {"instance_count": 2, "threads": 1}),
             "intra_op": repository_with(MIX, {"instance_count": 1, "threads": 2})}
    engines = {key: Engine(repo, cores=cores) for key, repo in repos.items()}
    runs: dict[str, list[dict[str, Any]]] = {"sequential": [], "sequential_intra_op": [], "concurrent": []}
    try:
        for engine in engines.values():
            failures = engine.load_all()
            if failures:
                raise RuntimeError(f"models failed to load: {failures}")

        def sequential(engine: Engine) -> dict[str, Any]:
            rows, seconds = [], 0.0
            for model in MIX:
                load = closed_loop(clients.inprocess(engine), inputs, {model: 1}, requests_per_client=per_round)[model]
                seconds += load.seconds
                rows.append(load.summary())
            return {"seconds": seconds, "per_model": rows}

        def concurrent(engine: Engine) -> dict[str, Any]:
            loads = closed_loop(clients.inprocess(engine), inputs, {m: 2 for m in MIX}, requests_per_client=per_round // 2)
            return {"seconds": max(load.seconds for load in loads.values()),
                    "per_model": [load.summary() for load in loads.values()]}

        for _ in range(rounds):
            runs["sequential"].append(sequential(engines["concurrency"]))
            runs["concurrent"].append(concurrent(engines["concurrency"]))
            runs["sequential_intra_op"].append(sequential(engines["intra_op"]))
    finally:
        for engine in engines.values():
            engine.close()
        for repo in repos.values():
            shutil.rmtree(repo, ignore_errors=True)

    results: dict[str, Any] = {"requests_per_model_per_round": per_round, "rounds": rounds, "runs": runs}
    ratios = [s["seconds"] / c["seconds"] for s, c in zip(runs["sequential"], runs["concurrent"])]
    ratios_intra = [s["seconds"] / c["seconds"] for s, c in zip(runs["sequential_intra_op"], runs["concurrent"])]
    results["ratio_concurrent_vs_sequential"] = round(median_high(ratios), 3)
    results["ratio_concurrent_vs_sequential_intra_op"] = round(median_high(ratios_intra), 3)
    results["ratios_per_round"] = [round(r, 3) for r in ratios]
    rows = []
    for key, label in (("sequential", "sequential (2x1-thread instances)"),
                       ("sequential_intra_op", "sequential (1x2-thread instance)"),
                       ("concurrent", "concurrent (2x1-thread instances)")):
        seconds = round(median_high([run["seconds"] for run in runs[key]]), 3)
        requests = sum(row["completed"] for row in runs[key][0]["per_model"])
        errors = sum(row["errors"] for run in runs[key] for row in run["per_model"])
        rows.append({"run": label, "median s/round": seconds, "requests/round": requests,
                     "req/s": round(requests / seconds, 2), "errors": errors})
    text = "\n".join([
        "## Multi-tenancy: four models concurrently vs one after another",
        "",
        f"yolov8n, ppocr_det, ppocr_rec, magika; {per_round} requests per model per round, {rounds} rounds, in-process engine.",
        "",
        table(rows, ["run", "median s/round", "requests/round", "req/s", "errors"]),
        "",
        f"concurrent / sequential, same placement: **{results['ratio_concurrent_vs_sequential']}x** "
        f"(median of rounds {results['ratios_per_round']}; target >= 1.8x)",
        f"concurrent / sequential with 2 intra-op threads per model: **{results['ratio_concurrent_vs_sequential_intra_op']}x**",
    ])
    return results, text


def overhead(models: tuple[str, ...] = MIX, concurrency: int = 4, duration_s: float = 10.0,
             instance_count: int = 2, rounds: int = 3) -> tuple[dict[str, Any], str]:
    """Throughput through a real `edgeplex serve` vs the in-process engine, per model.

    The same repository and placement (`instance_count` single-thread instances per model, so
    the model can use every core) in all runs; one model at a time, `concurrency` clients. Two
    wire clients: Triton's perf_analyzer (C++, the standard tool; its own CPU use is small) and
    tritonclient's Python gRPC client, whose serialisation runs on the same two cores as the
    server and so is part of what it measures. The three runs alternate over `rounds` (engine
    and server both loaded, one idle while the other is measured); ratios are per-round medians.
    """
    from .perf_analyzer import ZOO_SHAPES, PerfAnalyzerError, PerfAnalyzerUnavailable, ensure_perf_analyzer

    try:
        analyzer = ensure_perf_analyzer()
        analyzer_problem = ""
    except PerfAnalyzerUnavailable as exc:
        analyzer, analyzer_problem = None, str(exc)
    repo = repository_with(models, {"instance_count": instance_count, "threads": 1})
    window_s = duration_s / rounds
    rows: list[dict[str, Any]] = []

    try:
        for model in models:
            inputs = {model: example_inputs(model)}
            runs: dict[str, list[float]] = {"inprocess": [], "pa": [], "py": []}
            # CPU per request: the in-process engine's (this process) vs the server process's.
            cpu_ms: dict[str, list[float]] = {"inprocess": [], "server": []}
            p50: dict[str, list[float]] = {"inprocess": [], "pa": [], "py": []}
            errors: list[str] = []
            engine = Engine(repo)
            try:
                engine.load_all([model])
                with running_server(repo, "--model", model) as server:
                    for _ in range(rounds):
                        cpu_before = time.process_time()
                        local = closed_loop(clients.inprocess(engine), inputs, {model: concurrency}, duration_s=window_s)[model]
                        if local.completed:
                            cpu_ms["inprocess"].append((time.process_time() - cpu_before) * 1000 / local.completed)
                        server_cpu, served = server.cpu_seconds(), server.successes(model)
                        runs["inprocess"].append(local.throughput)
                        p50["inprocess"].append(local.percentile(50))
                        errors += local.errors
                        if analyzer is not None:
                            try:
                                measured = analyzer.run(model, server.grpc_url, "grpc", concurrency, int(window_s * 1000 / 2),
                                                        shape=ZOO_SHAPES.get(model), stability_percentage=25, max_trials=6)
                                runs["pa"].append(measured.throughput)
                                p50["pa"].append(measured.p50_ms)
                            except PerfAnalyzerError as exc:
                                errors.append(f"perf_analyzer: {str(exc)[:200]}")
                        remote = closed_loop(clients.grpc(server.grpc_url), inputs, {model: concurrency}, duration_s=window_s)[model]
                        if (answered := server.successes(model) - served) > 0:
                            cpu_ms["server"].append((server.cpu_seconds() - server_cpu) * 1000 / answered)
                        runs["py"].append(remote.throughput)
                        p50["py"].append(remote.percentile(50))
                        errors += remote.errors
            finally:
                engine.close()
            base = runs["inprocess"]
            rows.append({
                "model": model,
                "inprocess_rps": round(median_high(base), 2),
                "pa_grpc_rps": round(median_high(runs["pa"]), 2),
                "pa_ratio": round(median_high([r / b for r, b in zip(runs["pa"], base)]), 3),
                "py_grpc_rps": round(median_high(runs["py"]), 2),
                "py_ratio": round(median_high([r / b for r, b in zip(runs["py"], base)]), 3),
                "inprocess_p50_ms": round(median_high(p50["inprocess"]), 2),
                "pa_grpc_p50_ms": round(median_high(p50["pa"]), 2),
                "py_grpc_p50_ms": round(median_high(p50["py"]), 2),
                "inprocess_cpu_ms": round(median_high(cpu_ms["inprocess"]), 2),
                "server_cpu_ms": round(median_high(cpu_ms["server"]), 2),
                "server_cpu_efficiency": round(median_high(cpu_ms["inprocess"]) / median_high(cpu_ms["server"]), 3)
                if cpu_ms["server"] else float("nan"),
                "errors": len(errors),
                "rounds": {key: [round(v, 2) for v in values] for key, values in runs.items()},
                "error_samples": errors[:3],
            })
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    result = {"concurrency": concurrency, "duration_s": duration_s, "rounds": rounds, "instance_count": instance_count,
              "perf_analyzer": analyzer.version() if analyzer else f"unavailable: {analyzer_problem}", "models": rows}
    text = "\n".join([
        f"## Server overhead: gRPC + binary tensors vs in-process engine (concurrency {concurrency})",
        "",
        f"Each model alone, {instance_count} single-thread instances; pa = Triton's perf_analyzer (C++), "
        "py = tritonclient.grpc (Python, prepared inputs); ratio = over-the-wire / in-process throughput, "
        f"median of {rounds} alternating rounds.",
        "",
        table(rows, ["model", "inprocess_rps", "pa_grpc_rps", "pa_ratio", "py_grpc_rps", "py_ratio",
                     "inprocess_p50_ms", "pa_grpc_p50_ms", "py_grpc_p50_ms", "errors"]),
        "",
        "CPU per request: the in-process engine vs the server process (transport included, client excluded); "
        "efficiency = in-process / server.",
        "",
        table(rows, ["model", "inprocess_cpu_ms", "server_cpu_ms", "server_cpu_efficiency"]),
        "",
        "target: ratio >= 0.90 for yolov8n",
    ])
    return result, text
