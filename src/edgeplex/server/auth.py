"""API-key authentication, the same for both transports: an ASGI middleware for HTTP and a
grpc.aio interceptor for gRPC. When a key is set, every request must carry it, as
`Authorization: Bearer <key>` or `x-api-key: <key>` (HTTP headers / gRPC metadata, which
tritonclient sends with `headers=`), except the API groups left open (`--open-api`; health by
default, since probes carry no key). Keys are compared in constant time."""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import orjson

from ..config import DEFAULT_OPEN_APIS
from ..errors import ConfigError, Unauthenticated

REALM = 'Bearer realm="edgeplex"'

# API groups that may be served without the key (Triton's `--http-restricted-api` and
# `--grpc-restricted-protocol`, seen from the other side). Kubernetes and KServe probes carry
# no key, so health is open by default (config.DEFAULT_OPEN_APIS).
_GRPC_GROUPS = {"ServerLive": "health", "ServerReady": "health", "ModelReady": "health",
                "ServerMetadata": "metadata", "ModelMetadata": "metadata"}


def http_group(path: str) -> str:
    """The API group of an HTTP path: health (liveness, readiness, a model's readiness),
    metadata (server and model metadata), metrics, else "other" (always needs the key)."""
    parts = path.rstrip("/").split("/")
    model = parts[:3] == ["", "v2", "models"] and len(parts) > 3 and parts[3] != "stats"
    versioned = len(parts) >= 6 and parts[4] == "versions"
    if path in ("/v2/health/live", "/v2/health/ready") or (
            model and parts[-1] == "ready" and len(parts) == (7 if versioned else 5)):
        return "health"
    if path in ("/v2", "/v2/") or (model and len(parts) == (6 if versioned else 4)):
        return "metadata"
    if path == "/metrics":
        return "metrics"
    return "other"


def grpc_group(method: str) -> str:
    """The API group of a gRPC method (`/inference.GRPCInferenceService/ServerLive`)."""
    return _GRPC_GROUPS.get(method.rsplit("/", 1)[-1], "other")


def read_api_key(key: str | None, key_file: Path | None) -> str | None:
    """The key from `--api-key`, else `--api-key-file` (first line), else EDGEPLEX_API_KEY."""
    if key is None and key_file is not None:
        try:
            lines = key_file.read_text().strip().splitlines()
        except OSError as exc:
            raise ConfigError(f"--api-key-file {key_file}: cannot read: {exc}") from None
        key = lines[0] if lines else ""
    if key is None:
        key = os.environ.get("EDGEPLEX_API_KEY")
    if key is not None and len(key.strip()) < 8:
        raise ConfigError("the API key must have at least 8 characters")
    return key.strip() if key is not None else None


def presented_key(headers: Iterable[tuple[str, str]]) -> str | None:
    """The key a request carries, from `authorization: Bearer` or `x-api-key`."""
    for name, value in headers:
        name = name.lower()
        if name == "x-api-key":
            return value.strip()
        if name == "authorization" and value[:7].lower() == "bearer ":
            return value[7:].strip()
    return None


def check(expected: str, headers: Iterable[tuple[str, str]]) -> None:
    """Unauthenticated unless the headers carry `expected`."""
    given = presented_key(headers)
    if given is None:
        raise Unauthenticated("this server requires an API key: send 'Authorization: Bearer <key>' or 'x-api-key'")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthenticated("the API key is not valid")


class ApiKeyMiddleware:
    """ASGI middleware refusing HTTP requests without the key (401 + WWW-Authenticate);
    `public` paths and paths under `public_prefixes` are served without it."""

    def __init__(self, app: Any, key: str, public: Iterable[str] = (), public_prefixes: Iterable[str] = (),
                 open_groups: Iterable[str] = DEFAULT_OPEN_APIS) -> None:
        self.app = app
        self.key = key
        self.public = frozenset(public)
        self.public_prefixes = tuple(public_prefixes)
        self.open_groups = frozenset(open_groups)

    def _exempt(self, path: str) -> bool:
        return (path in self.public or (bool(self.public_prefixes) and path.startswith(self.public_prefixes))
                or http_group(path) in self.open_groups)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._exempt(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        try:
            check(self.key, headers)
        except Unauthenticated as exc:
            body = orjson.dumps({"error": exc.message})
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", REALM.encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """grpc.aio interceptor refusing calls without the key (UNAUTHENTICATED)."""

    def __init__(self, key: str, open_groups: Iterable[str] = DEFAULT_OPEN_APIS) -> None:
        self.key = key
        self.open_groups = frozenset(open_groups)

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        if grpc_group(handler_call_details.method) in self.open_groups:
            return await continuation(handler_call_details)
        metadata = [(k, v if isinstance(v, str) else v.decode("latin-1"))
                    for k, v in (handler_call_details.invocation_metadata or ())]
        try:
            check(self.key, metadata)
        except Unauthenticated as exc:
            return _refusal(await continuation(handler_call_details), exc.message)
        return await continuation(handler_call_details)


def _refusal(handler: Any, message: str) -> Any:
    """A handler of the same kind as `handler` that aborts with UNAUTHENTICATED."""

    async def abort_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:
        return None
    if handler.request_streaming:
        return grpc.stream_stream_rpc_method_handler(
            abort_stream, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(
        abort_unary, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)
