"""The KServe V2 REST codec: JSON tensors and the binary tensor extension.

    body = JSON header [+ binary tensor data, in input order]
    header `Inference-Header-Content-Length` = length of the JSON header when binary data follows

Every malformed part raises InvalidInput naming the field, so the HTTP adapter answers 400.

JSON tensors are costly to code (a Python object per element): past offload.py's sizes the
adapter codes them on the codec thread (`json_bytes` and `json_output_elements` measure a
request), so one large JSON request does not stall the event loop that serves binary and gRPC
traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..engine import InferRequest, InferResponse
from ..errors import InvalidInput
from ..tensors import (
    DEFAULT_MAX_ELEMENTS,
    check_shape,
    from_list,
    from_raw,
    numpy_dtype,
    raw_buffer,
    to_list,
    v2_datatype,
)

HEADER_LENGTH = "inference-header-content-length"


def json_bytes(body_length: int, header_length: int | None) -> int:
    """How much of a body is JSON (the whole of it without the binary extension's header)."""
    return body_length if header_length is None else header_length


def json_output_elements(response: InferResponse, decoded: DecodedRequest) -> int:
    """Elements of the response that go out as JSON lists, not binary."""
    return sum(array.size for name, array in response.outputs.items()
               if not decoded.binary_outputs.get(name, decoded.binary_default))


@dataclass
class DecodedRequest:
    """An engine request plus how the caller wants each output encoded."""

    request: InferRequest
    binary_outputs: dict[str, bool]
    binary_default: bool


def parse_header_length(value: str | None, body_length: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidInput(f"Inference-Header-Content-Length '{value}' is not an integer") from None
    if not 0 <= length <= body_length:
        raise InvalidInput(f"Inference-Header-Content-Length {length} is outside the body's {body_length} bytes")
    return length


def parse_json_object(data: bytes | memoryview) -> dict[str, Any]:
    """A JSON object from a body; InvalidInput if it is not valid JSON or not an object."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    return document


def decode_request(model: str, version: str, body: bytes, header_length: int | None,
                   max_elements: int = DEFAULT_MAX_ELEMENTS) -> DecodedRequest:
    """Decode an infer request body (JSON, or JSON header + binary tensors); tensors of more than
    `max_elements` elements are refused (413)."""
    view = memoryview(body)
    document = parse_json_object(view[:header_length] if header_length is not None else view)
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request field 'inputs' must be a non-empty list")
    parameters = _mapping(document.get("parameters"), "parameters")

    binary = view[header_length:] if header_length is not None else view[:0]
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    for index, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{index}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{index}]: field 'name' must be a non-empty string")
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}': field 'datatype' must be a string")
        try:
            numpy_dtype(datatype)
        except InvalidInput as exc:
            raise InvalidInput(f"input '{name}': {exc.message}") from None
        shape = check_shape(item.get("shape"), name, max_elements)  # type: ignore[arg-type]
        in_params = _mapping(item.get("parameters"), f"input '{name}' parameters")
        size = in_params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if header_length is None:
                raise InvalidInput(f"input '{name}' has binary_data_size but no Inference-Header-Content-Length")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the body ({len(binary) - offset} bytes left)"
                )
            inputs[name] = from_raw(binary[offset : offset + size], datatype, shape, name)
            offset += size
        elif "data" in item:
            inputs[name] = from_list(item["data"], datatype, shape, name)
        else:
            raise InvalidInput(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data are not claimed by any input")

    binary_default = bool(parameters.get("binary_data_output", False))
    outputs: list[str] | None = None
    binary_outputs: dict[str, bool] = {}
    raw_outputs = document.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("request field 'outputs' must be a list")
        outputs = []
        for index, item in enumerate(raw_outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInput(f"outputs[{index}] must be an object with a string 'name'")
            out_params = _mapping(item.get("parameters"), f"output '{item['name']}' parameters")
            if "classification" in out_params:
                raise InvalidInput(f"output '{item['name']}': the classification extension is not supported")
            outputs.append(item["name"])
            binary_outputs[item["name"]] = bool(out_params.get("binary_data", binary_default))
        outputs = outputs or None

    request_id = document.get("id", "")
    request = InferRequest(
        model_name=model,
        model_version=version,
        inputs=inputs,
        id=request_id if isinstance(request_id, str) else str(request_id),
        outputs=outputs,
        priority=_positive_int(parameters.get("priority"), "priority"),
        timeout_us=_positive_int(parameters.get("timeout"), "timeout"),
        parameters=parameters,
    )
    return DecodedRequest(request, binary_outputs, binary_default)


def encode_response(response: InferResponse, decoded: DecodedRequest) -> tuple[bytes, dict[str, str]]:
    """The response body and headers; binary outputs follow the JSON header."""
    outputs: list[dict[str, Any]] = []
    chunks: list[memoryview | bytes] = []  # views: the join below is the one copy of each tensor
    for name, array in response.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)}
        if decoded.binary_outputs.get(name, decoded.binary_default):
            raw = raw_buffer(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = to_list(array)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        document["id"] = response.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"content-type": "application/json"}
    return b"".join([header, *chunks]), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def _mapping(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _positive_int(value: object, name: str) -> int | None:
    """Triton's priority/timeout parameters: 0 or absent means 'use the model's default'."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"parameter '{name}' must be a non-negative integer, got {value!r}")
    return value or None
