"""Tiny ONNX models the suite builds itself with onnx.helper (no download, milliseconds)."""

from __future__ import annotations

from pathlib import Path

import onnx
import yaml
from onnx import TensorProto, helper


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def add_model(path: Path, width: int = 4) -> Path:
    """y = x + x, z = x * 3 (FP32 [B, width]): two outputs, batchable."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", width])
    three = helper.make_tensor("three", TensorProto.FLOAT, [1], [3.0])
    nodes = [helper.make_node("Add", ["x", "x"], ["y"]), helper.make_node("Mul", ["x", "three"], ["z"])]
    return _save(helper.make_graph(nodes, "add", [x], [y, z], initializer=[three]), path)


def int_model(path: Path) -> Path:
    """out = a - b (INT32 [B, 3]), two inputs: checks input pairing and integer types."""
    a = helper.make_tensor_value_info("a", TensorProto.INT32, ["batch", 3])
    b = helper.make_tensor_value_info("b", TensorProto.INT32, ["batch", 3])
    out = helper.make_tensor_value_info("out", TensorProto.INT32, ["batch", 3])
    return _save(helper.make_graph([helper.make_node("Sub", ["a", "b"], ["out"])], "sub", [a, b], [out]), path)


def fixed_model(path: Path) -> Path:
    """A non-batchable model: y = x (FP32 [2, 2]) plus a scalar INT64 input `k`, y2 = k."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    y2 = helper.make_tensor_value_info("y2", TensorProto.INT64, [])
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["k"], ["y2"])]
    return _save(helper.make_graph(nodes, "fixed", [x, k], [y, y2]), path)


def slow_model(path: Path, size: int = 256, layers: int = 24) -> Path:
    """A MatMul chain (FP32 [B, size]) that takes a few milliseconds: for concurrency tests."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])
    inits, nodes, prev = [], [], "x"
    for i in range(layers):
        weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [size, size], weight.tobytes(), raw=True))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out]))
        prev = out
    return _save(helper.make_graph(nodes, "slow", [x], [y], initializer=inits), path)


def free_model(path: Path) -> Path:
    """y = x * 2 (FP32 [B, N], N free): requests of different N cannot share a batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])
    return _save(helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "free", [x], [y]), path)


def write_config(model_dir: Path, **fields: object) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(fields, sort_keys=False))


def build_tiny_repository(root: Path) -> Path:
    """A repository of tiny models: `add`, `sub`, `fixed`, `slow`, and a `broken` one."""
    add_model(root / "add" / "1" / "model.onnx")
    write_config(root / "add", name="add", max_batch_size=8)
    int_model(root / "sub" / "1" / "model.onnx")
    fixed_model(root / "fixed" / "1" / "model.onnx")
    slow_model(root / "slow" / "1" / "model.onnx")
    write_config(root / "slow", max_batch_size=8, instance_count=2)
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx file")
    return root
