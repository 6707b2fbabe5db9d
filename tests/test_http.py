"""The HTTP transport, driven by the stock tritonclient.http client (and raw httpx where a client
would refuse to send a malformed request) against the real ASGI app under uvicorn on a socket."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
import uvicorn
from onnx import numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from tritonclient.utils import InferenceServerException

from edgeplex.engine import Engine
from edgeplex.server.http import build_app

MAX_BODY = 64 * 1024

# -- fixtures ------------------------------------------------------------------------------------


class Mount:
    """The ASGI app the module's server runs: it hands each request to the app under test.

    uvicorn needs ~0.2 s to stop (it polls every 0.1 s), so one server serves the whole module
    while every test still gets `build_app` over its own fresh `engine` (exact statistics)."""

    def __init__(self) -> None:
        self.app: Starlette | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.app is not None, "a request arrived between tests"
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Mount]]:
    """uvicorn on a free port of 127.0.0.1, on its own event loop in a background thread."""
    mount = Mount()
    config = uvicorn.Config(mount, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="off")
    uv = uvicorn.Server(config)
    # asyncio.run gives the thread its own loop and, on exit, shuts down its default executor
    # (asyncio.to_thread of load/unload) and closes the loop.
    thread = threading.Thread(target=lambda: asyncio.run(uv.serve()), name="http-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert thread.is_alive(), "uvicorn stopped during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.005)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", mount
    finally:
        uv.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "uvicorn did not stop within 10 s"


@pytest.fixture
def base_url(server: tuple[str, Mount], engine: Engine) -> Iterator[str]:
    """The real app, `build_app(engine, max_body_bytes=MAX_BODY)`, served on a socket."""
    url, mount = server
    mount.app = build_app(engine, max_body_bytes=MAX_BODY, repository_api=True)
    try:
        yield url
    finally:
        mount.app = None


@pytest.fixture
def client(base_url: str) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(base_url)
    yield triton
    triton.close()


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    """A raw client: sends what tritonclient never would."""
    with httpx.Client(base_url=f"http://{base_url}", timeout=10) as raw:
        yield raw


# -- helpers -------------------------------------------------------------------------------------


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    item = httpclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def output(name: str, binary: bool = True) -> httpclient.InferRequestedOutput:
    return httpclient.InferRequestedOutput(name, binary_data=binary)


def random_x(rows: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


def assert_add_works(client: httpclient.InferenceServerClient) -> None:
    x = random_x(2, seed=99)
    result = client.infer("add", [tensor("x", x, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("y"), x + x)
    np.testing.assert_array_equal(result.as_numpy("z"), x * np.float32(3))


def assert_raw_add_works(http: httpx.Client) -> None:
    """A correct request on the same (raw) connection pool still succeeds after an error."""
    response = http.post("/v2/models/add/infer", content=json.dumps(ADD_DOC))
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs == {"y": [2.0, 4.0, 6.0, 8.0], "z": [3.0, 6.0, 9.0, 12.0]}


@contextmanager
def raises_status(status: int, *fragments: str) -> Iterator[None]:
    """The client call fails with HTTP `status` and a message holding every fragment."""
    with pytest.raises(InferenceServerException) as info:
        yield
    assert info.value.status() == str(status), info.value
    for fragment in fragments:
        assert fragment in info.value.message(), info.value.message()


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    """An error answer: the status, and a JSON body `{"error": "..."}` holding every fragment."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


ADD_DOC: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def add_doc(**fields: Any) -> dict[str, Any]:
    """ADD_DOC with its one input's fields replaced."""
    return {"inputs": [{**ADD_DOC["inputs"][0], **fields}]}


def binary_body(document: dict[str, Any], binary: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(document).encode()
    return header + binary, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def slow_weights(repo: Path) -> list[np.ndarray]:
    """The `slow` model's MatMul weights, in order: numpy computes an independent answer."""
    model = onnx.load(str(repo / "slow" / "1" / "model.onnx"))
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return [weights[node.input[1]] for node in model.graph.node]


# -- health, metadata, configuration -------------------------------------------------------------


def test_health(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").status_code == 200


def test_strict_readiness_waits_for_every_model_asked_to_load(
    server: tuple[str, Mount], engine: Engine, http: httpx.Client, client: httpclient.InferenceServerClient,
) -> None:
    """`build_app(strict_readiness=True)`: 503 naming the broken model and why, until it is no
    longer asked for (unloaded); without it (the fixture's app), 200 despite it."""
    assert http.get("/v2/health/ready").json() == {"ready": True}
    _, mount = server
    mount.app = build_app(engine, strict_readiness=True, repository_api=True)
    response = http.get("/v2/health/ready")
    assert response.status_code == 503 and response.headers["content-type"] == "application/json"
    assert response.json()["ready"] is False
    assert "not a readable ONNX model" in response.json()["models"]["broken"]
    assert not client.is_server_ready() and client.is_server_live()
    client.unload_model("broken")
    assert (http.get("/v2/health/ready").status_code, http.get("/v2/health/ready").json()) == (200, {"ready": True})
    assert client.is_server_ready()


def test_server_metadata(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "edgeplex" and meta["version"]
    assert {"binary_tensor_data", "model_repository", "model_configuration", "statistics"} <= set(meta["extensions"])


def test_model_metadata(client: httpclient.InferenceServerClient) -> None:
    add = client.get_model_metadata("add")
    assert add["name"] == "add" and add["versions"] == ["1"]
    assert add["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert add["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "z", "datatype": "FP32", "shape": [-1, 4]},
    ]
    assert add["parameters"] == {"variants": [], "in_use": ["fp32"]}  # no variants made
    sub = client.get_model_metadata("sub", "1")
    assert [(t["name"], t["datatype"], t["shape"]) for t in sub["inputs"]] == [
        ("a", "INT32", [-1, 3]),
        ("b", "INT32", [-1, 3]),
    ]
    fixed = client.get_model_metadata("fixed")
    assert {t["name"]: (t["datatype"], t["shape"]) for t in fixed["inputs"]} == {
        "x": ("FP32", [2, 2]),
        "k": ("INT64", []),
    }
    with raises_status(404, "nope"):
        client.get_model_metadata("nope")
    with raises_status(503, "broken", "not a readable ONNX model"):
        client.get_model_metadata("broken")


def test_model_ready(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    assert client.is_model_ready("add")
    assert client.is_model_ready("add", "1")
    assert not client.is_model_ready("broken")
    assert not client.is_model_ready("nope")
    assert http.get("/v2/models/add/ready").status_code == 200
    assert http.get("/v2/models/add/versions/1/ready").status_code == 200
    assert http.get("/v2/models/broken/ready").status_code == 503
    assert_error(http.get("/v2/models/nope/ready"), 404, "nope")
    assert_error(http.get("/v2/models/add/versions/9/ready"), 404, "'9'")


def test_model_config(client: httpclient.InferenceServerClient) -> None:
    add = client.get_model_config("add")
    assert add["name"] == "add" and add["max_batch_size"] == 8
    assert add["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert [(t["name"], t["data_type"], t["dims"]) for t in add["output"]] == [
        ("y", "TYPE_FP32", [4]),
        ("z", "TYPE_FP32", [4]),
    ]
    sub = client.get_model_config("sub")  # no config.yaml: completed from the ONNX file
    assert sub["max_batch_size"] == 4
    assert [(t["name"], t["data_type"], t["dims"]) for t in sub["input"]] == [
        ("a", "TYPE_INT32", [3]),
        ("b", "TYPE_INT32", [3]),
    ]
    fixed = client.get_model_config("fixed")
    assert fixed["max_batch_size"] == 0
    assert [(t["name"], t["data_type"], t["dims"]) for t in fixed["input"]] == [
        ("x", "TYPE_FP32", [2, 2]),
        ("k", "TYPE_INT64", []),
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in fixed["output"]] == [
        ("y", "TYPE_FP32", [2, 2]),
        ("y2", "TYPE_INT64", []),
    ]
    with raises_status(404, "nope"):
        client.get_model_config("nope")


# -- inference -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(False, False), (True, True), (True, False), (False, True)],
    ids=["json", "binary", "binary-in-json-out", "json-in-binary-out"],
)
def test_infer_add(client: httpclient.InferenceServerClient, binary_in: bool, binary_out: bool) -> None:
    x = random_x(3)
    result = client.infer(
        "add", [tensor("x", x, "FP32", binary_in)], outputs=[output("y", binary_out), output("z", binary_out)]
    )
    np.testing.assert_array_equal(result.as_numpy("y"), x + x)
    np.testing.assert_array_equal(result.as_numpy("z"), x * np.float32(3))
    for entry in result.get_response()["outputs"]:
        assert entry["datatype"] == "FP32" and entry["shape"] == [3, 4]
        assert ("data" in entry) is not binary_out
        if binary_out:
            assert entry["parameters"]["binary_data_size"] == 3 * 4 * 4


def test_infer_mixed_outputs_and_id(client: httpclient.InferenceServerClient) -> None:
    x = random_x(2)
    result = client.infer(
        "add", [tensor("x", x, "FP32")], outputs=[output("y", False), output("z", True)], request_id="req-7"
    )
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "add" and response["model_version"] == "1"
    entries = {entry["name"]: entry for entry in response["outputs"]}
    assert "data" in entries["y"] and "data" not in entries["z"]
    np.testing.assert_array_equal(result.as_numpy("y"), x + x)
    np.testing.assert_array_equal(result.as_numpy("z"), x * np.float32(3))


def test_infer_requested_subset_and_order(client: httpclient.InferenceServerClient) -> None:
    x = random_x(1)
    only_z = client.infer("add", [tensor("x", x, "FP32")], outputs=[output("z")])
    assert [entry["name"] for entry in only_z.get_response()["outputs"]] == ["z"]
    assert only_z.as_numpy("y") is None
    np.testing.assert_array_equal(only_z.as_numpy("z"), x * np.float32(3))
    reversed_ = client.infer("add", [tensor("x", x, "FP32")], outputs=[output("z", False), output("y", False)])
    assert [entry["name"] for entry in reversed_.get_response()["outputs"]] == ["z", "y"]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_int32(client: httpclient.InferenceServerClient, binary: bool) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(-(2**30), 2**30, (4, 3), dtype=np.int32)
    b = rng.integers(-(2**30), 2**30, (4, 3), dtype=np.int32)
    result = client.infer(
        "sub", [tensor("a", a, "INT32", binary), tensor("b", b, "INT32", binary)], outputs=[output("out", binary)]
    )
    out = result.as_numpy("out")
    assert out is not None and out.dtype == np.int32
    np.testing.assert_array_equal(out, a - b)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_int64_scalar(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.array([[1.5, -2.25], [3.0, 1e-3]], dtype=np.float32)
    k = np.array(2**40 + 3, dtype=np.int64)  # beyond float32/53-bit-unsafe ranges stay exact
    result = client.infer(
        "fixed",
        [tensor("x", x, "FP32", binary), tensor("k", k, "INT64", binary)],
        outputs=[output("y", binary), output("y2", binary)],
    )
    np.testing.assert_array_equal(result.as_numpy("y"), x)
    y2 = result.as_numpy("y2")
    assert y2 is not None and y2.dtype == np.int64 and y2.shape == () and int(y2) == 2**40 + 3
    entries = {entry["name"]: entry for entry in result.get_response()["outputs"]}
    assert entries["y2"]["shape"] == [] and entries["y2"]["datatype"] == "INT64"


@pytest.mark.parametrize("data", [7, [7]], ids=["bare", "list"])
def test_infer_json_scalar_raw(http: httpx.Client, data: object) -> None:
    document = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
            {"name": "k", "datatype": "INT64", "shape": [], "data": data},
        ]
    }
    response = http.post("/v2/models/fixed/infer", content=json.dumps(document))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["y"]["data"] == [1.0, 2.0, 3.0, 4.0] and outputs["y"]["shape"] == [2, 2]
    assert outputs["y2"]["data"] == [7] and outputs["y2"]["shape"] == []


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_compressed_request(client: httpclient.InferenceServerClient, algorithm: str, binary: bool) -> None:
    x = random_x(8)
    result = client.infer(
        "add", [tensor("x", x, "FP32", binary)], outputs=[output("y", binary)], request_compression_algorithm=algorithm
    )
    np.testing.assert_array_equal(result.as_numpy("y"), x + x)


def test_infer_header_length_on_pure_json(http: httpx.Client) -> None:
    """perf_analyzer sends Inference-Header-Content-Length even when no binary data follows."""
    body, headers = binary_body(ADD_DOC, b"")
    response = http.post("/v2/models/add/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert {o["name"]: o["data"] for o in response.json()["outputs"]}["y"] == [2.0, 4.0, 6.0, 8.0]


def test_priority_and_timeout_accepted(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    x = random_x(2)
    result = client.infer("add", [tensor("x", x, "FP32")], priority=1, timeout=10_000_000)
    np.testing.assert_array_equal(result.as_numpy("y"), x + x)
    document = {**ADD_DOC, "parameters": {"priority": 2, "timeout": 0}}
    assert http.post("/v2/models/add/infer", content=json.dumps(document)).status_code == 200
    bad = {**ADD_DOC, "parameters": {"priority": -1}}
    assert_error(http.post("/v2/models/add/infer", content=json.dumps(bad)), 400, "priority")
    assert_add_works(client)


# -- errors: each is answered, and the server keeps serving ------------------------------------


def test_unknown_model_and_version(client: httpclient.InferenceServerClient) -> None:
    x = random_x(1)
    with raises_status(404, "nope"):
        client.infer("nope", [tensor("x", x, "FP32")])
    assert_add_works(client)
    with raises_status(404, "'9'"):
        client.infer("add", [tensor("x", x, "FP32")], model_version="9")
    assert_add_works(client)


def test_broken_model_infer_is_unavailable_with_reason(client: httpclient.InferenceServerClient) -> None:
    with raises_status(503, "broken", "not a readable ONNX model"):
        client.infer("broken", [tensor("x", random_x(1), "FP32")])
    assert_add_works(client)


MALFORMED: dict[str, tuple[bytes | dict[str, Any], bytes, int, tuple[str, ...]]] = {
    # case: (JSON document or raw body, binary data after it, status, fragments of the message)
    "not-json": (b'{"inputs": [', b"", 400, ("not valid JSON",)),
    "json-not-object": (b"[1, 2]", b"", 400, ("JSON object",)),
    "no-inputs": ({"inputs": []}, b"", 400, ("inputs",)),
    "wrong-name": (add_doc(name="w"), b"", 400, ("'w'",)),
    "wrong-datatype": (add_doc(datatype="FP64"), b"", 400, ("'x'", "FP32", "FP64")),
    "unknown-datatype": (add_doc(datatype="FLOAT"), b"", 400, ("'x'", "FLOAT")),
    "wrong-shape": (add_doc(shape=[1, 5], data=[1, 2, 3, 4, 5]), b"", 400, ("'x'", "[1, 5]")),
    "batch-too-large": (add_doc(shape=[9, 4], data=[0] * 36), b"", 400, ("'x'", "batch size")),
    "shape-vs-data": (add_doc(shape=[2, 4]), b"", 400, ("'x'", "needs 8")),
    "bad-shape": (add_doc(shape=[1, -4]), b"", 400, ("'x'", "shape")),
    "bad-data": (add_doc(data=["a", "b", "c", "d"]), b"", 400, ("'x'", "FP32")),
    "binary-byte-size": (
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 12}}]},
        bytes(12),
        400,
        ("'x'", "12 bytes", "expected 16"),
    ),
    "binary-past-body": (
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]},
        bytes(8),
        400,
        ("'x'", "runs past the body"),
    ),
    "binary-unclaimed": (ADD_DOC, bytes(4), 400, ("4 bytes", "not claimed")),
    "unknown-output": ({**ADD_DOC, "outputs": [{"name": "w"}]}, b"", 400, ("'w'",)),
    "missing-input": (
        {"inputs": [{"name": "a", "datatype": "INT32", "shape": [1, 3], "data": [1, 2, 3]}]},
        b"",
        400,
        ("'b'", "missing"),
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request(http: httpx.Client, client: httpclient.InferenceServerClient, case: str) -> None:
    document, binary, status, fragments = MALFORMED[case]
    model = "sub" if case == "missing-input" else "add"
    header = document if isinstance(document, bytes) else json.dumps(document).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))} if binary else {}
    response = http.post(f"/v2/models/{model}/infer", content=header + binary, headers=headers)
    assert_error(response, status, *fragments)
    assert_raw_add_works(http)
    assert_add_works(client)


def test_binary_size_without_header_length(http: httpx.Client) -> None:
    document = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]}
    response = http.post("/v2/models/add/infer", content=json.dumps(document).encode() + bytes(16))
    assert_error(response, 400)
    assert_raw_add_works(http)


@pytest.mark.parametrize(
    ("value", "fragment"), [("100000", "outside the body"), ("abc", "not an integer"), ("-1", "outside the body")]
)
def test_bad_header_length(http: httpx.Client, value: str, fragment: str) -> None:
    body = json.dumps(ADD_DOC).encode()
    response = http.post("/v2/models/add/infer", content=body, headers={"Inference-Header-Content-Length": value})
    assert_error(response, 400, "Inference-Header-Content-Length", fragment)
    assert_raw_add_works(http)


def test_body_over_limit_with_content_length(http: httpx.Client, client: httpclient.InferenceServerClient) -> None:
    response = http.post("/v2/models/add/infer", content=bytes(MAX_BODY + 1))
    assert_error(response, 413, str(MAX_BODY))
    assert_raw_add_works(http)
    with raises_status(413):
        big = np.zeros((8, 4), np.float32)
        client.infer("add", [tensor("x", big, "FP32", binary=False)], request_id="x" * MAX_BODY)
    assert_add_works(client)


def test_body_over_limit_chunked(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY // 8192 + 2):
            yield bytes(8192)

    response = http.post("/v2/models/add/infer", content=chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert_error(response, 413, str(MAX_BODY))
    assert_raw_add_works(http)


def test_chunked_body_under_limit(http: httpx.Client) -> None:
    body = json.dumps(ADD_DOC).encode()

    def chunks() -> Iterator[bytes]:
        yield body[:10]
        yield body[10:]

    response = http.post("/v2/models/add/infer", content=chunks())
    assert response.status_code == 200, response.text


def test_decompressed_body_over_limit(http: httpx.Client) -> None:
    bomb = gzip.compress(bytes(MAX_BODY * 4))
    assert len(bomb) < MAX_BODY
    response = http.post("/v2/models/add/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert_error(response, 413, "decompressed")
    assert_raw_add_works(http)


@pytest.mark.parametrize(
    ("encoding", "body", "fragment"),
    [
        ("br", json.dumps(ADD_DOC).encode(), "unsupported Content-Encoding 'br'"),
        ("gzip", b"definitely not gzip", "not valid gzip"),
        ("deflate", b"definitely not deflate", "not valid deflate"),
        # cut in the gzip trailer: every JSON byte is there, but the CRC never arrives
        ("gzip", gzip.compress(json.dumps(ADD_DOC).encode())[:-8], "truncated"),
        ("deflate", zlib.compress(json.dumps(ADD_DOC).encode())[:-2], "truncated"),
    ],
    ids=["br", "gzip-garbage", "deflate-garbage", "gzip-truncated", "deflate-truncated"],
)
def test_bad_content_encoding(http: httpx.Client, encoding: str, body: bytes, fragment: str) -> None:
    response = http.post("/v2/models/add/infer", content=body, headers={"Content-Encoding": encoding})
    assert_error(response, 400, fragment)
    assert_raw_add_works(http)


def test_raw_compressed_json(http: httpx.Client) -> None:
    body = json.dumps(ADD_DOC).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        response = http.post("/v2/models/add/infer", content=packed, headers={"Content-Encoding": encoding})
        assert response.status_code == 200, (encoding, response.text)


# -- statistics, repository, metrics ------------------------------------------------------------


def stats_of(client: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    entries = client.get_inference_statistics(model)["model_stats"]
    assert len(entries) == 1
    return entries[0]  # type: ignore[no-any-return]


def test_statistics_count_exactly(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    before = stats_of(client, "add")
    assert (before["name"], before["version"]) == ("add", "1")
    assert before["inference_count"] == 0 and before["execution_count"] == 0
    assert before["inference_stats"]["success"]["count"] == 0

    for rows in (1, 3, 5):
        client.infer("add", [tensor("x", random_x(rows), "FP32")])
    # a request refused at validation is not an inference
    assert http.post("/v2/models/add/infer", content=json.dumps(add_doc(name="w"))).status_code == 400
    client.infer("sub", [tensor("a", np.zeros((2, 3), np.int32), "INT32"), tensor("b", np.zeros((2, 3), np.int32), "INT32")])

    after = stats_of(client, "add")
    assert after["inference_count"] == 1 + 3 + 5  # batch rows
    assert after["execution_count"] == 3
    success = after["inference_stats"]["success"]
    assert success["count"] == 3 and success["ns"] > 0
    assert after["inference_stats"]["fail"]["count"] == 0
    assert after["inference_stats"]["queue"]["count"] == 3
    assert after["inference_stats"]["compute_infer"]["count"] == 3
    assert after["last_inference"] > 0
    assert sum(entry["compute_infer"]["count"] for entry in after["batch_stats"]) == 3
    assert stats_of(client, "sub")["inference_count"] == 2
    assert stats_of(client, "fixed")["inference_count"] == 0
    assert client.get_inference_statistics("add", "1")["model_stats"][0]["inference_count"] == 9

    everything = client.get_inference_statistics()["model_stats"]
    assert {entry["name"] for entry in everything} == {"add", "sub", "fixed", "slow"}
    with raises_status(404, "nope"):
        client.get_inference_statistics("nope")


def test_repository_index(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert set(index) == {"add", "sub", "fixed", "slow", "broken"}
    assert (index["add"]["version"], index["add"]["state"]) == ("1", "READY")
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "not a readable ONNX model" in index["broken"]["reason"]
    ready = http.post("/v2/repository/index", content=json.dumps({"ready": True}))
    assert ready.status_code == 200
    assert {entry["name"] for entry in ready.json()} == {"add", "sub", "fixed", "slow"}
    assert_error(http.post("/v2/repository/index", content=b"{oops"), 400, "not valid JSON")


def test_unload_then_load(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    client.unload_model("add")
    assert not client.is_model_ready("add")
    assert http.get("/v2/models/add/ready").status_code == 503
    with raises_status(503, "add"):
        client.infer("add", [tensor("x", random_x(1), "FP32")])
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert (index["add"]["state"], index["add"]["reason"]) == ("UNAVAILABLE", "unloaded")
    assert_sub_works(client)  # the other models are untouched

    client.load_model("add")
    assert client.is_model_ready("add")
    assert_add_works(client)
    with raises_status(404, "nope"):
        client.load_model("nope")
    with raises_status(404, "nope"):
        client.unload_model("nope")


def assert_sub_works(client: httpclient.InferenceServerClient) -> None:
    a = np.array([[5, 6, 7]], np.int32)
    b = np.array([[1, 1, 1]], np.int32)
    result = client.infer("sub", [tensor("a", a, "INT32"), tensor("b", b, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("out"), a - b)


def metric_samples(http: httpx.Client) -> dict[tuple[str, str], float]:
    """(family, model) -> value for every per-model sample of the scrape."""
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if "model" in sample.labels:
                samples[(family.name, sample.labels["model"])] = sample.value
    return samples


def test_metrics_count_exactly(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    assert metric_samples(http)[("edgeplex_inference_request_success", "add")] == 0
    sent = 5
    for i in range(sent):
        client.infer("add", [tensor("x", random_x(2, seed=i), "FP32")])
    assert http.post("/v2/models/add/infer", content=b"{").status_code == 400  # not a success
    with pytest.raises(InferenceServerException):
        client.infer("add", [tensor("x", random_x(1), "FP32")], model_version="9")

    samples = metric_samples(http)
    assert samples[("edgeplex_inference_request_success", "add")] == sent
    assert samples[("edgeplex_inference_count", "add")] == 2 * sent
    assert samples[("edgeplex_inference_exec_count", "add")] == sent
    assert samples[("edgeplex_inference_request_success", "sub")] == 0
    assert samples[("edgeplex_inference_request_failure", "add")] == 0
    assert samples[("edgeplex_inference_request_duration_us", "add")] > 0
    # /metrics and the statistics extension read the same counters
    assert stats_of(client, "add")["inference_stats"]["success"]["count"] == sent
    assert samples[("edgeplex_inference_deadline_miss", "add")] == 0
    assert samples[("edgeplex_placement_changes", "add")] == 1  # its load


def test_metrics_of_processors_and_memory(client: httpclient.InferenceServerClient, http: httpx.Client) -> None:
    def scrape() -> dict[str, float]:
        families = text_string_to_metric_families(http.get("/metrics").text)
        return {s.name: s.value for f in families for s in f.samples if s.labels.get("processor", "cpu") == "cpu"
                and "model" not in s.labels}

    before = scrape()
    for i in range(20):
        client.infer("add", [tensor("x", random_x(8, seed=i), "FP32")])
    after = scrape()
    assert after["edgeplex_processor_tokens_capacity"] == 2
    assert after["edgeplex_processor_tokens_in_use"] == after["edgeplex_processor_waiting"] == 0
    assert after["edgeplex_processor_busy_seconds_total"] > before["edgeplex_processor_busy_seconds_total"]
    assert after["edgeplex_memory_used_bytes"] > 0
    assert "edgeplex_memory_budget_bytes" not in after  # no --memory-budget


# -- concurrency --------------------------------------------------------------------------------


def test_concurrent_clients(base_url: str, tiny_repo: Path) -> None:
    weights = slow_weights(tiny_repo)
    models = ("add", "sub", "slow")
    failures: list[str] = []
    done: list[int] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        triton = httpclient.InferenceServerClient(base_url)
        try:
            for i in range(40):
                model = models[(seed + i) % len(models)]
                rows = int(rng.integers(1, 5))
                binary = bool(rng.integers(0, 2))
                if model == "add":
                    x = rng.standard_normal((rows, 4)).astype(np.float32)
                    result = triton.infer("add", [tensor("x", x, "FP32", binary)], outputs=[output("z", binary)])
                    ok = np.array_equal(result.as_numpy("z"), x * np.float32(3))
                elif model == "sub":
                    a = rng.integers(-1000, 1000, (rows, 3), dtype=np.int32)
                    b = rng.integers(-1000, 1000, (rows, 3), dtype=np.int32)
                    result = triton.infer("sub", [tensor("a", a, "INT32", binary), tensor("b", b, "INT32", binary)])
                    ok = np.array_equal(result.as_numpy("out"), a - b)
                else:
                    x = rng.standard_normal((rows, 256)).astype(np.float32)
                    result = triton.infer("slow", [tensor("x", x, "FP32")])
                    expected = x
                    for weight in weights:
                        expected = expected @ weight
                    got = result.as_numpy("y")
                    ok = got is not None and got.shape == expected.shape and np.allclose(got, expected, rtol=1e-3, atol=1e-4)
                if not ok:
                    failures.append(f"thread {seed} request {i} ({model}): wrong answer")
                done.append(1)
        except Exception as exc:  # reported below, with the thread that saw it
            failures.append(f"thread {seed}: {exc!r}")
        finally:
            triton.close()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:5]
    assert len(done) == 8 * 40


def test_full_queue_is_429_with_retry_after_and_nothing_queued_is_lost(engine: Engine, http: httpx.Client) -> None:
    from edgeplex.engine.request import InferRequest

    pool = engine.pools["cpu"]
    runner = engine.manager.runner("fixed")
    assert metric_samples(http)[("edgeplex_inference_request_rejected", "fixed")] == 0
    taken = pool.acquire(pool.capacity)
    inputs = {"x": np.ones((2, 2), np.float32), "k": np.array(7, np.int64)}
    try:
        queued = [engine.submit(InferRequest("fixed", inputs)) for _ in range(runner.queue.max_size + 1)]
        assert len(runner.queue) == runner.queue.max_size  # one more is waiting for cores
        document = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
                               {"name": "k", "shape": [], "datatype": "INT64", "data": [7]}]}
        started = time.monotonic()
        response = http.post("/v2/models/fixed/infer", content=json.dumps(document))
        assert time.monotonic() - started < 1.0  # refused at once
        assert_error(response, 429, "fixed", "max_queue_size")
        assert response.headers["retry-after"] == "1"
    finally:
        pool.release(taken)
    assert all(f.result(30).outputs["y2"] == 7 for f in queued)
    assert runner.stats.rejected == 1
    assert metric_samples(http)[("edgeplex_inference_request_rejected", "fixed")] == 1


# -- JSON coding off the event loop --------------------------------------------------------------


def _recording(function: Any, threads: list[str]) -> Any:
    """`function`, noting the name of the thread each call runs on."""

    def call(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return function(*args)

    return call


def test_large_json_is_coded_off_the_event_loop(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request whose JSON passes OFFLOAD_JSON_BYTES is decoded on the codec thread, and one whose
    JSON outputs pass OFFLOAD_JSON_ELEMENTS is encoded there; smaller ones stay on the loop.
    Either way the answer is the same."""
    import edgeplex.server.http as http_module

    decoded_on: list[str] = []
    encoded_on: list[str] = []
    monkeypatch.setattr(http_module, "decode_request", _recording(http_module.decode_request, decoded_on))
    monkeypatch.setattr(http_module, "encode_response", _recording(http_module.encode_response, encoded_on))

    def infer(document: dict[str, Any]) -> dict[str, Any]:
        response = http.post("/v2/models/add/infer", content=json.dumps(document))
        assert response.status_code == 200, response.text
        return response.json()

    monkeypatch.setattr(http_module, "OFFLOAD_JSON_BYTES", 4096)  # the module's server takes 64 KiB at most
    small = infer(ADD_DOC)
    large_id = "x" * 4096  # the JSON alone passes the threshold
    large = infer({**ADD_DOC, "id": large_id})
    assert large["id"] == large_id
    assert large["outputs"] == small["outputs"]
    assert decoded_on[0] == "http-test-server" and decoded_on[1].startswith("edgeplex-codec")
    assert encoded_on == ["http-test-server", "http-test-server"]  # 8 JSON elements out: on the loop

    monkeypatch.setattr(http_module, "OFFLOAD_JSON_ELEMENTS", 8)  # the add model's 2 x 4 outputs
    assert infer(ADD_DOC)["outputs"] == small["outputs"]
    assert encoded_on[-1].startswith("edgeplex-codec")


def test_large_gzip_body_is_inflated_off_the_event_loop(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeplex.server.http as http_module

    inflated_on: list[str] = []
    monkeypatch.setattr(http_module, "_decompress", _recording(http_module._decompress, inflated_on))
    monkeypatch.setattr(http_module, "OFFLOAD_JSON_BYTES", 16)
    body = gzip.compress(json.dumps(ADD_DOC).encode())
    response = http.post("/v2/models/add/infer", content=body, headers={"content-encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert inflated_on and inflated_on[0].startswith("edgeplex-codec")


def test_binary_outputs_joined_from_views_are_exact(client: httpclient.InferenceServerClient) -> None:
    """Binary outputs are joined from views of the arrays (one copy), here rows of a batch output
    asked for in another order than the model's: the bytes must still be each tensor's, in
    row-major order (non-contiguous arrays: tests/test_tensors.py)."""
    x = random_x(5, seed=7)
    result = client.infer("add", [tensor("x", x, "FP32")], outputs=[output("z"), output("y")])
    np.testing.assert_array_equal(result.as_numpy("y"), x + x)
    np.testing.assert_array_equal(result.as_numpy("z"), x * np.float32(3))
