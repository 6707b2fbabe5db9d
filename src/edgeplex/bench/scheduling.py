"""Scheduling through the real server (issue 5): priority isolation, deadlines, dynamic batching.

- isolation: `ppocr_det` at priority 1, sent open loop at a fixed rate, while `yolov8n`,
  `ppocr_rec` and `magika` at priority 3 saturate the box (closed loop, from a second client
  process so that their Python clients do not share the protected client's GIL); its p50/p99
  against the same stream alone, under `--scheduling priority` and under `--scheduling fifo`.
- deadlines: the four models open loop at fixed load levels around what the box sustains, each
  with its own `slo_ms` (a multiple of its solo latency measured in this run) and
  `timeout_action: reject`, half of the requests with a looser timeout of their own; the
  fraction answered OK within its deadline, earliest deadline first (`--scheduling priority`)
  vs FIFO.
- batching: closed-loop throughput at the same concurrency with dynamic batching vs
  `dynamic_batching: null`, with p50/p99 and the mean batch size from the server's batch_stats;
  next to it, in-process, how much a batch saves per sample on this CPU (the ceiling).

Every server runs `--policy config`, so placements are what the configs say in every run. The
compared servers are started together and the runs alternate over rounds; figures are medians
of per-round ratios (and percentiles pooled over the rounds, for the tails). One module for the
three, as they share their servers' set-up and the way the compared runs alternate.
"""

from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..zoo import default_zoo_dir, example_inputs
from . import clients
from .cpu import foreign_cpu
from .loadgen import closed_loop
from .openloop import Stream, open_loop
from .process import ServerProcess, running_server
from .report import table
from .repos import repository_of
from .stats import median_high, percentile, rounded_ratio
from .watch import StatsDelta, watching

PROTECTED = "ppocr_det"
BACKGROUND = ("yolov8n", "ppocr_rec", "magika")
MIX = (PROTECTED, *BACKGROUND)
# slo_ms = factor x the model's solo p50 over gRPC, measured in the same run (issue 5: 2-4x).
SLO_FACTORS = {"magika": 3.0, "ppocr_rec": 3.0, "ppocr_det": 3.0, "yolov8n": 4.0}
# Half of each model's requests carry their own, looser timeout: this many times its slo_ms.
LOOSE = 3.0
BATCHING_MODELS = ("magika", "ppocr_cls")
MODES = ("priority", "fifo")
SCENARIOS = ("isolation", "deadlines", "batching")
# Other processes' average CPU use (plus steal) above which figures are flagged as disturbed.
DISTURBED_CORES = 0.3


@contextmanager
def _servers(repo: Path, cores: int | None, modes: tuple[str, ...] = MODES) -> Iterator[dict[str, ServerProcess]]:
    """One `edgeplex serve --policy config` per scheduling mode, all loaded at once."""
    with ExitStack() as stack:
        yield {mode: stack.enter_context(running_server(repo, "--policy", "config", "--scheduling", mode, cores=cores))
               for mode in modes}


def _background(url: str, per_model: dict[str, int], duration_s: float) -> dict[str, dict[str, Any]]:
    """Closed-loop load, run in the helper process (module level, so it can be sent there)."""
    inputs = {m: example_inputs(m) for m in per_model}
    loads = closed_loop(clients.grpc(url), inputs, per_model, duration_s=duration_s, warmup=1)
    return {m: {**load.summary(), "error_samples": load.errors[:2]} for m, load in loads.items()}


def _error_kinds(errors: list[str]) -> dict[str, int]:
    """A stream's failed requests by gRPC status: refused on its deadline, overload, or other."""
    kinds: dict[str, int] = {}
    for text in errors:
        kind = next((k for k in ("DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE") if k in text), "other")
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _alternating(servers: dict[str, ServerProcess], index: int) -> list[tuple[str, ServerProcess]]:
    """The compared servers in turn, the order reversed every other round (drift hits all alike)."""
    order = list(servers.items())
    return order[::-1] if index % 2 else order


def _warm_up(servers: dict[str, ServerProcess], inputs: dict[str, dict[str, np.ndarray]]) -> None:
    """A few requests per model and server before any measured window (first runs at the real
    input shapes are slower: the servers warm up on small shapes)."""
    for server in servers.values():
        for model, feed in inputs.items():
            closed_loop(clients.grpc(server.grpc_url), {model: feed}, {model: 2}, requests_per_client=5)


def _solo_p50(server: ServerProcess, inputs: dict[str, dict[str, np.ndarray]], seconds: float) -> dict[str, float]:
    """Each model alone, one closed-loop client: its p50 over gRPC (what the SLOs are made of)."""
    return {m: round(closed_loop(clients.grpc(server.grpc_url), {m: inputs[m]}, {m: 1}, duration_s=seconds)[m]
                     .percentile(50), 2) for m in inputs}


def isolation(servers: dict[str, ServerProcess], inputs: dict[str, dict[str, np.ndarray]], helper: Any,
              rate: float, duration_s: float, rounds: int) -> dict[str, Any]:
    """The protected stream alone, then under the saturating background, on each server."""
    samples: dict[str, dict[str, list[float]]] = {m: {"solo": [], "loaded": []} for m in servers}
    per_round: list[dict[str, Any]] = []
    decomposition: dict[str, dict[str, list[StatsDelta]]] = {m: {"solo": [], "loaded": []} for m in servers}
    background: dict[str, list[dict[str, Any]]] = {m: [] for m in servers}
    errors: dict[str, int] = {m: 0 for m in servers}
    lag: list[float] = []
    for index in range(rounds):
        row: dict[str, Any] = {}
        for mode, server in _alternating(servers, index):
            for phase in ("solo", "loaded"):
                stream, deltas = Stream(PROTECTED, rate), dict[str, StatsDelta]()
                pending = None
                if phase == "loaded":  # background first, so the box is saturated when the stream starts
                    pending = helper.apply_async(_background, (server.grpc_url, dict.fromkeys(BACKGROUND, 2),
                                                               duration_s + 3.0))
                    time.sleep(2.0)
                with watching(server, (PROTECTED,), deltas):
                    open_loop(server.grpc_url, [stream], inputs, duration_s)
                if pending is not None:
                    background[mode].append(pending.get(timeout=duration_s + 120))
                samples[mode][phase] += stream.load.latencies_ms
                decomposition[mode][phase].append(deltas[PROTECTED])
                errors[mode] += len(stream.load.errors)
                lag += stream.send_lag_ms
                for q in (50, 95, 99):
                    row[f"{mode}_{phase}_p{q}"] = round(percentile(stream.load.latencies_ms, q), 2)
                row[f"{mode}_{phase}_slowest"] = [round(v, 1) for v in sorted(stream.load.latencies_ms)[-3:]]
        per_round.append(row)

    def mean(values: list[float]) -> float:
        finite = [v for v in values if v == v]
        return round(sum(finite) / len(finite), 2) if finite else float("nan")

    modes: dict[str, Any] = {}
    for mode in servers:
        solo, loaded = samples[mode]["solo"], samples[mode]["loaded"]
        modes[mode] = {
            "solo_p50_ms": round(percentile(solo, 50), 2), "solo_p99_ms": round(percentile(solo, 99), 2),
            "loaded_p50_ms": round(percentile(loaded, 50), 2), "loaded_p99_ms": round(percentile(loaded, 99), 2),
            **{f"p{q}_ratio": round(median_high([rounded_ratio(r[f"{mode}_loaded_p{q}"], r[f"{mode}_solo_p{q}"])
                                                 for r in per_round]), 3) for q in (50, 95, 99)},
            "p99_ratio_pooled": rounded_ratio(round(percentile(loaded, 99), 2), round(percentile(solo, 99), 2)),
            "requests": {"solo": len(solo), "loaded": len(loaded)}, "errors": errors[mode],
            # Server-side means of the protected model: waiting (queue + cores) vs computing.
            "server_queue_ms": {p: mean([d.queue_ms for d in decomposition[mode][p]]) for p in ("solo", "loaded")},
            "server_compute_ms": {p: mean([d.compute_ms for d in decomposition[mode][p]]) for p in ("solo", "loaded")},
            "client_mean_ms": {"solo": mean(solo), "loaded": mean(loaded)},
            "background_rps": {m: round(median_high([b[m]["throughput"] for b in background[mode]]), 3)
                               for m in BACKGROUND},
            "background_errors": sum(b[m]["errors"] for b in background[mode] for m in BACKGROUND),
        }
        # What neither the queue nor the run explains: transport, the server's event loop, the client.
        modes[mode]["other_ms"] = {p: round(modes[mode]["client_mean_ms"][p] - modes[mode]["server_queue_ms"][p]
                                            - modes[mode]["server_compute_ms"][p], 2) for p in ("solo", "loaded")}
    return {"rate": rate, "duration_s": duration_s, "rounds": rounds, "modes": modes, "per_round": per_round,
            "send_lag_p99_ms": round(percentile(lag, 99), 2)}


def deadlines(servers: dict[str, ServerProcess], inputs: dict[str, dict[str, np.ndarray]], slo_ms: dict[str, float],
              rates: dict[str, float], duration_s: float, rounds: int, loose: float = LOOSE) -> dict[str, Any]:
    """The open-loop mix on each server in turn. Each model has two streams at half its rate:
    `tight` sends no timeout (the model's slo_ms is the deadline), `loose` sends a timeout of
    `loose` x slo_ms. A request meets its deadline when it is answered OK within it."""
    met: dict[str, list[float]] = {m: [] for m in servers}
    counts: dict[str, dict[str, dict[str, int]]] = {m: {} for m in servers}
    for index in range(rounds):
        for mode, server in _alternating(servers, index):
            streams = [Stream(name, rate / 2, timeout_us=None if cls == "tight" else int(loose * slo_ms[name] * 1000),
                              deadline_ms=slo_ms[name] * (1 if cls == "tight" else loose), label=cls)
                       for name, rate in rates.items() for cls in ("tight", "loose")]
            open_loop(server.grpc_url, streams, inputs, duration_s)
            ok = 0
            for stream in streams:
                within = sum(1 for latency in stream.load.latencies_ms if latency <= stream.deadline_ms)
                ok += within
                tally = {"sent": stream.sent, "met": within, "late": stream.load.completed - within,
                         **_error_kinds(stream.load.errors)}
                for key in ("all", stream.label, stream.model):
                    entry = counts[mode].setdefault(key, {})
                    for name, value in tally.items():
                        entry[name] = entry.get(name, 0) + value
            sent = sum(stream.sent for stream in streams)
            met[mode].append(ok / sent if sent else float("nan"))
    result: dict[str, Any] = {"rates": rates, "met_per_round": {m: [round(v, 3) for v in met[m]] for m in servers},
                              "met": {m: round(median_high(met[m]), 3) for m in servers}, "counts": counts}
    result["edf_vs_fifo"] = rounded_ratio(result["met"]["priority"], result["met"]["fifo"])
    return result


def batching(servers: dict[str, ServerProcess], inputs: dict[str, dict[str, np.ndarray]], models: tuple[str, ...],
             concurrency: int, duration_s: float, rounds: int, baseline: str = "no_batching") -> dict[str, Any]:
    """Closed loop at `concurrency` on one model at a time, on each server (arm) in turn; each
    arm's throughput against the `baseline` arm's, per round."""
    rows: dict[str, Any] = {}
    for model in models:
        runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in servers}
        for index in range(rounds):
            for arm, server in _alternating(servers, index):
                deltas: dict[str, StatsDelta] = {}
                with watching(server, (model,), deltas):
                    load = closed_loop(clients.grpc(server.grpc_url), {model: inputs[model]}, {model: concurrency},
                                       duration_s=duration_s)[model]
                runs[arm].append({**load.summary(), "mean_batch": round(deltas[model].mean_batch, 2),
                                  "compute_ms": round(deltas[model].compute_ms, 2)})
        rows[model] = {arm: {key: round(median_high([r[key] for r in runs[arm]]), 3)
                             for key in ("throughput", "p50_ms", "p99_ms", "mean_batch", "compute_ms")}
                       | {"errors": sum(r["errors"] for r in runs[arm]),
                          "throughput_per_round": [r["throughput"] for r in runs[arm]],
                          "ratio": round(median_high([rounded_ratio(r["throughput"], b["throughput"])
                                                      for r, b in zip(runs[arm], runs[baseline])]), 3)}
                       for arm in servers}
    return {"concurrency": concurrency, "duration_s": duration_s, "rounds": rounds, "baseline": baseline,
            "models": rows}


def batch_scaling(models: tuple[str, ...], sizes: tuple[int, ...] = (1, 4, 8), seconds: float = 0.6) -> dict[str, Any]:
    """In-process, one ONNX Runtime thread: samples per second at each batch size. Dynamic
    batching can only win what this curve offers (plus the per-request overhead it shares)."""
    import onnxruntime as ort

    zoo = default_zoo_dir()
    out: dict[str, Any] = {}
    for model in models:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(zoo / model / "1" / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        rates = {}
        for size in sizes:
            feed = example_inputs(model, batch=size)
            session.run(None, feed)
            n, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds:
                session.run(None, feed)
                n += 1
            rates[size] = round(n * size / (time.perf_counter() - began), 1)
        out[model] = {"samples_per_s": rates, "gain_at_largest": rounded_ratio(rates[sizes[-1]], rates[sizes[0]])}
    return out


def _warm() -> None:
    """Imports the helper process needs, paid before any measured window."""
    import tritonclient.grpc  # noqa: F401


def scheduling(duration_s: float = 8.0, rounds: int = 3, rate: float = 15.0,
               overloads: tuple[float, ...] = (0.8, 1.1), concurrency: int = 8,
               cores: int | None = None) -> tuple[dict[str, Any], str]:
    """The three scenarios. `duration_s` is one measured window of the isolation runs; the
    deadline windows are 3/4 of it and the batching windows half (their figures settle faster)."""
    inputs = {m: example_inputs(m) for m in (*MIX, *BATCHING_MODELS)}
    result: dict[str, Any] = {"duration_s": duration_s, "rounds": rounds, "cores": cores or _cores()}
    no_batching = {"threads": 1, "dynamic_batching": None, "slo_ms": None}
    # The protected model reserves a core while it has traffic (a --scheduling fifo server, where
    # every level is one, ignores it): computations are not preempted, so without it a request
    # waits for a background run to finish.
    iso_configs = {PROTECTED: {**no_batching, "priority": 1, "instance_count": 2, "reserved_cores": 1},
                   **{m: {**no_batching, "priority": 3, "instance_count": 1} for m in BACKGROUND}}
    repos: list[Path] = []
    helper = multiprocessing.get_context("spawn").Pool(1)
    try:
        helper.apply(_warm)
        repos.append(repository_of(iso_configs))
        with _servers(repos[-1], cores) as servers:
            # Each server once alone per model: warms both alike; the priority one's p50s make the SLOs.
            solos = {mode: _solo_p50(server, {m: inputs[m] for m in MIX}, min(2.0, duration_s / 4))
                     for mode, server in servers.items()}
            solo = solos["priority"]
            with foreign_cpu(disturbance := dict[str, Any]()):
                result["isolation"] = isolation(servers, inputs, helper, rate, duration_s, rounds)
            result["isolation"].update(disturbance)
        result["isolation"]["solo_p50_ms"] = solos
        result["isolation"]["placement"] = {
            m: f"{c['instance_count']}x onnxruntime/t1, priority {c['priority']}"
               + (f", reserved_cores {c['reserved_cores']}" if c.get("reserved_cores") else "")
            for m, c in iso_configs.items()}

        # Deadlines from this run's solo latencies; equal rates whose nominal compute demand
        # (sum of rate x solo p50) is `overload` x the cores; the clients' CPU comes on top.
        slo = {m: round(SLO_FACTORS[m] * solo[m], 1) for m in MIX}
        dl_configs = {m: {**no_batching, "priority": 1, "instance_count": 1, "slo_ms": slo[m],
                          "timeout_action": "reject"} for m in MIX}
        repos.append(repository_of(dl_configs))
        levels = []
        with _servers(repos[-1], cores) as servers, foreign_cpu(disturbance := dict[str, Any]()):
            _warm_up(servers, {m: inputs[m] for m in MIX})
            for overload in overloads:
                rates = dict.fromkeys(MIX, round(overload * result["cores"] * 1000 / sum(solo.values()), 1))
                levels.append({"overload": overload, **deadlines(servers, inputs, slo, rates, duration_s * 0.75, rounds)})
        result["deadlines"] = {"solo_p50_ms": solo, "slo_factors": SLO_FACTORS, "slo_ms": slo, "loose_factor": LOOSE,
                               "placement": "1x onnxruntime/t1 each, priority 1, timeout_action reject",
                               "duration_s": duration_s * 0.75, "rounds": rounds, "levels": levels, **disturbance}

        arms = {"no_batching": None, "delay_0us": {"max_queue_delay_microseconds": 0},
                "delay_2000us": {"max_queue_delay_microseconds": 2000, "preferred_batch_size": [4]}}
        base = {"threads": 1, "instance_count": 2, "max_batch_size": 16, "slo_ms": None}
        with ExitStack() as stack:
            servers = {}
            for arm, batcher in arms.items():
                repos.append(repository_of(dict.fromkeys(BATCHING_MODELS, {**base, "dynamic_batching": batcher})))
                servers[arm] = stack.enter_context(running_server(repos[-1], "--policy", "config", cores=cores))
            _warm_up(servers, {m: inputs[m] for m in BATCHING_MODELS})
            with foreign_cpu(disturbance := dict[str, Any]()):
                result["batching"] = batching(servers, inputs, BATCHING_MODELS, concurrency, duration_s / 2, rounds)
                scaling = batch_scaling(("magika", "ppocr_cls", "yolov8n"))  # the servers idle meanwhile
        result["batching"].update(config=base, arms=arms, inprocess_batch_scaling=scaling, **disturbance)
    finally:
        helper.terminate()
        for repo in repos:
            shutil.rmtree(repo, ignore_errors=True)
    return result, _markdown(result)


def _cores() -> int:
    from ..config import default_cores

    return default_cores()


def _markdown(result: dict[str, Any]) -> str:
    iso, dl, bat = result["isolation"], result["deadlines"], result["batching"]
    pri, fifo = iso["modes"]["priority"], iso["modes"]["fifo"]
    iso_rows = [{"scheduling": mode, "solo p50": m["solo_p50_ms"], "solo p99": m["solo_p99_ms"],
                 "loaded p50": m["loaded_p50_ms"], "loaded p99": m["loaded_p99_ms"], "p50 ratio": m["p50_ratio"],
                 "p95 ratio": m["p95_ratio"], "p99 ratio": m["p99_ratio"], "p99 ratio pooled": m["p99_ratio_pooled"],
                 "server wait solo/loaded": f"{m['server_queue_ms']['solo']} / {m['server_queue_ms']['loaded']}",
                 "compute solo/loaded": f"{m['server_compute_ms']['solo']} / {m['server_compute_ms']['loaded']}",
                 "other solo/loaded": f"{m['other_ms']['solo']} / {m['other_ms']['loaded']}",
                 "background req/s": round(sum(m["background_rps"].values()), 1), "errors": m["errors"]}
                for mode, m in iso["modes"].items()]

    def cell(c: dict[str, int]) -> str:
        return f"{c.get('met', 0)}/{c.get('sent', 0)} (late {c.get('late', 0)}, refused {c.get('DEADLINE_EXCEEDED', 0)})"

    dl_rows = [{"load": f"{level['overload']}x ({next(iter(level['rates'].values()))} req/s per model)",
                "scheduling": "EDF" if mode == "priority" else "FIFO", "met": level["met"][mode],
                "rounds": level["met_per_round"][mode],
                **{key: cell(level["counts"][mode].get(key, {})) for key in ("tight", "loose", *MIX)}}
               for level in dl["levels"] for mode in level["met"]]
    arms = list(next(iter(bat["models"].values())))
    bat_rows = [{"model": model, "arm": arm, **{k: row[arm][k] for k in ("throughput", "ratio", "p50_ms", "p99_ms",
                                                                          "mean_batch", "compute_ms", "errors")}}
                for model, row in bat["models"].items() for arm in arms]
    scaling = [{"model": m, **{f"batch {b}": r for b, r in s["samples_per_s"].items()}, "gain": s["gain_at_largest"]}
               for m, s in bat["inprocess_batch_scaling"].items()]
    return "\n".join([
        "## Scheduling: priority isolation, deadlines, dynamic batching (real server, tritonclient.grpc)",
        "",
        f"### Priority isolation: {PROTECTED} (priority 1, open loop {iso['rate']} req/s) under "
        f"{', '.join(BACKGROUND)} (priority 3, 2 closed-loop clients each, from a second process)",
        "",
        f"`--policy config`, no batching: {iso['placement']}. {iso['rounds']} rounds of {iso['duration_s']} s windows "
        "(solo, then loaded, on a `--scheduling priority` and a `--scheduling fifo` server); ratio = median of "
        "per-round ratios, pooled = percentiles over all rounds. Milliseconds; server wait = mean time from "
        "admission to compute (queue + cores), compute = mean run time, from the server's statistics; other = "
        "mean client latency minus both (transport, the server's event loop, the client).",
        "",
        table(iso_rows, list(iso_rows[0])),
        "",
        f"priority-1 p99 loaded / solo: **{pri['p99_ratio']}x** with priorities (target <= 1.5x) vs "
        f"**{fifo['p99_ratio']}x** under fifo (p50: {pri['p50_ratio']}x vs {fifo['p50_ratio']}x). "
        f"Client send lag p99: {iso['send_lag_p99_ms']} ms. Slowest requests per window (solo / loaded): "
        + "; ".join(f"{mode} {[r[f'{mode}_solo_slowest'] for r in iso['per_round']]} / "
                    f"{[r[f'{mode}_loaded_slowest'] for r in iso['per_round']]}" for mode in iso["modes"]),
        "",
        "### Deadlines: the four models open loop, earliest deadline first (`--scheduling priority`) vs FIFO",
        "",
        f"{dl['placement']}; slo_ms = {dl['slo_factors']} x solo p50 {dl['solo_p50_ms']} = {dl['slo_ms']}. "
        f"Half of each model's requests send no timeout (tight: its slo_ms), half send {dl['loose_factor']} x "
        f"slo_ms (loose). Load = nominal compute demand / cores. {dl['rounds']} rounds of {dl['duration_s']} s; "
        "met = median over rounds of the fraction answered OK within the deadline; cells: met/sent over all "
        "rounds (late = answered after the deadline, refused = DEADLINE_EXCEEDED).",
        "",
        table(dl_rows, list(dl_rows[0])),
        "",
        "fraction within the deadline, EDF vs FIFO: " + "; ".join(
            f"load {level['overload']}x: **{level['met']['priority']}** vs **{level['met']['fifo']}** "
            f"({level['edf_vs_fifo']}x)" for level in dl["levels"]),
        "",
        f"### Dynamic batching: closed loop, {bat['concurrency']} clients, {bat['config']['instance_count']} "
        f"single-thread instances, max_batch_size {bat['config']['max_batch_size']}",
        "",
        f"arms: {bat['arms']}; ratio = throughput / {bat['baseline']}, median of {bat['rounds']} rounds of "
        f"{bat['duration_s']} s; mean_batch from the server's batch_stats; compute_ms = mean run time of a batch.",
        "",
        table(bat_rows, list(bat_rows[0])),
        "",
        "throughput with batching / without: " + ", ".join(
            f"{m} **{r[a]['ratio']}x** ({a})" for m, r in bat["models"].items() for a in arms if a != bat["baseline"])
        + " (target >= 1.5x where the model benefits)",
        "",
        "In-process, one ONNX Runtime thread, samples/s by batch size: what batching can save on this CPU",
        "",
        table(scaling, list(scaling[0])),
        "",
        "Other processes on this shared machine used on average "
        + ", ".join(f"{result[key]['foreign_cores']} cores during {key}" for key in SCENARIOS)
        + " (from /proc: the box's busy CPU minus this benchmark's processes); the hypervisor took "
        + ", ".join(f"{result[key]['stolen_cores']}" for key in SCENARIOS) + " cores (steal)."
        + (" **Disturbed: figures measured while other work held a good part of a core are not comparable.**"
           if any(result[key]["foreign_cores"] + result[key]["stolen_cores"] > DISTURBED_CORES for key in SCENARIOS)
           else ""),
    ])
