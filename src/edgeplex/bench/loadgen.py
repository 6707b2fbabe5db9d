"""A closed-loop load generator: N clients per model, each sending its next request as soon as
the previous one is answered, for a duration or a fixed number of requests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .clients import SenderFactory
from .progress import Progress
from .stats import percentile


@dataclass
class ModelLoad:
    """What one model's clients did."""

    model: str
    clients: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def completed(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict[str, float | int | str]:
        return {
            "model": self.model,
            "clients": self.clients,
            "completed": self.completed,
            "errors": len(self.errors),
            "seconds": round(self.seconds, 3),
            "throughput": round(self.throughput, 2),
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
        }


def closed_loop(
    factory: SenderFactory,
    inputs: dict[str, dict[str, np.ndarray]],
    clients: dict[str, int],
    duration_s: float | None = None,
    requests_per_client: int | None = None,
    warmup: int = 2,
) -> dict[str, ModelLoad]:
    """Run every model's clients at once; stop after `duration_s` or `requests_per_client`.

    With a fixed count, each model's `seconds` is the time until its last client finished, and
    the caller takes the makespan over models for "the same requests in total" comparisons.
    """
    if (duration_s is None) == (requests_per_client is None):
        raise ValueError("give exactly one of duration_s and requests_per_client")
    loads = {model: ModelLoad(model, count) for model, count in clients.items()}
    lock = threading.Lock()
    start_gate = threading.Barrier(sum(clients.values()) + 1)
    finished: dict[str, list[float]] = {model: [] for model in clients}

    def client(model: str) -> None:
        load = loads[model]
        try:
            # Made in the thread that uses it: gevent-based clients (tritonclient.http) must be.
            send = factory(model, inputs[model])
            for _ in range(warmup):
                send()
        except Exception as exc:  # a client that cannot start is an error, not a hang
            with lock:
                load.errors.append(f"setup: {type(exc).__name__}: {exc}"[:200])
                finished[model].append(time.perf_counter())
            start_gate.wait()
            return
        start_gate.wait()
        began = time.perf_counter()
        deadline = began + duration_s if duration_s is not None else float("inf")
        sent = 0
        while time.perf_counter() < deadline and (requests_per_client is None or sent < requests_per_client):
            t0 = time.perf_counter()
            try:
                send()
            except Exception as exc:  # counted, never silently dropped
                with lock:
                    load.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            else:
                with lock:
                    load.latencies_ms.append((time.perf_counter() - t0) * 1000)
            sent += 1
        with lock:
            finished[model].append(time.perf_counter())

    threads = [
        threading.Thread(target=client, args=(model,), daemon=True)
        for model, count in clients.items()
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    start_gate.wait()
    began = time.perf_counter()
    with Progress(", ".join(clients), duration_s) as progress:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
                progress.at(time.perf_counter() - began, sum(load.completed for load in loads.values()))
    for model, load in loads.items():
        load.seconds = max(finished[model]) - began
    return loads
