"""The OpenAPI 3 description of the HTTP API, served at `GET /v2/openapi.json`.

Written by hand, route by route, to match `http.py`: the KServe V2 protocol, Triton's extensions
(binary tensors, model repository, configuration, statistics), the Prometheus metrics and
edgeplex's own dashboard documents. Every refusal is `{"error": "<what is wrong>"}` with its
status (README, "Errors"). tests/test_openapi_fuzz.py checks that it names every route and
fuzzes the server against it with schemathesis.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__
from ..tensors import V2_TO_NUMPY

OPENAPI_PATH = "/v2/openapi.json"

JSON = "application/json"
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def _array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
NUMBER: Schema = {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
SERVER_READY: Schema = {"type": "object", "required": ["ready"], "properties": {
    "ready": BOOLEAN, "reason": STRING,
    "models": {"type": "object", "additionalProperties": STRING,
               "description": "model -> why it is not ready (strict readiness)"}}}
MODEL_READY: Schema = {"type": "object", "required": ["name", "ready"],
                       "properties": {"name": STRING, "ready": BOOLEAN, "reason": STRING}}

# -- responses ----------------------------------------------------------------------------------

ERRORS: dict[str, str] = {
    "400": "Malformed request: wrong input name, datatype, shape or byte size, malformed JSON or binary "
           "header, or an invalid model configuration; the message names the field.",
    "401": "An API key is required (the server runs with --api-key) and the request carries none, or a "
           "wrong one: send `Authorization: Bearer <key>` or `x-api-key: <key>`.",
    "403": "The repository load/unload API is off (start the server with --enable-repository-api).",
    "404": "No such model, version or path.",
    "405": "The path exists but does not take this method.",
    "413": "The body is over --max-body-bytes (after decompression), or a tensor over "
           "--max-tensor-elements.",
    "429": "The model's queue is full: refused at once (retry after `Retry-After` seconds).",
    "500": "A placement's backend or variant failed at run time (the model stays loaded).",
    "503": "The model is not ready: it failed to load, was unloaded or is loading (the reason is in the "
           "message); or the server is shutting down.",
    "504": "The request's deadline (`parameters.timeout`) passed before it ran.",
}


def _error(status: str) -> Schema:
    response: Schema = {"description": ERRORS[status], "content": {JSON: {"schema": _ref("Error")}}}
    if status == "401":
        response["headers"] = {"WWW-Authenticate": {"schema": STRING, "description": 'Bearer realm="edgeplex"'}}
    if status == "429":
        response["headers"] = {"Retry-After": {"schema": INTEGER, "description": "seconds"}}
    return response


def _ok(schema: Schema | None, description: str, media: str = JSON) -> Schema:
    response: Schema = {"description": description}
    if schema is not None:
        response["content"] = {media: {"schema": schema}}
    return response


def _responses(ok: Schema, *errors: str) -> Schema:
    """`ok` as 200, then the listed errors plus those every endpoint can answer."""
    responses: Schema = {"200": ok}
    for status in sorted({"401", "405", *errors}):
        responses[status] = {"$ref": f"#/components/responses/E{status}"}
    return responses


def _op(summary: str, tag: str, responses: Schema, **extra: Any) -> Schema:
    return {"summary": summary, "tags": [tag], "responses": responses, **extra}


# -- schemas ------------------------------------------------------------------------------------

DATATYPES = list(V2_TO_NUMPY)

TENSOR_METADATA = _obj({"name": STRING, "datatype": {"type": "string", "enum": DATATYPES},
                        "shape": _array(INTEGER, description="-1: any size")},
                       ("name", "datatype", "shape"))

INFER_PARAMETERS = _obj({
    "priority": {**COUNT, "description": "1 is the highest level; 0 or absent: the model's default"},
    "timeout": {**COUNT, "description": "deadline in microseconds; 0 or absent: the model's slo_ms"},
    "binary_data_output": {**BOOLEAN, "description": "outputs as binary tensors after the JSON header"},
}, additionalProperties=True)

INPUT_TENSOR = _obj({
    "name": {"type": "string", "minLength": 1},
    "shape": _array(COUNT),
    "datatype": {"type": "string", "enum": DATATYPES},
    "data": {"description": "the elements, flat or nested in row-major order (BYTES: strings); absent "
                            "when the tensor is binary", "type": "array", "items": {}},
    "parameters": _obj({"binary_data_size": {**COUNT, "description": "bytes of this tensor in the binary "
                                                                      "part of the body"}},
                       additionalProperties=True),
}, ("name", "shape", "datatype"))

OUTPUT_REQUEST = _obj({
    "name": STRING,
    "parameters": _obj({"binary_data": BOOLEAN}, additionalProperties=True),
}, ("name",))

INFER_REQUEST = _obj({
    "id": {**STRING, "description": "echoed in the response"},
    "parameters": INFER_PARAMETERS,
    "inputs": _array(INPUT_TENSOR, minItems=1),
    "outputs": _array(OUTPUT_REQUEST, description="the outputs to return (absent: all)"),
}, ("inputs",))

OUTPUT_TENSOR = _obj({
    "name": STRING, "shape": _array(INTEGER), "datatype": STRING,
    "data": {"type": "array", "items": {}},
    "parameters": _obj({"binary_data_size": COUNT}, additionalProperties=True),
}, ("name", "shape", "datatype"))

INFER_RESPONSE = _obj({"model_name": STRING, "model_version": STRING, "id": STRING,
                       "outputs": _array(OUTPUT_TENSOR)}, ("model_name", "model_version", "outputs"))

DURATION = _obj({"count": COUNT, "ns": COUNT}, ("count", "ns"))
STAT_NAMES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
MODEL_STATISTICS = _obj({
    "model_stats": _array(_obj({
        "name": STRING, "version": STRING, "last_inference": COUNT, "inference_count": COUNT,
        "execution_count": COUNT,
        "inference_stats": _obj({name: DURATION for name in STAT_NAMES}),
        "batch_stats": _array(_obj({"batch_size": COUNT, "compute_input": DURATION, "compute_infer": DURATION,
                                    "compute_output": DURATION})),
    }, ("name", "version", "inference_stats"))),
}, ("model_stats",))

CONFIG_TENSOR = _obj({"name": STRING, "data_type": STRING, "dims": _array(INTEGER)}, ("name", "data_type", "dims"))
MODEL_CONFIG = _obj({
    "name": STRING, "platform": STRING, "backend": STRING, "max_batch_size": COUNT,
    "input": _array(CONFIG_TENSOR), "output": _array(CONFIG_TENSOR),
    "instance_group": _array(_obj({"name": STRING, "count": COUNT, "kind": STRING})),
    "default_model_filename": STRING,
    "parameters": {"type": "object", "additionalProperties": _obj({"string_value": STRING})},
}, ("name", "platform", "max_batch_size", "input", "output"))

MODEL_METADATA = _obj({
    "name": STRING, "versions": _array(STRING), "platform": STRING,
    "inputs": _array(TENSOR_METADATA), "outputs": _array(TENSOR_METADATA),
    "parameters": _obj({"variants": _array({"type": "object"}, description="the version's variants (int8, fp16, "
                                                                              "pruned) with their fidelity loss"),
                        "in_use": _array(STRING)}),
}, ("name", "platform", "inputs", "outputs"))

GROUP = _obj({"backend": STRING, "processor": STRING, "variant": STRING, "threads": COUNT, "max_batch": COUNT,
              "instances": COUNT})
DECISION = _obj({"at": NUMBER, "placement": STRING, "reason": STRING}, nullable=True)
EXPLANATION = _obj({
    "summary": {**STRING, "description": "what runs and the figure that decided"},
    "source": {**STRING, "enum": ["observed", "profiled", "config", "default"],
               "description": "where the deciding figures come from"},
    "bound": _array(STRING, description="the allocation fields the model's config sets (field=value): they bind "
                                        "the allocator"),
    "rejected": _array(_obj({"config": STRING, "reason": STRING}), description="configs that lost, and why"),
    "would_change": {**STRING, "description": "what would change the decision"},
}, ("summary", "source", "bound", "rejected", "would_change"))
PLACEMENT_MODEL = _obj({
    "model": STRING, "state": STRING, "groups": _array(GROUP), "estimated_capacity": NUMBER,
    "observed_slowdown": {**NUMBER, "description": "observed / profiled service time of its config in use"},
    "taking_turns": BOOLEAN, "memory_bytes": COUNT, "reason": STRING,
    "explanation": EXPLANATION, "last_decision": DECISION,
}, ("model", "state", "groups", "explanation"))
PROCESSOR = _obj({
    "name": {**STRING, "description": "cpu, cuda:N, gpu:N, npu:N, remote:NAME"},
    "kind": STRING, "capacity": {**COUNT, "description": "tokens: the CPU's cores; an accelerator's executions at once"},
    "in_use": COUNT, "waiting": COUNT, "peak": COUNT, "busy_seconds": NUMBER,
    "backends": _array(STRING), "models": _array(STRING, description="models with an instance placed on it"),
}, ("name", "kind", "capacity", "in_use", "models"))
PROCESSORS = _obj({"processors": _array(PROCESSOR)}, ("processors",))
PLACEMENT = _obj({"cores": COUNT, "memory_budget": {**COUNT, "nullable": True}, "memory_used": COUNT,
                  "processors": _array(PROCESSOR), "models": _array(PLACEMENT_MODEL)},
                 ("cores", "memory_used", "models"))

MS: Schema = {"type": "number", "nullable": True}
DASHBOARD = _obj({
    "time": NUMBER, "clock": NUMBER, "cores": COUNT,
    "memory": _obj({"used": COUNT, "budget": {**COUNT, "nullable": True}}),
    "pools": _array(_obj({"processor": STRING, "kind": STRING, "capacity": NUMBER, "in_use": NUMBER,
                          "waiting": COUNT, "busy_seconds": NUMBER, "models": _array(STRING)})),
    "models": _array({"allOf": [PLACEMENT_MODEL, _obj({
        "reason_unavailable": STRING, "requests": COUNT, "failures": COUNT, "inferences": COUNT, "executions": COUNT,
        "rejected": COUNT, "deadline_misses": COUNT, "queue": COUNT,
        "latency": _obj({"window_s": NUMBER, "count": COUNT, "p50_ms": MS, "p99_ms": MS}),
    })]}),
    "decisions": _array({"type": "object"}, description="placement decisions of all models, newest first"),
}, ("time", "clock", "models"))

FRONTS = _obj({
    "store": {**STRING, "nullable": True, "description": "the profile store's path; null: none"},
    "note": STRING,
    "models": _array(_obj({"model": STRING, "in_use": _array(STRING),
                           "profiles": _array({"type": "object", "description": "a measured config, with `front` "
                                                                                 "and `in_use`"})})),
}, ("store", "note", "models"))

SCHEMAS: dict[str, Schema] = {
    "Error": _obj({"error": {"type": "string", "minLength": 1, "description": "what is wrong"}}, ("error",)),
    "ServerMetadata": _obj({"name": STRING, "version": STRING, "extensions": _array(STRING)},
                           ("name", "version", "extensions")),
    "ModelMetadata": MODEL_METADATA,
    "ModelConfig": MODEL_CONFIG,
    "ModelStatistics": MODEL_STATISTICS,
    "InferRequest": INFER_REQUEST,
    "InferResponse": INFER_RESPONSE,
    "RepositoryIndex": _array(_obj({"name": STRING, "version": STRING,
                                    "state": {"type": "string", "enum": ["READY", "LOADING", "UNLOADING",
                                                                         "UNAVAILABLE"]},
                                    "reason": STRING}, ("name", "version", "state", "reason"))),
    "Placement": PLACEMENT,
    "Processors": PROCESSORS,
    "Dashboard": DASHBOARD,
    "Fronts": FRONTS,
}

# -- operations ---------------------------------------------------------------------------------

MODEL_PARAM: Schema = {"name": "model", "in": "path", "required": True, "schema": STRING,
                       "description": "the model's name (its folder in the repository)"}
VERSION_PARAM: Schema = {"name": "version", "in": "path", "required": True, "schema": STRING,
                         "description": "a version folder of the model (an integer)"}

BINARY_BODY = ("The binary tensor extension: with the `Inference-Header-Content-Length` header, the body is that "
               "many bytes of JSON header followed by the binary tensors, in input order, each of the size its "
               "`parameters.binary_data_size` says.")


def _model_operations(versioned: bool) -> dict[str, Schema]:
    params = [MODEL_PARAM, VERSION_PARAM] if versioned else [MODEL_PARAM]
    which = "this version of the model" if versioned else "the model (its latest version)"
    prefix = "/v2/models/{model}/versions/{version}" if versioned else "/v2/models/{model}"
    suffix = " (version)" if versioned else ""
    infer_body = {"required": True, "content": {
        JSON: {"schema": _ref("InferRequest"), "example": {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "parameters": {"priority": 1, "timeout": 100000}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }, "description": BINARY_BODY}
    infer_headers = [
        {"name": "Inference-Header-Content-Length", "in": "header", "required": False, "schema": COUNT,
         "description": "length of the JSON header when binary tensors follow it"},
        {"name": "Content-Encoding", "in": "header", "required": False,
         "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]},
         "description": "a compressed body (inflated up to --max-body-bytes)"},
    ]
    ok_infer = {"description": "The outputs: JSON, or (binary outputs requested) the JSON header then the binary "
                               "outputs, with `Inference-Header-Content-Length`.",
                "content": {JSON: {"schema": _ref("InferResponse")},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    return {
        prefix: {"parameters": params, "get": _op(
            f"Model metadata{suffix}", "models",
            _responses(_ok(_ref("ModelMetadata"), f"Inputs, outputs and variants of {which}"), "404", "503"))},
        prefix + "/ready": {"parameters": params, "get": _op(
            f"Model readiness{suffix}", "health",
            {"200": _ok(MODEL_READY, f"{which} is ready: {{\"name\": ..., \"ready\": true}}"),
             "401": {"$ref": "#/components/responses/E401"},
             "404": {"$ref": "#/components/responses/E404"},
             "405": {"$ref": "#/components/responses/E405"},
             "503": _ok(MODEL_READY, f"{which} is not ready, with the reason")})},
        prefix + "/config": {"parameters": params, "get": _op(
            f"Triton model configuration{suffix}", "models",
            _responses(_ok(_ref("ModelConfig"), "The complete configuration (auto-completed from the model file)"),
                       "400", "404", "503"))},
        prefix + "/stats": {"parameters": params, "get": _op(
            f"Triton statistics of {which}", "models",
            _responses(_ok(_ref("ModelStatistics"), "Counters and cumulative durations"), "404", "503"))},
        prefix + "/infer": {"parameters": params, "post": _op(
            f"Inference{suffix}", "inference",
            _responses(ok_infer, "400", "404", "413", "429", "500", "503", "504"),
            requestBody=infer_body, parameters=infer_headers)},
    }


def _paths() -> dict[str, Schema]:
    def get(summary: str, tag: str, ok: Schema, *errors: str) -> Schema:
        return {"get": _op(summary, tag, _responses(ok, *errors))}

    load_body = {"required": False, "content": {JSON: {"schema": _obj({
        "parameters": {"type": "object", "maxProperties": 0,
                       "description": "config or file overrides are not supported: absent or empty"}})}}}
    unload_body = {"required": False, "content": {JSON: {"schema": _obj({
        "parameters": {"type": "object", "description": "ignored (`unload_dependents`: models have no "
                                                        "dependents here)"}})}}}
    paths: dict[str, Schema] = {
        "/v2/health/live": get("Server liveness", "health",
                               _ok(_obj({"live": BOOLEAN}, ("live",)), 'The server is up: {"live": true}')),
        "/v2/health/ready": {"get": _op("Server readiness", "health", {
            "200": _ok(SERVER_READY, 'Ready: {"ready": true}. Under --strict-readiness (the default) only when '
                                     "every model asked to load is ready; without it a model that failed to load "
                                     "makes only itself not ready"),
            "401": {"$ref": "#/components/responses/E401"}, "405": {"$ref": "#/components/responses/E405"},
            "503": _ok(SERVER_READY, "Not ready: shutting down (`reason`), or models asked to load that are not "
                                     "ready (`models`, each with its reason)")})},
        "/v2": get("Server metadata", "server", _ok(_ref("ServerMetadata"), "Name, version and extensions")),
        OPENAPI_PATH: get("This document", "server", _ok({"type": "object"}, "The OpenAPI description")),
        "/v2/models/stats": get("Triton statistics of every loaded model", "models",
                                _ok(_ref("ModelStatistics"), "Counters and cumulative durations")),
        **_model_operations(versioned=False),
        **_model_operations(versioned=True),
        "/v2/repository/index": {"post": _op(
            "Repository index: every model with its state and, when not ready, the reason", "repository",
            _responses(_ok(_ref("RepositoryIndex"), "One entry per model version"), "400", "413"),
            requestBody={"required": False, "content": {JSON: {"schema": _obj({
                "ready": {**BOOLEAN, "description": "only the ready models"}})}}})},
        "/v2/repository/models/{model}/load": {"parameters": [MODEL_PARAM], "post": _op(
            "Load (or reload) a model", "repository",
            _responses(_ok(None, "Loaded"), "400", "403", "404", "413", "500", "503"),
            requestBody=load_body)},
        "/v2/repository/models/{model}/unload": {"parameters": [MODEL_PARAM], "post": _op(
            "Unload a model (queued requests finish first)", "repository",
            _responses(_ok(None, "Unloaded (or was not loaded)"), "400", "403", "404", "413"),
            requestBody=unload_body)},
        "/metrics": get("Prometheus metrics (README, \"Metrics\")", "server",
                        _ok(STRING, "Text exposition format 0.0.4", "text/plain")),
        "/v2/edgeplex/placement": get("Placement of every model: backend, processor, variant, threads, instances, "
                                      "memory, and the reason for the last decision", "edgeplex",
                                      _ok(_ref("Placement"), "The placements")),
        "/v2/edgeplex/processors": get("Every processor (CPU, accelerators, neighbour servers) with its capacity, use "
                                       "and the models placed on it", "edgeplex",
                                       _ok(_ref("Processors"), "The processors")),
        "/v2/edgeplex/dashboard": get("What the dashboard shows: placements, counters, queues, recent latency, "
                                      "memory, processor pools and decisions", "edgeplex",
                                      _ok(_ref("Dashboard"), "The dashboard's document")),
        "/v2/edgeplex/fronts": get("Pareto fronts of the stored profiles of every model", "edgeplex",
                                   _ok(_ref("Fronts"), "The fronts")),
        # The dashboard's page and static files hold no data: served without a key (no 401).
        "/": {"get": _op("The live dashboard (its data requests send the key)", "dashboard", {
            "200": _ok(STRING, "The page", "text/html"), "405": {"$ref": "#/components/responses/E405"}})},
        "/dashboard/vendor/plotly.min.js": {"get": _op("plotly.js from the installed plotly package", "dashboard", {
            "200": _ok(STRING, "The script", "text/javascript"), "404": {"$ref": "#/components/responses/E404"},
            "405": {"$ref": "#/components/responses/E405"}})},
        "/dashboard/{name}": {"parameters": [{"name": "name", "in": "path", "required": True,
                                              "schema": {"type": "string", "enum": ["index.html", "app.js",
                                                                                    "style.css"]}}],
                              "get": {"summary": "The dashboard's static files", "tags": ["dashboard"], "responses": {
                                  "200": {"description": "The file", "content": {
                                      "text/html": {"schema": STRING}, "text/javascript": {"schema": STRING},
                                      "text/css": {"schema": STRING}}},
                                  "404": {"$ref": "#/components/responses/E404"},
                                  "405": {"$ref": "#/components/responses/E405"}}}},
    }
    return paths


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_DOCUMENT)


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "edgeplex",
        "version": __version__,
        "description": "KServe V2 inference over HTTP with Triton's extensions (binary tensors, model repository, "
                       "model configuration, statistics), Prometheus metrics and edgeplex's dashboard documents. "
                       "Every refusal is a JSON object `{\"error\": \"<what is wrong>\"}` with its status. With "
                       "--api-key, every path but the dashboard's page and static files needs the key.",
    },
    "servers": [{"url": "/"}],
    "security": [{}, {"bearer": []}, {"apiKey": []}],
    "tags": [{"name": name} for name in ("health", "server", "models", "inference", "repository", "edgeplex",
                                         "dashboard")],
    "paths": _paths(),
    "components": {
        "schemas": SCHEMAS,
        "responses": {f"E{status}": _error(status) for status in ERRORS},
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "the --api-key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "the --api-key"},
        },
    },
}
