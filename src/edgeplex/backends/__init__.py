"""Backends: the engines that run models. `get_backend` is the one place that picks one."""

from __future__ import annotations

from ..errors import BackendError
from .base import Backend, ExecutionConfig, Session
from .onnxruntime import OnnxRuntimeBackend
from .openvino import OpenVinoBackend

_BACKENDS: dict[str, Backend] = {"onnxruntime": OnnxRuntimeBackend(), "openvino": OpenVinoBackend()}


def get_backend(name: str) -> Backend:
    """The backend called `name`; BackendError if unknown or not installed here."""
    backend = _BACKENDS.get(name)
    if backend is None:
        raise BackendError(f"unknown backend '{name}' (known: {', '.join(_BACKENDS)})")
    if not backend.available():
        raise BackendError(f"backend '{name}' is not installed on this machine")
    return backend


def available_backends() -> list[str]:
    return [name for name, backend in _BACKENDS.items() if backend.available()]


__all__ = ["Backend", "ExecutionConfig", "Session", "get_backend", "available_backends"]
