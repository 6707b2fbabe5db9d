"""The HTTP API fuzzed against its own OpenAPI description (schemathesis), in process over ASGI.

The document served at /v2/openapi.json is loaded (which validates it as OpenAPI) and must name
every route of the app. Then every operation gets generated requests, valid and invalid (the
examples, coverage and fuzzing phases: wrong methods, types and fields, boundary values, garbage
bodies and headers), with the tiny repository's model names mixed into the paths and, for
inference, requests aimed at those models (right, or wrong in one place; JSON or binary
tensors) so that the engine and the models are reached too. Each answer must be: no 5xx (but a
503 naming a model that is not ready, or a 504 for a request whose deadline passed), as the
document says (status, content type, headers, body schema), a 4xx for any request that breaks
the document, every 4xx a JSON object whose "error" names the problem, and within 10 s (no hang).
Afterwards the server still answers a correct inference. A bounded run here
(EDGEPLEX_API_FUZZ_EXAMPLES generated requests per operation, default 25, plus the examples and
coverage cases: ~15 s); `benchmarks/fuzz.py` runs the long one."""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from edgeplex.engine import Engine
from edgeplex.server.http import build_app
from edgeplex.server.openapi import OPENAPI_PATH, openapi_document
from edgeplex.tensors import V2_TO_NUMPY

EXAMPLES = int(os.environ.get("EDGEPLEX_API_FUZZ_EXAMPLES", "25"))
MAX_BODY = 64 * 1024
MODELS = ["add", "sub", "fixed", "slow", "broken", "nope"]  # tests/models.py; `broken` never loads
VERSIONS = ["1", "2", "0", "01", "-1"]
TIMEOUT_S = 10.0
HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"


@pytest.fixture(scope="module")
def fuzz_engine(tiny_repo: Path) -> Iterator[Engine]:
    """One engine for the whole run (unload/load operations included): the final test checks
    that it still serves."""
    engine = Engine(tiny_repo, cores=2)
    engine.load_all()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def fuzz_app(fuzz_engine: Engine) -> Any:
    return build_app(fuzz_engine, max_body_bytes=MAX_BODY, repository_api=True)


# -- what is generated -------------------------------------------------------------------------

# The tiny models' inputs (tests/models.py): datatype, dims without the batch, batched.
SIGNATURES: dict[str, dict[str, tuple[str, list[int]]]] = {
    "add": {"x": ("FP32", [4])}, "slow": {"x": ("FP32", [256])},
    "sub": {"a": ("INT32", [3]), "b": ("INT32", [3])}, "fixed": {"x": ("FP32", [2, 2]), "k": ("INT64", [])},
}
BATCHED = {"add", "slow", "sub"}
OUTPUTS = ["y", "z", "out", "y2", "nope"]
ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "FP32": st.floats(-1e6, 1e6, width=32), "FP16": st.floats(-1e3, 1e3, width=16), "INT32": st.integers(-300, 300),
    "INT64": st.integers(-2**63, 2**63 - 1), "UINT8": st.integers(0, 255), "BOOL": st.booleans(),
    "BYTES": st.text(max_size=3),
}
Plausible = tuple[str, str, Any, int | None]  # model, media type, body, Inference-Header-Content-Length


def raw(datatype: str, data: list[Any]) -> bytes:
    """A tensor's binary form (the binary tensor extension)."""
    if datatype == "BYTES":
        return b"".join(len(b := str(x).encode()).to_bytes(4, "little") + b for x in data)
    return np.asarray(data, dtype=V2_TO_NUMPY[datatype]).tobytes()


def request_parameters() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={
        "priority": st.integers(-1, 4), "timeout": st.integers(-1, 10**7) | st.sampled_from([1, 10]),
        "binary_data_output": st.booleans()})


def requested_outputs() -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(st.fixed_dictionaries({"name": st.sampled_from(OUTPUTS)}, optional={
        "parameters": st.fixed_dictionaries({}, optional={"binary_data": st.booleans()})}), max_size=3)


@st.composite
def targeted_requests(draw: st.DrawFn) -> Plausible:
    """A request for one of the tiny models, mostly right (its inputs, datatypes, dims and a batch
    of 0 to 9 rows), now and then with one thing wrong; JSON tensors or binary ones."""
    model = draw(st.sampled_from(sorted(SIGNATURES)))
    batch = draw(st.integers(0, 9))
    inputs: list[dict[str, Any]] = []
    tail = b""
    binary = draw(st.booleans())
    for name, (datatype, dims) in SIGNATURES[model].items():
        if draw(st.integers(0, 9)) == 0:
            continue  # an input left out
        if draw(st.integers(0, 9)) == 0:
            datatype = draw(st.sampled_from(sorted(ELEMENTS)))
        shape = ([batch] if model in BATCHED else []) + dims
        if draw(st.integers(0, 9)) == 0:
            shape = draw(st.lists(st.integers(0, 5), max_size=3))
        data = draw(st.lists(ELEMENTS[datatype], min_size=math.prod(shape), max_size=math.prod(shape)))
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            chunk = raw(datatype, data)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            tail += chunk
        else:
            tensor["data"] = data
        inputs.append(tensor)
    document = draw(st.fixed_dictionaries({"inputs": st.just(inputs)}, optional={
        "id": st.text(max_size=4), "outputs": requested_outputs(), "parameters": request_parameters()}))
    if not binary:
        return model, JSON_TYPE, document, None
    head = json.dumps(document).encode()
    return model, "application/octet-stream", head + tail, len(head)


@st.composite
def noisy_requests(draw: st.DrawFn) -> Plausible:
    """Requests that look like the tiny models' but are wrong in many ways (shapes, data, sizes,
    types of fields), as JSON or a JSON header followed by binary bytes of any length."""
    dims = st.lists(st.integers(0, 5) | st.sampled_from([-1, 2**31, 2**62]), max_size=3)
    numbers = st.integers(-2**63, 2**64) | st.floats(allow_nan=False, allow_infinity=False) | st.booleans()
    data = st.lists(numbers | st.text(max_size=3) | st.lists(numbers, max_size=4), max_size=12) | numbers
    tensor = st.fixed_dictionaries(
        {"name": st.sampled_from(["x", "a", "b", "k", "y"]), "datatype": st.sampled_from(sorted(ELEMENTS)),
         "shape": st.sampled_from([[1, 4], [2, 4], [1, 3], [2, 2], [], [0, 4], [9, 4]]) | dims},
        optional={"data": data, "parameters": st.fixed_dictionaries({}, optional={
            "binary_data_size": st.integers(0, 64) | st.integers(-3, 2**40)})})
    document = draw(st.fixed_dictionaries({"inputs": st.lists(tensor, min_size=1, max_size=3)}, optional={
        "id": st.text(max_size=4) | st.integers(), "outputs": requested_outputs(), "parameters": request_parameters()}))
    model = draw(st.sampled_from(MODELS))
    if draw(st.booleans()):
        return model, JSON_TYPE, document, None
    head = json.dumps(document).encode()
    return model, "application/octet-stream", head + draw(st.binary(max_size=96)), max(0, len(head) - draw(
        st.sampled_from([0, 0, 1, 5])))


# Loaded from the dict at import (the served copy is compared below); `schemathesis.pytest.from_fixture`
# would build it from the app, but its lazy tests break on pytest 9 (they set `node._nodeid`).
schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(max_examples=EXAMPLES, database="none")


@schema.hook("before_generate_path_parameters")
def real_names(context: Any, strategy: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Half the time, a model of the repository (and a plausible version) instead of noise."""
    names = st.fixed_dictionaries({"model": st.sampled_from(MODELS), "version": st.sampled_from(VERSIONS)})

    def mix(drawn: tuple[dict[str, Any] | None, bool, dict[str, str]]) -> Any:
        generated, real, name = drawn
        if not real or not isinstance(generated, dict):
            return generated
        return {**generated, **{key: value for key, value in name.items() if key in generated}}

    return st.tuples(strategy, st.booleans(), names).map(mix)


@schema.hook("before_generate_case")
def plausible_infer_requests(context: Any, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Most infer requests are replaced by one for a model of the repository, targeted or noisy:
    noise alone dies in the JSON parser, these reach the tensor checks, the engine and the models."""
    if context.operation is None or not context.operation.path.endswith("/infer"):
        return strategy

    def swap(drawn: tuple[Any, Plausible | None, str]) -> Any:
        case, plausible, version = drawn
        if plausible is not None:
            model, media_type, body, header_length = plausible
            case.path_parameters = {**case.path_parameters, "model": model,
                                    **({"version": version} if "version" in case.path_parameters else {})}
            headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != HEADER_LENGTH.lower()}
            if header_length is not None:
                headers[HEADER_LENGTH] = str(header_length)
            case.media_type, case.body, case.headers = media_type, body, headers
        return case

    replacement = st.sampled_from([0, 1, 1, 2]).flatmap(
        lambda kind: (st.none(), targeted_requests(), noisy_requests())[kind])
    return st.tuples(strategy, replacement,
                     st.sampled_from(["1", "1", "1", "2", "01"])).map(swap)


@schema.hook("filter_path_parameters")
def not_a_fixed_route(context: Any, path_parameters: dict[str, Any]) -> bool:
    """/v2/models/stats is its own route (all statistics), not the metadata of a model 'stats'."""
    return not (isinstance(path_parameters, dict) and path_parameters.get("model") == "stats"
                and context.operation.path == "/v2/models/{model}")


def answer(response: Any) -> str:
    return f"{response.status_code} {response.text[:300]!r}"


def error_message(response: Any) -> str:
    """The refusal's {"error": message}; fails unless the body is one, with a message."""
    try:
        document = response.json()
    except ValueError:
        raise AssertionError(f"refusal without a JSON body: {answer(response)}") from None
    assert isinstance(document, dict) and isinstance(document.get("error"), str), f"not {{'error': str}}: {answer(response)}"
    message: str = document["error"]
    assert message.strip() and len(message) < 2000, f"no useful message: {answer(response)}"
    return message


def no_server_error(ctx: Any, response: Any, case: Any) -> None:
    """No 5xx, but the documented refusals that are the right answer to a well-formed request: a
    503 naming a model that is not ready (`broken`, or one the fuzzer unloaded), or a 504 when
    the request set a deadline."""
    status = response.status_code
    if status < 500:
        return
    model = (case.path_parameters or {}).get("model")
    if status == 503 and model is not None:
        if case.operation.path.endswith("/ready"):
            return  # readiness: 503 with no body is the answer 'not ready'
        message = error_message(response)
        assert re.search(r"is not (ready|loaded)", message) and model in message, answer(response)
        return
    if status == 504:
        assert re.search(r"deadline|timeout", error_message(response)), answer(response)
        return
    raise AssertionError(f"server error on {case.method} {case.formatted_path}: {answer(response)}")


def refusals_name_the_problem(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx is {"error": "<message>"}."""
    if 400 <= response.status_code < 500:
        error_message(response)


def malformed_is_refused(ctx: Any, response: Any, case: Any) -> Any:
    """A request that breaks the document is refused with a 4xx (schemathesis's
    negative_data_rejection, with 413 among the refusals). A body of only white space is read as
    no body, which the optional bodies allow."""
    if response.status_code == 413:
        error_message(response)
        return None
    if isinstance(case.body, (bytes, str)) and not case.body.strip():
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [malformed_is_refused, no_server_error, refusals_name_the_problem, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@schema.parametrize()
def test_api_fuzz(case: Any, fuzz_app: Any) -> None:
    case.call_and_validate(app=fuzz_app, checks=CHECKS, timeout=TIMEOUT_S)


# -- the document itself ------------------------------------------------------------------------


def _route_paths(app: Any) -> set[str]:
    return {route.path for route in app.routes if isinstance(route, Route)}


def test_every_route_is_documented(fuzz_app: Any) -> None:
    """The served document is valid OpenAPI (schemathesis loads it) and names every route."""
    served = schemathesis.openapi.from_asgi(OPENAPI_PATH, fuzz_app)
    assert served.raw_schema == openapi_document()
    assert set(served.raw_schema["paths"]) == _route_paths(fuzz_app)
    # (the schema's own path is left out of a schema loaded from the app, so count those of `schema`)
    operations = {(op.method.upper(), op.path) for op in (cast(Any, r).ok() for r in schema.get_all_operations())}
    for route in fuzz_app.routes:
        for method in (route.methods or set()) - {"HEAD"}:
            assert (method, route.path) in operations, f"{method} {route.path} is not documented"
    assert len(operations) == sum(len((r.methods or set()) - {"HEAD"}) for r in fuzz_app.routes)


def test_document_with_api_key(fuzz_engine: Engine) -> None:
    """With --api-key, the document is served only with the key, like every other endpoint."""
    from schemathesis.python import asgi

    with asgi.get_client(build_app(fuzz_engine, api_key="a-long-enough-key")) as client:
        assert client.get(OPENAPI_PATH).status_code == 401
        served = client.get(OPENAPI_PATH, headers={"authorization": "Bearer a-long-enough-key"})
        assert served.status_code == 200 and served.json() == openapi_document()


# -- afterwards ---------------------------------------------------------------------------------


def test_still_serves_after_fuzzing(fuzz_app: Any, fuzz_engine: Engine) -> None:
    """After everything above (unload and load included), a correct request is answered."""
    from schemathesis.python import asgi

    with asgi.get_client(fuzz_app) as client:
        assert client.post("/v2/repository/models/add/load", timeout=30).status_code == 200
        start = time.monotonic()
        response = client.post("/v2/models/add/infer", timeout=TIMEOUT_S, json={
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
        assert response.status_code == 200, answer(response)
        assert time.monotonic() - start < TIMEOUT_S
        outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
        assert outputs == {"y": [2.0, 4.0, 6.0, 8.0], "z": [3.0, 6.0, 9.0, 12.0]}
        assert client.get("/v2/health/ready").status_code == 200


# -- what the fuzzing found (regressions) --------------------------------------------------------


def test_routing_refusals_are_json(fuzz_app: Any) -> None:
    """Starlette's own 404 (no such path: a model name holding '/') and 405 answered plain text."""
    from schemathesis.python import asgi

    with asgi.get_client(fuzz_app) as client:
        for method, path, status, words in [
            ("GET", "/v2/models/a%2Fb", 404, "no endpoint at '/v2/models/a/b'"),
            ("GET", "/v2/nothing", 404, "no endpoint"),
            ("DELETE", "/v2/models/add", 405, "DELETE is not allowed on '/v2/models/add' (allowed: "),
            ("GET", "/v2/models/add/infer", 405, "(allowed: POST)"),
        ]:
            response = client.request(method, path)
            assert response.status_code == status and response.headers["content-type"] == JSON_TYPE
            assert words in error_message(response), answer(response)
        assert set(client.request("PUT", "/v2/health/live").headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_repository_bodies_are_checked(fuzz_app: Any) -> None:
    """`ready` of the index must be a boolean ({} read as false) and load/unload `parameters` an
    object (unload ignored its body, even one that was not JSON)."""
    from schemathesis.python import asgi

    with asgi.get_client(fuzz_app) as client:
        for path, body, words in [
            ("/v2/repository/index", b'{"ready": {}}', "field 'ready' must be true or false, got {}"),
            ("/v2/repository/index", b'{"ready": "yes"}', "field 'ready' must be true or false"),
            ("/v2/repository/models/add/unload", b"content-type", "not valid JSON"),
            ("/v2/repository/models/add/unload", b'{"parameters": 3}', "field 'parameters' must be an object"),
            ("/v2/repository/models/add/load", b'{"parameters": []}', "field 'parameters' must be an object"),
        ]:
            response = client.post(path, data=body, headers={"content-type": JSON_TYPE})
            assert response.status_code == 400 and words in error_message(response), answer(response)
        assert client.post("/v2/repository/index", json={"ready": True}).status_code == 200
        unload = client.post("/v2/repository/models/fixed/unload", json={"parameters": {"unload_dependents": False}})
        assert unload.status_code == 200
        assert client.post("/v2/repository/models/fixed/load", json={"parameters": {}}).status_code == 200
