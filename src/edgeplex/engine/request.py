"""What flows through the engine: a protocol-independent request and its response."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class InferRequest:
    """One inference call, decoded from HTTP or gRPC (or built in-process)."""

    model_name: str
    inputs: dict[str, np.ndarray]
    model_version: str = ""
    id: str = ""
    # Output names the caller wants; None means all of the model's outputs.
    outputs: list[str] | None = None
    # Triton semantics: 1 is the highest level; None takes the model's default.
    priority: int | None = None
    # Microseconds the caller is willing to wait; None takes the model's slo_ms (if any).
    timeout_us: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    """The outputs of one request, in the order the model (or the caller) listed them."""

    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
