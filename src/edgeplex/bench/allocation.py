"""The seed paper's experiment: the four-model mix under each allocation policy, through the
real server, with the same closed-loop load; plus a load shift under `pareto`.

Figures are ratios from one run: pareto/static, pareto/balance and pareto against the capacity
bound cores / sum(1 / best single-core rate), all measured on this machine in this run.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..repository import Repository
from ..tuning.allocator import SWAP_HEADROOM
from ..tuning.profiler import profile_model
from ..tuning.store import ProfileStore, file_hash
from ..variant_layout import variant_files
from ..zoo import example_inputs
from . import clients
from .loadgen import closed_loop
from .process import ServerProcess, running_server
from .report import table
from .repos import repository_with
from .scenarios import MIX
from .variants import make_variants

POLICIES = ("static", "balance", "pareto")
WITH_VARIANTS = "pareto+variants"


def _placements_text(server: ServerProcess) -> dict[str, str]:
    """Each model's placement, one short line ("2x onnxruntime/t1 + 1x openvino/t1/int8-static")."""
    return {
        m["model"]: " + ".join(f"{g['instances']}x {g['backend']}/t{g['threads']}"
                               + ("" if g["variant"] == "fp32" else f"/{g['variant']}") for g in m["groups"])
        for m in server.get_json("/v2/edgeplex/placement")["models"]
    }


def capacity_bound(store: ProfileStore, repo: Path, models: tuple[str, ...], cores: int) -> dict[str, Any]:
    """Per-model rate of an equal-share mix if every core ran each model's best single-core
    config with no interference: cores / sum over models of 1 / best single-core rate."""
    best: dict[str, float] = {}
    for model in models:
        profiles = store.for_model(file_hash(repo / model / "1" / "model.onnx"))
        single = [p.throughput for p in profiles if p.config.threads == 1 and p.batch == 1]
        best[model] = max(single) if single else 0.0
    bound = cores / sum(1.0 / r for r in best.values()) if all(best.values()) else 0.0
    return {"best_single_core_rate": {m: round(r, 2) for m, r in best.items()}, "per_model_rate": round(bound, 2)}


def _measure(repo: Path, policy: str, store_path: Path, inputs: dict[str, Any], cores: int, clients_per_model: int,
             settle_s: float, duration_s: float) -> dict[str, Any]:
    """The mix through a real server under `policy`: settle (pareto sees the load), then measure."""
    with running_server(repo, "--policy", policy, "--profile-store", str(store_path), cores=cores) as server:
        # Let pareto see the load and settle; the baselines are fixed from the start.
        closed_loop(clients.grpc(server.grpc_url), inputs, {m: clients_per_model for m in MIX}, duration_s=settle_s)
        loads = closed_loop(clients.grpc(server.grpc_url), inputs, {m: clients_per_model for m in MIX},
                            duration_s=duration_s)
        return {
            "per_model": {m: load.summary() for m, load in loads.items()},
            "sustained": round(min(load.throughput for load in loads.values()), 2),
            "total": round(sum(load.throughput for load in loads.values()), 2),
            "errors": sum(len(load.errors) for load in loads.values()),
            "placement": _placements_text(server),
        }


def _variant_repository(store: ProfileStore, cores: int, samples: int) -> Path:
    """The mix's repository with every default variant made, and those within each model's
    `max_fidelity_loss` (the only ones pareto may choose) profiled solo into `store`."""
    repo = repository_with(MIX, {})
    make_variants(repo, MIX, samples)
    repository = Repository(repo)
    for model in MIX:
        config = repository.load_config(repository.source(model))
        files = {v: f for v, f in variant_files(repo / model / "1", config.default_model_filename).items()
                 if f[1] <= config.max_fidelity_loss}
        profile_model(model, repo / model / "1" / "model.onnx", config, store, cores, iterations=30, max_seconds=1.0,
                      variants=files)
    return repo


def allocation(duration_s: float = 30.0, clients_per_model: int = 2, settle_s: float = 8.0, cores: int = 2,
               shift: bool = True, store_path: Path | None = None, variants: bool = False,
               samples: int = 16) -> tuple[dict[str, Any], str]:
    """`store_path` None: a fresh profile store, measured in this run (solo, before any load),
    so that pareto's inputs and the capacity bound come from the same machine state.
    `variants`: also pareto on a copy of the repository with the models' variants made and
    profiled ("pareto+variants"; the capacity bound stays the fp32 one)."""
    scratch = Path(tempfile.mkdtemp(prefix="edgeplex-alloc-"))
    store_path = store_path or scratch / "profiles.sqlite"
    store = ProfileStore(store_path)
    repo = repository_with(MIX, {})
    inputs = {m: example_inputs(m) for m in MIX}
    runs: dict[str, Any] = {}
    try:
        # Solo profiles first (what pareto plans with, and the capacity bound): only what is missing.
        repository = Repository(repo)
        for model in MIX:
            config = repository.load_config(repository.source(model))
            profile_model(model, repo / model / "1" / "model.onnx", config, store, cores, iterations=30, max_seconds=2.0)
        bound = capacity_bound(store, repo, MIX, cores)
        profiles = {m: [p.as_dict() for p in store.for_model(file_hash(repo / m / "1" / "model.onnx"))] for m in MIX}
        for policy in POLICIES:
            runs[policy] = _measure(repo, policy, store_path, inputs, cores, clients_per_model, settle_s, duration_s)
        if variants:
            variant_repo = _variant_repository(store, cores, samples)
            try:
                runs[WITH_VARIANTS] = _measure(variant_repo, "pareto", store_path, inputs, cores, clients_per_model,
                                               settle_s, duration_s)
            finally:
                shutil.rmtree(variant_repo, ignore_errors=True)
        shifted = load_shift(repo, store_path, inputs, cores) if shift else None
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)

    sustained = {p: runs[p]["sustained"] for p in runs}
    result: dict[str, Any] = {
        "duration_s": duration_s, "clients_per_model": clients_per_model, "cores": cores, "runs": runs, "bound": bound,
        "profiles": profiles,
        "pareto_vs_static": round(sustained["pareto"] / sustained["static"], 3) if sustained["static"] else None,
        "pareto_vs_balance": round(sustained["pareto"] / sustained["balance"], 3) if sustained["balance"] else None,
        "pareto_vs_bound": round(sustained["pareto"] / bound["per_model_rate"], 3) if bound["per_model_rate"] else None,
        "load_shift": shifted,
    }
    if WITH_VARIANTS in runs:
        for baseline in POLICIES:
            result[f"variants_vs_{baseline}"] = (round(sustained[WITH_VARIANTS] / sustained[baseline], 3)
                                                 if sustained[baseline] else None)
    rows = [{"policy": p, **{m: runs[p]["per_model"][m]["throughput"] for m in MIX}, "sustained": runs[p]["sustained"],
             "errors": runs[p]["errors"]} for p in runs]
    placements = [{"policy": p, **runs[p]["placement"]} for p in runs]
    lines = [
        "## Allocation: the four-model mix under each policy (closed loop, equal clients per model)",
        "",
        table(rows, ["policy", *MIX, "sustained", "errors"]),
        "",
        "sustained = the per-model rate every model keeps up with (min over models), req/s",
        f"capacity bound (cores / sum 1/best single-core rate): {bound['per_model_rate']} req/s per model "
        f"from {bound['best_single_core_rate']}",
        "",
        f"pareto / static = **{result['pareto_vs_static']}x** (target >= 3x); pareto / balance = "
        f"**{result['pareto_vs_balance']}x** (target >= 1.5x); pareto / bound = **{result['pareto_vs_bound']}** "
        "(target >= 0.9)",
        "",
        table(placements, ["policy", *MIX]),
    ]
    if WITH_VARIANTS in runs:
        lines[8:8] = ["", f"pareto with the models' variants (within each model's max_fidelity_loss): / static = "
                          f"**{result['variants_vs_static']}x**, / balance = **{result['variants_vs_balance']}x**, "
                          f"/ pareto on fp32 = **{result['variants_vs_pareto']}x** (the bound is the fp32 one)"]
    if shifted:
        lines += ["", f"load shift (yolov8n -> magika, memory budget {shifted['memory_budget'] / 1e6:.0f} MB): "
                      f"placement changed {shifted['replan_seconds']} s after the shift (target <= 10 s), "
                      f"{shifted['before']} -> {shifted['after']}; requests lost: {shifted['lost']} of "
                      f"{shifted['answered'] + shifted['lost']} (must be 0)"]
    return result, "\n".join(lines)


def load_shift(repo: Path, store_path: Path, inputs: dict[str, Any], cores: int, phase_s: float = 15.0) -> dict[str, Any]:
    """Demand mostly on yolov8n, then all on magika, under a memory budget with room for three
    instances of the two (so the instances must follow the demand): seconds until the
    placement changes after the shift, and requests lost (every request must be answered)."""
    store = ProfileStore(store_path)
    memory = {}
    for model in ("yolov8n", "magika"):  # the memory of the config pareto will choose
        profiles = [p for p in store.for_model(file_hash(repo / model / "1" / "model.onnx")) if p.batch == 1]
        memory[model] = min(profiles, key=lambda p: p.config.threads / p.throughput).memory_bytes
    planned = int((sum(memory.values()) + max(memory.values())) * 1.05)
    budget = int(planned / (1 - SWAP_HEADROOM)) + 1
    with running_server(repo, "--policy", "pareto", "--profile-store", str(store_path), "--model", "yolov8n",
                        "--model", "magika", "--memory-budget", str(budget), cores=cores) as server:
        heavy, light = {"yolov8n": 3, "magika": 1}, {"magika": 4}  # then yolov8n falls idle
        closed_loop(clients.grpc(server.grpc_url), inputs, heavy, duration_s=phase_s)
        before = _placements_text(server)
        changed_at: list[float] = []
        shifted_at = time.monotonic()
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                if _placements_text(server) != before:
                    changed_at.append(time.monotonic() - shifted_at)
                    return
                time.sleep(0.25)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        loads = closed_loop(clients.grpc(server.grpc_url), inputs, light, duration_s=phase_s)
        done.set()
        watcher.join(5)
        lost = sum(len(load.errors) for load in loads.values())
        return {"memory_budget": budget, "before": before, "after": _placements_text(server),
                "replan_seconds": round(changed_at[0], 2) if changed_at else None, "lost": lost,
                "answered": sum(load.completed for load in loads.values()),
                "error_samples": [e for load in loads.values() for e in load.errors][:3]}
