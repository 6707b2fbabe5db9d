"""The hand-framed raw tensors must read and write exactly what protobuf would."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from edgeplex.errors import InvalidInput
from edgeplex.server.grpc_wire import parse_infer_request, serialize_infer_response, serialize_stream_response
from edgeplex.tensors import raw_buffer


def _request(raws: list[bytes]) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="req-7")
    for index, raw in enumerate(raws):
        request.inputs.add(name=f"in{index}", datatype="UINT8", shape=[len(raw)])
    request.outputs.add(name="out")
    request.parameters["priority"].int64_param = 3
    request.raw_input_contents.extend(raws)
    return request


@pytest.mark.parametrize("sizes", [[], [0], [1, 300], [200_000, 5, 70_000]])
def test_parse_splits_raw_tensors_and_keeps_every_other_field(sizes: list[int]) -> None:
    rng = np.random.default_rng(len(sizes))
    raws = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in sizes]
    wire = _request(raws).SerializeToString()
    parsed = parse_infer_request(wire)
    assert [bytes(view) for view in parsed.raw_input_contents] == raws
    expected = _request(raws)
    del expected.raw_input_contents[:]
    assert parsed.message == expected  # every other field intact, the raw ones split off
    assert parsed.model_name == "m" and parsed.id == "req-7" and len(parsed.inputs) == len(sizes)


def test_parsed_raw_tensors_are_views_not_copies() -> None:
    wire = _request([b"\x01\x02\x03\x04"]).SerializeToString()
    (view,) = parse_infer_request(wire).raw_input_contents
    assert view.obj is wire


@pytest.mark.parametrize(
    "wire, problem",
    [
        (b"\x3a\x10abc", "runs past the end"),  # field 7, length 16, 3 bytes
        (b"\x0a\xff", "varint"),  # field 1, length varint never ends
        (b"\x0b", "wire type 3"),  # start-group: unsupported
        (b"\x0a\x03\xff\xfe\xfd", "malformed request"),  # model_name that is not UTF-8
    ],
)
def test_malformed_requests_are_invalid_input(wire: bytes, problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        parse_infer_request(wire)


def test_serialized_response_equals_protobufs_own() -> None:
    outputs = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, dtype=np.int64), np.zeros((0, 4), np.float32),
               np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]]
    message = service_pb2.ModelInferResponse(model_name="m", model_version="1", id="x")
    for index, array in enumerate(outputs):
        message.outputs.add(name=f"o{index}", datatype="FP32", shape=list(array.shape))
    ours = serialize_infer_response(message, [raw_buffer(a) for a in outputs])
    reference = service_pb2.ModelInferResponse()
    reference.CopyFrom(message)
    reference.raw_output_contents.extend(np.ascontiguousarray(a).tobytes() for a in outputs)
    assert service_pb2.ModelInferResponse.FromString(ours) == reference


def test_stream_response_wraps_the_infer_response_and_the_error() -> None:
    inner = service_pb2.ModelInferResponse(model_name="m", id="9")
    wire = serialize_stream_response(inner.SerializeToString(), "model 'm' is not ready")
    parsed = service_pb2.ModelStreamInferResponse.FromString(wire)
    assert parsed.error_message == "model 'm' is not ready" and parsed.infer_response == inner
    assert service_pb2.ModelStreamInferResponse.FromString(serialize_stream_response(b"")).error_message == ""
