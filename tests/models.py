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


def conv_model(path: Path, seed: int = 0, constants: bool = False) -> Path:
    """A small convolutional classifier with real (random, He-scaled) weights, FP32 [B, 3, 16, 16] ->
    [B, 10]: Conv 3->16, Relu, Conv 16->32 stride 2, Relu, global average pool, MatMul 32->256,
    Relu, Gemm 256->10. About 20 k weights, so quantisation and pruning change sizes and outputs.
    `constants`: weights in Constant nodes instead of initializers (as PaddlePaddle exports them)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        value = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return helper.make_tensor(name, TensorProto.FLOAT, list(shape), value.tobytes(), raw=True)

    def bias(name: str, n: int) -> onnx.TensorProto:
        return helper.make_tensor(name, TensorProto.FLOAT, [n], (rng.standard_normal(n) * 0.1).astype(np.float32).tobytes(),
                                  raw=True)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])
    inits = [weight("c1", 16, 3, 3, 3), bias("b1", 16), weight("c2", 32, 16, 3, 3), bias("b2", 32),
             weight("m1", 32, 256), bias("b3", 256), weight("g1", 256, 10), bias("b4", 10),
             helper.make_tensor("flat", TensorProto.INT64, [2], [0, -1])]
    nodes = [
        helper.make_node("Conv", ["x", "c1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2", "b2"], ["h2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Reshape", ["p", "flat"], ["f"]),
        helper.make_node("MatMul", ["f", "m1"], ["h3"]),
        helper.make_node("Add", ["h3", "b3"], ["h4"]),
        helper.make_node("Relu", ["h4"], ["r4"]),
        helper.make_node("Gemm", ["r4", "g1", "b4"], ["y"]),
    ]
    if constants:
        nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in inits] + nodes
        inits = []
    return _save(helper.make_graph(nodes, "conv", [x], [y], initializer=inits), path)
