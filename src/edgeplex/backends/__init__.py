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


def registered_backends() -> list[Backend]:
    return list(_BACKENDS.values())


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend by its name: how a backend outside this package, a test's
    stand-in accelerator say, becomes one engines discover processors through."""
    _BACKENDS[backend.name] = backend


def unregister_backend(name: str) -> None:
    if name in ("onnxruntime", "openvino"):
        raise ValueError(f"backend '{name}' is built in")
    _BACKENDS.pop(name, None)


__all__ = ["Backend", "ExecutionConfig", "Session", "available_backends", "get_backend", "register_backend",
           "registered_backends", "unregister_backend"]
