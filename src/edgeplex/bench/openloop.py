"""An open-loop load generator: requests sent at fixed intervals whatever the answers do, so a
slow server shows as latency and as requests late or refused, never as a slower client (the
closed loop in loadgen.py adapts to the server instead). The scheduling benchmark uses it for
deadlines and priorities, where the offered load must not depend on what is measured."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import clients
from .loadgen import ModelLoad


@dataclass
class Stream:
    """An open-loop request stream: `rate` requests per second at fixed intervals."""

    model: str
    rate: float
    timeout_us: int | None = None  # None = the model's slo_ms, if any
    deadline_ms: float = float("inf")  # what counts as answered in time
    label: str = ""
    load: ModelLoad = field(init=False)
    sent: int = 0
    send_lag_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.load = ModelLoad(self.model, 1)


def open_loop(url: str, streams: list[Stream], inputs: dict[str, dict[str, np.ndarray]], duration_s: float,
              drain_s: float = 30.0) -> None:
    """Send every stream at its rate for `duration_s` (asynchronous tritonclient.grpc calls, so a
    slow answer never delays the next send); latency is from send to answer."""
    import tritonclient.grpc as grpcclient

    gate = threading.Barrier(len(streams))

    def run(stream: Stream) -> None:
        try:
            client = grpcclient.InferenceServerClient(url)
            prepared = clients.prepared_inputs(grpcclient, inputs[stream.model])
        except Exception as exc:  # a stream that cannot start is an error, not a hang
            stream.load.errors.append(f"setup: {type(exc).__name__}: {exc}"[:200])
            gate.wait()
            return
        lock, idle = threading.Lock(), threading.Condition()
        outstanding = 0

        def answered(sent_at: float, result: Any, error: Any) -> None:
            nonlocal outstanding
            elapsed = (time.perf_counter() - sent_at) * 1000
            with lock:
                if error is not None:
                    stream.load.errors.append(str(error)[:200])
                else:
                    stream.load.latencies_ms.append(elapsed)
            with idle:
                outstanding -= 1
                idle.notify_all()

        for _ in range(2):  # warm the channel, outside the measured window
            try:
                client.infer(stream.model, prepared)
            except Exception:  # a refused warm-up (deadline, overload) still warms the channel
                pass
        gate.wait()
        began = time.perf_counter()
        for k in range(int(duration_s * stream.rate)):
            due = began + k / stream.rate
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            now = time.perf_counter()
            stream.send_lag_ms.append((now - due) * 1000)
            with idle:
                outstanding += 1
            try:
                client.async_infer(stream.model, prepared, lambda result, error, t=now: answered(t, result, error),
                                   timeout=stream.timeout_us)
            except Exception as exc:  # not sent: counted, and not waited for
                answered(now, None, exc)
            stream.sent += 1
        stream.load.seconds = time.perf_counter() - began
        with idle:
            idle.wait_for(lambda: outstanding == 0, timeout=drain_s)
        client.close()

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in streams]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
