"""Zero-copy framing of the raw tensors in gRPC infer messages.

Protobuf copies every raw tensor several times on its way through the server: into its arena,
into a new `bytes` on access, into a doubling encode buffer. For a 1.2 MB image that was most
of the server's non-compute time (py-spy). Here only the raw-tensor fields are framed by hand,
by the wire format's own rules — a `bytes` field is tag + varint length + payload, and
concatenated messages merge, repeated fields appending in order — so inputs are numpy views of
the received bytes and outputs are copied once, straight into the reply. Every other field is
still parsed and written by protobuf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from ..errors import InvalidInput

RAW_INPUT_CONTENTS = 7  # ModelInferRequest.raw_input_contents
RAW_OUTPUT_CONTENTS = 6  # ModelInferResponse.raw_output_contents
STREAM_ERROR_MESSAGE = 1  # ModelStreamInferResponse.error_message
STREAM_INFER_RESPONSE = 2  # ModelStreamInferResponse.infer_response
_LENGTH_DELIMITED = 2


class WireInferRequest:
    """A ModelInferRequest whose `raw_input_contents` are views into the received bytes.

    Reads like the protobuf message (attribute access is passed through), so the decoder
    works on either."""

    __slots__ = ("message", "raw_input_contents")

    def __init__(self, message: Any, raw_input_contents: list[memoryview]) -> None:
        self.message = message
        self.raw_input_contents = raw_input_contents

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


def parse_infer_request(data: bytes) -> WireInferRequest:
    """Split the raw tensors off a serialized ModelInferRequest; protobuf parses the rest."""
    view = memoryview(data)
    header: list[memoryview] = []
    raws: list[memoryview] = []
    pos = 0
    try:
        while pos < len(view):
            start = pos
            key, pos = _read_varint(view, pos)
            field, wire_type = key >> 3, key & 7
            if wire_type == _LENGTH_DELIMITED:
                length, pos = _read_varint(view, pos)
                end = pos + length
                if end > len(view):
                    raise InvalidInput(f"malformed request: field {field} runs past the end of the message")
                if field == RAW_INPUT_CONTENTS:
                    raws.append(view[pos:end])
                else:
                    header.append(view[start:end])
                pos = end
            elif wire_type == 0:
                _, pos = _read_varint(view, pos)
                header.append(view[start:pos])
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
                header.append(view[start:pos])
            else:
                raise InvalidInput(f"malformed request: wire type {wire_type} of field {field} is not supported")
        if pos != len(view):
            raise InvalidInput("malformed request: the last field is truncated")
        message = service_pb2.ModelInferRequest.FromString(b"".join(header))
    except DecodeError as exc:
        raise InvalidInput(f"malformed request: {exc}") from None
    return WireInferRequest(message, raws)


def serialize_infer_response(message: Any, raw_outputs: Sequence[memoryview | bytes]) -> bytes:
    """`message` (a ModelInferResponse without raw contents) plus the raw tensors (`raw_buffer`
    views), in order; the join is each tensor's one copy."""
    parts: list[Any] = [message.SerializeToString()]
    for payload in raw_outputs:
        parts.append(_field_header(RAW_OUTPUT_CONTENTS, len(payload)))
        parts.append(payload)
    return b"".join(parts)


def serialize_stream_response(infer_response: bytes, error_message: str = "") -> bytes:
    """A ModelStreamInferResponse around an already serialized ModelInferResponse."""
    parts = []
    if error_message:
        text = error_message.encode()
        parts += [_field_header(STREAM_ERROR_MESSAGE, len(text)), text]
    parts += [_field_header(STREAM_INFER_RESPONSE, len(infer_response)), infer_response]
    return b"".join(parts)


def _field_header(field: int, length: int) -> bytes:
    return _varint((field << 3) | _LENGTH_DELIMITED) + _varint(length)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise InvalidInput("malformed request: truncated or overlong varint")
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
