"""Admission control through a real server process: under many times the load it can serve, it
refuses fast (429 / RESOURCE_EXHAUSTED), answers every request it admitted, and its memory
stays bounded."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from models import slow_model, write_config
from tritonclient.utils import InferenceServerException

from edgeplex.bench.process import running_server

pytestmark = pytest.mark.integration


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def test_overload_is_refused_fast_with_bounded_memory_and_nothing_lost(tmp_path: Path) -> None:
    slow_model(tmp_path / "slow" / "1" / "model.onnx", size=256, layers=24)
    write_config(tmp_path / "slow", max_batch_size=64, max_queue_size=16, dynamic_batching=None)
    x = np.ones((32, 256), np.float32)  # a few ms per request on one core
    with running_server(tmp_path, "--policy", "config", cores=1) as server:
        outcomes: Counter[str] = Counter()
        refusal_s: list[float] = []
        served_s: list[float] = []
        lock = threading.Lock()
        stop = time.monotonic() + 4.0

        def client(index: int) -> None:
            grpc_side = index % 2 == 0
            module = grpcclient if grpc_side else httpclient
            triton = module.InferenceServerClient(server.grpc_url if grpc_side else server.http_url)
            item = module.InferInput("x", list(x.shape), "FP32")
            item.set_data_from_numpy(x)
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    result = triton.infer("slow", [item])
                    outcome = "ok" if result.as_numpy("y").shape == x.shape else "wrong shape"
                    with lock:
                        served_s.append(time.monotonic() - started)
                except InferenceServerException as exc:
                    refused = exc.status() in ("StatusCode.RESOURCE_EXHAUSTED", "429")
                    outcome = "refused" if refused and "max_queue_size 16" in (exc.message() or "") else str(exc)
                    if refused:
                        with lock:
                            refusal_s.append(time.monotonic() - started)
                with lock:
                    outcomes[outcome] += 1
            triton.close()

        warm = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        stop = time.monotonic() + 1.0
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()
        rss_before = _rss_bytes(server.process.pid)
        outcomes.clear()
        refusal_s.clear()
        served_s.clear()
        stop = time.monotonic() + 4.0
        threads = [threading.Thread(target=client, args=(i,)) for i in range(48)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rss_after = _rss_bytes(server.process.pid)
        assert set(outcomes) <= {"ok", "refused"}, outcomes
        assert outcomes["refused"] > outcomes["ok"] > 0, outcomes  # far beyond what it can serve
        # Refusals are fast: the median refusal takes less than half the median answered request
        # (measured in the same run: no absolute speed, which differs between machines).
        assert sorted(refusal_s)[len(refusal_s) // 2] < 0.5 * sorted(served_s)[len(served_s) // 2], (
            sorted(refusal_s)[len(refusal_s) // 2], sorted(served_s)[len(served_s) // 2])
        assert server.successes("slow") >= outcomes["ok"]  # every admitted request was answered
        assert rss_after - rss_before < 64 * 2**20, (rss_before, rss_after)
