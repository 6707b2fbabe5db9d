"""A model evicted for memory answers readiness, metadata and config identically over HTTP and
gRPC (stock tritonclient on real sockets), without being loaded back; its next request loads it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import uvicorn
from models import slow_model, write_config

from edgeplex.backends import ExecutionConfig
from edgeplex.engine import EVICTED_REASON, Engine, InstanceGroup, ModelPlacement
from edgeplex.server.grpc import start_grpc_server
from edgeplex.server.http import build_app

X = np.ones((1, 64), np.float32)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """Models a and b accounted at 10 MB each under a 15 MB budget, a evicted; c unloaded for good."""
    for name in ("a", "b", "c"):
        slow_model(tmp_path / name / "1" / "model.onnx", size=64, layers=2)
        write_config(tmp_path / name, max_batch_size=4)
    engine = Engine(tmp_path, cores=2)
    assert engine.load_all() == {}
    for name in ("a", "b"):
        engine.apply(ModelPlacement(name, [InstanceGroup(ExecutionConfig("onnxruntime", "cpu", "fp32", 1, 4), 1,
                                                         10_000_000)]))
    engine.unload("c")
    engine.manager.memory_budget = 15_000_000
    engine.manager.unload("a", EVICTED_REASON, evicted=True)
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def urls(engine: Engine) -> Iterator[tuple[str, str]]:
    """The engine's HTTP (uvicorn) and gRPC servers on free ports, on one event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="wire-test-loop", daemon=True)
    thread.start()
    http = uvicorn.Server(uvicorn.Config(build_app(engine), host="127.0.0.1", port=0, log_level="warning",
                                         access_log=False, lifespan="off"))
    serving = asyncio.run_coroutine_threadsafe(http.serve(), loop)
    grpc_server, grpc_port = asyncio.run_coroutine_threadsafe(start_grpc_server(engine, "127.0.0.1", 0), loop).result(30)
    deadline = time.monotonic() + 10
    while not http.started:
        assert not serving.done() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    http_port = http.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        http.should_exit = True
        serving.result(10)
        asyncio.run_coroutine_threadsafe(grpc_server.stop(1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _config(client: object, name: str) -> dict[str, object]:
    if isinstance(client, grpcclient.InferenceServerClient):
        document = dict(client.get_model_config(name, as_json=True)["config"])
        for tensors in ("input", "output"):  # the gRPC JSON form writes int64 dims as strings
            document[tensors] = [{**t, "dims": [int(d) for d in t["dims"]]} for t in document[tensors]]
        return document
    return dict(client.get_model_config(name))  # type: ignore[attr-defined]


def _metadata(client: object, name: str) -> dict[str, object]:
    if isinstance(client, grpcclient.InferenceServerClient):
        document = dict(client.get_model_metadata(name, as_json=True))
        for tensors in ("inputs", "outputs"):  # the gRPC JSON form writes int64 shapes as strings
            document[tensors] = [{**t, "shape": [int(d) for d in t["shape"]]} for t in document[tensors]]
        return document
    document = dict(client.get_model_metadata(name))  # type: ignore[attr-defined]
    document.pop("parameters", None)  # JSON only: the version's variants (the gRPC message has no room)
    return document


def test_an_evicted_model_answers_the_same_over_http_and_grpc(engine: Engine, urls: tuple[str, str]) -> None:
    http_url, grpc_url = urls
    clients = {"http": httpclient.InferenceServerClient(http_url), "grpc": grpcclient.InferenceServerClient(grpc_url)}
    try:
        assert engine.model("a").evicted and not engine.model("a").ready
        for protocol, client in clients.items():
            assert client.is_model_ready("a"), protocol
            assert client.is_model_ready("b"), protocol
            assert not client.is_model_ready("c"), protocol  # unloaded for good: not servable
        assert _metadata(clients["http"], "a") == _metadata(clients["grpc"], "a")
        assert _metadata(clients["http"], "a")["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
        http_config, grpc_config = _config(clients["http"], "a"), _config(clients["grpc"], "a")
        for key in ("name", "max_batch_size", "input", "output", "platform"):
            assert http_config[key] == grpc_config[key], key
        assert engine.model("a").evicted  # none of that loaded it back

        tensor = httpclient.InferInput("x", [1, 64], "FP32")
        tensor.set_data_from_numpy(X)
        assert clients["http"].infer("a", [tensor]).as_numpy("y").shape == (1, 64)  # its request does
        assert engine.model("a").ready and engine.model("b").evicted
        assert clients["http"].is_model_ready("b") and clients["grpc"].is_model_ready("b")
    finally:
        for client in clients.values():
            client.close()
