"""Property-based fuzzing of the request decoders (hypothesis): the HTTP JSON / binary-tensor
parser and the gRPC wire decoder, then the engine's validation, on arbitrary, mutated and
mistyped requests. Every outcome is a decoded request or a 4xx error naming the problem —
never another exception. A bounded run here; `benchmarks/fuzz.py` runs the long one."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from edgeplex.engine import Engine
from edgeplex.errors import EdgeplexError
from edgeplex.server import codec
from edgeplex.server.grpc import decode_request as grpc_decode
from edgeplex.server.grpc_wire import parse_infer_request

EXAMPLES = int(os.environ.get("EDGEPLEX_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DATATYPES = ["FP32", "FP16", "FP64", "INT8", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "fp32", "FLOAT", "", "INT4"]


def assert_client_error(exc: EdgeplexError) -> None:
    assert 400 <= exc.http_status < 500, (type(exc).__name__, exc.message)
    assert exc.message and len(exc.message) < 2000


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                        st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6),
                                                                                             inner, max_size=4),
                        max_leaves=30)


def tensors() -> st.SearchStrategy[dict[str, Any]]:
    shape = st.lists(st.integers(-3, 2**40) | st.sampled_from([0, 1, 2, 4]), max_size=4) | json_values()
    data = st.lists(st.integers(-300, 300) | st.floats(-1e40, 1e40) | st.booleans() | st.text(max_size=3),
                    max_size=16) | json_values()
    return st.fixed_dictionaries(
        {"name": st.sampled_from(["x", "y", "", "a", "b"]) | json_values(), "datatype": st.sampled_from(DATATYPES),
         "shape": shape},
        optional={"data": data, "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "other"]),
                                                                st.integers(-5, 64) | json_values(), max_size=2)},
    )


def documents() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"inputs": st.lists(tensors(), max_size=3) | json_values()},
        optional={"outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["y", "z", "nope"])}),
                                      max_size=3) | json_values(),
                  "parameters": st.dictionaries(st.sampled_from(["priority", "timeout", "binary_data_output"]),
                                                st.integers(-5, 2**70) | json_values(), max_size=3),
                  "id": json_values()},
    )


def check_through_engine(engine: Engine, decoded_request: Any) -> None:
    """The engine either answers it or refuses it with a 4xx."""
    try:
        response = engine.infer(decoded_request)
    except EdgeplexError as exc:
        assert_client_error(exc)
    else:
        assert response.outputs


@FUZZ
@given(body=st.binary(max_size=512), header=st.none() | st.integers(-10, 600))
def test_http_decoder_on_arbitrary_bytes(body: bytes, header: int | None) -> None:
    try:
        codec.decode_request("add", "", body, header)
    except EdgeplexError as exc:
        assert_client_error(exc)


@FUZZ
@given(document=documents(), tail=st.binary(max_size=64), binary=st.booleans())
def test_http_decoder_on_mistyped_documents(engine: Engine, document: dict[str, Any], tail: bytes,
                                            binary: bool) -> None:
    head = json.dumps(document, allow_nan=True).encode()
    body, header = (head + tail, len(head)) if binary else (head, None)
    try:
        decoded = codec.decode_request("add", "", body, header)
    except EdgeplexError as exc:
        assert_client_error(exc)
        return
    check_through_engine(engine, decoded.request)


def valid_grpc_request() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="add")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    assert tensor is not None
    request.raw_input_contents.append(np.arange(8, dtype=np.float32).tobytes())
    request.outputs.add(name="y")
    request.parameters["priority"].int64_param = 2
    return bytes(request.SerializeToString())


@FUZZ
@given(data=st.binary(max_size=400))
def test_grpc_decoder_on_arbitrary_bytes(engine: Engine, data: bytes) -> None:
    try:
        decoded = grpc_decode(parse_infer_request(data))
    except EdgeplexError as exc:
        assert_client_error(exc)
        return
    check_through_engine(engine, decoded)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.none() | st.integers(0, 10_000))
def test_grpc_decoder_on_mutated_requests(engine: Engine, edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(valid_grpc_request())
    for position, value in edits:
        data[position % len(data)] = value
    if cut is not None:
        del data[cut % len(data):]
    try:
        decoded = grpc_decode(parse_infer_request(bytes(data)))
    except EdgeplexError as exc:
        assert_client_error(exc)
        return
    check_through_engine(engine, decoded)


def test_the_valid_grpc_request_is_answered(engine: Engine) -> None:
    decoded = grpc_decode(parse_infer_request(valid_grpc_request()))
    y = engine.infer(decoded).outputs["y"]
    np.testing.assert_array_equal(y, 2 * np.arange(8, dtype=np.float32).reshape(2, 4))


@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BYTES", "BOOL"])
def test_binary_tensor_parser_round_trips(datatype: str) -> None:
    from edgeplex.tensors import from_raw, numpy_dtype, to_raw

    rng = np.random.default_rng(0)
    array = (np.array([b"", b"ab", b"\x00\xff"] * 2, dtype=object).reshape(2, 3) if datatype == "BYTES"
             else rng.integers(0, 2, (2, 3)).astype(numpy_dtype(datatype)))
    back = from_raw(to_raw(array), datatype, [2, 3], "t")
    assert back.shape == (2, 3) and list(back.ravel()) == list(array.ravel())
