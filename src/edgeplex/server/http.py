"""KServe V2 REST adapter (Starlette on uvicorn) over the Engine.

Triton's extensions that stock clients rely on are here too: binary tensors, the model
repository, statistics and the model-configuration endpoint (perf_analyzer needs it). The live
dashboard is served at `/`, with the JSON it polls under `/v2/edgeplex/`.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from ..config import DEFAULT_MAX_BODY_BYTES, DEFAULT_OPEN_APIS
from ..engine import Engine
from ..errors import EdgeplexError, Forbidden, InvalidInput, PayloadTooLarge
from ..tensors import DEFAULT_MAX_ELEMENTS
from .auth import ApiKeyMiddleware
from .codec import (
    HEADER_LENGTH,
    decode_request,
    encode_response,
    json_bytes,
    json_output_elements,
    parse_header_length,
    parse_json_object,
)
from .dashboard import ASSETS, STATIC_DIR, FrontsSource, dashboard_document, no_fronts, plotly_js
from .metrics import metrics_registry
from .offload import OFFLOAD_JSON_BYTES, OFFLOAD_JSON_ELEMENTS, off_loop
from .openapi import OPENAPI_PATH, openapi_document
from .triton import (
    REPOSITORY_API_OFF,
    model_config_document,
    model_readiness,
    repository_index,
    server_metadata,
    server_readiness,
)

log = logging.getLogger(__name__)

# The dashboard's page and static files hold no data: a browser loads them without a key, and
# the page then sends the key with its data requests.
PUBLIC_PATHS, PUBLIC_PREFIXES = ("/",), ("/dashboard/",)

def json_response(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type="application/json")


def error_response(exc: EdgeplexError) -> Response:
    response = json_response({"error": exc.message}, exc.http_status)
    if exc.http_status == 429:
        response.headers["retry-after"] = "1"
    return response


async def edgeplex_error(request: Request, exc: Exception) -> Response:
    """The one mapping of the error tree to HTTP: each error knows its status."""
    assert isinstance(exc, EdgeplexError)
    return error_response(exc)


class UnexpectedErrors:
    """Anything unexpected becomes a logged JSON 500 here, inside Starlette's exception
    middleware, so the server never answers with a bare traceback and uvicorn never sees it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if scope["type"] != "http" or started:
                raise
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            await json_response({"error": "internal server error (logged)"}, 500)(scope, receive, send)


def build_app(
    engine: Engine, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, fronts: FrontsSource | None = None, *,
    api_key: str | None = None, repository_api: bool = False, max_tensor_elements: int = DEFAULT_MAX_ELEMENTS,
    strict_readiness: bool = False, open_apis: Iterable[str] = DEFAULT_OPEN_APIS,
) -> Any:
    """The ASGI application serving `engine`; `fronts`: where the dashboard's Pareto fronts come
    from (None: it says there are none). With `api_key`, every endpoint but the dashboard's
    static files (which hold no data) and the `open_apis` groups (health by default) requires it;
    `repository_api` allows model load/unload;
    `strict_readiness` (the server's setting, on by default there) makes /v2/health/ready wait
    for every model asked to load, as Triton does. Errors are mapped once, by Starlette's
    exception handlers."""

    def version_of(request: Request) -> str:
        return str(request.path_params.get("version", ""))

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the {max_body_bytes}-byte limit")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise PayloadTooLarge(f"request body is over the {max_body_bytes}-byte limit")
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            if len(body) >= OFFLOAD_JSON_BYTES:
                body = await off_loop(_decompress, body, encoding, max_body_bytes)
            else:
                body = _decompress(body, encoding, max_body_bytes)
        elif encoding != "identity":
            raise InvalidInput(f"unsupported Content-Encoding '{encoding}' (use gzip, deflate or none)")
        return body

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    # With an API key, health is answered without one (probes carry none): its bodies then say
    # ready or not and nothing of why — model names and load errors stay behind the key (the log has them).
    open_health = api_key is not None and "health" in open_apis

    def readiness(document: dict[str, Any], keep: tuple[str, ...]) -> Response:
        body = {k: v for k, v in document.items() if k in keep} if open_health else document
        return json_response(body, 200 if document["ready"] else 503)

    async def ready(request: Request) -> Response:
        return readiness(server_readiness(engine, strict_readiness), ("ready",))

    async def metadata(request: Request) -> Response:
        return json_response(server_metadata())

    async def openapi(request: Request) -> Response:
        return json_response(openapi_document())

    async def model_metadata(request: Request) -> Response:
        # Beyond the V2 fields (JSON only; the gRPC message has no room): the version's variants.
        return json_response(engine.metadata(request.path_params["model"], version_of(request), variants=True))

    async def model_ready(request: Request) -> Response:
        # ModelNotFound (no such model, or no such version of a ready one) is answered 404
        return readiness(model_readiness(engine, request.path_params["model"], version_of(request)), ("name", "ready"))

    async def model_config(request: Request) -> Response:
        return json_response(model_config_document(engine, request.path_params["model"], version_of(request)))

    async def model_stats(request: Request) -> Response:
        name = request.path_params.get("model", "")
        return json_response({"model_stats": engine.statistics(name, version_of(request))})

    async def infer(request: Request) -> Response:
        body = await read_body(request)
        header_length = parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
        args = (request.path_params["model"], version_of(request), body, header_length, max_tensor_elements)
        if json_bytes(len(body), header_length) >= OFFLOAD_JSON_BYTES:
            decoded = await off_loop(decode_request, *args)
        else:
            decoded = decode_request(*args)
        response = await engine.infer_async(decoded.request)
        if json_output_elements(response, decoded) >= OFFLOAD_JSON_ELEMENTS:
            content, headers = await off_loop(encode_response, response, decoded)
        else:
            content, headers = encode_response(response, decoded)
        return Response(content, headers=headers)

    async def index(request: Request) -> Response:
        body = await read_body(request)
        ready_only = _json_object(body).get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidInput(f"field 'ready' must be true or false, got {ready_only!r:.100}")
        return json_response(repository_index(engine, ready_only))

    def repository_api_allowed() -> None:
        if not repository_api:
            raise Forbidden(REPOSITORY_API_OFF)

    async def load(request: Request) -> Response:
        repository_api_allowed()
        if _repository_parameters(await read_body(request)):
            raise InvalidInput("load parameters (config or file overrides) are not supported")
        await asyncio.to_thread(engine.load, request.path_params["model"])
        return Response(status_code=200)

    async def unload(request: Request) -> Response:
        repository_api_allowed()
        _repository_parameters(await read_body(request))  # (unload_dependents: there are none)
        await asyncio.to_thread(engine.unload, request.path_params["model"])
        return Response(status_code=200)

    async def placement(request: Request) -> Response:
        memory = engine.memory()
        return json_response({
            "cores": engine.cores,
            "memory_budget": memory.budget,
            "memory_used": memory.used,
            "processors": [p.as_dict() for p in engine.processors()],
            "models": engine.placement_report(),
        })

    async def processors(request: Request) -> Response:
        return json_response({"processors": [p.as_dict() for p in engine.processors()]})

    registry = metrics_registry(engine)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def dashboard(request: Request) -> Response:
        return json_response(dashboard_document(engine))

    async def dashboard_fronts(request: Request) -> Response:
        if fronts is None:
            return json_response(no_fronts())
        return json_response(await asyncio.to_thread(fronts.document, engine))  # SQLite, file hashes

    async def dashboard_page(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type=ASSETS["index.html"])

    async def dashboard_asset(request: Request) -> Response:
        name = str(request.path_params["name"])
        if name not in ASSETS:
            return json_response({"error": f"no dashboard file '{name}'"}, 404)
        return FileResponse(STATIC_DIR / name, media_type=ASSETS[name], headers={"cache-control": "no-cache"})

    async def chart_library(request: Request) -> Response:
        path = plotly_js()
        if path is None:
            return json_response({"error": "the plotly package is not installed (pip install plotly)"}, 404)
        return FileResponse(path, media_type="text/javascript", headers={"cache-control": "public, max-age=86400"})

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", metadata),
        Route(OPENAPI_PATH, openapi),
        Route("/v2/models/stats", model_stats),
        Route("/v2/repository/index", index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", unload, methods=["POST"]),
        Route("/metrics", metrics),
        Route("/v2/edgeplex/placement", placement),
        Route("/v2/edgeplex/processors", processors),
        Route("/v2/edgeplex/dashboard", dashboard),
        Route("/v2/edgeplex/fronts", dashboard_fronts),
        Route("/", dashboard_page),
        Route("/dashboard/vendor/plotly.min.js", chart_library),
        Route("/dashboard/{name}", dashboard_asset),
    ]
    for prefix in (model, versioned):
        routes += [
            Route(prefix, model_metadata),
            Route(prefix + "/ready", model_ready),
            Route(prefix + "/config", model_config),
            Route(prefix + "/stats", model_stats),
            Route(prefix + "/infer", infer, methods=["POST"]),
        ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: routing_error, EdgeplexError: edgeplex_error},
                    middleware=[Middleware(UnexpectedErrors)])
    return ApiKeyMiddleware(app, api_key, PUBLIC_PATHS, PUBLIC_PREFIXES, open_apis) if api_key else app


async def routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such path: 404, method not allowed: 405) as JSON errors too."""
    assert isinstance(exc, HTTPException)
    path = request.url.path[:200]
    if exc.status_code == 404:
        message = f"no endpoint at '{path}'"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on '{path}' (allowed: {(exc.headers or {}).get('Allow', '?')})"
    else:
        message = exc.detail
    response = json_response({"error": message}, exc.status_code)
    response.headers.update(exc.headers or {})
    return response


def _json_object(body: bytes) -> dict[str, Any]:
    """An optional JSON object body (empty means {}); InvalidInput if it is anything else."""
    return parse_json_object(body) if body.strip() else {}


def _repository_parameters(body: bytes) -> dict[str, Any]:
    """The `parameters` object of an optional load/unload body; InvalidInput if malformed."""
    parameters = _json_object(body).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"field 'parameters' must be an object, got {parameters!r:.100}")
    return parameters


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate a gzip/deflate body, refusing to grow past `limit` (no decompression bombs)."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body is over the {limit}-byte limit")
    if not inflater.eof:  # truncated: the end of the stream (and gzip's CRC check) never came
        raise InvalidInput(f"body is not valid {encoding} data: the compressed stream is truncated")
    return out
