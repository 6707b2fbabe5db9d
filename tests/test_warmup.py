"""Warm-up inputs (the first run of every instance at load) are valid for models that refuse
zeros: a general rule for audio models' sample rates, and what a config states in `parameters`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeplex.config import validate_config
from edgeplex.engine import warmup_inputs
from edgeplex.errors import ConfigError


def rate_checked_model(path: Path) -> Path:
    """out = audio * 2, but only for sr 8000 or 16000 (else a Gather out of range fails the run,
    as silero-vad's sample-rate branch does): audio [B, N] float32, sr int64 scalar."""
    audio = helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "samples"])
    table = helper.make_tensor("table", TensorProto.FLOAT, [2], [2.0, 2.0])
    nodes = [
        helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.INT64, [], [8000])),
        helper.make_node("Div", ["sr", "k"], ["q"]),  # 8000 -> 1, 16000 -> 2, 0 -> 0
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.INT64, [], [2])),
        helper.make_node("Sub", ["two", "q"], ["index"]),  # 1, 0, and 2: out of the table's range
        helper.make_node("Gather", ["table", "index"], ["gain"]),
        helper.make_node("Mul", ["audio", "gain"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "rate", [audio, sr], [out], initializer=[table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def config(**extra: Any) -> Any:
    return validate_config({"name": "vad", "max_batch_size": 0, "inputs": [
        {"name": "audio", "datatype": "FP32", "dims": [-1, -1]}, {"name": "sr", "datatype": "INT64", "dims": []}],
        "outputs": [{"name": "out", "datatype": "FP32", "dims": [-1, -1]}], **extra}, "test")


def test_a_sample_rate_input_gets_a_rate_and_audio_a_window(tmp_path: Path) -> None:
    session = ort.InferenceSession(str(rate_checked_model(tmp_path / "m.onnx")))
    with pytest.raises(Exception, match="out of data bounds"):  # zeros, the old warm-up, are refused
        session.run(None, {"audio": np.zeros((32, 32), np.float32), "sr": np.array(0, np.int64)})
    inputs = warmup_inputs(config())
    assert int(inputs["sr"]) == 16000 and inputs["sr"].dtype == np.int64 and inputs["sr"].shape == ()
    assert inputs["audio"].shape == (32, 512)
    session.run(None, inputs)


def test_other_models_keep_zeros_of_batch_1_and_unknown_dims_32() -> None:
    cfg = validate_config({"name": "img", "max_batch_size": 4, "inputs": [
        {"name": "x", "datatype": "FP32", "dims": [3, -1, -1]}, {"name": "rate", "datatype": "FP32", "dims": [1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "dims": [-1]}]}, "test")
    inputs = warmup_inputs(cfg)
    assert inputs["x"].shape == (1, 3, 32, 32) and not inputs["x"].any()
    assert not inputs["rate"].any()  # a float named 'rate' is no sample rate


def test_parameters_state_dims_and_values() -> None:
    inputs = warmup_inputs(config(parameters={"warmup_dims.audio": "1,576", "warmup_value.sr": "8000"}))
    assert inputs["audio"].shape == (1, 576) and int(inputs["sr"]) == 8000


@pytest.mark.parametrize("parameters, named", [
    ({"warmup_dims.audio": "1,0"}, "warmup_dims.audio"),
    ({"warmup_dims.audio": "1,2,3"}, "warmup_dims.audio"),
    ({"warmup_value.sr": "fast"}, "warmup_value.sr"),
])
def test_a_bad_parameter_is_named(parameters: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"model 'vad': parameter {named} = "):
        warmup_inputs(config(parameters=parameters))
