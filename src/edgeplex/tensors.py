"""KServe V2 datatypes <-> numpy, and the shape/dtype checks every transport shares."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InvalidInput, PayloadTooLarge

# V2 datatype name -> numpy dtype. BYTES is carried as object arrays of `bytes`.
V2_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
NUMPY_TO_V2: dict[np.dtype[Any], str] = {v: k for k, v in V2_TO_NUMPY.items()}
NUMPY_TO_V2[np.dtype(np.bytes_)] = "BYTES"

# ONNX TensorProto element type -> V2 datatype.
ONNX_TO_V2: dict[int, str] = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64",
}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype; InvalidInput if the name is unknown."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        known = ", ".join(V2_TO_NUMPY)
        raise InvalidInput(f"unknown datatype '{datatype}' (expected one of {known})") from None


def v2_datatype(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype (str and bytes arrays are BYTES)."""
    if dtype.kind in ("S", "U", "O"):
        return "BYTES"
    try:
        return NUMPY_TO_V2[np.dtype(dtype)]
    except KeyError:
        raise InvalidInput(f"numpy dtype {dtype} has no V2 datatype") from None


def element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


DEFAULT_MAX_ELEMENTS = 1 << 26  # per tensor; `edgeplex serve --max-tensor-elements`


def check_shape(shape: Sequence[int], name: str, max_elements: int = DEFAULT_MAX_ELEMENTS) -> list[int]:
    """A request shape: a list of non-negative integers, of at most `max_elements` elements."""
    if not isinstance(shape, (list, tuple)):
        raise InvalidInput(f"input '{name}': shape must be a list of integers, got {shape!r}")
    out: list[int] = []
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise InvalidInput(f"input '{name}': shape {list(shape)!r} must hold non-negative integers")
        out.append(dim)
    count = element_count(out)
    if count > max_elements:
        raise PayloadTooLarge(f"input '{name}': shape {out} has {count} elements, over the limit of {max_elements}")
    return out


def shape_matches(shape: Sequence[int], dims: Sequence[int]) -> bool:
    """True if `shape` fits `dims`, where -1 in `dims` accepts any size."""
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims))


def from_raw(raw: bytes | memoryview, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """Decode a binary (raw) tensor, checking its byte size against its shape."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _deserialize_bytes(raw, count, name).reshape(shape)
    dtype = numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input '{name}': got {len(raw)} bytes of {datatype} data, expected {expected} "
            f"for shape {list(shape)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def to_raw(array: np.ndarray) -> bytes:
    """Encode a tensor in the binary extension's layout (row-major; BYTES length-prefixed)."""
    if array.dtype.kind in ("S", "U", "O"):
        return _serialize_bytes(array)
    return np.ascontiguousarray(array).tobytes()


def raw_buffer(array: np.ndarray) -> memoryview | bytes:
    """A tensor's binary-extension bytes without a copy where it can: a C-contiguous numeric array
    is viewed, not copied (the reply that joins it copies it once); BYTES are serialised."""
    if array.dtype.kind in ("S", "U", "O"):
        return _serialize_bytes(array)
    if array.size == 0:
        return b""
    return np.ascontiguousarray(array).data.cast("B")


def _serialize_bytes(array: np.ndarray) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1):
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _deserialize_bytes(raw: bytes | memoryview, count: int, name: str) -> np.ndarray:
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidInput(f"input '{name}': truncated BYTES element length at byte {offset}")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidInput(f"input '{name}': BYTES element of {length} bytes runs past the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidInput(f"input '{name}': got {len(items)} BYTES elements, shape needs {count}")
    out = np.empty(count, dtype=np.object_)
    out[:] = items
    return out


def from_list(data: object, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """Decode a JSON tensor (flat or nested list), checking the element count."""
    count = element_count(shape)
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise InvalidInput(f"input '{name}': got {len(flat)} elements, shape {list(shape)} needs {count}")
        bad = [x for x in flat if not isinstance(x, (str, bytes))]
        if bad:  # bytes(3) would be three zero bytes, bytes(None) a TypeError
            raise InvalidInput(f"input '{name}': BYTES elements must be strings, got {type(bad[0]).__name__}")
        out = np.empty(count, dtype=np.object_)
        out[:] = [x.encode() if isinstance(x, str) else x for x in flat]
        return out.reshape(shape)
    dtype = numpy_dtype(datatype)
    try:
        source = np.asarray(data)
    except ValueError:
        raise InvalidInput(f"input '{name}': data is not valid {datatype}: nested lists are ragged") from None
    source = source.reshape(-1)
    if source.size != count:
        raise InvalidInput(f"input '{name}': got {source.size} elements, shape {list(shape)} needs {count}")
    return _cast_checked(source, dtype, datatype, name).reshape(shape)


# Which JSON value kinds (numpy kinds of the parsed list) each target kind accepts.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}
_KIND_WORDS = {"b": "boolean", "i": "integer", "u": "integer", "f": "fractional", "U": "string", "O": "mixed or null"}


def _cast_checked(source: np.ndarray, dtype: np.dtype[Any], datatype: str, name: str) -> np.ndarray:
    """Cast JSON values to `dtype`, refusing what would silently change them (1.5 -> INT32,
    true -> FP32, null, values out of range, finite values that overflow to inf)."""
    if source.size == 0:
        return source.astype(dtype)
    if source.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        got = _KIND_WORDS.get(source.dtype.kind, "non-numeric")
        raise InvalidInput(f"input '{name}': data is not valid {datatype} (got {got} values)")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(source.min()), int(source.max())
        if low < info.min or high > info.max:
            raise InvalidInput(f"input '{name}': data is not valid {datatype}: values {low}..{high} are out of range")
        return source.astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = source.astype(dtype)
    if dtype.kind == "f" and not np.all(np.isfinite(out[np.isfinite(source)])):
        raise InvalidInput(f"input '{name}': data is not valid {datatype}: values overflow it")
    return out


def to_list(array: np.ndarray) -> list[object]:
    """A tensor as a flat JSON-ready list (BYTES decoded as UTF-8 where possible)."""
    flat = array.reshape(-1)
    if array.dtype.kind in ("S", "O", "U"):
        out: list[object] = []
        for item in flat:
            if isinstance(item, bytes):
                try:
                    out.append(item.decode())
                except UnicodeDecodeError:
                    out.append(item.decode("latin-1"))
            else:
                out.append(str(item))
        return out
    return list(flat.tolist())


def _flatten(data: list[object]) -> list[object]:
    out: list[object] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out
