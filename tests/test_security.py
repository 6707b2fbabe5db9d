"""Secure defaults on both transports: API keys, the repository API off unless enabled, model
names and versions that cannot reach outside the repository."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from edgeplex.engine import Engine
from edgeplex.errors import ConfigError
from edgeplex.server.auth import presented_key, read_api_key
from edgeplex.server.grpc import start_grpc_server

KEY = "s3cret-key-for-tests"


@contextmanager
def grpc_server(engine: Engine, **options: object) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    starting = start_grpc_server(engine, "127.0.0.1", 0, **options)  # type: ignore[arg-type]
    server, port = asyncio.run_coroutine_threadsafe(starting, loop).result(30)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0.5), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def add_inputs() -> list[grpcclient.InferInput]:
    item = grpcclient.InferInput("x", [1, 4], "FP32")
    item.set_data_from_numpy(np.ones((1, 4), np.float32))
    return [item]


def status_of(call: object) -> tuple[str, str]:
    assert callable(call)
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), str(info.value.message())


def test_grpc_requires_the_api_key_on_every_call(engine: Engine) -> None:
    with grpc_server(engine, api_key=KEY, open_apis=()) as url:
        client = grpcclient.InferenceServerClient(url)
        for call in (lambda: client.is_server_live(), lambda: client.get_model_metadata("add"),
                     lambda: client.infer("add", add_inputs())):
            status, message = status_of(call)
            assert status == "StatusCode.UNAUTHENTICATED" and "requires an API key" in message
        status, message = status_of(lambda: client.infer("add", add_inputs(), headers={"x-api-key": "wrong-key-123"}))
        assert (status, message) == ("StatusCode.UNAUTHENTICATED", "the API key is not valid")
        for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            result = client.infer("add", add_inputs(), headers=headers)
            np.testing.assert_array_equal(result.as_numpy("y"), np.full((1, 4), 2, np.float32))
            assert client.is_server_live(headers=headers)
        client.close()
        # Streaming too: the stream is refused before any request is read.
        with grpc.insecure_channel(url) as channel:
            from tritonclient.grpc import service_pb2, service_pb2_grpc

            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(iter([service_pb2.ModelInferRequest(model_name="add")])))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_repository_load_and_unload_are_off_unless_enabled(engine: Engine) -> None:
    with grpc_server(engine) as url:
        client = grpcclient.InferenceServerClient(url)
        for call in (lambda: client.unload_model("add"), lambda: client.load_model("add")):
            status, message = status_of(call)
            assert status == "StatusCode.PERMISSION_DENIED" and "--enable-repository-api" in message
        assert engine.is_ready("add")  # nothing was unloaded
        assert {m["name"] for m in client.get_model_repository_index(as_json=True)["models"]} >= {"add"}
        client.close()


@pytest.mark.parametrize("name", ["..", "../add", "add/../add", "/etc/passwd", "add\x00", "a" * 300, "%2e%2e"])
def test_grpc_model_names_cannot_leave_the_repository(engine: Engine, name: str) -> None:
    with grpc_server(engine, repository_api=True) as url:
        client = grpcclient.InferenceServerClient(url)
        for call in (lambda: client.get_model_metadata(name), lambda: client.load_model(name),
                     lambda: client.infer(name, add_inputs())):
            status, _ = status_of(call)
            assert status in ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")
        status, _ = status_of(lambda: client.get_model_metadata("add", model_version="../1"))
        assert status == "StatusCode.NOT_FOUND"
        client.close()


def test_api_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEPLEX_API_KEY", raising=False)
    assert read_api_key(None, None) is None
    assert read_api_key(" given-key-1 ", None) == "given-key-1"
    (tmp_path / "key").write_text("file-key-123\n")
    assert read_api_key(None, tmp_path / "key") == "file-key-123"
    monkeypatch.setenv("EDGEPLEX_API_KEY", "env-key-1234")
    assert read_api_key(None, None) == "env-key-1234"
    with pytest.raises(ConfigError, match="at least 8"):
        read_api_key("short", None)
    with pytest.raises(ConfigError, match="cannot read"):
        read_api_key(None, tmp_path / "missing")
    assert presented_key([("Authorization", "bearer abc")]) == "abc"
    assert presented_key([("X-Api-Key", " k ")]) == "k"
    assert presented_key([("authorization", "Basic abc")]) is None


def http_calls(app: object, calls: list[tuple[str, str, dict[str, str]]]) -> list[object]:
    """Each (method, path, headers) against the ASGI app in-process."""
    import httpx

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://edgeplex") as client:
            return [await client.request(method, path, headers=headers) for method, path, headers in calls]

    return asyncio.run(run())  # type: ignore[return-value]


def test_http_requires_the_api_key_except_for_the_dashboards_static_files(engine: Engine) -> None:
    from edgeplex.server.http import build_app

    app = build_app(engine, api_key=KEY, open_apis=())
    protected = ["/v2/health/live", "/v2", "/v2/models/add", "/metrics", "/v2/edgeplex/placement",
                 "/v2/edgeplex/dashboard", "/v2/models/add/stats"]
    refused = http_calls(app, [("GET", path, {}) for path in protected])
    for path, response in zip(protected, refused):
        assert response.status_code == 401, path  # type: ignore[attr-defined]
        assert response.headers["www-authenticate"].startswith("Bearer")  # type: ignore[attr-defined]
        assert "requires an API key" in response.json()["error"]  # type: ignore[attr-defined]
    (wrong,) = http_calls(app, [("GET", "/v2", {"x-api-key": "not-the-key"})])
    assert wrong.status_code == 401 and wrong.json()["error"] == "the API key is not valid"  # type: ignore[attr-defined]
    allowed = http_calls(app, [("GET", path, {"authorization": f"Bearer {KEY}"}) for path in protected])
    assert [r.status_code for r in allowed] == [200] * len(protected)  # type: ignore[attr-defined]
    public = http_calls(app, [("GET", "/", {}), ("GET", "/dashboard/app.js", {})])
    assert [r.status_code for r in public] == [200, 200]  # type: ignore[attr-defined]


def test_probes_answer_without_the_key_by_default_and_each_group_opens_alone(engine: Engine) -> None:
    # Kubernetes and KServe probes carry no key: health is open by default, on both transports.
    from edgeplex.server.http import build_app

    health = ["/v2/health/live", "/v2/health/ready", "/v2/models/add/ready", "/v2/models/add/versions/1/ready"]
    metadata = ["/v2", "/v2/models/add", "/v2/models/add/versions/1"]
    closed = ["/v2/models/add/config", "/v2/models/add/stats", "/v2/models/stats", "/v2/edgeplex/placement"]
    for open_apis, expect_open in ((("health",), health), (("metadata",), metadata), (("metrics",), ["/metrics"]),
                                   (("health", "metadata", "metrics"), health + metadata + ["/metrics"])):
        app = build_app(engine, api_key=KEY, open_apis=open_apis)
        paths = health + metadata + ["/metrics"] + closed
        answered = dict(zip(paths, http_calls(app, [("GET", path, {}) for path in paths])))
        for path, response in answered.items():
            want = 200 if path in expect_open else 401
            assert response.status_code == want, (open_apis, path, response.status_code)  # type: ignore[attr-defined]
    (infer,) = http_calls(build_app(engine, api_key=KEY, open_apis=("health", "metadata", "metrics")),
                          [("POST", "/v2/models/add/infer", {})])
    assert infer.status_code == 401  # type: ignore[attr-defined]
    with grpc_server(engine, api_key=KEY, open_apis=("health",)) as url:
        client = grpcclient.InferenceServerClient(url)
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("add")
        for call in (lambda: client.get_model_metadata("add"), lambda: client.get_server_metadata(),
                     lambda: client.infer("add", add_inputs()), lambda: client.get_model_config("add")):
            assert status_of(call)[0] == "StatusCode.UNAUTHENTICATED"
        client.close()
    with grpc_server(engine, api_key=KEY, open_apis=("metadata",)) as url:
        client = grpcclient.InferenceServerClient(url)
        assert client.get_model_metadata("add").name == "add" and client.get_server_metadata().name == "edgeplex"
        assert status_of(lambda: client.is_server_live())[0] == "StatusCode.UNAUTHENTICATED"
        client.close()


def test_open_health_says_ready_or_not_and_nothing_of_why(engine: Engine) -> None:
    # Without the key, a probe learns the status and no model names or load errors (the log has them).
    from edgeplex.server.http import build_app

    app = build_app(engine, api_key=KEY, strict_readiness=True)  # the tiny repository's broken model
    ready, broken, add = http_calls(app, [("GET", "/v2/health/ready", {}), ("GET", "/v2/models/broken/ready", {}),
                                          ("GET", "/v2/models/add/ready", {})])
    assert (ready.status_code, ready.json()) == (503, {"ready": False})  # type: ignore[attr-defined]
    assert (broken.status_code, broken.json()) == (503, {"name": "broken", "ready": False})  # type: ignore[attr-defined]
    assert (add.status_code, add.json()) == (200, {"name": "add", "ready": True})  # type: ignore[attr-defined]
    (detailed,) = http_calls(build_app(engine, strict_readiness=True), [("GET", "/v2/health/ready", {})])
    assert "broken" in detailed.json()["models"]  # type: ignore[attr-defined]  # no key: the reasons are shown


def test_open_api_groups_are_checked() -> None:
    from edgeplex.config import Settings

    assert Settings().open_apis == ["health"]
    assert Settings(open_apis="health, Metadata").open_apis == ["health", "metadata"]
    assert Settings(open_apis=["none"]).open_apis == []
    with pytest.raises(ConfigError, match="unknown API group"):
        Settings(open_apis="health,inference")


def test_http_repository_load_and_unload_are_off_unless_enabled(engine: Engine) -> None:
    from edgeplex.server.http import build_app

    calls = [("POST", "/v2/repository/models/add/unload", {}), ("POST", "/v2/repository/models/add/load", {})]
    for response in http_calls(build_app(engine), calls):
        assert response.status_code == 403  # type: ignore[attr-defined]
        assert "--enable-repository-api" in response.json()["error"]  # type: ignore[attr-defined]
    assert engine.is_ready("add")
    (index,) = http_calls(build_app(engine), [("POST", "/v2/repository/index", {})])
    assert index.status_code == 200  # type: ignore[attr-defined]
    unloaded = http_calls(build_app(engine, repository_api=True), calls[:1])
    assert unloaded[0].status_code == 200 and not engine.is_ready("add")  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/v2/models/..%2F..%2Fetc/infer", "/v2/models/%2e%2e", "/v2/models/add%00",
                                  "/v2/models/add/versions/..%2F1", "/v2/models/" + "a" * 300])
def test_http_model_paths_cannot_leave_the_repository(engine: Engine, path: str) -> None:
    from edgeplex.server.http import build_app

    app = build_app(engine, repository_api=True)
    for response in http_calls(app, [("GET", path, {}), ("POST", path, {}),
                                     ("POST", "/v2/repository/models/..%2Fadd/load", {})]):
        assert response.status_code in (400, 404, 405), (path, response.status_code)  # type: ignore[attr-defined]


def test_tensor_element_limit_on_both_protocols(engine: Engine) -> None:
    import json as _json

    from edgeplex.server.http import build_app

    document = {"inputs": [{"name": "x", "shape": [4, 4], "datatype": "FP32", "data": [1.0] * 16}]}
    app = build_app(engine, max_tensor_elements=12)

    async def post() -> object:
        import httpx

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as client:
            big = await client.post("/v2/models/add/infer", content=_json.dumps(document))
            document["inputs"][0].update(shape=[2, 4], data=[1.0] * 8)
            small = await client.post("/v2/models/add/infer", content=_json.dumps(document))
            return big, small

    big, small = asyncio.run(post())  # type: ignore[misc]
    assert big.status_code == 413 and "16 elements, over the limit of 12" in big.json()["error"]
    assert small.status_code == 200
    with grpc_server(engine, max_tensor_elements=12) as url:
        client = grpcclient.InferenceServerClient(url)
        item = grpcclient.InferInput("x", [4, 4], "FP32")
        item.set_data_from_numpy(np.ones((4, 4), np.float32))
        status, message = status_of(lambda: client.infer("add", [item]))
        assert status == "StatusCode.RESOURCE_EXHAUSTED" and "over the limit of 12" in message
        assert client.infer("add", add_inputs()).as_numpy("y").shape == (1, 4)
        client.close()
