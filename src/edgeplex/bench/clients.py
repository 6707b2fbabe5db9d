"""The ways a benchmark reaches the models: in-process, or over the wire with stock clients.

Each client prepares a request once and sends it many times, as perf_analyzer does, so the
figures measure the server, not the client's tensor serialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..engine import Engine, InferRequest
from ..tensors import v2_datatype


class Sender(Protocol):
    def __call__(self) -> None:
        """Send the prepared request once and wait for its answer (raises on failure)."""


SenderFactory = Callable[[str, dict[str, np.ndarray]], Sender]


def inprocess(engine: Engine) -> SenderFactory:
    """Requests straight into the engine: the baseline with no transport at all."""

    def factory(model: str, inputs: dict[str, np.ndarray]) -> Sender:
        def send() -> None:
            engine.infer(InferRequest(model, inputs))

        return send

    return factory


def grpc(url: str) -> SenderFactory:
    """tritonclient.grpc with binary (raw) tensors: what Triton users send."""
    import tritonclient.grpc as grpcclient

    return _tritonclient(grpcclient, url)


def http(url: str) -> SenderFactory:
    """tritonclient.http with the binary tensor extension."""
    import tritonclient.http as httpclient

    return _tritonclient(httpclient, url)


def _tritonclient(module: Any, url: str) -> SenderFactory:
    """Senders on one of tritonclient's protocol modules (same API for both)."""

    def factory(model: str, inputs: dict[str, np.ndarray]) -> Sender:
        client = module.InferenceServerClient(url)
        prepared = prepared_inputs(module, inputs)

        def send() -> None:
            client.infer(model, prepared)

        return send

    return factory


def prepared_inputs(module: Any, inputs: dict[str, np.ndarray]) -> list[Any]:
    """tritonclient InferInputs holding `inputs` (binary tensors on both protocols), made once
    and sent many times; `module` is tritonclient.grpc or tritonclient.http."""
    prepared = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), v2_datatype(array.dtype))
        tensor.set_data_from_numpy(array)  # binary by default in tritonclient.http too
        prepared.append(tensor)
    return prepared
