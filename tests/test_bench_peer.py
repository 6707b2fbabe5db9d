"""`bench peer` (issue 14) on tiny models: the hand configuration of Triton that the suite
generates, the fixed job against a real in-process edgeplex gRPC server, and a REAL tritonserver
(from the nvidia-pytriton wheel, downloaded on first use) serving the generated repository."""

from __future__ import annotations

import ast
import asyncio
import os
import platform
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from models import add_model, fixed_model, int_model, write_config
from tritonclient.grpc import model_config_pb2

from edgeplex.bench.cpu import tree_cpu_seconds
from edgeplex.bench.job import fixed_job
from edgeplex.bench.triton_config import write_triton_repository
from edgeplex.engine import Engine
from edgeplex.repository import Repository
from edgeplex.server.grpc import start_grpc_server

X86_LINUX = sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An edgeplex repository: `add` (batchable, stated config), `sub` (INT32, config completed
    from the ONNX file), `add0` (told not to batch: dims [-1, 4])."""
    root = tmp_path_factory.mktemp("peer-source")
    add_model(root / "add" / "1" / "model.onnx")
    write_config(root / "add", name="add", max_batch_size=8)
    int_model(root / "sub" / "1" / "model.onnx")
    add_model(root / "add0" / "1" / "model.onnx")
    write_config(root / "add0", max_batch_size=0)
    return root


def _inputs() -> dict[str, dict[str, np.ndarray]]:
    return {"add": {"x": np.arange(4, dtype=np.float32).reshape(1, 4)},
            "sub": {"a": np.array([[5, 7, 9]], dtype=np.int32), "b": np.array([[1, 2, 3]], dtype=np.int32)}}


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


# -- the hand configuration ------------------------------------------------------------------------


def test_generated_configs_follow_edgeplex_configs(source: Path, tmp_path: Path) -> None:
    target = write_triton_repository(source, tmp_path / "triton")
    repository = Repository(source)
    assert sorted(p.name for p in target.iterdir()) == ["add", "add0", "sub"]
    for name in ("add", "add0", "sub"):
        expected = repository.load_config(repository.source(name))
        parsed = _parse(target / name / "config.pbtxt")
        assert parsed.name == name and parsed.backend == "python"
        assert parsed.max_batch_size == expected.max_batch_size
        assert [(g.kind, g.count) for g in parsed.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)]
        assert not parsed.HasField("dynamic_batching")
        for tensors, specs in ((parsed.input, expected.inputs), (parsed.output, expected.outputs)):
            assert [t.name for t in tensors] == [s.name for s in specs]
            for tensor, spec in zip(tensors, specs):
                assert model_config_pb2.DataType.Name(tensor.data_type) == f"TYPE_{spec.datatype}"
                assert list(tensor.dims) == spec.dims and not tensor.HasField("reshape")
        onnx_link = target / name / "1" / "model.onnx"
        assert onnx_link.resolve() == (source / name / "1" / "model.onnx").resolve()
    add = _parse(target / "add" / "config.pbtxt")
    assert add.max_batch_size == 8 and list(add.input[0].dims) == [4]
    assert _parse(target / "sub" / "config.pbtxt").max_batch_size == 4  # completed from the ONNX file, as Triton does
    add0 = _parse(target / "add0" / "config.pbtxt")
    assert add0.max_batch_size == 0 and list(add0.input[0].dims) == [-1, 4]


def test_a_scalar_of_a_model_that_does_not_batch_is_refused(tmp_path: Path) -> None:
    fixed_model(tmp_path / "source" / "fixed" / "1" / "model.onnx")  # scalar `k`, max_batch_size 0
    with pytest.raises(ValueError, match="scalar tensor 'k'"):
        write_triton_repository(tmp_path / "source", tmp_path / "triton")


def _constants(module: ast.Module) -> dict[str, object]:
    return {node.targets[0].id: ast.literal_eval(node.value) for node in module.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}


def test_generated_model_py_is_plain_python_with_the_thread_settings(source: Path, tmp_path: Path) -> None:
    default = write_triton_repository(source, tmp_path / "default", ["add"])
    text = (default / "add" / "1" / "model.py").read_text()
    module = ast.parse(text)
    compile(text, "model.py", "exec")
    assert _constants(module) == {"ONNX_FILE": "model.onnx", "INTRA_OP_THREADS": 1, "INTER_OP_THREADS": 1}
    (model_class,) = [n for n in module.body if isinstance(n, ast.ClassDef)]
    assert model_class.name == "TritonPythonModel"
    assert {f.name for f in model_class.body if isinstance(f, ast.FunctionDef)} == {"initialize", "execute", "finalize"}
    for needed in ("options.intra_op_num_threads = INTRA_OP_THREADS", "ORT_SEQUENTIAL",
                   "pb_utils.get_input_tensor_by_name", "pb_utils.InferenceResponse"):
        assert needed in text

    tuned = write_triton_repository(source, tmp_path / "tuned", ["add"], instances=3, threads=2)
    assert _constants(ast.parse((tuned / "add" / "1" / "model.py").read_text()))["INTRA_OP_THREADS"] == 2
    assert [g.count for g in _parse(tuned / "add" / "config.pbtxt").instance_group] == [3]


# -- the fixed job against a real edgeplex gRPC server -----------------------------------------------


@pytest.fixture
def edgeplex_url(source: Path) -> Iterator[str]:
    """edgeplex's grpc.aio server on a free port, its own event loop in a background thread."""
    engine = Engine(source, cores=2)
    engine.load_all(["add", "sub"])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="peer-test-loop", daemon=True)
    thread.start()
    server, port = asyncio.run_coroutine_threadsafe(start_grpc_server(engine, "127.0.0.1", 0), loop).result(30)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(1.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        engine.close()


def _successes(url: str, model: str) -> int:
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
    finally:
        client.close()
    return sum(int(entry["inference_stats"]["success"].get("count", 0)) for entry in stats)


def test_fixed_job_sends_exactly_the_requests_per_model(edgeplex_url: str) -> None:
    # 3 clients share 10 requests: no client count divides it, the shared counter must.
    result = fixed_job(edgeplex_url, _inputs(), clients_per_model=3, warmup=4, requests=10, server_pid=os.getpid())
    assert result["errors"] == 0, result["error_samples"]
    for model in ("add", "sub"):
        figures = result["per_model"][model]
        assert figures["sent"] == figures["completed"] == 10 and figures["warmup_sent"] == 4
        assert 0 < figures["finish_s"] <= result["makespan_s"]
        assert _successes(edgeplex_url, model) == 4 + 10  # what the server saw: warm-up + measured
    assert result["makespan_s"] == max(f["finish_s"] for f in result["per_model"].values())
    # makespan_s is rounded to the millisecond: on a makespan of tens of ms that alone moves the rate by %.
    assert result["equal_share_rate"] == pytest.approx(10 / result["makespan_s"], rel=0.01 + 0.0006 / result["makespan_s"])
    assert result["server_cpu_s"] >= 0 and result["busy_cores"] is not None


def test_settle_keeps_every_model_loaded_after_the_warm_up(edgeplex_url: str) -> None:
    result = fixed_job(edgeplex_url, _inputs(), clients_per_model=1, warmup=2, requests=3, settle_s=0.3)
    assert result["errors"] == 0, result["error_samples"]
    for model in ("add", "sub"):
        figures = result["per_model"][model]
        assert figures["warmup_sent"] > 2 and figures["sent"] == 3  # settle load, then exactly the job
        assert _successes(edgeplex_url, model) == figures["warmup_sent"] + 3


def test_fixed_job_counts_errors_without_hanging(edgeplex_url: str) -> None:
    wrong = {"add": {"x": np.zeros((1, 5), dtype=np.float32)}}  # the model takes [B, 4]
    result = fixed_job(edgeplex_url, wrong, clients_per_model=2, warmup=1, requests=6)
    assert result["per_model"]["add"]["sent"] == 6
    assert result["per_model"]["add"]["completed"] == 0 and result["errors"] == 6
    assert "server_cpu_s" not in result


def test_server_cpu_counts_descendants_that_have_exited() -> None:
    # Triton restarts a stub it finds unhealthy: the dead stub's time must not drop out of the sum.
    before = tree_cpu_seconds(os.getpid())
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                    "while time.process_time() < end: pass"], check=True)
    assert tree_cpu_seconds(os.getpid()) - before >= 0.25


# -- the real Triton -------------------------------------------------------------------------------------


@pytest.mark.skipif(not X86_LINUX, reason="nvidia-pytriton ships tritonserver for x86_64 Linux only")
@pytest.mark.timeout(240)  # the first run downloads the 55 MB wheel; about 15 s once it is cached
def test_real_triton_serves_the_hand_configuration(source: Path, tmp_path: Path) -> None:
    from edgeplex.bench.triton_peer import install, running_triton

    installed = install()
    assert installed.unresolved_libraries() == []
    repo = write_triton_repository(source, tmp_path / "triton", ["add", "sub"])
    with running_triton(repo, installed) as server:
        assert server.get_json("/v2")["version"].startswith("2.")
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            config = client.get_model_config("add").config
            assert config.backend == "python" and [g.count for g in config.instance_group] == [2]
            inputs = _inputs()
            x = grpcclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(inputs["add"]["x"])
            answer = client.infer("add", [x])
            np.testing.assert_array_equal(answer.as_numpy("y"), inputs["add"]["x"] * 2)
            np.testing.assert_array_equal(answer.as_numpy("z"), inputs["add"]["x"] * 3)
            a, b = grpcclient.InferInput("a", [1, 3], "INT32"), grpcclient.InferInput("b", [1, 3], "INT32")
            a.set_data_from_numpy(inputs["sub"]["a"])
            b.set_data_from_numpy(inputs["sub"]["b"])
            np.testing.assert_array_equal(client.infer("sub", [a, b]).as_numpy("out"), [[4, 5, 6]])
        finally:
            client.close()
        # Enough requests that the tree's CPU shows in whole clock ticks (10 ms) of the stubs' work.
        result = fixed_job(server.grpc_url, inputs, clients_per_model=2, warmup=2, requests=60,
                           server_pid=server.process.pid)
        assert result["errors"] == 0, result["error_samples"]
        assert all(f["completed"] == 60 for f in result["per_model"].values())
        assert server.successes("add") == 1 + 2 + 60
        assert result["server_cpu_s"] > 0  # the server's tree: the backend stubs compute
        pid = server.process.pid
    assert server.process.returncode == 0  # stopped cleanly by SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
