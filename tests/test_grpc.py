"""The gRPC transport, driven by the stock tritonclient.grpc client (and the raw stub where a
client would refuse to send a malformed request) against a real grpc.aio server on a socket."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from helpers import wait_for
from onnx import numpy_helper
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from edgeplex.engine import Engine
from edgeplex.engine.request import InferRequest
from edgeplex.server.grpc import decode_request, start_grpc_server

# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def grpc_port(engine: Engine) -> Iterator[int]:
    """A grpc.aio server on a free port, on its own event loop in a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-test-loop", daemon=True)
    thread.start()
    starting = start_grpc_server(engine, "127.0.0.1", 0, repository_api=True)
    server, port = asyncio.run_coroutine_threadsafe(starting, loop).result(30)

    async def stop() -> None:
        await server.stop(1.0)
        await loop.shutdown_default_executor()  # the threads of asyncio.to_thread (load/unload)

    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@pytest.fixture
def client(grpc_port: int) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    yield triton
    triton.close()


@pytest.fixture
def stub(grpc_port: int) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """The raw service stub: sends requests tritonclient would never build."""
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


# -- helpers -------------------------------------------------------------------------------------


def tensor(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def infer_add(client: grpcclient.InferenceServerClient, x: np.ndarray, **kwargs: Any) -> grpcclient.InferResult:
    return client.infer("add", [tensor("x", x, "FP32")], **kwargs)


def assert_add_works(client: grpcclient.InferenceServerClient) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(infer_add(client, x).as_numpy("y"), x + x)


@contextmanager
def raises_status(code: grpc.StatusCode, *fragments: str) -> Iterator[None]:
    """The call fails with `code` and a message holding every fragment."""
    with pytest.raises(InferenceServerException) as info:
        yield
    assert info.value.status() == str(code), info.value
    for fragment in fragments:
        assert fragment in info.value.message(), info.value.message()


def raw_request(model: str, inputs: list[tuple[str, str, list[int]]], raw: list[bytes]) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model, raw_input_contents=raw)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request


def add_request_ok() -> Any:
    return raw_request("add", [("x", "FP32", [1, 4])], [np.ones((1, 4), np.float32).tobytes()])


def slow_weights(repo: Path) -> list[np.ndarray]:
    """The `slow` model's MatMul weights, in order: numpy computes an independent answer."""
    model = onnx.load(str(repo / "slow" / "1" / "model.onnx"))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return [weights[node.input[1]] for node in model.graph.node]


# -- health, metadata, configuration -------------------------------------------------------------


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "edgeplex"
    assert {"model_repository", "statistics", "model_configuration"} <= set(meta["extensions"])
    assert client.is_model_ready("add")
    assert client.is_model_ready("add", "1")
    assert not client.is_model_ready("add", "7")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("nope")

    add = client.get_model_metadata("add", as_json=True)
    assert add["name"] == "add" and add["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in add["inputs"]] == [("x", "FP32", ["-1", "4"])]
    assert [t["name"] for t in add["outputs"]] == ["y", "z"]
    fixed = client.get_model_metadata("fixed")
    assert {t.name: list(t.shape) for t in fixed.inputs} == {"x": [2, 2], "k": []}
    with raises_status(grpc.StatusCode.NOT_FOUND, "nope"):
        client.get_model_metadata("nope")
    with raises_status(grpc.StatusCode.UNAVAILABLE, "broken", "not a readable ONNX model"):
        client.get_model_metadata("broken")


def test_model_config(client: grpcclient.InferenceServerClient) -> None:
    add = client.get_model_config("add").config
    assert add.name == "add" and add.max_batch_size == 8
    assert [(t.name, list(t.dims), t.data_type) for t in add.input] == [("x", [4], model_config_pb2.TYPE_FP32)]
    assert [t.name for t in add.output] == ["y", "z"]

    sub = client.get_model_config("sub", as_json=True)["config"]  # auto-completed from the ONNX file
    assert sub["max_batch_size"] == 4
    assert [(t["name"], t["dims"], t["data_type"]) for t in sub["input"]] == [
        ("a", ["3"], "TYPE_INT32"),
        ("b", ["3"], "TYPE_INT32"),
    ]
    fixed = client.get_model_config("fixed").config
    assert fixed.max_batch_size == 0
    assert {t.name: (list(t.dims), model_config_pb2.DataType.Name(t.data_type)) for t in fixed.input} == {
        "x": ([2, 2], "TYPE_FP32"),
        "k": ([], "TYPE_INT64"),
    }
    with raises_status(grpc.StatusCode.NOT_FOUND, "nope"):
        client.get_model_config("nope")


# -- inference -----------------------------------------------------------------------------------


def test_infer_add_sub_fixed(client: grpcclient.InferenceServerClient) -> None:
    x = np.array([[1.5, -2.0, 0.0, 4.25], [8.0, 9.0, -1.0, 0.5]], dtype=np.float32)
    result = infer_add(client, x, request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("y"), x + x)
    np.testing.assert_array_equal(result.as_numpy("z"), x * 3)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("add", "1", "r-1")
    assert [o.name for o in response.outputs] == ["y", "z"]

    a = np.array([[10, 20, 30]], dtype=np.int32)
    b = np.array([[1, 2, -3]], dtype=np.int32)
    out = client.infer("sub", [tensor("a", a, "INT32"), tensor("b", b, "INT32")]).as_numpy("out")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, a - b)

    m = np.array([[1, 2], [3, 4]], dtype=np.float32)
    result = client.infer("fixed", [tensor("x", m, "FP32"), tensor("k", np.array(7, dtype=np.int64), "INT64")])
    np.testing.assert_array_equal(result.as_numpy("y"), m)
    k = result.as_numpy("y2")
    assert k.shape == () and k.dtype == np.int64 and int(k) == 7


def test_infer_requested_outputs_in_requested_order(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    only_z = infer_add(client, x, outputs=[grpcclient.InferRequestedOutput("z")])
    assert [o.name for o in only_z.get_response().outputs] == ["z"]
    assert only_z.as_numpy("y") is None
    np.testing.assert_array_equal(only_z.as_numpy("z"), x * 3)
    both = infer_add(client, x, outputs=[grpcclient.InferRequestedOutput(n) for n in ("z", "y")])
    assert [o.name for o in both.get_response().outputs] == ["z", "y"]


def test_priority_and_timeout_pass_through(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_array_equal(infer_add(client, x, priority=2, timeout=5_000_000).as_numpy("y"), x + x)
    np.testing.assert_array_equal(infer_add(client, x, priority=0, timeout=0).as_numpy("y"), x + x)

    request = add_request_ok()
    request.parameters["priority"].uint64_param = 3
    request.parameters["timeout"].int64_param = 2500
    request.parameters["tag"].string_param = "hello"
    decoded = decode_request(request)
    assert (decoded.priority, decoded.timeout_us, decoded.parameters) == (3, 2500, {"tag": "hello"})
    request.parameters["priority"].int64_param = 0
    request.parameters["timeout"].uint64_param = 0
    decoded = decode_request(request)
    assert (decoded.priority, decoded.timeout_us) == (None, None)
    request.parameters["priority"].string_param = "high"
    with pytest.raises(Exception, match="parameter 'priority' must be a non-negative integer"):
        decode_request(request)


def test_large_typed_contents_are_decoded_off_the_event_loop(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Typed contents past OFFLOAD_JSON_BYTES are decoded on the codec thread; raw tensors of any
    size, and small typed ones, on the loop. The answers are the same either way."""
    import edgeplex.server.grpc as grpc_module

    decoded_on: list[str] = []
    original = grpc_module.decode_request

    def recording(*args: Any) -> Any:
        decoded_on.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(grpc_module, "decode_request", recording)
    monkeypatch.setattr(grpc_module, "OFFLOAD_JSON_BYTES", 32)
    typed = service_pb2.ModelInferRequest(model_name="add", id="x" * 40)
    typed.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    raw = raw_request("add", [("x", "FP32", [1, 4])], [np.array([1, 2, 3, 4], np.float32).tobytes()])
    raw.id = "x" * 40
    for request in (typed, raw):
        response = stub.ModelInfer(request)
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], dtype=np.float32), [2, 4, 6, 8])
    assert decoded_on[0].startswith("edgeplex-codec") and decoded_on[1] == "grpc-test-loop"


def test_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="add", id="typed")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    response = stub.ModelInfer(request)
    assert response.id == "typed"
    y = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(y, [2, 4, 6, 8])

    request = service_pb2.ModelInferRequest(model_name="sub")
    request.inputs.add(name="a", datatype="INT32", shape=[1, 3]).contents.int_contents.extend([5, 5, 5])
    request.inputs.add(name="b", datatype="INT32", shape=[1, 3]).contents.int_contents.extend([1, 2, 9])
    response = stub.ModelInfer(request)
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], dtype=np.int32), [4, 3, -4])

    request = service_pb2.ModelInferRequest(model_name="fixed")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend([0, 1, 2, 3])
    request.inputs.add(name="k", datatype="INT64", shape=[]).contents.int64_contents.append(-9)
    response = stub.ModelInfer(request)
    assert [(o.name, list(o.shape), o.datatype) for o in response.outputs] == [
        ("y", [2, 2], "FP32"),
        ("y2", [], "INT64"),
    ]
    assert np.frombuffer(response.raw_output_contents[1], dtype=np.int64).tolist() == [-9]


# -- errors --------------------------------------------------------------------------------------


def _both_raw_and_contents() -> Any:
    request = add_request_ok()
    request.inputs[0].contents.fp32_contents.extend([1, 2, 3, 4])
    return request


def _typed(datatype: str, shape: list[int], field: str, values: list[Any]) -> Any:
    request = service_pb2.ModelInferRequest(model_name="add")
    getattr(request.inputs.add(name="x", datatype=datatype, shape=shape).contents, field).extend(values)
    return request


MALFORMED = {
    "raw size mismatch": (
        raw_request("add", [("x", "FP32", [1, 4])], [b"\0" * 12]),
        ["input 'x'", "got 12 bytes", "expected 16"],
    ),
    "raw count mismatch": (
        raw_request("sub", [("a", "INT32", [1, 3]), ("b", "INT32", [1, 3])], [b"\0" * 12]),
        ["raw_input_contents holds 1 tensors", "2 inputs"],
    ),
    "raw and contents": (_both_raw_and_contents(), ["input 'x'", "both in contents and in raw_input_contents"]),
    "duplicate input": (
        raw_request("add", [("x", "FP32", [1, 4]), ("x", "FP32", [1, 4])], [b"\0" * 16] * 2),
        ["input 'x' is given more than once"],
    ),
    "negative dim": (raw_request("add", [("x", "FP32", [-1, 4])], [b"\0" * 16]), ["input 'x'", "non-negative"]),
    "unknown datatype": (raw_request("add", [("x", "FP31", [1, 4])], [b"\0" * 16]), ["input 'x'", "FP31"]),
    "contents count": (_typed("FP32", [1, 4], "fp32_contents", [1.0, 2.0]), ["input 'x'", "got 2 elements"]),
    "wrong contents field": (_typed("FP32", [1, 4], "int_contents", [1, 2, 3, 4]), ["input 'x'", "fp32_contents"]),
    "value out of range": (_typed("INT8", [1, 4], "int_contents", [1, 2, 3, 300]), ["input 'x'", "INT8"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests(stub: service_pb2_grpc.GRPCInferenceServiceStub, case: str) -> None:
    request, fragments = MALFORMED[case]
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for fragment in fragments:
        assert fragment in info.value.details(), info.value.details()
    ok = stub.ModelInfer(add_request_ok())
    assert np.frombuffer(ok.raw_output_contents[0], dtype=np.float32).tolist() == [2.0] * 4


X = np.ones((1, 4), dtype=np.float32)
CLIENT_ERRORS: dict[str, tuple[Callable[[grpcclient.InferenceServerClient], Any], grpc.StatusCode, list[str]]] = {
    "unknown model": (
        lambda c: c.infer("nope", [tensor("x", X, "FP32")]),
        grpc.StatusCode.NOT_FOUND,
        ["'nope'", "not in the repository"],
    ),
    "unknown version": (
        lambda c: c.infer("add", [tensor("x", X, "FP32")], model_version="7"),
        grpc.StatusCode.NOT_FOUND,
        ["no version '7'"],
    ),
    "wrong input name": (
        lambda c: c.infer("add", [tensor("w", X, "FP32")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["no input 'w'"],
    ),
    "wrong datatype": (
        lambda c: c.infer("add", [tensor("x", X.astype(np.float64), "FP64")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'x' must be FP32, got FP64"],
    ),
    "wrong shape": (
        lambda c: c.infer("add", [tensor("x", np.ones((1, 5), np.float32), "FP32")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["'x' has shape [1, 5]", "[-1, 4]"],
    ),
    "batch over max": (
        lambda c: c.infer("add", [tensor("x", np.ones((9, 4), np.float32), "FP32")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["batch size must be 1..8"],
    ),
    "unknown output": (
        lambda c: infer_add(c, X, outputs=[grpcclient.InferRequestedOutput("q")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        ["no output 'q'"],
    ),
    "broken model": (
        lambda c: c.infer("broken", [tensor("x", X, "FP32")]),
        grpc.StatusCode.UNAVAILABLE,
        ["'broken' is not ready", "not a readable ONNX model"],
    ),
}


@pytest.mark.parametrize("case", list(CLIENT_ERRORS))
def test_infer_errors(client: grpcclient.InferenceServerClient, case: str) -> None:
    call, code, fragments = CLIENT_ERRORS[case]
    with raises_status(code, *fragments):
        call(client)
    assert_add_works(client)


def test_unimplemented_rpc_stays_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    with raises_status(grpc.StatusCode.UNIMPLEMENTED):
        client.get_system_shared_memory_status()


# -- statistics and the repository ----------------------------------------------------------------


def test_statistics_count_exactly(client: grpcclient.InferenceServerClient) -> None:
    for batch in (1, 1, 3):
        infer_add(client, np.zeros((batch, 4), dtype=np.float32))
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT):
        infer_add(client, np.zeros((9, 4), dtype=np.float32))  # refused before it is queued

    (add,) = client.get_inference_statistics("add").model_stats
    assert (add.name, add.version) == ("add", "1")
    assert add.inference_stats.success.count == 3
    assert add.inference_stats.fail.count == 0
    assert add.inference_count == 5 and add.execution_count == 3
    assert {b.batch_size: b.compute_infer.count for b in add.batch_stats} == {1: 2, 3: 1}
    assert add.inference_stats.compute_infer.ns > 0 and add.last_inference > 0

    (sub,) = client.get_inference_statistics("sub", "1", as_json=True)["model_stats"]
    assert sub["name"] == "sub" and "inference_count" not in sub  # proto3 JSON omits zeros
    everything = client.get_inference_statistics().model_stats
    assert {s.name for s in everything} == {"add", "sub", "fixed", "slow"}
    with raises_status(grpc.StatusCode.NOT_FOUND, "'nope'"):
        client.get_inference_statistics("nope")


def test_repository_index(
    client: grpcclient.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert set(index) == {"add", "sub", "fixed", "slow", "broken"}
    assert (index["add"].version, index["add"].state, index["add"].reason) == ("1", "READY", "")
    assert index["broken"].state == "UNAVAILABLE"
    assert "not a readable ONNX model" in index["broken"].reason
    ready = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True))
    assert {m.name for m in ready.models} == {"add", "sub", "fixed", "slow"}


def test_unload_then_load(client: grpcclient.InferenceServerClient) -> None:
    client.unload_model("add")
    assert not client.is_model_ready("add")
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert (index["add"].state, index["add"].reason) == ("UNAVAILABLE", "unloaded")
    with raises_status(grpc.StatusCode.UNAVAILABLE, "'add'"):
        assert_add_works(client)
    client.load_model("add")
    assert client.is_model_ready("add")
    assert_add_works(client)

    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "not a readable ONNX model"):
        client.load_model("broken")
    with raises_status(grpc.StatusCode.NOT_FOUND, "'nope'"):
        client.load_model("nope")
    with raises_status(grpc.StatusCode.INVALID_ARGUMENT, "'config' is not supported"):
        client.load_model("add", config='{"max_batch_size": 2}')
    assert client.is_server_ready()


# -- streaming and concurrency -------------------------------------------------------------------


def test_stream_answers_every_request(client: grpcclient.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(6):
            x = np.full((1, 4), i, dtype=np.float32)
            model = "nope" if i == 2 else "add"
            client.async_stream_infer(model, [tensor("x", x, "FP32")], request_id=str(i))
        client.async_stream_infer(
            "sub",
            [tensor("a", np.ones((1, 3), np.int32), "INT32"), tensor("b", np.ones((1, 3), np.int32), "INT32")],
            request_id="sub",
        )
        got = [answers.get(timeout=10) for _ in range(7)]
    finally:
        client.stop_stream()

    errors = [error for _, error in got if error is not None]
    assert len(errors) == 1 and "'nope'" in errors[0].message()
    results = {result.get_response().id: result for result, error in got if error is None}
    assert set(results) == {"0", "1", "3", "4", "5", "sub"}
    for i in (0, 1, 3, 4, 5):
        np.testing.assert_array_equal(results[str(i)].as_numpy("y"), np.full((1, 4), 2 * i, np.float32))
    np.testing.assert_array_equal(results["sub"].as_numpy("out"), np.zeros((1, 3), np.int32))
    assert answers.empty()


def test_concurrent_clients(grpc_port: int, tiny_repo: Path) -> None:
    models = ("add", "sub", "slow")
    weights = slow_weights(tiny_repo)
    failures: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        triton = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            for i in range(50):
                model = models[(seed + i) % 3]
                batch = int(rng.integers(1, 5))
                if model == "add":
                    x = rng.standard_normal((batch, 4)).astype(np.float32)
                    result = triton.infer("add", [tensor("x", x, "FP32")], request_id=f"{seed}-{i}")
                    ok = np.array_equal(result.as_numpy("y"), x + x) and np.array_equal(result.as_numpy("z"), x * 3)
                elif model == "sub":
                    a, b = (rng.integers(-1000, 1000, (batch, 3)).astype(np.int32) for _ in range(2))
                    result = triton.infer("sub", [tensor("a", a, "INT32"), tensor("b", b, "INT32")])
                    ok = np.array_equal(result.as_numpy("out"), a - b)
                else:
                    x = rng.standard_normal((batch, 256)).astype(np.float32)
                    result = triton.infer("slow", [tensor("x", x, "FP32")])
                    expected = x
                    for weight in weights:
                        expected = expected @ weight
                    ok = np.allclose(result.as_numpy("y"), expected, rtol=1e-3, atol=1e-4)
                if not ok:
                    failures.append(f"thread {seed} request {i} ({model}): wrong answer")
        except Exception as exc:  # collected, so one thread's failure does not hide the others'
            failures.append(f"thread {seed}: {exc!r}")
        finally:
            triton.close()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:5]


def test_stream_cancelled_by_client_leaves_server_serving(client: grpcclient.InferenceServerClient) -> None:
    client.start_stream(callback=lambda result, error: None)
    for i in range(20):
        client.async_stream_infer("slow", [tensor("x", np.ones((4, 256), np.float32), "FP32")], request_id=str(i))
    client.stop_stream(cancel_requests=True)
    assert_add_works(client)


def test_unexpected_failure_is_internal_and_not_fatal(
    client: grpcclient.InferenceServerClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(engine, "metadata", boom)
    with raises_status(grpc.StatusCode.INTERNAL, "ModelMetadata", "RuntimeError: kaboom"):
        client.get_model_metadata("add")

    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    monkeypatch.setattr(engine, "infer_async", boom)
    with raises_status(grpc.StatusCode.INTERNAL, "kaboom"):
        assert_add_works(client)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("add", [tensor("x", X, "FP32")], request_id="s")
        _, error = answers.get(timeout=10)
    finally:
        client.stop_stream()
    assert error is not None and "kaboom" in error.message()

    monkeypatch.undo()
    assert client.get_model_metadata("add").name == "add"
    assert_add_works(client)


def test_unsupported_rpcs_and_malformed_bytes_get_clear_statuses(
    grpc_port: int, stub: service_pb2_grpc.GRPCInferenceServiceStub, client: grpcclient.InferenceServerClient
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "SystemSharedMemoryStatus is not supported" in (info.value.details() or "")
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes, as sent
        with pytest.raises(grpc.RpcError) as info:
            infer(b"\x3a\x10abc")  # raw_input_contents claiming 16 bytes, holding 3
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "runs past the end" in (info.value.details() or "")
    assert_add_works(client)


def _plug(engine: Engine, name: str) -> Any:
    """Hold every core and let the model's only instance take a request (run in the
    background) and wait for cores: what is sent next stays queued until the release."""
    pool = engine.pools["cpu"]
    taken = pool.acquire(pool.capacity)
    runner = engine.manager.runner(name)
    threading.Thread(target=engine.infer, args=(_fixed_request(name),), daemon=True).start()
    wait_for(lambda: len(runner.queue) == 0 and pool.waiting == 1)
    return taken


def _fixed_request(name: str) -> InferRequest:
    return InferRequest(name, {"x": np.ones((2, 2), np.float32), "k": np.array(0, np.int64)})


def _fixed_inputs(k: int) -> list[grpcclient.InferInput]:
    return [tensor("x", np.ones((2, 2), np.float32), "FP32"), tensor("k", np.array(k, np.int64), "INT64")]


def test_priority_orders_queued_requests_over_grpc(engine: Engine, client: grpcclient.InferenceServerClient) -> None:
    runner = engine.manager.runner("fixed")
    answers: queue.Queue[int] = queue.Queue()

    def record(result: Any, error: Any) -> None:
        answers.put(-1 if error else int(result.as_numpy("y2")))

    taken = _plug(engine, "fixed")
    try:
        for k, priority in ((1, 3), (2, 3), (3, 1), (4, 2)):
            client.async_infer("fixed", _fixed_inputs(k), record, priority=priority)
            wait_for(lambda k=k: len(runner.queue) == k)  # queued in the sending order
    finally:
        engine.pools["cpu"].release(taken)
    assert [answers.get(timeout=10) for _ in range(4)] == [3, 4, 1, 2]


def test_timeout_past_in_the_queue_is_deadline_exceeded_over_grpc(
    engine: Engine, client: grpcclient.InferenceServerClient
) -> None:
    taken = _plug(engine, "fixed")
    try:
        failed: queue.Queue[Any] = queue.Queue()
        client.async_infer("fixed", _fixed_inputs(5), lambda result, error: failed.put(error), timeout=2_000)
        time.sleep(0.1)
    finally:
        engine.pools["cpu"].release(taken)
    error = failed.get(timeout=10)
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "past its timeout" in error.message()
    assert engine.manager.runner("fixed").stats.deadline_misses == 1
