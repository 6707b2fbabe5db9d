"""V2 datatypes <-> numpy: the binary (raw) and JSON (list) encodings and the shape checks."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgeplex.errors import InvalidInput
from edgeplex.tensors import (
    V2_TO_NUMPY,
    check_shape,
    from_list,
    from_raw,
    numpy_dtype,
    shape_matches,
    to_list,
    to_raw,
    v2_datatype,
)

NUMERIC = [name for name in V2_TO_NUMPY if name != "BYTES"]


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    dtype = V2_TO_NUMPY[datatype]
    count = int(np.prod(shape))
    if datatype == "BOOL":
        values = np.arange(count) % 3 == 0
    elif dtype.kind == "f":
        values = np.linspace(-2.5, 7.25, count)
    elif dtype.kind == "i":
        values = np.arange(count) - count // 2
    else:
        values = np.arange(count) + 200
    return values.astype(dtype).reshape(shape)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_raw_round_trip_every_numeric_datatype(datatype: str) -> None:
    array = _sample(datatype, (2, 3))
    raw = to_raw(array)
    assert len(raw) == 6 * V2_TO_NUMPY[datatype].itemsize
    back = from_raw(raw, datatype, [2, 3], "x")
    assert back.dtype == V2_TO_NUMPY[datatype]
    assert back.shape == (2, 3)
    np.testing.assert_array_equal(back, array)
    assert v2_datatype(back.dtype) == datatype


def test_raw_is_row_major_even_for_a_transposed_view() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3).T  # not C-contiguous
    back = from_raw(to_raw(array), "INT32", [3, 2], "x")
    np.testing.assert_array_equal(back, array)


def test_raw_round_trip_bytes_is_length_prefixed() -> None:
    array = np.array([[b"ab", b""], [b"\x00\xff", "h\u00e9".encode()]], dtype=object)
    raw = to_raw(array)
    expected = b"".join(struct.pack("<I", len(item)) + item for item in array.reshape(-1))
    assert raw == expected
    back = from_raw(raw, "BYTES", [2, 2], "s")
    assert back.shape == (2, 2)
    assert back.dtype == np.object_
    assert back.reshape(-1).tolist() == [b"ab", b"", b"\x00\xff", "h\u00e9".encode()]


def test_raw_bytes_from_str_and_bytes_arrays() -> None:
    assert to_raw(np.array(["hi", "x"])) == struct.pack("<I", 2) + b"hi" + struct.pack("<I", 1) + b"x"
    assert to_raw(np.array([b"hi"])) == struct.pack("<I", 2) + b"hi"


def test_raw_byte_size_mismatch_names_input_sizes_and_shape() -> None:
    with pytest.raises(InvalidInput) as info:
        from_raw(b"\x00" * 10, "FP32", [2, 2], "pixels")
    message = info.value.message
    assert "'pixels'" in message
    assert "10 bytes" in message and "expected 16" in message
    assert "[2, 2]" in message
    assert info.value.http_status == 400


def test_raw_unknown_datatype() -> None:
    with pytest.raises(InvalidInput, match="unknown datatype 'FP8'"):
        from_raw(b"\x00", "FP8", [1], "x")
    with pytest.raises(InvalidInput, match="unknown datatype 'float'"):
        numpy_dtype("float")


def test_raw_truncated_bytes() -> None:
    good = struct.pack("<I", 3) + b"abc"
    # The length prefix itself is cut short.
    with pytest.raises(InvalidInput, match=r"'s': truncated BYTES element length at byte 7"):
        from_raw(good + b"\x01\x00\x00", "BYTES", [2], "s")
    # The element runs past the end of the data.
    with pytest.raises(InvalidInput, match=r"'s': BYTES element of 5 bytes runs past the data"):
        from_raw(good + struct.pack("<I", 5) + b"ab", "BYTES", [2], "s")
    # Well-formed, but the wrong number of elements for the shape.
    with pytest.raises(InvalidInput, match=r"'s': got 1 BYTES elements, shape needs 2"):
        from_raw(good, "BYTES", [2], "s")


def test_raw_empty_tensor() -> None:
    assert from_raw(b"", "FP32", [0, 3], "x").shape == (0, 3)
    assert from_raw(b"", "BYTES", [0], "s").shape == (0,)


def test_from_list_nested_lists_are_flattened_in_row_major_order() -> None:
    array = from_list([[1, 2, 3], [4, 5, 6]], "INT64", [3, 2], "x")
    assert array.dtype == np.int64
    np.testing.assert_array_equal(array, np.array([[1, 2], [3, 4], [5, 6]]))
    flat = from_list([1.5, 2.5], "FP32", [2, 1], "x")
    assert flat.dtype == np.float32 and flat.shape == (2, 1)


def test_from_list_bytes_nested_and_encoded() -> None:
    array = from_list([["a", "bc"], ["\u00e9", "d"]], "BYTES", [4], "s")
    assert array.tolist() == [b"a", b"bc", "\u00e9".encode(), b"d"]
    assert to_list(array) == ["a", "bc", "\u00e9", "d"]


def test_from_list_scalar() -> None:
    assert from_list(7, "INT32", [], "k").shape == ()


def test_from_list_count_mismatch_names_input_and_counts() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': got 5 elements, shape \[2, 3\] needs 6"):
        from_list([1, 2, 3, 4, 5], "FP32", [2, 3], "x")
    with pytest.raises(InvalidInput, match=r"input 's': got 1 elements, shape \[2\] needs 2"):
        from_list(["a"], "BYTES", [2], "s")


def test_from_list_bad_values() -> None:
    with pytest.raises(InvalidInput, match="input 'x': data is not valid FP32"):
        from_list(["not a number"], "FP32", [1], "x")
    with pytest.raises(InvalidInput, match="input 'x': data is not valid FP32"):
        from_list([[1, 2], [3]], "FP32", [3], "x")  # ragged
    with pytest.raises(InvalidInput, match="input 'x': data is not valid UINT8"):
        from_list([-1], "UINT8", [1], "x")


def test_from_list_bytes_refuses_non_strings() -> None:
    # bytes(3) would silently be three zero bytes; None would be a TypeError (a 500).
    for bad in (3, None, 1.5):
        with pytest.raises(InvalidInput, match="input 's'"):
            from_list(["ok", bad], "BYTES", [2], "s")


def test_to_list() -> None:
    assert to_list(np.array([[1.5, 2.0]], dtype=np.float32)) == [1.5, 2.0]
    assert to_list(np.array([b"\xff"], dtype=object)) == ["\u00ff"]  # latin-1 fallback


def test_shape_matches_with_wildcards() -> None:
    assert shape_matches([3, 4], [-1, 4])
    assert shape_matches([3, 4], [-1, -1])
    assert shape_matches([], [])
    assert not shape_matches([3, 5], [-1, 4])
    assert not shape_matches([3], [-1, 4])
    assert not shape_matches([3, 4, 1], [-1, 4])


def test_check_shape() -> None:
    assert check_shape((1, 2), "x") == [1, 2]
    for bad in ([1, -1], [1, 2.0], [True], "12"):
        with pytest.raises(InvalidInput, match="input 'x'"):
            check_shape(bad, "x")  # type: ignore[arg-type]


def test_v2_datatype() -> None:
    assert v2_datatype(np.dtype(np.float16)) == "FP16"
    assert v2_datatype(np.dtype("U3")) == "BYTES"
    assert v2_datatype(np.dtype("S3")) == "BYTES"
    with pytest.raises(InvalidInput, match="complex128"):
        v2_datatype(np.dtype(np.complex128))


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.int32).reshape(3, 4).T,  # not C-contiguous
    np.array([[True, False], [False, True]]),
    np.arange(6, dtype=np.float16).reshape(2, 3)[:, ::2],
    np.zeros((0, 4), np.float32),
    np.array([b"ab", b"", b"xyz"], dtype=np.object_),
])
def test_raw_buffer_holds_the_same_bytes_as_to_raw(array: np.ndarray) -> None:
    """The zero-copy view both transports reply with is byte for byte the binary extension's layout."""
    from edgeplex.tensors import raw_buffer, to_raw

    assert bytes(raw_buffer(array)) == to_raw(array)
