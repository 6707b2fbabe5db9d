"""The foundation's benchmarks, each printing ratios against a baseline measured in the same run.

- multitenancy: the four-model mix served concurrently vs one model after another, the same
  requests in total (the seed paper's "concurrent model executions").
- overhead: per model, throughput through the real server (gRPC, binary tensors) vs the
  in-process engine, at the same concurrency.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ..engine import Engine
from ..zoo import default_zoo_dir, example_inputs, pull
from . import clients
from .loadgen import closed_loop
from .process import running_server
from .report import table

MIX = ("yolov8n", "ppocr_det", "ppocr_rec", "magika")


def _repository_with(models: tuple[str, ...], overrides: dict[str, Any]) -> Path:
    """A temporary repository of zoo models (symlinked files) with config fields overridden."""
    zoo = default_zoo_dir()
    pull(zoo, list(models), progress=False)
    root = Path(tempfile.mkdtemp(prefix="edgeplex-bench-"))
    for name in models:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").symlink_to(zoo / name / "1" / "model.onnx")
        config = yaml.safe_load((zoo / name / "config.yaml").read_text())
        config.update(overrides)
        (root / name / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def multitenancy(requests_per_model: int = 120, cores: int | None = None) -> tuple[dict[str, Any], str]:
    """Concurrent vs sequential on one engine whose config is the same in both runs.

    Each model has two single-thread instances, so one model alone can use two cores when it
    has two requests in flight. Sequential: one request at a time, model after model.
    Concurrent: two clients per model, all four models at once. Also measured, as a stronger
    baseline: sequential with one two-thread instance per model (ONNX Runtime's intra-op
    parallelism instead of concurrency).
    """
    inputs = {name: example_inputs(name) for name in MIX}
    results: dict[str, Any] = {"requests_per_model": requests_per_model}

    def run(overrides: dict[str, Any], concurrent: bool, clients_per_model: int) -> dict[str, Any]:
        repo = _repository_with(MIX, overrides)
        engine = Engine(repo, cores=cores)
        try:
            failures = engine.load_all()
            if failures:
                raise RuntimeError(f"models failed to load: {failures}")
            factory = clients.inprocess(engine)
            per_client = requests_per_model // clients_per_model
            if concurrent:
                loads = closed_loop(factory, inputs, {m: clients_per_model for m in MIX}, requests_per_client=per_client)
                seconds = max(load.seconds for load in loads.values())
                per_model = [load.summary() for load in loads.values()]
            else:
                per_model, seconds = [], 0.0
                for model in MIX:
                    loads = closed_loop(factory, inputs, {model: clients_per_model}, requests_per_client=per_client)
                    seconds += loads[model].seconds
                    per_model.append(loads[model].summary())
            total = sum(row["completed"] for row in per_model)
            errors = sum(row["errors"] for row in per_model)
            return {"seconds": round(seconds, 3), "requests": total, "errors": errors,
                    "throughput": round(total / seconds, 2), "per_model": per_model}
        finally:
            engine.close()
            shutil.rmtree(repo, ignore_errors=True)

    one_thread = {"instance_count": 2, "threads": 1}
    results["sequential"] = run(one_thread, concurrent=False, clients_per_model=1)
    results["sequential_intra_op"] = run({"instance_count": 1, "threads": 2}, concurrent=False, clients_per_model=1)
    results["concurrent"] = run(one_thread, concurrent=True, clients_per_model=2)
    seq = results["sequential"]["seconds"]
    results["ratio_concurrent_vs_sequential"] = round(seq / results["concurrent"]["seconds"], 3)
    results["ratio_concurrent_vs_sequential_intra_op"] = round(
        results["sequential_intra_op"]["seconds"] / results["concurrent"]["seconds"], 3
    )
    rows = [
        {"run": key, "seconds": results[key]["seconds"], "requests": results[key]["requests"],
         "req/s": results[key]["throughput"], "errors": results[key]["errors"]}
        for key in ("sequential", "sequential_intra_op", "concurrent")
    ]
    text = "\n".join([
        "## Multi-tenancy: four models concurrently vs one after another",
        "",
        table(rows, ["run", "seconds", "requests", "req/s", "errors"]),
        "",
        f"concurrent / sequential (same config, 2x1-thread instances): **{results['ratio_concurrent_vs_sequential']}x** (target >= 1.8x)",
        f"concurrent / sequential with 2 intra-op threads per model: **{results['ratio_concurrent_vs_sequential_intra_op']}x**",
    ])
    return results, text


def overhead(models: tuple[str, ...] = MIX, concurrency: int = 4, duration_s: float = 10.0,
             instance_count: int = 2) -> tuple[dict[str, Any], str]:
    """Throughput over gRPC (binary tensors) through a real `edgeplex serve` vs in-process.

    The same repository and placement (`instance_count` single-thread instances per model, so
    the model can use every core) in both runs; one model at a time, `concurrency` clients.
    """
    repo = _repository_with(models, {"instance_count": instance_count, "threads": 1})
    rows: list[dict[str, Any]] = []
    try:
        for model in models:
            inputs = {model: example_inputs(model)}
            engine = Engine(repo)
            try:
                engine.load_all([model])
                local = closed_loop(clients.inprocess(engine), inputs, {model: concurrency}, duration_s=duration_s)[model]
            finally:
                engine.close()
            with running_server(repo, "--model", model) as server:
                time.sleep(0.5)
                remote = closed_loop(clients.grpc(server.grpc_url), inputs, {model: concurrency}, duration_s=duration_s)[model]
            rows.append({
                "model": model,
                "inprocess_rps": round(local.throughput, 2),
                "grpc_rps": round(remote.throughput, 2),
                "ratio": round(remote.throughput / local.throughput, 3) if local.throughput else 0.0,
                "inprocess_p50_ms": round(local.percentile(50), 2),
                "grpc_p50_ms": round(remote.percentile(50), 2),
                "grpc_p99_ms": round(remote.percentile(99), 2),
                "errors": len(local.errors) + len(remote.errors),
            })
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    result = {"concurrency": concurrency, "duration_s": duration_s, "instance_count": instance_count, "models": rows}
    text = "\n".join([
        f"## Server overhead: gRPC + binary tensors vs in-process engine (concurrency {concurrency})",
        "",
        table(rows, ["model", "inprocess_rps", "grpc_rps", "ratio", "inprocess_p50_ms", "grpc_p50_ms", "grpc_p99_ms", "errors"]),
        "",
        "target: ratio >= 0.90 for yolov8n",
    ])
    return result, text
