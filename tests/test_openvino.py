"""The OpenVINO backend: same outputs as ONNX Runtime, explicit threads, the GIL released,
outputs that survive the next run, errors mapped, and the zoo's real models (integration)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from models import add_model, fixed_model, int_model, slow_model, write_config
from onnx import TensorProto, helper

from edgeplex.backends import available_backends, get_backend
from edgeplex.backends.base import ExecutionConfig, Session
from edgeplex.backends.onnxruntime import OnnxRuntimeBackend
from edgeplex.backends.openvino import OpenVinoBackend, OpenVinoSession
from edgeplex.engine import Engine, InferRequest
from edgeplex.errors import BackendError, InvalidInput

OV = ExecutionConfig(backend="openvino", threads=1)
ORT = ExecutionConfig(backend="onnxruntime", threads=1)
X = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5


@pytest.fixture(scope="module")
def backend() -> OpenVinoBackend:
    return OpenVinoBackend()


@pytest.fixture
def opened(backend: OpenVinoBackend) -> Iterator[Callable[..., OpenVinoSession]]:
    sessions: list[OpenVinoSession] = []

    def open_(path: Path, config: ExecutionConfig = OV) -> OpenVinoSession:
        sessions.append(backend.open(path, config))
        return sessions[-1]

    yield open_
    for session in sessions:
        session.close()


def _ort(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = OnnxRuntimeBackend().open(path, ORT)
    try:
        return session.run(inputs)
    finally:
        session.close()


def test_registered_and_described(backend: OpenVinoBackend) -> None:
    assert "openvino" in available_backends()
    assert isinstance(get_backend("openvino"), OpenVinoBackend)
    assert backend.available()
    assert backend.version()[:4].isdigit()  # e.g. "2026.4.1-22982-..."
    processors = backend.processors()
    assert processors[0] == "cpu"
    assert all(p.startswith(("gpu:", "npu:")) for p in processors[1:])
    with pytest.raises(BackendError, match="cannot use processor 'tpu:0'"):
        backend.device_for("tpu:0")
    if "gpu:7" not in processors:
        with pytest.raises(BackendError, match="no device for processor 'gpu:7'"):
            backend.device_for("gpu:7")


@pytest.mark.parametrize(
    ("build", "inputs"),
    [
        (add_model, {"x": X}),
        (int_model, {"a": np.array([[5, 6, 7], [0, -1, 2]], np.int32), "b": np.array([[1, 1, 9], [3, 3, 3]], np.int32)}),
        (fixed_model, {"x": np.array([[1.5, -2.0], [3.0, 4.25]], np.float32), "k": np.array(7, np.int64)}),
    ],
    ids=["add", "sub", "fixed-scalar-int64"],
)
def test_outputs_equal_onnxruntime(tmp_path: Path, opened: Callable[..., OpenVinoSession],
                                   build: Callable[[Path], Path], inputs: dict[str, np.ndarray]) -> None:
    path = build(tmp_path / "model.onnx")
    session = opened(path)
    assert isinstance(session, Session)
    got, want = session.run(inputs), _ort(path, inputs)
    assert list(got) == list(want)  # the model's order, by ONNX name
    for name in want:
        assert got[name].dtype == want[name].dtype
        assert got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])


def test_requested_outputs_subset_and_order(tmp_path: Path, opened: Callable[..., OpenVinoSession]) -> None:
    session = opened(add_model(tmp_path / "add.onnx"))
    assert session.output_names == ["y", "z"]
    both = session.run({"x": X}, ["z", "y"])
    assert list(both) == ["z", "y"]
    np.testing.assert_array_equal(both["z"], X * 3)
    only = session.run({"x": X}, ["y"])
    assert list(only) == ["y"]
    np.testing.assert_array_equal(only["y"], X + X)
    with pytest.raises(InvalidInput, match="no output 'w'"):
        session.run({"x": X}, ["w"])


def test_outputs_survive_later_runs(tmp_path: Path, opened: Callable[..., OpenVinoSession]) -> None:
    session = opened(add_model(tmp_path / "add.onnx"))
    first = session.run({"x": X})
    session.run({"x": -X})
    session.run({"x": X[:1] * 100})  # another shape: buffers may be reallocated too
    np.testing.assert_array_equal(first["y"], X + X)
    np.testing.assert_array_equal(first["z"], X * 3)


def test_dynamic_batch(tmp_path: Path, opened: Callable[..., OpenVinoSession]) -> None:
    session = opened(add_model(tmp_path / "add.onnx"))
    for batch in (1, 5, 2):
        x = np.full((batch, 4), batch, np.float32)
        np.testing.assert_array_equal(session.run({"x": x})["y"], x + x)


def test_threads_and_precision_reach_openvino(tmp_path: Path, opened: Callable[..., OpenVinoSession]) -> None:
    path = slow_model(tmp_path / "slow.onnx", size=64, layers=2)
    one = opened(path, ExecutionConfig(backend="openvino", threads=1)).compiled_model
    assert one.get_property("INFERENCE_NUM_THREADS") == 1
    assert one.get_property("NUM_STREAMS") == 1
    assert one.get_property("ENABLE_CPU_PINNING") is False
    assert str(one.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    if len(os.sched_getaffinity(0)) >= 2:
        two = opened(path, ExecutionConfig(backend="openvino", threads=2)).compiled_model
        assert two.get_property("INFERENCE_NUM_THREADS") == 2
    default = opened(path, ExecutionConfig(backend="openvino", threads=0)).compiled_model
    assert default.get_property("INFERENCE_NUM_THREADS") >= 1


def test_run_keeps_the_callers_pinning(tmp_path: Path, opened: Callable[..., OpenVinoSession]) -> None:
    """The TokenPool pins the executor thread; OpenVINO's own pinning would reset it."""
    session = opened(slow_model(tmp_path / "slow.onnx", size=64, layers=2))
    core = max(os.sched_getaffinity(0))
    seen: list[set[int]] = []

    def work() -> None:
        os.sched_setaffinity(0, {core})
        session.run({"x": np.ones((4, 64), np.float32)})
        seen.append(os.sched_getaffinity(0))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [{core}]


def test_run_releases_the_gil(tmp_path: Path, opened: Callable[..., OpenVinoSession]) -> None:
    """While one thread is inside `run`, another keeps running Python. Held, the GIL would stop
    it for the whole run; this holds on one core or on a busy shared box too, where a speed-up
    test would not (measured speed-up of two such sessions in two threads on 2 idle cores: 1.5-1.9x)."""
    session = opened(slow_model(tmp_path / "slow.onnx"))
    x = np.ones((64, 256), np.float32)
    session.run({"x": x})
    start = time.perf_counter()
    session.run({"x": x})
    single = time.perf_counter() - start
    big = np.ones((max(64, int(64 * 0.2 / max(single, 1e-4))), 256), np.float32)  # ~200 ms
    session.run({"x": big})  # first run at this shape: shape checks, buffers
    window: list[float] = []

    def work() -> None:
        window.append(time.perf_counter())
        session.run({"x": big})
        window.append(time.perf_counter())

    thread = threading.Thread(target=work)
    ticks: list[float] = []
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    began, ended = window
    margin = (ended - began) * 0.2
    inside = [t for t in ticks if began + margin < t < ended - margin]
    gaps = np.diff([began + margin, *inside, ended - margin])
    assert len(inside) > 100, f"the main thread ran {len(inside)} times in a {ended - began:.3f} s run"
    assert gaps.max() < 0.5 * (ended - began), f"the main thread stood still {gaps.max():.3f} s of {ended - began:.3f} s"


def test_bad_inputs_are_invalid_input(tmp_path: Path, opened: Callable[..., OpenVinoSession]) -> None:
    session = opened(add_model(tmp_path / "add.onnx"))
    with pytest.raises(InvalidInput, match=r"'x' has shape \[3, 5\]"):
        session.run({"x": np.ones((3, 5), np.float32)})
    with pytest.raises(InvalidInput, match=r"'x' has shape \[12\]"):
        session.run({"x": np.ones(12, np.float32)})
    # OpenVINO would convert these silently; ONNX Runtime refuses them, so do we.
    with pytest.raises(InvalidInput, match="'x' must be float32, got float64"):
        session.run({"x": X.astype(np.float64)})
    with pytest.raises(InvalidInput, match="'x' is missing"):
        session.run({})
    with pytest.raises(InvalidInput, match="no input 'q'"):
        session.run({"x": X, "q": X})
    fixed = opened(fixed_model(tmp_path / "fixed.onnx"))
    with pytest.raises(InvalidInput, match="'k' has shape"):
        fixed.run({"x": np.ones((2, 2), np.float32), "k": np.array([7], np.int64)})
    np.testing.assert_array_equal(session.run({"x": X})["y"], X + X)  # still usable afterwards


def _broadcast_model(path: Path) -> Path:
    """y = relu(a + b) with independent dynamic dims: a [3] + b [4] only fails at run time."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["m"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "bcast", [a, b], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_shape_error_at_run_time_is_invalid_input_not_a_stale_result(
    tmp_path: Path, opened: Callable[..., OpenVinoSession]
) -> None:
    """With one thread, OpenVINO 2026.4 answers a shape error with the previous run's outputs;
    the backend asks OpenVINO's shape inference first."""
    session = opened(_broadcast_model(tmp_path / "bcast.onnx"))
    ones = np.ones(3, np.float32)
    np.testing.assert_array_equal(session.run({"a": ones, "b": ones})["y"], [2, 2, 2])
    with pytest.raises(InvalidInput, match=r"refused the input shapes .*a \[3\], b \[4\]"):
        session.run({"a": ones, "b": np.ones(4, np.float32)})
    np.testing.assert_array_equal(session.run({"a": ones, "b": np.ones(1, np.float32)})["y"], [2, 2, 2])  # broadcast


def test_corrupt_or_missing_model_is_backend_error(tmp_path: Path, backend: OpenVinoBackend) -> None:
    corrupt = tmp_path / "broken" / "1" / "model.onnx"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"this is not an onnx file")
    with pytest.raises(BackendError, match=r"openvino cannot load .*broken/1/model\.onnx: .*can't be parsed"):
        backend.open(corrupt, OV)
    with pytest.raises(BackendError, match="missing.onnx: no such file"):
        backend.open(tmp_path / "missing.onnx", OV)


def test_closed_session_refuses(tmp_path: Path, backend: OpenVinoBackend) -> None:
    session = backend.open(add_model(tmp_path / "add.onnx"), OV)
    assert session.memory_bytes >= (tmp_path / "add.onnx").stat().st_size
    session.close()
    with pytest.raises(BackendError, match="closed"):
        session.run({"x": X})


def _branchy_model(path: Path) -> Path:
    """Like silero-vad: an `If` on a scalar int64 input whose branches differ in rank, then a Conv.
    OpenVINO cannot convert it with dynamic shapes; the backend specialises it per signature."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    mode = helper.make_tensor_value_info("mode", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 3], [1, 2, 1, -1, 0, 1])
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    unsqueezed = helper.make_tensor_value_info("u", TensorProto.FLOAT, None)
    then_branch = helper.make_graph([helper.make_node("Unsqueeze", ["x", "axes"], ["u"])], "then", [], [unsqueezed])
    flat = helper.make_tensor_value_info("f", TensorProto.FLOAT, None)
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["f"])], "else", [], [flat])
    nodes = [
        helper.make_node("Equal", ["mode", "one"], ["cond"]),
        helper.make_node("If", ["cond"], ["h"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Conv", ["h", "w"], ["y"], pads=[1, 1]),
    ]
    graph = helper.make_graph(nodes, "branchy", [x, mode], [y], initializer=[axes, weight, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_model_with_shape_dependent_branches_is_specialised(tmp_path: Path, opened: Callable[..., OpenVinoSession]) -> None:
    path = _branchy_model(tmp_path / "branchy.onnx")
    session = opened(path)
    assert session.compiled_model is None  # specialised, not dynamic
    for batch, n in ((1, 8), (3, 5), (1, 8)):
        inputs = {"x": np.arange(batch * n, dtype=np.float32).reshape(batch, n), "mode": np.array(1, np.int64)}
        got, want = session.run(inputs), _ort(path, inputs)
        assert list(got) == ["y"]
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6)
    with pytest.raises(BackendError, match="cannot compile"):  # mode 0: a Conv on a matrix, ORT fails too
        session.run({"x": np.ones((1, 8), np.float32), "mode": np.array(0, np.int64)})
    with pytest.raises(InvalidInput, match="'mode' must be int64"):
        session.run({"x": np.ones((1, 8), np.float32), "mode": np.array(1, np.int32)})
    with pytest.raises(InvalidInput, match="'mode' must be a scalar"):
        session.run({"x": np.ones((1, 8), np.float32), "mode": np.array([1], np.int64)})
    with pytest.raises(InvalidInput, match="'x' has rank 3"):
        session.run({"x": np.ones((1, 8, 1), np.float32), "mode": np.array(1, np.int64)})


def test_engine_serves_a_model_on_openvino(tmp_path: Path) -> None:
    add_model(tmp_path / "add" / "1" / "model.onnx")
    write_config(tmp_path / "add", name="add", backend="openvino", max_batch_size=8)
    slow_model(tmp_path / "slow" / "1" / "model.onnx", size=64, layers=4)
    write_config(tmp_path / "slow", backend="openvino", max_batch_size=8, instance_count=2)
    engine = Engine(tmp_path, cores=2)
    try:
        assert engine.load_all() == {}  # the failures, by name
        assert engine.config("add").backend == "openvino"
        response = engine.infer(InferRequest("add", {"x": X}))
        assert list(response.outputs) == ["y", "z"]
        np.testing.assert_array_equal(response.outputs["z"], X * 3)
        x = np.ones((2, 64), np.float32)
        want = _ort(tmp_path / "slow" / "1" / "model.onnx", {"x": x})["y"]
        futures = [engine.submit(InferRequest("slow", {"x": x})) for _ in range(6)]
        for future in futures:
            np.testing.assert_allclose(future.result(timeout=30).outputs["y"], want, rtol=1e-5, atol=1e-6)
    finally:
        engine.close()


# -- the zoo's real models ------------------------------------------------------------------------

ZOO_MODELS = ["yolov8n", "ppocr_det", "ppocr_rec", "ppocr_cls", "magika", "silero_vad"]
# Observed worst |OV - ORT| / (atol + rtol * |ORT|) with these: 0.08 (ppocr_det, batch 2); f32 on
# both sides, the difference is summation order (OpenVINO's own conv/matmul kernels).
RTOL, ATOL = 1e-3, 1e-4


@pytest.mark.integration
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_model_matches_onnxruntime(zoo_repo: Path, backend: OpenVinoBackend, name: str, batch: int) -> None:
    from edgeplex.zoo import ZOO, example_inputs

    assert ZOO[name].config["max_batch_size"] > 0 or name == "silero_vad"  # silero batches on its own axis
    path = zoo_repo / name / "1" / "model.onnx"
    inputs = example_inputs(name, batch)
    want = _ort(path, inputs)
    session = backend.open(path, OV)
    try:
        got = session.run(inputs)
        assert list(got) == list(want)
        for key in want:
            assert got[key].shape == want[key].shape, key
            np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=f"{name} {key}")
    finally:
        session.close()


@pytest.mark.integration
@pytest.mark.parametrize(("name", "shape"), [("ppocr_det", (1, 3, 256, 480)), ("ppocr_rec", (2, 3, 48, 160)),
                                             ("yolov8n", (1, 3, 256, 416))])
def test_zoo_dynamic_dims(zoo_repo: Path, backend: OpenVinoBackend, name: str, shape: tuple[int, ...]) -> None:
    from edgeplex.zoo import example_inputs

    path = zoo_repo / name / "1" / "model.onnx"
    session = backend.open(path, OV)
    try:
        session.run(example_inputs(name, 1))  # first another shape: the same request runs both
        key = "images" if name == "yolov8n" else "x"
        x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        got, want = session.run({key: x}), _ort(path, {key: x})
        for out in want:
            assert got[out].shape == want[out].shape
            np.testing.assert_allclose(got[out], want[out], rtol=RTOL, atol=ATOL)
    finally:
        session.close()


@pytest.mark.integration
def test_zoo_shape_the_model_cannot_take_is_refused(zoo_repo: Path, backend: OpenVinoBackend) -> None:
    """PP-OCR det needs H, W multiples of 32. With one thread OpenVINO 2026.4 answered 100x100
    with the previous run's output (or an empty one, then crashed); it must be InvalidInput."""
    from edgeplex.zoo import example_inputs

    path = zoo_repo / "ppocr_det" / "1" / "model.onnx"
    session = backend.open(path, OV)
    try:
        good = example_inputs("ppocr_det", 1)
        want = session.run(good)["sigmoid_0.tmp_0"]
        for _ in range(2):  # refused from the cache the second time
            with pytest.raises(InvalidInput, match=r"refused the input shapes .*x \[1, 3, 100, 100\]"):
                session.run({"x": np.zeros((1, 3, 100, 100), np.float32)})
        np.testing.assert_array_equal(session.run(good)["sigmoid_0.tmp_0"], want)
    finally:
        session.close()


@pytest.mark.integration
def test_zoo_silero_vad_carries_state(zoo_repo: Path, backend: OpenVinoBackend) -> None:
    """Stateful use: each chunk's `stateN` is the next chunk's `state`, on both backends."""
    from edgeplex.zoo import example_inputs

    path = zoo_repo / "silero_vad" / "1" / "model.onnx"
    ov_session = backend.open(path, OV)
    ort_session = OnnxRuntimeBackend().open(path, ORT)
    try:
        ov_state = ort_state = np.zeros((2, 1, 128), np.float32)
        for seed in range(4):
            chunk = example_inputs("silero_vad", 1, seed=seed)
            got = ov_session.run({**chunk, "state": ov_state})
            want = ort_session.run({**chunk, "state": ort_state})
            np.testing.assert_allclose(got["output"], want["output"], rtol=RTOL, atol=ATOL)
            ov_state, ort_state = got["stateN"], want["stateN"]
        np.testing.assert_allclose(ov_state, ort_state, rtol=RTOL, atol=ATOL)
    finally:
        ov_session.close()
        ort_session.close()


@pytest.mark.integration
def test_engine_serves_zoo_models_on_openvino(zoo_repo: Path, tmp_path: Path) -> None:
    from edgeplex.zoo import ZOO, example_inputs

    for name in ("magika", "silero_vad"):
        (tmp_path / name / "1").mkdir(parents=True)
        shutil.copy(zoo_repo / name / "1" / "model.onnx", tmp_path / name / "1" / "model.onnx")
        write_config(tmp_path / name, **{**ZOO[name].config, "backend": "openvino"})
    engine = Engine(tmp_path, cores=2)
    try:
        assert engine.load_all() == {}
        for name in ("magika", "silero_vad"):
            inputs = example_inputs(name, 1)
            got = engine.infer(InferRequest(name, inputs)).outputs
            want = _ort(zoo_repo / name / "1" / "model.onnx", inputs)
            for key in want:
                np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL)
    finally:
        engine.close()
