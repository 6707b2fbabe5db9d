"""The real server (`edgeplex serve` in a subprocess) on the real zoo, with stock clients.

Every zoo model over HTTP (JSON and binary) and gRPC must give what ONNX Runtime gives when it
runs the same file directly; many clients at once must all get their own correct answers.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from edgeplex.bench.process import ServerProcess, running_server
from edgeplex.tensors import v2_datatype
from edgeplex.zoo import ZOO, example_inputs

pytestmark = pytest.mark.integration

ZOO_MODELS = sorted(ZOO)
# The pareto policy (the default) may serve a model through OpenVINO: its f32 results differ
# from ONNX Runtime's in summation order only (tests/test_openvino.py), within this tolerance.
TOLERANCE = {"rtol": 1e-3, "atol": 1e-4}


@pytest.fixture(scope="module")
def server(zoo_repo: Path) -> Iterator[ServerProcess]:
    with running_server(zoo_repo, cores=2) as process:
        yield process


@pytest.fixture(scope="module")
def reference(zoo_repo: Path) -> dict[str, ort.InferenceSession]:
    return {name: ort.InferenceSession(str(zoo_repo / name / "1" / "model.onnx")) for name in ZOO_MODELS}


def expected(reference: dict[str, ort.InferenceSession], name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = reference[name]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def tensors(module: Any, inputs: dict[str, np.ndarray], binary: bool) -> list[Any]:
    out = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), v2_datatype(array.dtype))
        if module is httpclient:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def batch_of(name: str) -> int:
    return 2 if ZOO[name].config.get("max_batch_size", 0) > 0 else 1


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_grpc_matches_onnxruntime(server: ServerProcess, reference: dict[str, ort.InferenceSession], name: str) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = example_inputs(name, batch=batch_of(name), seed=3)
    result = client.infer(name, tensors(grpcclient, inputs, binary=True))
    for output, want in expected(reference, name, inputs).items():
        np.testing.assert_allclose(result.as_numpy(output), want, **TOLERANCE)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_http_binary_matches_onnxruntime(server: ServerProcess, reference: dict[str, ort.InferenceSession], name: str) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = example_inputs(name, batch=batch_of(name), seed=4)
    result = client.infer(name, tensors(httpclient, inputs, binary=True))
    for output, want in expected(reference, name, inputs).items():
        np.testing.assert_allclose(result.as_numpy(output), want, **TOLERANCE)


@pytest.mark.parametrize("name", ["magika", "ppocr_cls", "silero_vad", "ppocr_rec"])
def test_http_json_matches_onnxruntime(server: ServerProcess, reference: dict[str, ort.InferenceSession], name: str) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    inputs = example_inputs(name, seed=5)
    outputs = [httpclient.InferRequestedOutput(o.name, binary_data=False) for o in reference[name].get_outputs()]
    result = client.infer(name, tensors(httpclient, inputs, binary=False), outputs=outputs)
    for output, want in expected(reference, name, inputs).items():
        np.testing.assert_allclose(result.as_numpy(output), want, **TOLERANCE)


def test_metadata_and_config_of_every_zoo_model(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    assert client.is_server_ready() and gclient.is_server_ready()
    for name in ZOO_MODELS:
        meta = client.get_model_metadata(name)
        config = gclient.get_model_config(name).config
        assert meta["name"] == name and config.name == name
        assert [i["name"] for i in meta["inputs"]] == [i.name for i in config.input]
        assert config.max_batch_size == ZOO[name].config.get("max_batch_size", 0)


def test_many_clients_across_models_all_correct(server: ServerProcess, reference: dict[str, ort.InferenceSession]) -> None:
    models = ["yolov8n", "ppocr_det", "ppocr_rec", "magika", "ppocr_cls", "silero_vad"]
    cases = {name: example_inputs(name, seed=11) for name in models}
    wants = {name: expected(reference, name, cases[name]) for name in models}
    failures: list[str] = []
    answered = [0]
    lock = threading.Lock()

    def client_thread(index: int) -> None:
        grpc_side = index % 2 == 0
        client: Any = (
            grpcclient.InferenceServerClient(server.grpc_url) if grpc_side else httpclient.InferenceServerClient(server.http_url)
        )
        module = grpcclient if grpc_side else httpclient
        for step in range(12):
            name = models[(index + step) % len(models)]
            try:
                result = client.infer(name, tensors(module, cases[name], binary=True))
                for output, want in wants[name].items():
                    if not np.allclose(result.as_numpy(output), want, **TOLERANCE):
                        raise AssertionError(f"{name}.{output} differs")
            except Exception as exc:  # collected and asserted below
                with lock:
                    failures.append(f"client {index} {name}: {exc}")
            else:
                with lock:
                    answered[0] += 1

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert answered[0] == 8 * 12


def test_bad_inputs_are_refused_and_the_server_goes_on(server: ServerProcess, reference: dict[str, ort.InferenceSession]) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    hclient = httpclient.InferenceServerClient(server.http_url)
    good = example_inputs("yolov8n")
    wrong_shape = {"images": np.zeros((1, 3, 224, 224), np.float32)}
    with pytest.raises(InferenceServerException, match="images") as info:
        client.infer("yolov8n", tensors(grpcclient, wrong_shape, binary=True))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="must be INT32"):
        hclient.infer("magika", tensors(httpclient, {"bytes": np.zeros((1, 2048), np.float32)}, binary=True))
    with pytest.raises(InferenceServerException, match="not in the repository"):
        hclient.infer("no_such_model", tensors(httpclient, good, binary=True))
    result = client.infer("yolov8n", tensors(grpcclient, good, binary=True))
    np.testing.assert_allclose(result.as_numpy("output0"), expected(reference, "yolov8n", good)["output0"], **TOLERANCE)


def test_sigterm_under_load_exits_cleanly(zoo_repo: Path) -> None:
    with running_server(zoo_repo, "--model", "magika", cores=2) as process:
        client = grpcclient.InferenceServerClient(process.grpc_url)
        inputs = tensors(grpcclient, example_inputs("magika"), binary=True)
        stop = threading.Event()
        outcomes: list[str] = []

        def load() -> None:
            while not stop.is_set():
                try:
                    client.infer("magika", inputs)
                    outcomes.append("ok")
                except InferenceServerException:
                    outcomes.append("refused")
                    return

        thread = threading.Thread(target=load)
        thread.start()
        deadline = time.monotonic() + 30
        while len(outcomes) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        process.process.send_signal(signal.SIGTERM)
        code = process.process.wait(30)
        stop.set()
        thread.join(10)
        assert code == 0, "\n".join(process.output[-20:])
        assert outcomes.count("ok") >= 20
