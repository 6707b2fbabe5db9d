"""The fixed job of issue 14, the same for any KServe V2 gRPC server (edgeplex or Triton):
every model gets exactly `warmup` then `requests` requests from `clients_per_model` closed-loop
tritonclient.grpc clients, all models at once; the figure is how long the whole job takes.

A fixed job, not a fixed duration, because it is what a user of the box sees: the mix is done
when its slowest model is done. Equal-share rate = requests per model / makespan, the makespan
running from the start of the measured phase until the last model has its last answer.
A model's requests are shared among its clients through one counter, so each model sends
exactly `requests` however its clients' latencies differ.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import clients
from .cpu import tree_cpu_seconds
from .progress import Progress
from .stats import percentile


@dataclass
class _Model:
    """One model's share of the job: tickets its clients draw from, and what came back."""

    warmup_left: int
    measured_left: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warmup_errors: int = 0
    warmup_sent: int = 0  # warm-up and settle
    sent: int = 0
    finished: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, measured: bool) -> bool:
        """One ticket of the phase, if any is left."""
        with self.lock:
            if measured:
                if self.measured_left <= 0:
                    return False
                self.measured_left -= 1
                self.sent += 1
            else:
                if self.warmup_left <= 0:
                    return False
                self.warmup_left -= 1
            return True


def fixed_job(url: str, inputs: dict[str, dict[str, np.ndarray]], clients_per_model: int = 2, warmup: int = 60,
              requests: int = 200, server_pid: int | None = None, settle_s: float = 0.0) -> dict[str, Any]:
    """Run the job against the gRPC server at `url` ("127.0.0.1:8001") for every model of `inputs`.

    Warm-up: `warmup` requests per model under the same load. With `settle_s`, every model's
    clients go on sending until `settle_s` seconds after the last model's warm-up was sent: the
    settle period of a server that re-plans from the load it sees. Then every client waits at one
    barrier and the measured phase starts for all models at once.
    With `server_pid`, the server's CPU seconds (its process tree) over the measured phase."""
    factory = clients.grpc(url)
    models = {name: _Model(warmup, requests) for name in inputs}
    measured_start: list[float] = []
    cpu_start: list[float] = []

    def start_measuring() -> None:  # run by one thread when every client has warmed up
        if server_pid is not None:
            cpu_start.append(tree_cpu_seconds(server_pid))
        measured_start.append(time.perf_counter())

    gate = threading.Barrier(len(models) * clients_per_model, action=start_measuring)
    warm_started = time.perf_counter()
    warmed_at: list[float] = []  # when the last model's warm-up was sent
    warmed_lock = threading.Lock()

    def warming(model: _Model) -> bool:
        """Whether this model's client sends another warm-up (or settle) request."""
        if model.take(measured=False):
            return True
        if settle_s <= 0:
            return False
        with warmed_lock:
            if not warmed_at and all(m.warmup_left <= 0 for m in models.values()):
                warmed_at.append(time.perf_counter())
            return not warmed_at or time.perf_counter() - warmed_at[0] < settle_s

    def client(name: str) -> None:
        model = models[name]
        send = None
        try:
            send = factory(name, inputs[name])
            while warming(model):
                try:
                    send()
                except Exception:  # the measured phase counts errors; here they only warm
                    with model.lock:
                        model.warmup_errors += 1
                with model.lock:
                    model.warmup_sent += 1
        except Exception as exc:  # a client that cannot start: its siblings take its share
            with model.lock:
                model.errors.append(f"setup: {type(exc).__name__}: {exc}"[:200])
        finally:
            gate.wait()
        last = measured_start[0]
        while send is not None and model.take(measured=True):
            t0 = time.perf_counter()
            try:
                send()
            except Exception as exc:  # counted, never silently dropped
                error: str | None = f"{type(exc).__name__}: {exc}"[:200]
            else:
                error = None
            last = time.perf_counter()
            with model.lock:
                if error is None:
                    model.latencies_ms.append((last - t0) * 1000)
                else:
                    model.errors.append(error)
        with model.lock:
            model.finished = max(model.finished, last - measured_start[0])

    threads = [threading.Thread(target=client, args=(name,), daemon=True, name=f"job-{name}-{i}")
               for name in models for i in range(clients_per_model)]
    for thread in threads:
        thread.start()
    with Progress(f"fixed job, {len(models)} models x {requests}", None) as progress:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
                progress.at(time.perf_counter() - warm_started, sum(len(m.latencies_ms) for m in models.values()))
    cpu_end = tree_cpu_seconds(server_pid) if server_pid is not None else None
    return _summary(models, requests, warmup, clients_per_model, settle_s, cpu_start, cpu_end)


def _summary(models: dict[str, _Model], requests: int, warmup: int, clients_per_model: int, settle_s: float,
             cpu_start: list[float], cpu_end: float | None) -> dict[str, Any]:
    makespan = max((m.finished for m in models.values()), default=0.0)
    per_model = {
        name: {"sent": m.sent, "completed": len(m.latencies_ms), "errors": len(m.errors),
               "warmup_sent": m.warmup_sent, "warmup_errors": m.warmup_errors, "finish_s": round(m.finished, 3),
               "rate": round(requests / m.finished, 2) if m.finished > 0 else 0.0,
               "p50_ms": round(percentile(m.latencies_ms, 50), 2), "p99_ms": round(percentile(m.latencies_ms, 99), 2)}
        for name, m in models.items()
    }
    result: dict[str, Any] = {
        "clients_per_model": clients_per_model, "warmup": warmup, "requests": requests, "settle_s": settle_s,
        "makespan_s": round(makespan, 3),
        "equal_share_rate": round(requests / makespan, 2) if makespan > 0 else 0.0,
        "per_model": per_model,
        "errors": sum(len(m.errors) for m in models.values()),
        "error_samples": [e for m in models.values() for e in m.errors][:3],
    }
    if cpu_start and cpu_end is not None:
        cpu = cpu_end - cpu_start[0]
        answered = sum(len(m.latencies_ms) for m in models.values())
        result["server_cpu_s"] = round(cpu, 2)
        result["cpu_ms_per_request"] = round(cpu * 1000 / answered, 2) if answered else None
        result["busy_cores"] = round(cpu / makespan, 2) if makespan > 0 else None
    return result
