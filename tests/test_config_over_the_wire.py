"""Over the wire, with stock tritonclient: a model config's explicit fields survive `pareto`, and
`/v2/models/{m}/config` (HTTP and gRPC) and the metadata's platform report what runs — the
placement — with the operator's config beside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from helpers import wait_for
from models import slow_model, write_config

from edgeplex.backends import ExecutionConfig, available_backends
from edgeplex.bench.process import ServerProcess, running_server
from edgeplex.tuning.profile import Profile
from edgeplex.tuning.profiler import current_backend_versions
from edgeplex.tuning.store import ProfileStore, file_hash, machine_id

pytestmark = pytest.mark.skipif("openvino" not in available_backends(), reason="OpenVINO not installed")


def _profile(model: str, path: Path, backend: str, rate: float) -> Profile:
    return Profile(model, file_hash(path), ExecutionConfig(backend, "cpu", "fp32", 1, 0), 1, 1000 / rate,
                   1200 / rate, rate, 10_000_000, current_backend_versions()[backend], machine_id())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("wire-config")
    repo = root / "repo"
    for name, layers in (("bound", 2), ("free", 3)):
        slow_model(repo / name / "1" / "model.onnx", size=64, layers=layers)
    write_config(repo / "bound", backend="openvino", instance_count=3)
    write_config(repo / "free", max_batch_size=0)
    store = ProfileStore(root / "profiles.sqlite")
    for name in ("bound", "free"):  # ONNX Runtime profiled 4x faster: pareto wants it for both
        store.put(_profile(name, repo / name / "1" / "model.onnx", "onnxruntime", 400.0))
        store.put(_profile(name, repo / name / "1" / "model.onnx", "openvino", 100.0))
    with running_server(repo, "--policy", "pareto", "--profile-store", str(root / "profiles.sqlite"),
                        "--no-profile-missing", "--no-explore", "--replan-seconds", "0.5", cores=2) as process:
        yield process


def _groups(config: dict) -> int:
    return sum(int(group["count"]) for group in config["instance_group"])


def test_explicit_fields_survive_pareto_and_config_reports_the_placement(server: ServerProcess) -> None:
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    # pareto re-places `free` (its config binds nothing) on 2 ONNX Runtime instances.
    wait_for(lambda: http.get_model_config("free")["edgeplex"]["placement"].startswith("2x onnxruntime"), timeout=20)
    placement = {entry["model"]: entry for entry in server.get_json("/v2/edgeplex/placement")["models"]}
    for name in ("bound", "free"):
        groups = placement[name]["groups"]
        over_http = http.get_model_config(name)
        over_grpc = grpc.get_model_config(name, as_json=True)["config"]
        for config in (over_http, over_grpc):
            assert config["backend"] == groups[0]["backend"]
            assert _groups(config) == sum(g["instances"] for g in groups)
            assert config["parameters"]["threads"]["string_value"] == str(groups[0]["threads"])
        assert http.get_model_metadata(name)["platform"] == f"{groups[0]['backend']}_onnx"
        assert grpc.get_model_metadata(name).platform == f"{groups[0]['backend']}_onnx"
    bound = http.get_model_config("bound")
    assert (bound["backend"], _groups(bound)) == ("openvino", 3)  # the operator's, though slower in profile
    assert bound["edgeplex"]["bound"] == ["backend=openvino", "instance_count=3"]
    grpc_bound = grpc.get_model_config("bound", as_json=True)["config"]["parameters"]
    assert grpc_bound["edgeplex.bound"]["string_value"] == "backend=openvino, instance_count=3"
    free = http.get_model_config("free")
    assert (free["backend"], _groups(free)) == ("onnxruntime", 2)
    # The operator's own config is beside it, unchanged.
    assert free["edgeplex"]["operator_config"]["backend"] == "onnxruntime"
    assert _groups(free["edgeplex"]["operator_config"]) == 1
    assert free["edgeplex"]["bound"] == []
