"""The methods that make variants: ONNX Runtime's dynamic and static (QDQ, per-channel) INT8
quantisation, FP16 with FP32 inputs and outputs (ONNX Runtime's transformer converter, which works
on the zoo's detector where onnxconverter-common's does not), and per-tensor magnitude pruning.

Each transform writes `dst` from `src` and returns its parameters for the metadata; it raises
on failure, and variants.py turns that into a VariantError that leaves the repository untouched.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime.quantization as oq
from onnx import numpy_helper

from ..errors import EdgeplexError
from .fidelity import CALIBRATION_SEED, Inputs, Reference

log = logging.getLogger(__name__)


class MethodError(ValueError):
    """A method cannot make a variant of a model; the message says why."""


_PRUNED = re.compile(r"^pruned-([1-9][0-9]?)$")

Transform = Callable[[Path, Path, Path, "Reference"], dict[str, Any]]
_GRAPH_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
_QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                  "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul"}


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]


def _ops(graph: onnx.GraphProto, top: bool = True) -> list[tuple[str, bool]]:
    """(op type, in the top-level graph) of every node, subgraphs (If/Loop bodies) included."""
    return [item for node in graph.node
            for item in [(node.op_type, top), *(op for g in _subgraphs(node) for op in _ops(g, False))]]


def _check_quantised(path: Path) -> None:
    """ValueError when the quantiser left the model as it was (it does not enter If/Loop bodies)."""
    ops = _ops(onnx.load(str(path), load_external_data=False).graph)
    if not any(op in _QUANTISED_OPS for op, _ in ops):
        nested = sum(1 for op, top in ops if op in _GRAPH_OPS and not top)
        where = f"; its {nested} Conv/MatMul/Gemm nodes are inside If/Loop subgraphs, which it does not enter" if nested else ""
        raise MethodError(f"ONNX Runtime's quantiser quantised no operator{where}")


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _preprocess(src: Path, work: Path, min_opset: int = 0) -> tuple[Path, str]:
    """ONNX Runtime's quantisation pre-processing (shape inference, graph optimisation), after
    converting to `min_opset` when older (per-channel QDQ needs the `axis` of opset 13). Symbolic
    shape inference is skipped where it fails (PP-OCR: "Incomplete symbolic shape inference")."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    steps = []
    if _opset(model) < min_opset:
        steps.append(f"opset {_opset(model)} -> {min_opset}")
        src = work / "converted.onnx"
        onnx.save(onnx.version_converter.convert_version(model, min_opset), str(src))
    out = work / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(out))
        return out, ", ".join([*steps, "quant_pre_process"])
    except Exception as exc:  # e.g. sympy missing, or incomplete symbolic shapes
        log.debug("quant_pre_process with symbolic shapes failed (%s); skipping them", describe(exc))
    quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    return out, ", ".join([*steps, "quant_pre_process(skip_symbolic_shape)"])


def _int8_dynamic(src: Path, dst: Path, work: Path, ref: Reference) -> dict[str, Any]:
    model, mode = _preprocess(src, work)
    oq.quantize_dynamic(str(model), str(dst), weight_type=oq.QuantType.QInt8, per_channel=False)
    _check_quantised(dst)
    return {"weight_type": "QInt8", "per_channel": False, "preprocess": mode}


class _Reader(oq.CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, samples: list[Inputs]) -> None:
        self._samples = iter(samples)

    def get_next(self) -> Inputs | None:
        return next(self._samples, None)


# Static INT8 quantises every operator ONNX Runtime can (its default); when that loses more than
# this, it tries again with the compute operators only and keeps whichever loses less. Measured on
# 16 samples: magika top-1 agreement 0 % -> 100 %, PP-OCR cls 88 % -> 100 %, PP-OCR rec text
# agreement 12 % -> 50 %; YOLOv8n keeps every operator quantised (loss 0.0002).
STATIC_RETRY_LOSS = 0.01
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")


def _quantize_static(model: Path, dst: Path, samples: list[Inputs], op_types: Sequence[str] | None) -> dict[str, Any]:
    """QDQ, per-channel, MinMax-calibrated; returns the extra options it needed."""
    def run(**extra: Any) -> None:
        oq.quantize_static(str(model), str(dst), _Reader(samples), quant_format=oq.QuantFormat.QDQ, per_channel=True,
                           activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
                           calibrate_method=oq.CalibrationMethod.MinMax,
                           op_types_to_quantize=list(op_types) if op_types else None, extra_options=extra)

    try:
        run()
        return {}
    except Exception as first:  # ORT 1.32 trips over per-channel weights with broadcast biases (magika)
        log.debug("quantize_static failed (%s); again without the int32-bias weight-scale adjustment", describe(first))
        try:
            run(QDQDisableWeightAdjustForInt32Bias=True)
        except Exception as second:
            raise MethodError(f"{describe(first)}; without the int32-bias adjustment: {describe(second)}") from second
    return {"QDQDisableWeightAdjustForInt32Bias": True}


def _int8_static(src: Path, dst: Path, work: Path, ref: Reference) -> dict[str, Any]:
    model, mode = _preprocess(src, work, min_opset=13)
    samples = ref.calibration()
    best: tuple[float, str, Path, dict[str, Any]] | None = None
    tried: dict[str, float] = {}
    errors: list[tuple[str, str]] = []
    for label, op_types in (("all", None), ("+".join(COMPUTE_OPS), COMPUTE_OPS)):
        if best is not None and best[0] <= STATIC_RETRY_LOSS:
            break
        out = work / f"static-{len(tried) + len(errors)}.onnx"
        try:
            extra = _quantize_static(model, out, samples, op_types)
            _check_quantised(out)
            loss = ref.evaluate(out).loss
        except Exception as exc:
            errors.append((label, describe(exc)))
            continue
        tried[label] = round(loss, 6)
        if best is None or loss < best[0]:
            best = (loss, label, out, extra)
    if best is None:
        if len({reason for _, reason in errors}) == 1:
            raise MethodError(errors[0][1])
        raise MethodError("; ".join(f"{label} operators: {reason}" for label, reason in errors))
    shutil.copyfile(best[2], dst)
    return {"format": "QDQ", "per_channel": True, "activation_type": "QUInt8", "weight_type": "QInt8",
            "calibrate_method": "MinMax", "calibration_samples": len(samples), "calibration_seed": CALIBRATION_SEED,
            "preprocess": mode, "op_types": best[1], "loss_by_op_types": tried, **best[3]}


FP16_MAX = 65504.0


def _fp32_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that must stay FP32 because a constant input has values FP16 cannot hold
    (PP-OCR det: a BatchNormalization variance of 9.8e7 would be clamped to 65504). Constant nodes
    become initializers first, since the converter leaves only initializers in FP32 for blocked nodes."""
    for node in [n for n in graph.node if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"]:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
    too_big = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT
               and np.abs(numpy_helper.to_array(init)).max(initial=0.0) > FP16_MAX}
    blocked = []
    for index, node in enumerate(graph.node):
        if too_big.intersection(node.input):
            node.name = node.name or f"edgeplex_fp32_{index}"
            blocked.append(node.name)
    return blocked


def _fp16(src: Path, dst: Path, work: Path, ref: Reference) -> dict[str, Any]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    blocked = _fp32_nodes(model.graph)
    onnx.save(convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked), str(dst))
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True, "fp32_nodes": blocked}


_WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _weights(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto]) -> dict[int, onnx.TensorProto]:
    """The constant weights (initializers or Constant nodes, subgraphs included, by scope) that
    Conv/ConvTranspose/MatMul/Gemm nodes take."""
    scope = {**outer, **{init.name: init for init in graph.initializer}}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    scope[node.output[0]] = attr.t
    found: dict[int, onnx.TensorProto] = {}
    for node in graph.node:
        for i in _WEIGHT_INPUTS.get(node.op_type, ()):
            tensor = scope.get(node.input[i]) if i < len(node.input) else None
            if tensor is not None and tensor.data_type in _FLOATS and int(np.prod(tensor.dims)) > 1:
                found[id(tensor)] = tensor
        for g in _subgraphs(node):
            found.update(_weights(g, scope))
    return found


def prune(src: Path, dst: Path, sparsity: float) -> dict[str, Any]:
    """Zero the smallest-magnitude `sparsity` fraction of each Conv/ConvTranspose/MatMul/Gemm weight
    (per tensor; biases and other tensors are kept). The file stays dense: as large as before."""
    model = onnx.load(str(src))
    tensors = list(_weights(model.graph, {}).values())
    if not tensors:
        raise MethodError("it has no constant Conv/MatMul/Gemm weights to prune")
    zeros = total = 0
    for tensor in tensors:
        weight = numpy_helper.to_array(tensor).copy()
        flat = weight.reshape(-1)
        k = int(round(sparsity * flat.size))
        if k > 0:
            flat[np.argpartition(np.abs(flat), k - 1)[:k]] = 0
        zeros, total = zeros + int((flat == 0).sum()), total + flat.size
        tensor.CopyFrom(numpy_helper.from_array(weight, tensor.name))
    onnx.save(model, str(dst))
    return {"sparsity": sparsity, "achieved_sparsity": round(zeros / total, 6), "scope": "per-tensor magnitude",
            "tensors": len(tensors), "weights": total}


def transform_for(variant: str) -> tuple[str, Transform]:
    """(method name, transform) of a variant name; ValueError for unknown names."""
    fixed: dict[str, tuple[str, Transform]] = {
        "int8-dynamic": ("quantize_dynamic", _int8_dynamic),
        "int8-static": ("quantize_static", _int8_static),
        "fp16": ("float16", _fp16),
    }
    if variant in fixed:
        return fixed[variant]
    match = _PRUNED.match(variant)
    if match and int(match[1]) > 0:
        sparsity = int(match[1]) / 100
        return "magnitude_pruning", lambda src, dst, work, ref: prune(src, dst, sparsity)
    raise ValueError(f"unknown variant '{variant}' (known: int8-dynamic, int8-static, fp16, pruned-NN)")


class _DropQuantiserInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def quiet_quantiser() -> Iterator[None]:
    """ONNX Runtime's quantiser logs every tensor at INFO on the root logger: keep its warnings only."""
    drop = _DropQuantiserInfo()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def describe(exc: BaseException) -> str:
    """One line: the error's type and message (whitespace collapsed, at most 500 characters)."""
    if isinstance(exc, EdgeplexError):
        return exc.message
    text = " ".join(str(exc).split())
    return (text if type(exc).__module__.startswith("edgeplex.") else f"{type(exc).__name__}: {text}")[:500]
