"""Soak: the four-model mix at about 80% of what it sustains, for minutes, through the real
server. Passes when no request fails, the server's resident memory stays flat after the
warm-up (growth < 5%) and latency stays stable (no minute's p99 far above the others).

The capacity is measured first in the same run (closed loop, equal share), then every model is
sent an open-loop (paced) load at `load` x that rate, so queues stay short and a leak or a
slow drift shows instead of being hidden by saturation."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..zoo import example_inputs
from . import clients
from .loadgen import closed_loop
from .memory import rss_bytes
from .process import ServerProcess, running_server
from .report import table
from .repos import repository_with
from .scenarios import MIX

SENDERS_PER_MODEL = 3  # paced senders per model: a late answer does not hold up the schedule


@dataclass
class _Trace:
    """Every answer of one model: when it was sent (s since start), its latency, or its error."""

    sent_s: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _paced(server: ServerProcess, model: str, inputs: dict[str, np.ndarray], rate: float, duration_s: float,
           began: float, trace: _Trace, lock: threading.Lock, offset: int) -> None:
    """One sender: requests at rate/SENDERS_PER_MODEL per second on a fixed schedule."""
    send = clients.grpc(server.grpc_url)(model, inputs)
    interval = SENDERS_PER_MODEL / rate
    k = 0
    while True:
        due = began + (k + offset / SENDERS_PER_MODEL) * interval
        if due - began >= duration_s:
            return
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        t0 = time.perf_counter()
        try:
            send()
        except Exception as exc:  # counted, never dropped
            with lock:
                trace.errors.append(f"{type(exc).__name__}: {exc}"[:200])
        else:
            with lock:
                trace.sent_s.append(t0 - began)
                trace.latency_ms.append((time.perf_counter() - t0) * 1000)
        k += 1


def soak(duration_s: float = 600.0, load: float = 0.8, warmup_s: float = 60.0, capacity_s: float = 20.0,
         window_s: float = 60.0, cores: int | None = None) -> tuple[dict[str, Any], str]:
    """Run the soak; returns the result and its Markdown report."""
    inputs = {name: example_inputs(name) for name in MIX}
    repo = repository_with(MIX, {})
    with running_server(repo, "--policy", "pareto", cores=cores) as server:
        settle = closed_loop(clients.grpc(server.grpc_url), inputs, {m: 2 for m in MIX}, duration_s=8.0)
        measured = closed_loop(clients.grpc(server.grpc_url), inputs, {m: 2 for m in MIX}, duration_s=capacity_s)
        mix_rate = min(result.throughput for result in measured.values())
        rate = load * mix_rate
        traces = {m: _Trace() for m in MIX}
        lock = threading.Lock()
        began = time.perf_counter() + 0.5
        threads = [threading.Thread(target=_paced, args=(server, m, inputs[m], rate, duration_s, began, traces[m],
                                                         lock, i), daemon=True)
                   for m in MIX for i in range(SENDERS_PER_MODEL)]
        for thread in threads:
            thread.start()
        memory: list[tuple[float, int]] = []
        while any(thread.is_alive() for thread in threads):
            memory.append((time.perf_counter() - began, rss_bytes(server.process.pid)))
            time.sleep(5.0)
        for thread in threads:
            thread.join()
        memory.append((time.perf_counter() - began, rss_bytes(server.process.pid)))
        errors_before = {m: len(r.errors) for m, r in settle.items()}
    return _summarise(traces, memory, rate, mix_rate, load, duration_s, warmup_s, window_s, errors_before)


def _summarise(traces: dict[str, _Trace], memory: list[tuple[float, int]], rate: float, mix_rate: float,
               load: float, duration_s: float, warmup_s: float, window_s: float,
               errors_before: dict[str, int]) -> tuple[dict[str, Any], str]:
    after = [rss for at, rss in memory if at >= warmup_s] or [memory[-1][1]]
    growth = (after[-1] - after[0]) / after[0]
    windows: list[dict[str, Any]] = []
    for start in np.arange(0.0, duration_s, window_s):
        row: dict[str, Any] = {"from_s": int(start)}
        for model, trace in traces.items():
            sent = np.asarray(trace.sent_s)
            latency = np.asarray(trace.latency_ms)[(sent >= start) & (sent < start + window_s)]
            row[f"{model} p99 ms"] = round(float(np.percentile(latency, 99)), 1) if latency.size else None
            row[f"{model} /s"] = round(latency.size / window_s, 1)
        windows.append(row)
    models: list[dict[str, Any]] = []
    for model, trace in traces.items():
        latency = np.asarray(trace.latency_ms)
        steady = [w[f"{model} p99 ms"] for w in windows if w["from_s"] >= warmup_s and w[f"{model} p99 ms"]]
        models.append({"model": model, "answered": int(latency.size), "errors": len(trace.errors),
                       "rate_sent": round(rate, 1), "p50_ms": round(float(np.percentile(latency, 50)), 2),
                       "p99_ms": round(float(np.percentile(latency, 99)), 2),
                       "p99_spread": round(max(steady) / min(steady), 2) if steady else None})
    errors = sum(int(m["errors"]) for m in models)
    spread = max(float(m["p99_spread"] or 1.0) for m in models)
    result = {
        "duration_s": duration_s, "load": load, "mix_rate_capacity": round(mix_rate, 2), "rate_per_model": round(rate, 2),
        "errors": errors, "first_errors": [e for t in traces.values() for e in t.errors[:3]],
        "settle_errors": errors_before,
        "rss_after_warmup_bytes": after[0], "rss_end_bytes": after[-1], "rss_growth": round(growth, 4),
        "rss_samples": [(round(at, 1), rss) for at, rss in memory],
        "p99_spread_max": spread, "models": models, "windows": windows,
        "passed": errors == 0 and growth < 0.05,
    }
    text = (f"# Soak: the four-model mix at {load:.0%} of its measured capacity for {duration_s:.0f} s\n\n"
            f"Capacity (closed loop, equal share): {mix_rate:.1f} requests/s per model; sent {rate:.1f}/s per model "
            f"(paced, {SENDERS_PER_MODEL} senders each).\n\n"
            f"- errors: **{errors}**\n- server RSS after the {warmup_s:.0f} s warm-up {after[0] / 1e6:.1f} MB -> "
            f"{after[-1] / 1e6:.1f} MB at the end: growth **{growth:+.2%}** (target < 5%)\n"
            f"- latency stability: the worst model's highest minute p99 / its lowest, after warm-up: {spread:.2f}\n\n"
            + table(models, ["model", "answered", "errors", "rate_sent", "p50_ms", "p99_ms", "p99_spread"])
            + "\n\nPer window:\n\n" + table(windows, list(windows[0])) + "\n")
    return result, text
