"""ONNX Runtime backend: CPU with explicit intra-op threads; CUDA / TensorRT when present."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import BackendError, InvalidInput
from .base import ExecutionConfig, measure_rss

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - onnxruntime is a hard dependency
    ort = None


class OnnxRuntimeSession:
    """One `InferenceSession`; `run` releases the GIL, so instances run in parallel threads."""

    def __init__(self, session: ort.InferenceSession, memory_bytes: int) -> None:
        self._session = session
        self._memory_bytes = memory_bytes
        self._output_names = [o.name for o in session.get_outputs()]

    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs else self._output_names
        try:
            values = self._session.run(names, dict(inputs))
        except Exception as exc:  # ORT raises its own classes; translate at the boundary.
            kind = type(exc).__name__
            if kind == "InvalidArgument":
                raise InvalidInput(f"onnxruntime refused the input: {exc}") from None
            raise BackendError(f"onnxruntime failed to run: {kind}: {exc}") from None
        return dict(zip(names, values))

    def close(self) -> None:
        # Dropping the last reference frees the session; ORT has no explicit close.
        self._session = None


class OnnxRuntimeBackend:
    """Opens ONNX Runtime sessions. The token pool above decides how many run at once."""

    name = "onnxruntime"

    def available(self) -> bool:
        return ort is not None

    def version(self) -> str:
        return str(ort.__version__) if ort is not None else "missing"

    def processors(self) -> list[str]:
        if ort is None:
            return []
        found = ["cpu"]
        if "CUDAExecutionProvider" in ort.get_available_providers():
            found.append("cuda:0")
        return found

    def providers_for(self, processor: str) -> list[str | tuple[str, dict[str, str]]]:
        """Execution providers for a processor, best first, CPU always last as fallback."""
        if processor == "cpu":
            return ["CPUExecutionProvider"]
        if processor.startswith("cuda"):
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise BackendError(f"processor '{processor}' needs CUDAExecutionProvider, which this onnxruntime lacks")
            device_id = processor.partition(":")[2] or "0"
            chosen: list[str | tuple[str, dict[str, str]]] = []
            if "TensorrtExecutionProvider" in available:
                chosen.append(("TensorrtExecutionProvider", {"device_id": device_id}))
            chosen.append(("CUDAExecutionProvider", {"device_id": device_id}))
            chosen.append("CPUExecutionProvider")
            return chosen
        raise BackendError(f"onnxruntime cannot use processor '{processor}'")

    def session_options(self, config: ExecutionConfig) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 4  # failures surface as exceptions, not as log noise
        # Idle spinning burns cores that other tenants need (FIELD-NOTES: ORT threading).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def open(self, model_path: Path, config: ExecutionConfig) -> OnnxRuntimeSession:
        if ort is None:
            raise BackendError("onnxruntime is not installed")
        if config.variant != "fp32" and not model_path.exists():
            raise BackendError(f"variant file {model_path} does not exist")
        options = self.session_options(config)
        providers = self.providers_for(config.processor)
        try:
            session, grown = measure_rss(
                lambda: ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
            )
        except Exception as exc:
            raise BackendError(f"onnxruntime cannot load {model_path.name}: {type(exc).__name__}: {exc}") from None
        # The resident-set delta reads 0 when the allocator reuses freed pages (a reload, a second
        # instance); the weights are resident all the same, so the file's size is the floor.
        return OnnxRuntimeSession(session, max(grown, model_path.stat().st_size))
