"""The engine: the one data plane. `Engine` is the only object the transports and the tuning use;
the rest of this package is its insides (model lifecycle, token pools, runners)."""

from .binding import Binding
from .clock import Clock, ManualClock, SystemClock
from .engine import Engine, Memory, VersionActivity
from .monitor import ConfigLoad, ModelLoad, Monitor
from .placement import Explanation, InstanceGroup, ModelPlacement, Placement
from .processors import CPU, Processor, ProcessorView
from .registry import EVICTED_REASON, Decision, ModelView
from .request import InferRequest, InferResponse
from .runner import warmup_inputs

__all__ = [
    "CPU", "EVICTED_REASON", "Binding", "Clock", "ConfigLoad", "Decision", "Engine", "Explanation", "InferRequest", "InferResponse", "InstanceGroup",
    "ManualClock", "Memory", "ModelLoad", "ModelPlacement", "ModelView", "Monitor", "Placement", "Processor",
    "ProcessorView", "SystemClock", "VersionActivity", "warmup_inputs",
]
