"""`edgeplex bench serving`: the serving path measured from outside, with Triton's own load
generator (perf_analyzer), against a real Triton configured by hand (python backend, ONNX Runtime
with 1 intra-op thread, 2 instances per model) and against `edgeplex serve`, on the same files.

Why from outside: perf_analyzer is the client Triton users already trust, and the server's whole
process tree is charged for its CPU and memory (Triton's python-backend stubs included), so neither
server can look cheap by doing its work in a process the bench does not count.

Per round, each server is started once (alone on the machine, the order reversed every other
round) on a repository holding exactly the run's models, and every case is run against it: a few
seconds of warm-up load (so pareto can re-plan under load; every server gets it), then one
perf_analyzer measurement. Each figure is the median over rounds (`median_high`: a value some
round measured; with two rounds, the higher of the two, for both servers alike); a ratio to Triton is of the two servers' medians (each server's rounds are
separate starts, so there is no per-round pairing to take a median of).

What is divided by what, per (server, case):
- CPU ms/request = (user+system CPU seconds of the server's process tree after the measured
  perf_analyzer run - before it) x 1000 / (the server's own successful-request count for the
  model after - before). Both brackets enclose the same interval: the whole perf_analyzer run,
  its start-up and every window it ran, not only the windows it kept (perf_analyzer's "Request
  count" covers only those, so dividing whole-run CPU by it would overstate the cost). The tree is
  the server process and every descendant found in /proc; each one's cutime+cstime is added too,
  so a child that exits and is reaped inside the interval is still counted.
- busy cores = whole-machine CPU seconds (/proc/stat) over the run / its wall time: the server,
  perf_analyzer and anything else running.
Memory, once per server: all five zoo models loaded, each having answered a few requests; PSS and
RSS summed over the tree's /proc/<pid>/smaps_rollup (PSS shares pages among the processes that map
them, so it is the tree's fair share; RSS counts a shared page once per process; USS, the pages no
other process maps, is shown too: PSS would also shrink by pages shared with processes outside the
tree, and this bench itself runs the same Python as edgeplex, not Triton's stubs' numpy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from . import progress
from .cpu import cpu_snapshot, process_tree, tree_cpu_seconds
from .perf_analyzer import PerfAnalyzer, PerfAnalyzerError, WireProtocol, ensure_perf_analyzer
from .process import ServerProcess, running_server
from .report import table
from .repos import repository_with
from .stats import median_high, rounded_ratio

TRITON = "triton"
POLICIES = ("pareto", "config")
MEMORY_MODELS = ("yolov8n", "ppocr_det", "ppocr_rec", "ppocr_cls", "magika")
IDENTITY = "identity"
SHAPES: dict[str, dict[str, list[int]]] = {IDENTITY: {"INPUT0": [16]}}
INSTANCES = 2  # Triton's hand config and edgeplex `--policy config`
MEMORY_REQUESTS = 3  # per model, before memory is read
FIGURES = ("throughput", "p50_ms", "p99_ms", "cpu_ms_per_request", "busy_cores")


@dataclass(frozen=True)
class Case:
    """One measurement: a model, a wire protocol, a perf_analyzer concurrency."""

    model: str
    protocol: WireProtocol
    concurrency: int

    @property
    def name(self) -> str:
        return f"{self.model}-{self.protocol}-c{self.concurrency}"


CASES = (Case("ppocr_cls", "grpc", 4), Case("ppocr_cls", "grpc", 16), Case("ppocr_cls", "http", 4),
         Case("yolov8n", "grpc", 4), Case(IDENTITY, "grpc", 16))
CASE_NAMES = tuple(c.name for c in CASES)

# (case, figure, "ratio" to Triton's or "absolute", comparison, goal): the targets. CPU per
# request (ratio <= 1 in every case run) and PSS (ratio <= 0.6) are added by `targets`.
TARGETS: tuple[tuple[str, str, str, str, float], ...] = (
    ("ppocr_cls-grpc-c4", "throughput", "ratio", ">=", 1.2), ("ppocr_cls-grpc-c4", "p50_ms", "ratio", "<=", 1.0),
    ("ppocr_cls-grpc-c16", "throughput", "ratio", ">=", 1.2), ("ppocr_cls-grpc-c16", "p50_ms", "ratio", "<=", 1.0),
    ("yolov8n-grpc-c4", "throughput", "ratio", ">=", 1.0), ("identity-grpc-c16", "throughput", "absolute", ">=", 3000),
)


# --- the process tree, from /proc ---------------------------------------------------------------

def tree_memory(root: int) -> dict[str, int]:
    """PSS and RSS bytes summed over `root`'s tree (smaps_rollup), and how many processes."""
    totals = {"Pss": 0, "Rss": 0, "Private_Clean": 0, "Private_Dirty": 0}
    count = 0
    for pid in process_tree(root):
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        count += 1
        for line in lines:
            key, _, value = line.partition(":")
            if key in totals:
                totals[key] += int(value.split()[0]) * 1024
    return {"pss_bytes": totals["Pss"], "rss_bytes": totals["Rss"],
            "uss_bytes": totals["Private_Clean"] + totals["Private_Dirty"], "processes": count}


# --- repositories --------------------------------------------------------------------------------

def write_identity(repository: Path, overrides: dict[str, Any] | None = None) -> None:
    """`identity` in `repository`: one Identity node, INPUT0 FP32 [-1, 16] -> OUTPUT0, batch up to 8
    (the server's floor: no compute, all transport and scheduling)."""
    import onnx
    from onnx import TensorProto, helper

    tensor = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 16]) for n in ("INPUT0", "OUTPUT0")]
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], IDENTITY, [tensor[0]],
                              [tensor[1]])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])
    (repository / IDENTITY / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(repository / IDENTITY / "1" / "model.onnx"))
    config = {"name": IDENTITY, "max_batch_size": 8, **(overrides or {})}
    (repository / IDENTITY / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def repository(models: Sequence[str], overrides: dict[str, Any]) -> Path:
    """A temporary repository of exactly `models` (zoo models symlinked, identity generated), each
    with `overrides`; the caller removes it."""
    zoo = tuple(m for m in models if m != IDENTITY)
    root = repository_with(zoo, overrides) if zoo else Path(tempfile.mkdtemp(prefix="edgeplex-bench-"))
    if IDENTITY in models:
        write_identity(root, overrides)
    return root


def profile(repo: Path, models: Sequence[str], store: Path, cores: int) -> None:
    """Solo profiles of `models` into `store` before any load (as `bench peer` does): pareto plans
    from them instead of profiling in the background while it is measured. In a process of its
    own (`edgeplex profile`): the runtimes it maps must not share pages with the servers measured,
    which would lower their PSS."""
    command = [sys.executable, "-m", "edgeplex.cli", "--quiet", "profile", *models, "--repository", str(repo),
               "--store", str(store), "--cores", str(cores), "--iterations", "30", "--max-seconds", "2.0"]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"edgeplex profile failed ({finished.returncode}):\n{finished.stdout[-2000:]}{finished.stderr[-2000:]}")


# --- one server ----------------------------------------------------------------------------------

def _say(message: str) -> None:
    if progress.ENABLED:
        print(f"edgeplex bench serving: {message}", file=sys.stderr, flush=True)


def _perf(analyzer: PerfAnalyzer, server: ServerProcess, case: Case, measurement_ms: int, stability: float,
          trials: int) -> Any:
    url = server.grpc_url if case.protocol == "grpc" else server.http_url
    extra = ["--input-tensor-format", "binary", "--output-tensor-format", "binary"] if case.protocol == "http" else []
    return analyzer.run(case.model, url, case.protocol, case.concurrency, measurement_ms, shape=SHAPES.get(case.model),
                        extra=extra, stability_percentage=stability, max_trials=trials)


def measure_case(analyzer: PerfAnalyzer, server: ServerProcess, case: Case, measurement_ms: int,
                 warmup_s: float) -> dict[str, Any]:
    """Warm-up load, then one perf_analyzer measurement with the server's tree CPU, its request
    count and the machine's CPU read around it (see the module's docstring)."""
    record: dict[str, Any] = {}
    if warmup_s > 0:  # ~warmup_s of load: windows of a quarter of it, stable by construction
        try:
            _perf(analyzer, server, case, max(250, int(warmup_s * 250)), 100.0, 4)
        except PerfAnalyzerError as exc:
            record["warmup_note"] = str(exc)[-200:]  # load was sent; only its stability check failed
    pid = server.process.pid
    for stability in (20.0, 50.0):  # a noisy shared machine may not settle within 20 %
        served0, tree0, (wall0, box0, _, steal0) = server.successes(case.model), tree_cpu_seconds(pid), cpu_snapshot()
        try:
            result = _perf(analyzer, server, case, measurement_ms, stability, 10)
        except PerfAnalyzerError as exc:
            record["error"] = str(exc)[:500]
            continue
        wall1, box1, _, steal1 = cpu_snapshot()
        tree1, served1 = tree_cpu_seconds(pid), server.successes(case.model)
        served, wall = served1 - served0, wall1 - wall0
        record.pop("error", None)
        record.update(
            throughput=round(result.throughput, 1), p50_ms=round(result.p50_ms, 2), p99_ms=round(result.p99_ms, 2),
            cpu_ms_per_request=round((tree1 - tree0) * 1000 / served, 3) if served else float("nan"),
            busy_cores=round((box1 - box0) / wall, 2), stolen_cores=round((steal1 - steal0) / wall, 2),
            server_cpu_s=round(tree1 - tree0, 2), server_requests=served, wall_s=round(wall, 1),
            window_requests=result.client_requests, stability_percentage=stability)
        return record
    return {**record, **{figure: float("nan") for figure in FIGURES}}


def _loaded_memory(server: ServerProcess, models: Sequence[str]) -> dict[str, Any]:
    """The tree's memory once every model has answered a few requests (their lazy allocations made)."""
    import tritonclient.grpc as grpcclient

    from ..zoo import example_inputs
    from .clients import prepared_inputs

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        for model in models:
            request = prepared_inputs(grpcclient, example_inputs(model))
            for _ in range(MEMORY_REQUESTS):
                client.infer(model, request)
    finally:
        client.close()
    time.sleep(2.0)  # let a placement change the requests set off finish
    return {**tree_memory(server.process.pid), "models": list(models)}


# --- the whole run -------------------------------------------------------------------------------

def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]],
              memory: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per (server, case), and each edgeplex server's ratios to Triton's
    (throughput, p50, CPU/request per case; PSS): a ratio is NaN where a figure is missing."""
    figures = {server: {case: {f: median_high([r.get(f, float("nan")) for r in records]) for f in FIGURES}
                        for case, records in cases.items()} for server, cases in runs.items()}
    triton = figures.get(TRITON, {})
    ratios: dict[str, dict[str, Any]] = {}
    for server, cases in figures.items():
        if server == TRITON:
            continue
        ratios[server] = {case: {f: rounded_ratio(mine[f], triton.get(case, {}).get(f, float("nan")))
                                 for f in ("throughput", "p50_ms", "cpu_ms_per_request")}
                          for case, mine in cases.items()}
        if server in memory and TRITON in memory:
            ratios[server]["pss"] = rounded_ratio(memory[server]["pss_bytes"], memory[TRITON]["pss_bytes"])
    return {"figures": figures, "ratios": ratios, "memory": memory}


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each edgeplex server's figures against the issue's targets: met True/False, or None when
    the figure was not measured (its case not run, or no Triton to compare with)."""
    rows = []
    for server, ratios in summary["ratios"].items():
        cases = [c for c in ratios if c != "pss"]
        wanted = [t for t in TARGETS if t[0] in cases]
        wanted += [(c, "cpu_ms_per_request", "ratio", "<=", 1.0) for c in cases]
        wanted += [("all five zoo models", "pss", "ratio", "<=", 0.6)] if "pss" in ratios else []
        for case, figure, kind, comparison, goal in wanted:
            if figure == "pss":
                value = ratios["pss"]
            elif kind == "ratio":
                value = ratios[case][figure]
            else:
                value = summary["figures"][server][case][figure]
            met = None if value != value else (value >= goal if comparison == ">=" else value <= goal)
            rows.append({"server": server, "case": case, "figure": figure, "kind": kind,
                         "goal": f"{comparison} {goal:g}" + ("x Triton" if kind == "ratio" else ""),
                         "value": value, "met": met})
    return rows


def serving(rounds: int = 2, measurement_ms: int = 3000, cases: Sequence[Case] = CASES, cores: int | None = None,
            policies: Sequence[str] = ("pareto",), triton: bool = True, memory: bool = True,
            warmup_s: float = 4.0) -> tuple[dict[str, Any], str]:
    """Every case against Triton (unless `triton` is False) and edgeplex under each of `policies`;
    with `memory`, each server's tree memory with the five zoo models loaded."""
    from .triton_config import write_triton_repository
    from .triton_peer import PYTRITON_VERSION, TritonInstall, install, running_triton

    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"edgeplex policies must be among {', '.join(POLICIES)}, got {', '.join(unknown)}")
    cores = cores or len(os.sched_getaffinity(0))
    analyzer = ensure_perf_analyzer()
    installed: TritonInstall | None = install() if triton else None
    models = list(dict.fromkeys(c.model for c in cases))
    scratch = Path(tempfile.mkdtemp(prefix="edgeplex-serving-"))
    store = scratch / "profiles.sqlite"
    repos: dict[str, dict[str, Path]] = {"run": {}, "memory": {}}
    servers = ([TRITON] if triton else []) + list(policies)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {c.name: [] for c in cases} for s in servers}
    measured_memory: dict[str, dict[str, Any]] = {}
    triton_version = ""
    try:
        for phase, phase_models in (("run", models), ("memory", list(MEMORY_MODELS) if memory else [])):
            if phase_models:
                repos[phase]["pareto"] = repository(phase_models, {})
                if "config" in policies:
                    repos[phase]["config"] = repository(phase_models, {"instance_count": INSTANCES, "threads": 1})
                if triton:
                    repos[phase][TRITON] = write_triton_repository(repos[phase]["pareto"], scratch / f"triton-{phase}",
                                                                   phase_models, INSTANCES, 1)
        _say(f"profiling {', '.join(dict.fromkeys([*models, *(MEMORY_MODELS if memory else ())]))} solo for pareto")
        profile(repos["run"]["pareto"], models, store, cores)
        unprofiled = [m for m in MEMORY_MODELS if m not in models] if memory else []
        if unprofiled:  # `edgeplex profile` with no model named profiles every one
            profile(repos["memory"]["pareto"], unprofiled, store, cores)

        def start(server: str, phase: str) -> AbstractContextManager[ServerProcess]:
            if server == TRITON:
                return running_triton(repos[phase][TRITON], installed)
            return running_server(repos[phase][server], "--policy", server, "--profile-store", str(store), cores=cores)

        for round_index in range(rounds):
            order = servers if round_index % 2 == 0 else list(reversed(servers))
            for server in order:
                with start(server, "run") as process:
                    if server == TRITON:
                        triton_version = process.get_json("/v2")["version"]
                    for case in cases:
                        _say(f"round {round_index + 1}/{rounds}, {server}, {case.name}")
                        record = measure_case(analyzer, process, case, measurement_ms, warmup_s)
                        runs[server][case.name].append(record)
                        _say(f"  {record.get('throughput')} infer/s, p50 {record.get('p50_ms')} ms, "
                             f"{record.get('cpu_ms_per_request')} CPU ms/request {record.get('error', '')}")
        for server in servers if memory else []:
            _say(f"memory of {server} with {', '.join(MEMORY_MODELS)}")
            with start(server, "memory") as process:
                measured_memory[server] = _loaded_memory(process, MEMORY_MODELS)
    finally:
        for phase_repos in repos.values():
            for name, path in phase_repos.items():
                if name != TRITON:
                    shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)

    summary = summarise(runs, measured_memory)
    setup: dict[str, Any] = {"perf_analyzer": analyzer.version(), "cores": cores, "rounds": rounds,
                             "measurement_ms": measurement_ms, "warmup_s": warmup_s, "policies": list(policies),
                             "cases": [asdict(c) for c in cases]}
    if installed is not None:
        stub = installed.stub_versions()
        setup["triton"] = {"tritonserver": triton_version, "nvidia_pytriton": PYTRITON_VERSION,
                           "stub_numpy": stub["numpy"], "stub_onnxruntime": stub["onnxruntime"],
                           "hand_config": f"python backend, ONNX Runtime 1 intra-op thread, sequential, "
                                          f"instance_group KIND_CPU count {INSTANCES}, no dynamic batching"}
    result = {"setup": setup, "summary": summary, "targets": targets(summary), "runs": runs}
    return result, text(result)


def _cell(value: Any, suffix: str = "") -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:g}{suffix}" if isinstance(value, float | int) else str(value)


def _rows(result: dict[str, Any]) -> Iterator[dict[str, Any]]:
    figures, ratios = result["summary"]["figures"], result["summary"]["ratios"]
    case_names = [Case(**c).name for c in result["setup"]["cases"]]
    for case in case_names:
        for server, cases in figures.items():
            f, r = cases[case], ratios.get(server, {}).get(case, {})
            errors = sum(1 for run in result["runs"][server][case] if "error" in run)
            yield {"case": case, "server": server if server == TRITON else f"edgeplex {server}",
                   "infer/s": _cell(f["throughput"]), "p50 ms": _cell(f["p50_ms"]), "p99 ms": _cell(f["p99_ms"]),
                   "CPU ms/req": _cell(f["cpu_ms_per_request"]), "busy cores": _cell(f["busy_cores"]),
                   "infer/s vs T": _cell(r.get("throughput"), "x") if r else "",
                   "p50 vs T": _cell(r.get("p50_ms"), "x") if r else "",
                   "CPU vs T": _cell(r.get("cpu_ms_per_request"), "x") if r else "", "failed rounds": errors}


def text(result: dict[str, Any]) -> str:
    """The report: figures per case and server, memory, and the targets."""
    setup, summary = result["setup"], result["summary"]
    mib = 2**20
    memory_rows = [{"server": s if s == TRITON else f"edgeplex {s}", "processes": m["processes"],
                    "PSS MiB": round(m["pss_bytes"] / mib, 1), "USS MiB": round(m.get("uss_bytes", 0) / mib, 1),
                    "RSS MiB": round(m["rss_bytes"] / mib, 1),
                    "PSS vs T": _cell(summary["ratios"].get(s, {}).get("pss"), "x") if s != TRITON else ""}
                   for s, m in summary["memory"].items()]
    target_rows = [{"server": f"edgeplex {t['server']}", "case": t["case"], "figure": t["figure"], "goal": t["goal"],
                    "measured": _cell(t["value"], "x" if t["kind"] == "ratio" else ""),
                    "met": {True: "yes", False: "NO", None: "n/a"}[t["met"]]} for t in result["targets"]]
    triton = setup.get("triton")
    lines = [
        "## Serving: perf_analyzer against Triton configured by hand and edgeplex",
        "",
        f"{setup['perf_analyzer']}; {setup['measurement_ms']} ms windows (stable within 20 %, else 50 %), after "
        f"{setup['warmup_s']:g} s of warm-up load per case; edgeplex on {setup['cores']} cores, pareto from solo "
        f"profiles; median of {setup['rounds']} round(s), one server at a time, order alternating.",
        (f"Triton {triton['tritonserver']} (nvidia-pytriton {triton['nvidia_pytriton']}): {triton['hand_config']}; "
         f"stub numpy {triton['stub_numpy']}, onnxruntime {triton['stub_onnxruntime']}." if triton else
         "Triton not run."),
        "",
        table(list(_rows(result)), ["case", "server", "infer/s", "p50 ms", "p99 ms", "CPU ms/req", "busy cores",
                                    "infer/s vs T", "p50 vs T", "CPU vs T", "failed rounds"]),
        "",
        "latencies: perf_analyzer's client side; CPU ms/req: the server's whole process tree (Triton's stubs "
        "included) over the whole perf_analyzer run / the requests the server answered in it; busy cores: the "
        "machine's CPU over the run / its wall time (perf_analyzer and anything else included); vs T: edgeplex's "
        "median / Triton's.",
    ]
    if memory_rows:
        lines += ["", f"Memory with {', '.join(MEMORY_MODELS)} loaded, each after {MEMORY_REQUESTS} requests "
                  "(summed over the process tree, /proc/<pid>/smaps_rollup):", "",
                  table(memory_rows, ["server", "processes", "PSS MiB", "RSS MiB", "PSS vs T"])]
    lines += ["", "Targets:", "", table(target_rows, ["server", "case", "figure", "goal", "measured", "met"])]
    return "\n".join(lines)
