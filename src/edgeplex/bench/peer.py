"""`edgeplex bench peer` (issue 14): the same fixed job against a real Triton configured by hand
(python backend running ONNX Runtime with 1 thread, 2 instances per model) and against
`edgeplex serve` under each policy, on the same model files, one server at a time.

The mix is profiled first (solo, into a fresh store), as `bench allocation` does, so that pareto's
inputs and the capacity bound come from the same machine state as the runs. The servers alternate
across rounds (the order reversed every other round), so that drift on a shared machine hits
them alike; each figure is the median over rounds.

`start` says what pareto starts from: `profiled` (that solo store), `empty` (a store of its own,
empty at every run: a cold start, which must learn while it serves) or `poisoned` (a store
profiled while two CPU hogs ran, the figures of a busy machine). The bound always comes from
the solo profiles.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..repository import Repository
from ..tuning.profiler import profile_model
from ..tuning.store import ProfileStore
from ..zoo import example_inputs
from .allocation import capacity_bound
from .clients import prepared_inputs
from .cpu import foreign_cpu
from .job import fixed_job
from .process import running_server
from .report import table
from .repos import repository_with
from .scenarios import MIX
from .stats import median_high, rounded_ratio
from .triton_config import write_triton_repository
from .triton_peer import PYTRITON_VERSION, TritonInstall, install, python_version, running_triton

TRITON = "triton"
POLICIES = ("static", "balance", "pareto")
STARTS = ("profiled", "empty", "poisoned")
HOGS = 2  # busy processes while the poisoned store is profiled


@contextmanager
def cpu_hogs(count: int = HOGS) -> Iterator[None]:
    """`count` processes spinning on the CPU for the duration."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _placement(placement: dict[str, Any]) -> dict[str, str]:
    """Each model's placement in one short line ("2x onnxruntime/t1")."""
    return {m["model"]: " + ".join(f"{g['instances']}x {g['backend']}/t{g['threads']}"
                                   + ("" if g["variant"] == "fp32" else f"/{g['variant']}") for g in m["groups"])
            for m in placement["models"]}


def _references(repo: Path, inputs: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Each model's outputs for its example inputs from ONNX Runtime in this process."""
    import onnxruntime as ort

    answers = {}
    for model, feed in inputs.items():
        session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        answers[model] = dict(zip(names, session.run(names, feed)))
    return answers


def _answers_match(url: str, inputs: dict[str, dict[str, np.ndarray]],
                   references: dict[str, dict[str, np.ndarray]]) -> dict[str, bool]:
    """Whether each model's answer over the wire is the reference's: a server that computes on the
    wrong inputs is caught (Triton's stub with numpy 2 reads zeros and answers empty tensors)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        matches = {}
        for model, feed in inputs.items():
            answer = client.infer(model, prepared_inputs(grpcclient, feed))
            matches[model] = all(
                (got := answer.as_numpy(name)) is not None and got.shape == want.shape
                and bool(np.allclose(got, want, rtol=1e-3, atol=1e-3))
                for name, want in references[model].items())
        return matches
    finally:
        client.close()


def _run_triton(repo: Path, installed: TritonInstall, inputs: dict[str, Any], references: dict[str, Any],
                job: dict[str, Any]) -> dict[str, Any]:
    with running_triton(repo, installed) as server:
        record: dict[str, Any] = {"version": server.get_json("/v2")["version"],
                                  "answers_match": _answers_match(server.grpc_url, inputs, references)}
        logged = len(server.output)
        with foreign_cpu(record):
            record.update(fixed_job(server.grpc_url, inputs, server_pid=server.process.pid, **job))
        # Triton's own account of failures (a stub it found unhealthy and restarted, say).
        record["server_log_errors"] = [line[:300] for line in server.output[logged:] if line.startswith("E")][:10]
        return record


def _run_edgeplex(repo: Path, policy: str, store: Path, cores: int, inputs: dict[str, Any],
                  references: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    with running_server(repo, "--policy", policy, "--profile-store", str(store), cores=cores) as server:
        record: dict[str, Any] = {"answers_match": _answers_match(server.grpc_url, inputs, references)}
        with foreign_cpu(record):
            record.update(fixed_job(server.grpc_url, inputs, server_pid=server.process.pid, **job))
        record["placement"] = _placement(server.get_json("/v2/edgeplex/placement"))
        return record


def _summarise(runs: list[dict[str, Any]], models: tuple[str, ...]) -> dict[str, Any]:
    """One server's figures: medians over its rounds (errors summed)."""
    def med(key: str) -> float:
        return median_high([r[key] for r in runs if r.get(key) is not None])

    return {"per_model_rate": {m: median_high([r["per_model"][m]["rate"] for r in runs]) for m in models},
            "equal_share_rate": med("equal_share_rate"), "makespan_s": med("makespan_s"),
            "cpu_ms_per_request": med("cpu_ms_per_request"), "busy_cores": med("busy_cores"),
            "errors": sum(r["errors"] for r in runs), "rounds": len(runs),
            "answers_match": all(all(r["answers_match"].values()) for r in runs)}


def peer(requests: int = 200, warmup: int = 60, clients_per_model: int = 2, policies: tuple[str, ...] = POLICIES,
         rounds: int = 1, settle_s: float = 0.0, cores: int | None = None, models: tuple[str, ...] = MIX,
         instances: int = 2, threads: int = 1, start: str = "profiled") -> tuple[dict[str, Any], str]:
    """The fixed job against Triton (hand config: `instances` python-backend instances of
    `threads` ONNX Runtime threads per model) and edgeplex under each of `policies`.
    `settle_s`: seconds of load after the warm-up before the measured phase (every server gets
    the same job; pareto is the one that re-plans during it). `start`: pareto's profile store (see
    the module's docstring)."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
    cores = cores or len(os.sched_getaffinity(0))
    installed = install()  # before anything is measured: the first call downloads the wheel
    scratch = Path(tempfile.mkdtemp(prefix="edgeplex-peer-"))
    store_path = scratch / "profiles.sqlite"
    repo = repository_with(models, {})
    inputs = {m: example_inputs(m) for m in models}
    job = {"clients_per_model": clients_per_model, "warmup": warmup, "requests": requests, "settle_s": settle_s}
    runs: dict[str, list[dict[str, Any]]] = {server: [] for server in (TRITON, *policies)}
    try:
        references = _references(repo, inputs)
        store, repository = ProfileStore(store_path), Repository(repo)
        for model in models:  # solo, before any load: what pareto plans with, and the bound
            config = repository.load_config(repository.source(model))
            profile_model(model, repo / model / "1" / "model.onnx", config, store, cores, iterations=30, max_seconds=2.0)
        bound = capacity_bound(store, repo, models, cores)
        pareto_store = store_path
        if start == "poisoned":
            pareto_store = scratch / "poisoned.sqlite"
            poisoned = ProfileStore(pareto_store)
            with cpu_hogs():
                for model in models:
                    config = repository.load_config(repository.source(model))
                    profile_model(model, repo / model / "1" / "model.onnx", config, poisoned, cores, iterations=30,
                                  max_seconds=2.0)
        triton_repo = write_triton_repository(repo, scratch / "triton", models, instances, threads)
        for round_index in range(rounds):
            order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
            for server in order:
                if server == TRITON:
                    runs[server].append(_run_triton(triton_repo, installed, inputs, references, job))
                else:
                    server_store = pareto_store if server == "pareto" else store_path
                    if server == "pareto" and start == "empty":
                        server_store = scratch / f"empty-{round_index}.sqlite"
                    runs[server].append(_run_edgeplex(repo, server, server_store, cores, inputs, references, job))
    finally:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)

    summary = {server: _summarise(server_runs, models) for server, server_runs in runs.items()}
    triton_rate, bound_rate = summary[TRITON]["equal_share_rate"], bound["per_model_rate"]
    for figures in summary.values():
        figures["vs_triton"] = rounded_ratio(figures["equal_share_rate"], triton_rate)
        figures["vs_bound"] = rounded_ratio(figures["equal_share_rate"], bound_rate)
    version = runs[TRITON][0]["version"]
    stub = installed.stub_versions()
    peer_setup = {"tritonserver": version, "nvidia_pytriton": PYTRITON_VERSION,
                  "python_backend": f"tritonserver {version} python backend, stub for Python {python_version()} "
                                    f"(nvidia-pytriton {PYTRITON_VERSION}) in a virtualenv of its own with numpy "
                                    f"{stub['numpy']}, onnxruntime {stub['onnxruntime']}",
                  "onnxruntime": stub["onnxruntime"], "stub_numpy": stub["numpy"],
                  "edgeplex_onnxruntime": metadata.version("onnxruntime"),
                  "hand_config": f"python backend, ONNX Runtime {threads} intra-op thread(s), 1 inter-op, sequential, "
                                 f"instance_group KIND_CPU count {instances}, no dynamic batching"}
    result = {"job": {**job, "models": list(models), "pareto_start": start}, "cores": cores, "rounds": rounds, "peer": peer_setup,
              "bound": bound, "summary": summary, "runs": runs}
    return result, _text(result, models)


_START_WORDS = {"profiled": "the solo profiles", "empty": "an empty profile store (a cold start)",
                "poisoned": f"profiles measured while {HOGS} CPU hogs ran"}


def _text(result: dict[str, Any], models: tuple[str, ...]) -> str:
    job, summary = result["job"], result["summary"]
    rows = [{"server": TRITON if server == TRITON else f"edgeplex {server}",
             **{m: figures["per_model_rate"][m] for m in models}, "equal-share req/s": figures["equal_share_rate"],
             "vs Triton": figures["vs_triton"], "vs bound": figures["vs_bound"],
             "CPU ms/req": figures["cpu_ms_per_request"], "busy cores": figures["busy_cores"],
             "errors": figures["errors"], "answers": "ok" if figures["answers_match"] else "WRONG"}
            for server, figures in summary.items()]
    placements = [{"server": f"edgeplex {server}", **run[-1]["placement"]}
                  for server, run in result["runs"].items() if server != TRITON]
    return "\n".join([
        "## Peer: the same fixed job against Triton configured by hand and edgeplex",
        "",
        f"{', '.join(models)}: {job['warmup']} warm-up then {job['requests']} measured requests per model, "
        f"{job['clients_per_model']} closed-loop tritonclient gRPC clients per model, all models at once"
        + (f", {job['settle_s']} s of settle load after the warm-up" if job["settle_s"] else "")
        + f"; pareto starts from {_START_WORDS[job.get('pareto_start', 'profiled')]}"
        + f"; {result['cores']} cores; median of {result['rounds']} round(s), servers alternating.",
        f"Triton: {result['peer']['hand_config']}; {result['peer']['python_backend']}.",
        "",
        table(rows, ["server", *models, "equal-share req/s", "vs Triton", "vs bound", "CPU ms/req", "busy cores",
                     "errors", "answers"]),
        "",
        "per model: requests / that model's own finish time; equal-share = requests per model / makespan (until the "
        "last model is done); CPU = the server's process tree over the measured phase; busy cores = CPU s / makespan; "
        "answers = one request per model checked against ONNX Runtime in the bench before the job",
        f"capacity bound (cores / sum 1/best single-core rate): {result['bound']['per_model_rate']} req/s per model "
        f"from {result['bound']['best_single_core_rate']}",
        "",
        table(placements, ["server", *models]),
        *(f"\nerrors of {server}: {run['error_samples']} {run.get('server_log_errors', [])[:3]}"
          for server, runs in result["runs"].items() for run in runs if run["errors"]),
    ])
