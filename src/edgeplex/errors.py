"""The error tree. Each error knows its HTTP status and gRPC code, so every
transport maps it once at its boundary (MLServer's errors.py, in spirit)."""

from __future__ import annotations

import grpc


class EdgeplexError(Exception):
    """Base of every error edgeplex reports to a client."""

    http_status: int = 500
    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(EdgeplexError):
    """The request is malformed: wrong name, datatype, shape, size or encoding."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(EdgeplexError):
    """The server requires an API key and the request carries none, or a wrong one."""

    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class Forbidden(EdgeplexError):
    """The operation is switched off on this server (e.g. the repository load/unload API)."""

    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class ModelNotFound(EdgeplexError):
    """No such model or version in the repository."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(EdgeplexError):
    """The model exists but cannot serve (failed to load, unloaded, loading)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class ModelEvicted(ModelNotReady):
    """The model was evicted for memory; the engine loads it again and retries the request."""


class MemoryFull(ModelNotReady):
    """No model can be evicted yet to make room: each resident one is still within its minimum
    residency (loaded too recently to be swapped out again). `retry_in_s` says when one can."""

    def __init__(self, message: str, retry_in_s: float) -> None:
        super().__init__(message)
        self.retry_in_s = retry_in_s


class OverMemoryBudget(ModelNotReady):
    """No eviction can make room: the budget is held by pinned models (or, during a warm swap,
    by the model's own instances)."""


class PayloadTooLarge(EdgeplexError):
    """The request body is over the configured limit."""

    http_status = 413
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(EdgeplexError):
    """The model's queue is full: refused at once rather than queued without bound."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(EdgeplexError):
    """The request's deadline passed before it could be computed."""

    http_status = 504
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ConfigError(EdgeplexError):
    """A model configuration is invalid; the message names the file and the field."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class BackendError(EdgeplexError):
    """A backend failed to open or run a model."""

    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL


class ServerShuttingDown(EdgeplexError):
    """The server is draining and takes no new work."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class StartupError(EdgeplexError):
    """The server cannot start (a port already in use, an address it may not listen on): one line
    for the operator, raised after whatever had started is stopped again."""
