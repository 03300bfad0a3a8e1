"""Tests for jaxbp.data.idx: reading and writing IDX files, plain and gzip."""

import gzip
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxbp.data import CorruptFileError, read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(), (0,), (7,), (3, 4), (2, 3, 4), (5, 28, 28), (1, 2, 1, 3)]


def _idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file built by hand: magic, type code, ndim, dims, payload."""
    return struct.pack(f">2xBB{len(dims)}I", code, len(dims), *dims) + payload


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, shape, suffix):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = tmp_path / f"x-idx{len(shape)}{suffix}"
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype)
    assert result.dtype.isnative
    assert result.shape == shape
    np.testing.assert_array_equal(result, array)


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype(d) for d in DTYPES]),
        shape=st.sampled_from([(3,), (2, 5), (4, 2, 3)]),
        elements={"allow_nan": False},
    ),
    st.booleans(),
)
def test_round_trip_any_values(tmp_path_factory, array, compress):
    path = tmp_path_factory.mktemp("idx") / "values.idx"
    write_idx(path, array, compress=compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_header_layout_is_big_endian(tmp_path):
    path = tmp_path / "x-idx2-int"
    write_idx(path, np.array([[1, 2, 3]], dtype=np.int32))
    assert path.read_bytes() == (
        b"\x00\x00\x0c\x02" + b"\x00\x00\x00\x01\x00\x00\x00\x03"
        b"\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03"
    )


def test_reads_big_endian_input_and_returns_native(tmp_path):
    path = tmp_path / "x-idx1-short"
    path.write_bytes(_idx_bytes(0x0B, (2,), b"\x01\x00\xff\xfe"))
    result = read_idx(path)
    assert result.dtype == np.int16 and result.dtype.isnative
    np.testing.assert_array_equal(result, [256, -2])
    result[0] = 7  # writable, owns its memory


def test_gzip_detected_by_magic_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    compressed_plain_name = tmp_path / "images-idx2-ubyte"
    write_idx(compressed_plain_name, array, compress=True)
    plain_gz_name = tmp_path / "images-idx2-ubyte.gz"
    write_idx(plain_gz_name, array, compress=False)
    assert compressed_plain_name.read_bytes()[:2] == b"\x1f\x8b"
    assert plain_gz_name.read_bytes()[:2] == b"\x00\x00"
    np.testing.assert_array_equal(read_idx(compressed_plain_name), array)
    np.testing.assert_array_equal(read_idx(plain_gz_name), array)


def test_multi_member_gzip_with_zero_padding(tmp_path):
    data = _idx_bytes(0x08, (6,), bytes(range(6)))
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(data[:7]) + gzip.compress(data[7:]) + b"\0" * 8)
    np.testing.assert_array_equal(read_idx(path), np.arange(6))


def test_write_leaves_no_temporary_files(tmp_path):
    write_idx(tmp_path / "a.gz", np.zeros((3, 3), np.uint8))
    write_idx(tmp_path / "a.gz", np.ones((2,), np.uint8))  # overwrite
    assert os.listdir(tmp_path) == ["a.gz"]
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), [1, 1])


@pytest.mark.parametrize("dtype", [np.bool_, np.uint16, np.int64, np.complex64])
def test_write_rejects_dtypes_without_type_code(tmp_path, dtype):
    with pytest.raises(TypeError, match=f"dtype {np.dtype(dtype)} has no IDX type"):
        write_idx(tmp_path / "x", np.zeros(3, dtype))
    assert os.listdir(tmp_path) == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.gz")


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", r"truncated IDX header: 0 bytes, need at least 4"),
        (b"\x00\x00\x08", r"truncated IDX header: 3 bytes, need at least 4"),
        (
            b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00",
            r"truncated IDX header: 3 dimensions need a 16-byte header, "
            r"file has 10 bytes",
        ),
        (
            b"\x01\x02\x08\x01\x00\x00\x00\x01\x00",
            r"wrong magic number: first two bytes are 0x01 0x02, expected 0x00 0x00",
        ),
        (b"PK\x03\x04", r"wrong magic number"),
        (b"\x00\x00\x0a\x01\x00\x00\x00\x01\x00", r"unknown IDX type code 0x0A"),
        (
            _idx_bytes(0x08, (2, 3), bytes(5)),
            r"wrong payload size: dims \(2, 3\) of unsigned byte \(1 bytes each\) "
            r"need 6 bytes, file has 5 bytes",
        ),
        (
            _idx_bytes(0x08, (2, 3), bytes(7)),
            r"need 6 bytes, file has 7 bytes",
        ),
        (
            _idx_bytes(0x0D, (3,), bytes(8)),
            r"dims \(3,\) of float \(4 bytes each\) need 12 bytes, file has 8",
        ),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_bad_structure(tmp_path, data, match, compress):
    path = tmp_path / "bad-idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(CorruptFileError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.fixture
def gzipped(tmp_path):
    """A valid gzip-compressed IDX file's bytes, and a path to write variants to."""
    array = np.random.default_rng(1).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    path = tmp_path / "images-idx3-ubyte.gz"
    write_idx(path, array)
    return path.read_bytes(), path


@pytest.mark.parametrize("keep", [2, 10, 0.5, -9, -1])
def test_truncated_gzip(gzipped, keep):
    data, path = gzipped
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(CorruptFileError, match="truncated gzip data") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda d: d[:-8] + bytes(b ^ 0xFF for b in d[-8:-4]) + d[-4:], "data check"),
        (lambda d: d[:-4] + b"\x01\x02\x03\x04", "length check"),
        (lambda d: d[:2] + b"\x07" + d[3:], "unknown compression method"),
        (lambda d: d + b"trailing garbage", "incorrect header check"),
    ],
    ids=["crc", "size", "method", "trailing-garbage"],
)
def test_corrupt_gzip(gzipped, corrupt, match):
    data, path = gzipped
    path.write_bytes(corrupt(data))
    with pytest.raises(CorruptFileError, match=f"{path}: corrupt gzip data .*{match}"):
        read_idx(path)
