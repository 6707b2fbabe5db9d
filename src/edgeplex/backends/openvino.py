"""OpenVINO backend: reads ONNX directly; CPU with explicit threads, Intel GPU / NPU when present.

Most models compile once with their dynamic dims. A model whose ONNX graph OpenVINO cannot
convert with dynamic shapes (silero-vad: `If` branches on the sample rate and on tensor shapes
give values of unknown rank) is specialised instead: per input signature (the shapes, and the
values of scalar integer inputs such as `sr`) the ONNX graph gets static input shapes, those
scalars become constants and the `If` nodes they decide are inlined; the result is compiled
once and kept (a few signatures, least recently used first out).

A dynamic model's outputs are checked against OpenVINO's own shape inference for each new input
signature: with INFERENCE_NUM_THREADS=1, OpenVINO 2026.4 swallows a shape error at run time and
hands back the previous run's outputs (or empty ones, and then crashes); the check turns that
into InvalidInput before the run.
"""

from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, InvalidInput
from .base import ExecutionConfig, measure_rss

_MAX_SPECIALISATIONS = 8
_MAX_CHECKED_SHAPES = 256
# Messages with which OpenVINO refuses an input tensor (port lookup, shape check in set_tensor).
_INPUT_FAULTS = ("Can't set the input tensor", "are incompatible", "Port for tensor name")

_ov: Any = None
_core: Any = None
_core_lock = threading.Lock()


def _openvino() -> Any:
    """The openvino module, imported on first use (its import takes most of a second)."""
    global _ov
    if _ov is None:
        try:
            _ov = importlib.import_module("openvino")
        except ImportError:
            _ov = False
    return _ov or None


def _get_core() -> Any:
    """The process's one `ov.Core` (plugins and their caches are per Core)."""
    global _core
    with _core_lock:
        if _core is None:
            ov = _openvino()
            if ov is None:
                raise BackendError("openvino is not installed")
            _core = ov.Core()
        return _core


class _Compiled:
    """One compiled model, its one InferRequest, and what a run needs to know about its ports."""

    def __init__(self, model: Any, compiled: Any) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        # Names come from the model as read: compiling merges the names of fused tensors into
        # the ports' (silero's `output` also answers to `If_0_outputs_0`; an fp16 variant's input
        # `images` became `graph_input_cast_0`). Inputs are passed by position.
        self.inputs = [(read.get_any_name(), port.get_element_type().to_dtype(), port.get_partial_shape())
                       for read, port in zip(model.inputs, compiled.inputs)]
        self.output_names = [port.get_any_name() for port in model.outputs]
        self.output_index: dict[str, int] = {}
        for i, (name, port) in enumerate(zip(self.output_names, compiled.outputs)):
            if name not in port.get_names():  # pragma: no cover - OpenVINO keeps the order
                raise BackendError(f"openvino reordered the outputs: {name} is not {port.get_names()}")
            self.output_index[name] = i
        # Kept for shape inference (see the module's docstring); static models need none.
        self._model = model if any(port.get_partial_shape().is_dynamic for port in model.inputs) else None
        self._checked: OrderedDict[tuple[tuple[int, ...], ...], list[Any]] = OrderedDict()

    def check(self, inputs: Mapping[str, np.ndarray], model: str) -> None:
        """InvalidInput naming the first input that is missing, unknown, of another type or shape."""
        expected = {name for name, _, _ in self.inputs}
        unknown = sorted(set(inputs) - expected)
        if unknown:
            raise InvalidInput(f"{model} has no input '{unknown[0]}' (inputs: {', '.join(sorted(expected))})")
        for name, dtype, shape in self.inputs:
            if name not in inputs:
                raise InvalidInput(f"{model}: input '{name}' is missing")
            array = inputs[name]
            # OpenVINO would convert another dtype silently; refuse it, as ONNX Runtime does.
            if array.dtype != dtype:
                raise InvalidInput(f"{model}: input '{name}' must be {dtype}, got {array.dtype}")
            if not shape.compatible(_ov.PartialShape(list(array.shape))):
                raise InvalidInput(f"{model}: input '{name}' has shape {list(array.shape)}, expected {shape}")

    def expected_outputs(self, inputs: Mapping[str, np.ndarray], model: str) -> list[Any] | None:
        """The output shapes OpenVINO's shape inference gives these input shapes (cached per
        signature, about 15-40 ms the first time); InvalidInput if it refuses them."""
        if self._model is None:
            return None
        key = tuple(tuple(inputs[name].shape) for name, _, _ in self.inputs)
        shapes = self._checked.get(key)
        if shapes is None:
            trial = self._model.clone()
            try:
                trial.reshape({name: _ov.PartialShape(list(inputs[name].shape)) for name, _, _ in self.inputs})
            except Exception as exc:
                given = ", ".join(f"{name} {list(inputs[name].shape)}" for name, _, _ in self.inputs)
                raise InvalidInput(f"openvino refused the input shapes of {model} ({given}): {_last_line(str(exc))}") from None
            shapes = [port.get_partial_shape() for port in trial.outputs]
            self._checked[key] = shapes
            if len(self._checked) > _MAX_CHECKED_SHAPES:
                self._checked.popitem(last=False)
        self._checked.move_to_end(key)
        return shapes

    def run(self, inputs: Mapping[str, np.ndarray], names: Sequence[str], model: str) -> dict[str, np.ndarray]:
        missing = [n for n in names if n not in self.output_index]
        if missing:
            raise InvalidInput(f"{model} has no output '{missing[0]}' (outputs: {', '.join(self.output_names)})")
        self.check(inputs, model)
        expected = self.expected_outputs(inputs, model)
        try:
            # `infer` releases the GIL. share_inputs avoids a copy (and makes OpenVINO check the
            # shape: with copies it ran a wrong-shaped input on the previous run's data);
            # share_outputs returns views of the request's buffers, which the next run overwrites,
            # so only the requested outputs are copied out.
            feed = {index: inputs[name] for index, (name, _, _) in enumerate(self.inputs)}
            results = self.request.infer(feed, share_inputs=True, share_outputs=True)
        except Exception as exc:
            text = str(exc)
            if any(fault in text for fault in _INPUT_FAULTS):
                raise InvalidInput(f"openvino refused the input of {model}: {_last_line(text)}") from None
            raise BackendError(f"openvino failed to run {model}: {type(exc).__name__}: {_last_line(text)}") from None
        for i, shape in enumerate(expected or ()):
            got = results[i].shape
            if not shape.compatible(_ov.PartialShape(list(got))):
                raise BackendError(f"openvino returned {list(got)} for output '{self.output_names[i]}' of {model} "
                                   f"where its shape inference gives {shape}: result discarded")
        return {n: np.array(results[self.output_index[n]], copy=True) for n in names}


class OpenVinoSession:
    """One compiled model (or a few specialisations of one) with one InferRequest each."""

    def __init__(self, name: str, memory_bytes: int, compiled: _Compiled | None = None,
                 specialiser: _Specialiser | None = None) -> None:
        self._name = name
        self._memory_bytes = memory_bytes
        self._compiled = compiled
        self._specialiser = specialiser
        self._lock = threading.Lock()  # one InferRequest: concurrent callers take turns
        self._closed = False

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def compiled_model(self) -> Any:
        """The dynamic-shape CompiledModel (None for a specialised model): for reading properties."""
        return self._compiled.compiled if self._compiled is not None else None

    @property
    def output_names(self) -> list[str]:
        if self._compiled is not None:
            return list(self._compiled.output_names)
        assert self._specialiser is not None
        return list(self._specialiser.output_names)

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        with self._lock:
            if self._closed:
                raise BackendError(f"openvino session of {self._name} is closed")
            if self._compiled is not None:
                compiled, feed = self._compiled, inputs
            else:
                assert self._specialiser is not None
                compiled, feed = self._specialiser.compiled_for(inputs)
            names = list(outputs) if outputs else compiled.output_names
            return compiled.run(feed, names, self._name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._compiled = None
            self._specialiser = None


class OpenVinoBackend:
    """Opens OpenVINO sessions. The token pool above decides how many run at once."""

    name = "openvino"

    def __init__(self) -> None:
        self._processors: list[str] | None = None

    def available(self) -> bool:
        return _openvino() is not None

    def version(self) -> str:
        ov = _openvino()
        return str(ov.__version__) if ov is not None else "missing"

    def processors(self) -> list[str]:
        if _openvino() is None:
            return []
        if self._processors is None:
            found = ["cpu"]
            for device in _get_core().available_devices:
                kind, _, index = device.partition(".")
                if kind in ("GPU", "NPU"):
                    found.append(f"{kind.lower()}:{index or '0'}")
            self._processors = found
        return list(self._processors)

    def device_for(self, processor: str) -> str:
        """OpenVINO's device name for one of our processors ("cpu" -> "CPU", "gpu:1" -> "GPU.1")."""
        if processor == "cpu":
            return "CPU"
        kind, _, index = processor.partition(":")
        if kind in ("gpu", "npu"):
            devices = _get_core().available_devices
            for name in (f"{kind.upper()}.{index or '0'}", kind.upper()):
                if name in devices and (name != kind.upper() or index in ("", "0")):
                    return name
            raise BackendError(f"openvino has no device for processor '{processor}' (devices: {', '.join(devices)})")
        raise BackendError(f"openvino cannot use processor '{processor}'")

    def compile_config(self, config: ExecutionConfig) -> dict[str, Any]:
        """Properties for compile_model on the config's processor."""
        if config.processor.startswith("npu"):
            return {"PERFORMANCE_HINT": "LATENCY"}
        # f32: the CPU's default is bf16 where it has AVX512-BF16 (it does here), which changes outputs.
        properties: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        if config.processor == "cpu":
            properties["INFERENCE_NUM_THREADS"] = config.threads  # 0: OpenVINO's default
            # Off: with pinning on, OpenVINO reset the TokenPool's pinning of the calling thread to
            # all cores and put every session on one core (two 1-thread sessions: 1.0x vs 1.9x).
            properties["ENABLE_CPU_PINNING"] = False
            # ENABLE_HYPER_THREADING stays OpenVINO's: with pinning off it only picks the CPUs of
            # OpenVINO's own defaults, and here (no SMT) it changed neither threads nor affinity.
        return properties

    def open(self, model_path: Path, config: ExecutionConfig) -> OpenVinoSession:
        if _openvino() is None:
            raise BackendError("openvino is not installed")
        if not model_path.is_file():
            raise BackendError(f"openvino cannot load {model_path}: no such file")
        core = _get_core()  # outside the measurement: the Core and its plugins are shared
        device = self.device_for(config.processor)
        properties = self.compile_config(config)
        name = "/".join(model_path.parts[-3:])  # e.g. yolov8n/1/model.onnx

        def load() -> _Compiled | _Specialiser:
            from openvino.frontend import FrontEndManager, OpConversionFailure

            # The ONNX frontend itself: core.read_model tries every frontend on a file that is not
            # valid ONNX, and TensorFlow's logs parse errors to stderr on the way.
            frontend = FrontEndManager().load_by_framework("onnx")
            try:
                model = frontend.convert(frontend.load(str(model_path)))
            except OpConversionFailure as exc:
                return _Specialiser(model_path, core, device, properties, _last_line(str(exc)))
            except Exception as exc:
                raise BackendError(f"openvino cannot load {model_path}: {_last_line(str(exc))}") from None
            try:
                return _Compiled(model, core.compile_model(model, device, properties))
            except Exception as exc:
                raise BackendError(
                    f"openvino cannot compile {model_path} for {device}: {type(exc).__name__}: {_last_line(str(exc))}"
                ) from None

        loaded, grown = measure_rss(load)
        # The file's size is the floor, as for ONNX Runtime: reused pages read as no growth.
        memory = max(grown, model_path.stat().st_size)
        if isinstance(loaded, _Specialiser):
            return OpenVinoSession(name, memory, specialiser=loaded)
        return OpenVinoSession(name, memory, compiled=loaded)


class _Specialiser:
    """Compiles an ONNX model per input signature when OpenVINO cannot take its dynamic shapes."""

    def __init__(self, path: Path, core: Any, device: str, properties: dict[str, Any], reason: str) -> None:
        import onnx

        try:
            self.model = onnx.load(str(path))
        except Exception as exc:
            raise BackendError(f"openvino cannot load {path}: {reason}; onnx: {exc}") from None
        self.path, self.core, self.device, self.properties = path, core, device, properties
        graph = self.model.graph
        initialisers = {init.name for init in graph.initializer}
        self.inputs = [i for i in graph.input if i.name not in initialisers]
        self.dtypes = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in self.inputs}
        # Scalar integer inputs (a sample rate, a mode) are frozen: branches on them become static.
        self.frozen = {i.name for i in self.inputs if i.type.tensor_type.HasField("shape")
                       and not i.type.tensor_type.shape.dim and self.dtypes[i.name].kind in "iub"}
        self.output_names = [o.name for o in graph.output]
        self._cache: OrderedDict[tuple[Any, ...], _Compiled | BackendError] = OrderedDict()

    def compiled_for(self, inputs: Mapping[str, np.ndarray]) -> tuple[_Compiled, dict[str, np.ndarray]]:
        """The specialisation for these inputs (compiled on first sight) and the inputs it takes."""
        model = "/".join(self.path.parts[-3:])
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidInput(f"{model}: input '{spec.name}' is missing")
            if array.dtype != self.dtypes[spec.name]:
                raise InvalidInput(f"{model}: input '{spec.name}' must be {self.dtypes[spec.name]}, got {array.dtype}")
            if spec.name in self.frozen and array.shape != ():
                raise InvalidInput(f"{model}: input '{spec.name}' must be a scalar, got shape {list(array.shape)}")
        key = tuple(
            (name, inputs[name].shape, inputs[name].item() if name in self.frozen else None) for name in sorted(self.dtypes)
        )
        entry = self._cache.get(key)
        if entry is None:
            entry = self._compile(inputs)
            self._cache[key] = entry
            if len(self._cache) > _MAX_SPECIALISATIONS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        if isinstance(entry, BackendError):
            raise entry
        return entry, {k: v for k, v in inputs.items() if k not in self.frozen}

    def _compile(self, inputs: Mapping[str, np.ndarray]) -> _Compiled | BackendError:
        shapes = {k: list(v.shape) for k, v in inputs.items() if k in self.dtypes}
        try:
            data = specialise_onnx(self.model, shapes, {k: inputs[k] for k in self.frozen})
            model = self.core.read_model(data)
            return _Compiled(model, self.core.compile_model(model, self.device, self.properties))
        except InvalidInput:
            raise
        except Exception as exc:
            return BackendError(f"openvino cannot compile {self.path} for inputs {shapes}: {_last_line(str(exc))}")


def specialise_onnx(model: Any, shapes: Mapping[str, Sequence[int]], constants: Mapping[str, np.ndarray]) -> bytes:
    """`model` with static input `shapes`, `constants` in place of those inputs, and every
    `If` of the main graph whose condition they decide replaced by its branch; serialised."""
    import onnx
    from onnx import helper, numpy_helper

    specialised = onnx.ModelProto()
    specialised.CopyFrom(model)
    graph = specialised.graph
    frozen = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))
              for name, value in constants.items()]
    for spec in [i for i in graph.input if i.name in constants]:
        graph.input.remove(spec)
    for spec in graph.input:
        if spec.name in shapes:
            dims = spec.type.tensor_type.shape
            if dims.dim and len(dims.dim) != len(shapes[spec.name]):
                raise InvalidInput(f"input '{spec.name}' has rank {len(shapes[spec.name])}, the model wants {len(dims.dim)}")
            dims.Clear()
            for size in shapes[spec.name]:
                dims.dim.add().dim_value = size
    nodes = frozen + list(graph.node)
    while True:
        inlined = _inline_constant_ifs(nodes, specialised)
        if inlined is None:
            break
        nodes = inlined
    del graph.node[:]
    graph.node.extend(nodes)
    return bytes(specialised.SerializeToString())


def _inline_constant_ifs(nodes: list[Any], model: Any) -> list[Any] | None:
    """The nodes with the first `If` whose condition folds to a constant replaced by its branch."""
    from onnx import helper, numpy_helper

    values: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producer = {out: node for node in nodes for out in node.output}

    def value(name: str, depth: int = 0) -> np.ndarray | None:
        if name in values:
            return values[name]
        node = producer.get(name)
        if node is None or depth > 32 or any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            return None
        args = [value(i, depth + 1) if i else None for i in node.input]
        if any(a is None for a, i in zip(args, node.input) if i):
            return None
        from onnx.reference import ReferenceEvaluator

        fn = helper.make_function("edgeplex", "fold", [i for i in node.input if i], list(node.output), [node],
                                  list(model.opset_import))
        feeds = {i: a for i, a in zip(node.input, args) if i}
        for out, result in zip(node.output, ReferenceEvaluator(fn).run(None, feeds, attributes={})):
            values[out] = np.asarray(result)
        return values[name]

    for position, node in enumerate(nodes):
        if node.op_type != "If":
            continue
        condition = value(node.input[0])
        if condition is None or condition.size != 1:
            continue
        branch_name = "then_branch" if bool(condition.reshape(())) else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == branch_name)
        tail = [helper.make_node("Identity", [src.name], [dst]) for src, dst in zip(branch.output, node.output)]
        return nodes[:position] + list(branch.node) + tail + nodes[position + 1 :]
    return None


def _last_line(text: str) -> str:
    """OpenVINO's messages start with source locations; the reason is the last non-empty lines."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return " ".join((useful or lines or [text])[-3:])
