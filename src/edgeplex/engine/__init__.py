"""The engine: model manager, scheduler, executor and statistics behind one facade."""

from .engine import Engine
from .request import InferRequest, InferResponse

__all__ = ["Engine", "InferRequest", "InferResponse"]
