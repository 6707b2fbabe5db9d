"""`edgeplex bench variants`: what INT8, FP16 and pruned variants of the zoo models cost and keep,
and what they buy the four-model mix under a memory budget too small for its fp32 models.

1. Every zoo model, in a temporary copy of the zoo repository (the zoo itself is never written):
   the variants `edgeplex optimize` makes (a method that fails is reported with its reason), each
   measured solo on every backend at 1 thread and batch 1, into a private profile store: file
   size, p50 latency (and its ratio to fp32 on the same backend), resident memory, fidelity.
2. The memory-tight mix (the allocation benchmark's four models, 2 closed-loop gRPC clients
   each): `edgeplex serve --policy pareto --memory-budget X` with the store of step 1, on the
   repository with the variants and on one without (same model files and configs). First once
   with no budget (fp32 only: pareto's unconstrained choice, and the memory the server accounts
   for each fp32 model). Then X = a fraction of the four fp32 models together, by the profiles or
   by the server's own accounting, whichever is smaller ("tight": they cannot all be resident),
   and, when pareto cannot plan the mix with its variants within that,
   also the least budget at which it can ("plannable"). Under each budget the two servers are
   started once and measured in alternating windows; figures are medians over rounds.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends import ExecutionConfig, get_backend
from ..repository import Repository
from ..tuning.methods import describe
from ..tuning.profile import Profile
from ..tuning.profiler import current_backend_versions, inputs_for, measure
from ..tuning.store import Failure, ProfileStore, file_hash, machine_id
from ..tuning.variants import DEFAULT_VARIANTS, VariantError, optimize_model
from ..variant_layout import VariantInfo, variant_files
from ..zoo import ZOO, example_inputs
from . import clients
from .cpu import foreign_cpu, process_cpu_seconds
from .loadgen import closed_loop
from .memory import rss_bytes
from .process import ServerProcess, running_server
from .repos import repository_with
from .scenarios import MIX
from .serverlog import error_kinds, installed, problems
from .stats import median, ratio
from .variants_report import CHURN, plot_mix, plot_variants, render
from .watch import ChurnWatch

BACKENDS = ("onnxruntime", "openvino")
BUDGET_FRACTION = 0.65  # of the four fp32 models' smallest resident memory, one instance each
PLAN_SHARE = 0.8  # pareto plans within this share of the budget (tuning.allocator.SWAP_HEADROOM)


def _log(message: str) -> None:
    print(f"bench variants: {message}", file=sys.stderr, flush=True)


# --- step 1: variants and their solo profiles ----------------------------------------------------

def make_variants(repo: Path, models: Sequence[str], samples: int) -> dict[str, dict[str, VariantInfo | VariantError]]:
    """Every default variant of every model, written beside its original in `repo`."""
    repository = Repository(repo)
    made: dict[str, dict[str, VariantInfo | VariantError]] = {}
    for name in models:
        source = repository.source(name)
        config = repository.load_config(source)
        started = time.monotonic()
        try:
            made[name] = optimize_model(source.versions[source.latest_version], config, DEFAULT_VARIANTS, samples=samples)
        except VariantError as exc:  # the original itself does not run
            made[name] = dict.fromkeys(DEFAULT_VARIANTS, exc)
        ok = sum(1 for r in made[name].values() if isinstance(r, VariantInfo))
        _log(f"{name}: {ok}/{len(DEFAULT_VARIANTS)} variants in {time.monotonic() - started:.0f} s")
    return made


def profile_variants(repo: Path, models: Sequence[str], store: ProfileStore, iterations: int = 50,
                     max_seconds: float = 1.0) -> tuple[dict[str, list[Profile]], dict[str, str]]:
    """Each model's original and variants on every backend, 1 thread, batch 1, solo; into `store`
    (keyed with the model's real max batch, as the server plans). Returns the profiles per model
    and the failures ("model/backend/variant" -> reason)."""
    repository = Repository(repo)
    machine = machine_id()
    profiles: dict[str, list[Profile]] = {}
    failures: dict[str, str] = {}
    for name in models:
        source = repository.source(name)
        config = repository.load_config(source)
        files = variant_files(source.versions[source.latest_version], config.default_model_filename)
        hashes = {variant: file_hash(path) for variant, (path, _) in files.items()}
        inputs = inputs_for(name, config, hashes["fp32"])(1)
        profiles[name] = []
        for backend_name in BACKENDS:
            try:
                backend = get_backend(backend_name)
            except Exception as exc:
                failures.update({f"{name}/{backend_name}/{v}": describe(exc) for v in files})
                continue
            version = backend.version()
            for variant, (path, loss) in files.items():
                cfg = ExecutionConfig(backend_name, "cpu", variant, 1, config.max_batch_size)
                try:
                    m = measure(backend, path, cfg, inputs, iterations, 3, max_seconds)
                except Exception as exc:  # one config's failure is reported, never fatal
                    failures[f"{name}/{backend_name}/{variant}"] = describe(exc)
                    store.put_failure(Failure(name, hashes[variant], cfg, 1, version, machine, describe(exc), time.time()))
                    continue
                profile = Profile(name, hashes[variant], cfg, 1, m.p50_ms, m.p99_ms, 1000.0 / max(m.mean_ms, 1e-6),
                                  m.memory_bytes, version, machine, loss, time.time(), m.extra)
                store.put(profile)
                profiles[name].append(profile)
        _log(f"{name}: profiled {len(profiles[name])} configs")
    return profiles, failures


def variant_rows(made: Mapping[str, Mapping[str, VariantInfo | VariantError]], profiles: Mapping[str, list[Profile]],
                 originals: Mapping[str, int]) -> list[dict[str, Any]]:
    """One row per model and variant (fp32 first): size, p50 and memory per backend, fidelity."""
    rows = []
    for name, results in made.items():
        by = {(p.config.backend, p.config.variant): p for p in profiles.get(name, [])}
        for variant in ("fp32", *results):
            info = results.get(variant)
            if isinstance(info, VariantError):
                rows.append({"model": name, "variant": variant, "status": f"failed: {info.message}"})
                continue
            size = info.size_bytes if info else originals[name]
            row: dict[str, Any] = {"model": name, "variant": variant, "size_mb": round(size / 1e6, 2),
                                   "size_ratio": round(size / originals[name], 3), "status": "ok"}
            for backend in BACKENDS:
                short = "ort" if backend == "onnxruntime" else "ov"
                p, base = by.get((backend, variant)), by.get((backend, "fp32"))
                row[f"{short}_p50_ms"] = round(p.p50_ms, 2) if p else None
                row[f"{short}_p99_ms"] = round(p.p99_ms, 2) if p else None
                row[f"{short}_x_fp32"] = round(p.p50_ms / base.p50_ms, 2) if p and base else None
                row[f"{short}_mem_mb"] = round(p.memory_bytes / 1e6, 1) if p else None
            if info is None:
                row.update(loss=0.0, cosine=1.0, task="", agreement=None)
            else:
                f = info.fidelity
                row.update(loss=round(info.loss, 5), cosine=round(f.cosine, 5), task=f.task_metric or "",
                           agreement=round(f.task_agreement, 3) if f.task_agreement is not None else None,
                           max_abs_error=round(f.max_abs_error, 5), mean_abs_error=round(f.mean_abs_error, 6))
            rows.append(row)
    return rows


# --- step 2: the memory-tight mix ------------------------------------------------------------------

@dataclass(frozen=True)
class Budgets:
    """The memory budgets the mix runs under, and the figures they come from (bytes per model)."""

    fp32: dict[str, int]  # the smallest fp32 instance, solo profiles (what pareto plans with)
    accounted: dict[str, int]  # one fp32 instance as the server's manager accounts it (config placement)
    smallest: dict[str, int]  # the smallest admissible candidate (within slo_ms and max_fidelity_loss)
    admissible: dict[str, list[str]]  # backend/variant of each admissible candidate
    fraction: float
    tight: int  # fraction x the smaller fp32 total: the four fp32 models cannot all be resident
    plannable: int | None  # the least budget at which pareto can plan the mix with variants, if above `tight`


def choose_budgets(profiles: Mapping[str, Sequence[Profile]], slo_ms: Mapping[str, float | None],
                   max_loss: Mapping[str, float], accounted: Mapping[str, int] | None = None,
                   fraction: float = BUDGET_FRACTION, margin: float = 1.1) -> Budgets:
    """`tight`: `fraction` of the four fp32 models together (one instance each), by the profiles
    pareto plans with or by the server's own accounting (`accounted`), whichever is smaller, so
    that the budget binds where it is enforced too. `plannable`: `margin` x what the smallest
    admissible configs take / PLAN_SHARE (pareto plans within that share of the budget): the
    least budget at which pareto can place the whole mix with variants; None when it is not
    above `tight` (the tight run shows it) or when fp32 could be planned there too."""
    fp32: dict[str, int] = {}
    smallest: dict[str, int] = {}
    admissible: dict[str, list[str]] = {}
    for model, items in profiles.items():
        slo = slo_ms.get(model)
        allowed = [p for p in items if p.fidelity_loss <= max_loss[model] and (slo is None or p.p99_ms <= slo)]
        fp32[model] = min(p.memory_bytes for p in items if p.config.variant == "fp32")
        smallest[model] = min((p.memory_bytes for p in allowed), default=fp32[model])
        admissible[model] = [f"{p.config.backend}/{p.config.variant}" for p in allowed]
    totals = [sum(fp32.values())] + ([sum(accounted.values())] if accounted else [])
    tight = int(fraction * min(totals))
    plannable: int | None = int(margin * sum(smallest.values()) / PLAN_SHARE)
    if plannable is not None and (plannable <= tight or PLAN_SHARE * plannable >= sum(fp32.values())):
        plannable = None
    return Budgets(fp32, dict(accounted or {}), smallest, admissible, fraction, tight, plannable)


def _in_use(server: ServerProcess, model: str) -> list[str] | None:
    """The variants a model's instances run now (model metadata; None while it is not loaded)."""
    try:
        parameters = server.get_json(f"/v2/models/{model}").get("parameters", {})
    except OSError:
        return None
    return sorted(parameters.get("in_use", [])) if isinstance(parameters, dict) else None


def _placement(server: ServerProcess, models: Sequence[str] = MIX) -> dict[str, Any]:
    """The placement endpoint, condensed, beside what is really installed (the manager's log and
    the model metadata's variants in use) and the server's resident set beside its accounting."""
    report = server.get_json("/v2/edgeplex/placement")
    now = installed(list(server.output))
    out: dict[str, Any] = {"memory_budget": report.get("memory_budget"), "memory_used": report.get("memory_used"),
                           "server_rss": rss_bytes(server.process.pid), "models": {}}
    for m in report["models"]:
        if m["model"] not in models:
            continue
        groups = " + ".join(f"{g['instances']}x {g['backend']}/{g['processor']}/{g['variant']}/t{g['threads']}"
                            for g in m["groups"])
        loaded = m["state"] == "READY"
        out["models"][m["model"]] = {
            "state": m["state"], "memory_bytes": m["memory_bytes"], "instances": sum(g["instances"] for g in m["groups"]),
            "endpoint": groups, "installed": now.get(m["model"], "") if loaded else "",
            "in_use": _in_use(server, m["model"]) if loaded else None,
            "endpoint_matches": (not loaded) or now.get(m["model"]) == groups, "reason": m["reason"]}
    return out


def _window(server: ServerProcess, watch: ChurnWatch, inputs: dict[str, Any], clients_per_model: int,
            duration_s: float, partner: ServerProcess | None = None) -> dict[str, Any]:
    """One measured window of the equal-share closed loop; with the cores used meanwhile by other
    processes than this benchmark's and by the idle `partner` server (disturbance)."""
    idle = watch.delta()  # since this server's previous window: the allocator acts between windows too
    partner_cpu = process_cpu_seconds(partner.process.pid) if partner is not None else 0.0
    started = time.monotonic()
    with foreign_cpu(disturbance := dict[str, Any]()):
        loads = closed_loop(clients.grpc(server.grpc_url), inputs, dict.fromkeys(inputs, clients_per_model),
                            duration_s=duration_s)
    if partner is not None:
        disturbance["partner_cores"] = round((process_cpu_seconds(partner.process.pid) - partner_cpu)
                                             / (time.monotonic() - started), 3)
    during = watch.delta()
    stats = server.get_json("/v2/models/stats")["model_stats"]  # Triton's statistics: loaded models only
    per_model = {m: load.summary() for m, load in loads.items()}
    return {"sustained": round(min(load.throughput for load in loads.values()), 2),
            "total": round(sum(load.throughput for load in loads.values()), 2),
            "throughput": {m: s["throughput"] for m, s in per_model.items()},
            "p99_ms": {m: s["p99_ms"] for m, s in per_model.items()},
            "errors": sum(len(load.errors) for load in loads.values()),
            "error_samples": [e for load in loads.values() for e in load.errors][:3],
            "churn": during, "churn_between": idle, "disturbance": disturbance,
            "triton_success_total": {s["name"]: s["inference_stats"]["success"]["count"] for s in stats},
            "placement": _placement(server)}


def _serve(repo: Path, store_path: Path, budget: int | None, cores: int) -> Any:
    extra = ["--memory-budget", str(budget)] if budget is not None else []
    return running_server(repo, "--policy", "pareto", "--profile-store", str(store_path),
                          *(a for m in MIX for a in ("--model", m)), *extra, cores=cores)


def reference_run(repo: Path, store_path: Path, duration_s: float, clients_per_model: int = 2, settle_s: float = 8.0,
                  cores: int = 2) -> dict[str, Any]:
    """The mix with no memory budget, fp32 only: pareto's unconstrained choice, and the memory the
    server accounts for one fp32 instance of each model."""
    inputs = {m: example_inputs(m) for m in MIX}
    with _serve(repo, store_path, None, cores) as server:
        closed_loop(clients.grpc(server.grpc_url), inputs, dict.fromkeys(MIX, clients_per_model), duration_s=settle_s)
        window = _window(server, ChurnWatch(server, MIX), inputs, clients_per_model, duration_s)
    models = window["placement"]["models"]
    window["fp32_instance_bytes"] = {m: models[m]["memory_bytes"] // max(models[m]["instances"], 1) for m in MIX}
    window["server_log"] = problems(list(server.output))
    return window


def accounted_fp32(repo: Path, cores: int = 2) -> dict[str, int]:
    """What the server's manager accounts for one fp32 instance of each model, as its config places
    them (1 ONNX Runtime instance each), loaded and warmed, before any request."""
    with running_server(repo, "--policy", "config", *(a for m in MIX for a in ("--model", m)), cores=cores) as server:
        models = _placement(server)["models"]
    return {m: models[m]["memory_bytes"] // max(models[m]["instances"], 1) for m in MIX}


def mix_pair(with_repo: Path, without_repo: Path, store_path: Path, budget: int, duration_s: float, rounds: int,
             clients_per_model: int = 2, settle_s: float = 8.0, cores: int = 2) -> dict[str, Any]:
    """The two servers under one budget, started once, measured in alternating windows."""
    inputs = {m: example_inputs(m) for m in MIX}
    windows: dict[str, list[dict[str, Any]]] = {"with": [], "without": []}
    with _serve(with_repo, store_path, budget, cores) as with_server, \
            _serve(without_repo, store_path, budget, cores) as without_server:
        servers = {"with": with_server, "without": without_server}
        watches = {kind: ChurnWatch(server, MIX) for kind, server in servers.items()}
        settled = {}
        for kind, server in servers.items():  # its first placement, under load
            closed_loop(clients.grpc(server.grpc_url), inputs, dict.fromkeys(MIX, clients_per_model),
                        duration_s=settle_s)
            settled[kind] = {"churn_since_start": watches[kind].delta(), "placement": _placement(server)}
        for round_ in range(rounds):
            for kind in ("with", "without") if round_ % 2 == 0 else ("without", "with"):
                partner = servers["without" if kind == "with" else "with"]
                windows[kind].append(_window(servers[kind], watches[kind], inputs, clients_per_model, duration_s,
                                             partner))
                last = windows[kind][-1]
                _log(f"budget {budget / 1e6:.0f} MB, round {round_ + 1}/{rounds}, {kind} variants: sustained "
                     f"{last['sustained']}/s, errors {last['errors']}, evictions {sum(last['churn']['evictions'].values())}")
        logs = {kind: problems(list(server.output)) for kind, server in servers.items()}
        errors = {kind: error_kinds(list(server.output)) for kind, server in servers.items()}
    ratios = [ratio(w["sustained"], wo["sustained"]) for w, wo in zip(windows["with"], windows["without"])]
    summary = {kind: {"sustained": round(median([w["sustained"] for w in ws]), 2),
                      "total": round(median([w["total"] for w in ws]), 2),
                      "throughput": {m: round(median([w["throughput"][m] for w in ws]), 2) for m in MIX},
                      "errors": sum(w["errors"] for w in ws),
                      "churn": {key: {m: sum(w["churn"][key][m] for w in ws) for m in MIX} for key in CHURN},
                      "churn_between": {key: {m: sum(w["churn_between"][key][m] for w in ws) for m in MIX}
                                        for key in CHURN}}
               for kind, ws in windows.items()}
    return {"budget": budget, "settle": settled, "windows": windows, "summary": summary,
            "ratios": [None if r is None else round(r, 3) for r in ratios],
            "ratio": round(median([r for r in ratios if r is not None]), 3), "server_log": logs,
            "server_errors": errors}


def chosen_fidelity(placement: Mapping[str, Any], repo: Path) -> list[dict[str, Any]]:
    """What pareto placed per model, as installed (and as the placement endpoint says), each variant
    in use with its fidelity loss against the model's bound."""
    repository = Repository(repo)
    rows = []
    for model, entry in placement["models"].items():
        source = repository.source(model)
        config = repository.load_config(source)
        files = variant_files(source.versions[source.latest_version], config.default_model_filename)
        for variant in entry["in_use"] or ["-"]:
            loss = files[variant][1] if variant in files else None
            rows.append({"model": model, "state": entry["state"], "installed": entry["installed"],
                         "endpoint_says": "same" if entry["endpoint_matches"] else entry["endpoint"],
                         "variant": variant, "loss": round(loss, 5) if loss is not None else None,
                         "max_fidelity_loss": config.max_fidelity_loss,
                         "within": loss is not None and loss <= config.max_fidelity_loss,
                         "accounted_mb": round(entry["memory_bytes"] / 1e6, 1)})
    return rows


# --- the benchmark ---------------------------------------------------------------------------------

def variants(out_dir: Path, duration_s: float = 10.0, rounds: int = 3, samples: int = 16,
             fraction: float = BUDGET_FRACTION, models: Sequence[str] = tuple(ZOO),
             mix: bool = True) -> tuple[dict[str, Any], str]:
    scratch = Path(tempfile.mkdtemp(prefix="edgeplex-variants-"))
    repo = repository_with(tuple(models), {})  # symlinked originals: variants go to the temp folders
    without_repo = repository_with(MIX, {}) if mix else None  # same files and configs, no variants
    store_path = scratch / "profiles.sqlite"
    store = ProfileStore(store_path)
    started = time.monotonic()
    try:
        made = make_variants(repo, models, samples)
        made_s = time.monotonic() - started
        profiles, failures = profile_variants(repo, models, store)
        profiled_s = time.monotonic() - started - made_s
        originals = {m: (repo / m / "1" / "model.onnx").stat().st_size for m in models}
        rows = variant_rows(made, profiles, originals)
        plot_variants(rows, out_dir / "variants.png")
        result: dict[str, Any] = {"samples": samples, "backends": current_backend_versions(BACKENDS), "threads": 1,
                                  "batch": 1,
                                  "variants": rows, "profile_failures": failures,
                                  "seconds": {"variants": round(made_s), "profiles": round(profiled_s)}}
        if mix and without_repo is not None:
            result["mix"] = _mix(repo, without_repo, store_path, profiles, duration_s, rounds, fraction)
            plot_mix(result["mix"], out_dir / "variants_mix.png")
        result["seconds"]["total"] = round(time.monotonic() - started)
    finally:
        for folder in (repo, without_repo, scratch):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    return result, render(result)


def _mix(repo: Path, without_repo: Path, store_path: Path, profiles: Mapping[str, list[Profile]], duration_s: float,
         rounds: int, fraction: float) -> dict[str, Any]:
    repository = Repository(repo)
    configs = {m: repository.load_config(repository.source(m)) for m in MIX}
    _log("the mix with no memory budget (fp32 only)")
    reference = reference_run(without_repo, store_path, duration_s)
    accounted = accounted_fp32(without_repo)
    budgets = choose_budgets({m: profiles[m] for m in MIX}, {m: c.slo_ms for m, c in configs.items()},
                             {m: c.max_fidelity_loss for m, c in configs.items()}, accounted, fraction)
    runs = {}
    for name, budget in (("tight", budgets.tight), ("plannable", budgets.plannable)):
        if budget is not None:
            _log(f"the mix under the {name} budget, {budget / 1e6:.1f} MB")
            runs[name] = mix_pair(repo, without_repo, store_path, budget, duration_s, rounds)
            runs[name]["chosen"] = chosen_fidelity(runs[name]["windows"]["with"][-1]["placement"], repo)
    return {"models": list(MIX), "clients_per_model": 2, "duration_s": duration_s, "rounds": rounds,
            "plan_share": PLAN_SHARE, "max_fidelity_loss": {m: c.max_fidelity_loss for m, c in configs.items()},
            "budgets": {"fraction": fraction, "tight": budgets.tight, "plannable": budgets.plannable,
                        "fp32_profile_bytes": budgets.fp32, "fp32_accounted_bytes": budgets.accounted,
                        "fp32_pareto_accounted_bytes": reference["fp32_instance_bytes"],
                        "admissible": budgets.admissible,
                        "smallest_admissible_bytes": budgets.smallest},
            "reference": reference, "runs": runs}
