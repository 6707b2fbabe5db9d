"""Triton's perf_analyzer (fetched from PyPI) against the real `edgeplex serve` on the real zoo.

perf_analyzer is the stock load generator for KServe V2/Triton servers: it reads the model's
metadata and config, generates inputs, reads the server's statistics around each measurement window
and fails loudly on any protocol mismatch. So this checks wire compatibility with a client we did not
write, and that our statistics agree with what it did.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from edgeplex.bench.perf_analyzer import (
    PerfAnalyzer,
    PerfResult,
    UnsupportedPlatform,
    WireProtocol,
    ensure_perf_analyzer,
    parse_report,
)
from edgeplex.bench.process import ServerProcess, running_server

pytestmark = pytest.mark.integration

MEASUREMENT_MS = 1500
CONCURRENCY = 2


@pytest.fixture(scope="module")
def analyzer() -> PerfAnalyzer:
    try:
        return ensure_perf_analyzer()
    except UnsupportedPlatform as exc:  # only the platform may skip; any other failure fails the test
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def server(zoo_repo: Path) -> Iterator[ServerProcess]:
    with running_server(zoo_repo, "--model", "magika", "--model", "yolov8n", cores=2) as process:
        yield process


def counts(server: ServerProcess, protocol: str, model: str) -> tuple[int, int]:
    """(successful, failed) requests of `model`, all versions, from the server's statistics extension."""
    stats: dict[str, Any]
    if protocol == "grpc":
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            stats = client.get_inference_statistics(model, as_json=True)
    else:
        client = httpclient.InferenceServerClient(server.http_url)
        try:
            stats = client.get_inference_statistics(model)
        finally:
            client.close()
    entries = stats["model_stats"]
    assert entries, stats
    success = sum(int(e["inference_stats"].get("success", {}).get("count", 0)) for e in entries)
    fail = sum(int(e["inference_stats"].get("fail", {}).get("count", 0)) for e in entries)
    return success, fail


@pytest.mark.parametrize(("model", "protocol"), [("magika", "grpc"), ("magika", "http"), ("yolov8n", "grpc")])
def test_perf_analyzer_drives_edgeplex(analyzer: PerfAnalyzer, server: ServerProcess, model: str,
                                      protocol: WireProtocol) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    success_before, fail_before = counts(server, protocol, model)

    # A shared 2-core machine is noisy: a looser stability bound keeps the run to a few windows.
    result = analyzer.run(model, url, protocol, CONCURRENCY, MEASUREMENT_MS, stability_percentage=50, max_trials=8)

    success_after, fail_after = counts(server, protocol, model)
    context = f"{result.summary()}\n--- perf_analyzer ---\n{result.stdout[-3000:]}\n--- server ---\n" + "\n".join(
        server.output[-20:])
    assert result.throughput > 0, context
    assert result.p50_ms > 0 and result.p50_ms <= result.p90_ms <= result.p99_ms, context
    assert result.client_requests is not None and result.client_requests > 0, context
    # perf_analyzer read our statistics extension around its windows (its "Server:" section).
    assert result.server_requests is not None and result.server_requests > 0, context
    # Every request it counted was served, plus its warm-up and unstable windows: at least as many.
    assert success_after - success_before >= result.client_requests, context
    assert fail_before == fail_after == 0, context


def test_parse_report() -> None:
    report = (
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
        "Avg latency,request/response,response wait\n"
        "2,33.0644,220,5729,25140,0,29230,0,9,58297,72421,79138,93492,60330,229,60018\n"
    )
    stdout = ("Request concurrency: 2\n  Client: \n    Request count: 180\n"
              "  Server: \n    Successful request count: 179\n")
    result: PerfResult = parse_report(report, stdout, model="yolov8n", protocol="grpc", concurrency=2)
    assert result.throughput == pytest.approx(33.0644)
    latencies = (result.p50_ms, result.p90_ms, result.p95_ms, result.p99_ms)
    assert latencies == pytest.approx((58.297, 72.421, 79.138, 93.492))
    assert result.avg_ms == pytest.approx(60.33)
    assert (result.client_requests, result.server_requests) == (180, 179)


TURN_WINDOW_MS = 4000


def test_perf_analyzer_on_two_models_that_take_turns_in_memory(analyzer: PerfAnalyzer, zoo_repo: Path) -> None:
    """Two perf_analyzer processes at once, on two models a memory budget holds one at a time:
    both are served (metadata, config and statistics answer for the evicted one), nothing fails."""
    import json
    import threading
    import urllib.request

    models = ("magika", "yolov8n")
    selection = [arg for m in models for arg in ("--model", m)]
    with running_server(zoo_repo, *selection, "--policy", "config", cores=2) as probe:  # what a server measures
        with urllib.request.urlopen(f"http://{probe.http_url}/v2/edgeplex/placement", timeout=10) as response:
            sizes = {e["model"]: e["memory_bytes"] for e in json.load(response)["models"] if e["model"] in models}
    budget = int(1.2 * max(sizes.values()))  # either alone, never both
    assert budget < sum(sizes.values()), sizes
    results: dict[str, PerfResult | Exception] = {}
    with running_server(zoo_repo, *selection, "--policy", "config", "--memory-budget", str(budget), cores=2) as server:

        def run(model: str) -> None:
            try:
                # Turns last up to 3 s (RESIDENCY_MAX_S): a window longer than that sees every model
                # served; a shorter one may fall inside the other model's turn and record nothing.
                results[model] = analyzer.run(model, server.grpc_url, "grpc", CONCURRENCY, TURN_WINDOW_MS,
                                              stability_percentage=500, max_trials=4)  # turns: uneven windows
            except Exception as exc:  # noqa: BLE001 - reported below with the server's output
                results[model] = exc

        threads = [threading.Thread(target=run, args=(m,)) for m in models]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        context = "\n".join(f"{m}: {r}" for m, r in results.items()) + "\n--- server ---\n" + "\n".join(
            server.output[-20:])
        for model in models:
            result = results[model]
            assert isinstance(result, PerfResult) and result.throughput > 0, context
            success, fail = counts(server, "grpc", model)
            assert success >= (result.client_requests or 1) and fail == 0, context
        with urllib.request.urlopen(f"http://{server.http_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        reloads = sum(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("edgeplex_model_reload_total"))
        assert reloads >= 1, context  # they took turns
