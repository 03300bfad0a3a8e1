"""Reading and writing the IDX format of LeCun's MNIST files.

An IDX file is a big-endian header followed by a raw array::

    offset 0   0x00 0x00          magic: two zero bytes
    offset 2   type code          0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
                                  0x0D float, 0x0E double
    offset 3   ndim               number of dimensions
    offset 4   ndim x uint32      the dimensions, big-endian
    then       prod(dims) items   big-endian, C order

Files are often gzip-compressed; :func:`read_idx` recognises gzip by its magic bytes
(``1f 8b``), whatever the file is called. See http://yann.lecun.com/exdb/mnist/.
"""

import gzip
import math
import os
import pathlib
import struct
import types
import zlib
from collections.abc import Mapping

import numpy as np

from jaxbp._atomic import write_atomically
from jaxbp.data.errors import CorruptFileError

__all__ = ["IDX_TYPE_CODES", "read_idx", "write_idx"]

GZIP_MAGIC = b"\x1f\x8b"

# Type code -> big-endian dtype of the payload, as in the IDX specification.
IDX_TYPE_CODES: Mapping[int, np.dtype] = types.MappingProxyType(
    {
        0x08: np.dtype(">u1"),
        0x09: np.dtype(">i1"),
        0x0B: np.dtype(">i2"),
        0x0C: np.dtype(">i4"),
        0x0D: np.dtype(">f4"),
        0x0E: np.dtype(">f8"),
    }
)
_TYPE_NAMES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "short",
    0x0C: "int",
    0x0D: "float",
    0x0E: "double",
}
_CODE_OF_KIND = {
    (dtype.kind, dtype.itemsize): code for code, dtype in IDX_TYPE_CODES.items()
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzip-compressed or plain, into a native-endian array.

    The whole file is decompressed in one call and viewed with ``np.frombuffer``, so
    reading 60,000 images takes a fraction of a second.

    Args:
      path: the file. Gzip is detected from the first two bytes (``1f 8b``), not
        from the name.

    Returns:
      An array with the file's dimensions and the dtype of its type code (``uint8``
      for type code 0x08), in native byte order, writable and owning its memory.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      CorruptFileError: if the gzip stream is truncated or corrupt, the header is
        truncated, the magic bytes or type code are wrong, or the payload is not
        exactly ``prod(dims) * itemsize`` bytes. The message names the file.

    Examples:
      >>> import numpy as np, tempfile, pathlib
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "x-idx2-ubyte.gz"
      >>> write_idx(path, np.arange(6, dtype=np.uint8).reshape(2, 3))
      >>> read_idx(path)
      array([[0, 1, 2],
             [3, 4, 5]], dtype=uint8)
    """
    path = pathlib.Path(path)
    data = path.read_bytes()
    if data[:2] == GZIP_MAGIC:
        data = _gunzip(data, path)
    return _decode_idx(data, path)


def write_idx(
    path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None
) -> None:
    """Writes an array as an IDX file, atomically (a reader never sees half a file).

    Args:
      path: the file to write; its folder must exist.
      array: any shape with at most 255 dimensions, each below 2**32; dtype one of
        uint8, int8, int16, int32, float32, float64 (any byte order).
      compress: gzip the file; ``None`` means "if ``path`` ends in ``.gz``".

    Raises:
      TypeError: if the dtype has no IDX type code.
      ValueError: if the array has too many dimensions or a dimension is too large.
    """
    path = pathlib.Path(path)
    array = np.asarray(array)
    code = _CODE_OF_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise TypeError(
            f"cannot write {path}: dtype {array.dtype} has no IDX type code "
            "(use uint8, int8, int16, int32, float32 or float64)"
        )
    if array.ndim > 255:
        raise ValueError(f"cannot write {path}: IDX allows at most 255 dimensions")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"cannot write {path}: dimension {array.shape} too large")
    header = struct.pack(f">2xBB{array.ndim}I", code, array.ndim, *array.shape)
    data = header + np.ascontiguousarray(array, dtype=IDX_TYPE_CODES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    write_atomically(path, data)


def _gunzip(data: bytes, path: pathlib.Path) -> bytes:
    """Decompresses a whole gzip file (all members) in C, with one clear error."""
    members = []
    try:
        while data:
            # wbits=31: gzip wrapper, so zlib also checks each member's CRC-32 and size.
            inflater = zlib.decompressobj(wbits=31)
            members.append(inflater.decompress(data))
            if not inflater.eof:
                raise CorruptFileError(
                    f"{path}: truncated gzip data: the compressed stream ends before "
                    "its end-of-stream marker"
                )
            data = inflater.unused_data.lstrip(b"\x00")  # gzip allows zero padding
    except zlib.error as e:
        raise CorruptFileError(f"{path}: corrupt gzip data ({e})") from e
    return b"".join(members)


def _decode_idx(data: bytes, path: pathlib.Path) -> np.ndarray:
    """Parses decompressed IDX bytes into a native-endian array."""
    if len(data) < 4:
        raise CorruptFileError(
            f"{path}: truncated IDX header: {len(data)} bytes, need at least 4"
        )
    if data[:2] != b"\x00\x00":
        raise CorruptFileError(
            f"{path}: wrong magic number: first two bytes are 0x{data[0]:02x} "
            f"0x{data[1]:02x}, expected 0x00 0x00 (not an IDX file?)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_TYPE_CODES:
        known = ", ".join(f"0x{c:02X} {_TYPE_NAMES[c]}" for c in IDX_TYPE_CODES)
        raise CorruptFileError(
            f"{path}: unknown IDX type code 0x{code:02X} (known: {known})"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise CorruptFileError(
            f"{path}: truncated IDX header: {ndim} dimensions need a "
            f"{header_size}-byte header, file has {len(data)} bytes"
        )
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    dtype = IDX_TYPE_CODES[code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(data) - header_size
    if actual != expected:
        raise CorruptFileError(
            f"{path}: wrong payload size: dims {dims} of {_TYPE_NAMES[code]} "
            f"({dtype.itemsize} bytes each) need {expected} bytes, "
            f"file has {actual} bytes after the header"
        )
    payload = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(dims)
    # One copy: native byte order, writable, and not pinning the decompressed bytes.
    return payload.astype(dtype.newbyteorder("="))
