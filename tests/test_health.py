"""Health and readiness of the real server (`edgeplex serve` in a subprocess, on the tiny
repository with its `broken` model), as the Open Inference Protocol says and Triton does:
JSON bodies KServe's SDK parses, and stock tritonclient (HTTP and gRPC) reading the same.

Strict readiness (the default, as Triton's `--strict-readiness`): the server is not ready while
a model asked to load cannot serve, and says which and why (503 body and the log); lax
(EDGEPLEX_STRICT_READINESS=false): a broken model makes only itself not ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import wait_for

from edgeplex.bench.process import ServerProcess, running_server

SERVE = ("--policy", "config", "--enable-repository-api")
JSON_TYPE = "application/json"
BROKEN_REASON = "not a readable ONNX model"


@pytest.fixture(scope="module")
def strict_server(tiny_repo: Path) -> Iterator[ServerProcess]:
    with running_server(tiny_repo, *SERVE, cores=2) as process:
        yield process


@pytest.fixture(scope="module")
def lax_server(tiny_repo: Path) -> Iterator[ServerProcess]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EDGEPLEX_STRICT_READINESS", "false")
        with running_server(tiny_repo, *SERVE, cores=2) as process:
            yield process


def clients(server: ServerProcess) -> tuple[httpclient.InferenceServerClient, grpcclient.InferenceServerClient]:
    return httpclient.InferenceServerClient(server.http_url), grpcclient.InferenceServerClient(server.grpc_url)


def get(server: ServerProcess, path: str) -> httpx.Response:
    response = httpx.get(f"http://{server.http_url}{path}", timeout=10)
    assert response.headers["content-type"] == JSON_TYPE, (path, response.headers)
    return response


def assert_model_readiness(server: ServerProcess) -> None:
    """Per model, the same under either readiness: 200/503 with a JSON body, 404 if unknown."""
    for path in ("/v2/models/add/ready", "/v2/models/add/versions/1/ready"):
        response = get(server, path)
        assert (response.status_code, response.json()) == (200, {"name": "add", "ready": True})
    broken = get(server, "/v2/models/broken/ready")
    assert broken.status_code == 503
    assert broken.json()["name"] == "broken" and broken.json()["ready"] is False
    assert BROKEN_REASON in broken.json()["reason"]
    assert get(server, "/v2/models/nope/ready").status_code == 404
    assert get(server, "/v2/models/add/versions/9/ready").status_code == 404
    http, grpc = clients(server)
    try:
        for client in (http, grpc):
            assert client.is_model_ready("add") and client.is_model_ready("add", "1")
            assert not client.is_model_ready("broken")
            assert not client.is_model_ready("nope")
    finally:
        http.close()
        grpc.close()


# -- strict (the default) --------------------------------------------------------------------------


def test_strict_live_is_json_and_clients_agree(strict_server: ServerProcess) -> None:
    response = get(strict_server, "/v2/health/live")
    assert (response.status_code, response.json()) == (200, {"live": True})
    http, grpc = clients(strict_server)
    try:
        assert http.is_server_live() and grpc.is_server_live()
    finally:
        http.close()
        grpc.close()


def test_strict_not_ready_names_the_broken_model(strict_server: ServerProcess) -> None:
    response = get(strict_server, "/v2/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert list(body["models"]) == ["broken"] and BROKEN_REASON in body["models"]["broken"]
    http, grpc = clients(strict_server)
    try:
        assert not http.is_server_ready()
        assert not grpc.is_server_ready()
    finally:
        http.close()
        grpc.close()
    # The log names it too, once (not at every probe).
    wait_for(lambda: any("strict readiness" in line and "broken" in line for line in strict_server.output))
    get(strict_server, "/v2/health/ready")
    assert sum("strict readiness" in line for line in strict_server.output) == 1


def test_strict_model_readiness(strict_server: ServerProcess) -> None:
    assert_model_readiness(strict_server)


def test_strict_ready_once_the_broken_model_is_unloaded(strict_server: ServerProcess) -> None:
    """Readiness waits on the models asked to load: unloading the broken one makes it ready."""
    http, grpc = clients(strict_server)
    try:
        http.unload_model("broken")
        response = get(strict_server, "/v2/health/ready")
        assert (response.status_code, response.json()) == (200, {"ready": True})
        assert http.is_server_ready() and grpc.is_server_ready()
    finally:
        http.close()
        grpc.close()


# -- lax (EDGEPLEX_STRICT_READINESS=false) ---------------------------------------------------------


def test_lax_ready_despite_the_broken_model(lax_server: ServerProcess) -> None:
    response = get(lax_server, "/v2/health/ready")
    assert (response.status_code, response.json()) == (200, {"ready": True})
    assert get(lax_server, "/v2/health/live").json() == {"live": True}
    http, grpc = clients(lax_server)
    try:
        assert http.is_server_live() and grpc.is_server_live()
        assert http.is_server_ready() and grpc.is_server_ready()
    finally:
        http.close()
        grpc.close()
    assert not any("strict readiness" in line for line in lax_server.output)


def test_lax_model_readiness(lax_server: ServerProcess) -> None:
    assert_model_readiness(lax_server)
