"""Downloading archives from a list of mirrors, verified, into a folder, atomically.

:func:`download_archive` knows nothing about MNIST: it takes an :class:`ArchiveSpec`
(file name, published checksum, size) and mirror URLs. For each mirror in turn it
streams the file into a temporary file in the destination folder, checks the byte
count against ``Content-Length`` and the published size, checks the checksum, fsyncs,
and only then renames the file into place with ``os.replace``. Whatever fails, the
temporary file is removed, so the destination folder only ever holds complete,
verified archives.
"""

import dataclasses
import hashlib
import http.client
import os
import pathlib
import sys
import urllib.request
from collections.abc import Sequence
from typing import BinaryIO, TextIO

from jaxbp._atomic import atomic_file
from jaxbp.data.errors import ChecksumError, DownloadError

__all__ = ["ArchiveSpec", "download_archive", "file_checksum"]

_CHUNK_SIZE = 1 << 20
_USER_AGENT = "jaxbp-data/0.1"


@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
    """One published archive: its file name and what it must hash to.

    Attributes:
      filename: the name on the mirrors and on disk, e.g.
        ``"t10k-labels-idx1-ubyte.gz"``.
      checksum: the published hex digest of the archive bytes.
      algorithm: a ``hashlib`` algorithm name, e.g. ``"sha256"`` or ``"md5"``.
      size: the published size in bytes, or ``None`` when not published.
    """

    filename: str
    checksum: str
    algorithm: str = "sha256"
    size: int | None = None


def file_checksum(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Returns the hex digest of a file, read in 1 MiB chunks.

    Args:
      path: the file.
      algorithm: a ``hashlib`` algorithm name.

    Returns:
      The lowercase hex digest.
    """
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def download_archive(
    archive: ArchiveSpec,
    mirrors: Sequence[str],
    folder: str | os.PathLike,
    *,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> pathlib.Path:
    """Downloads ``archive`` into ``folder`` from the first mirror that sends it intact.

    Each mirror is tried in order with URL ``mirror + archive.filename``. A mirror
    fails when it cannot be reached, answers with an HTTP error, stalls longer than
    ``timeout``, sends fewer bytes than its ``Content-Length`` or than
    ``archive.size``, or sends bytes whose checksum is not ``archive.checksum``. The
    file appears in ``folder`` only when complete and verified.

    Args:
      archive: the file name and its published checksum and size.
      mirrors: base URLs, tried in order; a missing trailing ``/`` is added.
      folder: where the archive goes; created if missing.
      timeout: seconds to wait for a connection and for each read.
      progress: show a one-line percentage on stderr; ``None`` means "if stderr is
        a terminal".

    Returns:
      The path of the verified archive, ``folder / archive.filename``.

    Raises:
      ChecksumError: if every mirror delivered bytes with the wrong checksum or
        size; the message names the file and the expected and actual digests.
      DownloadError: if every mirror failed, for any mix of reasons; the message
        lists each mirror and why it failed.
    """
    if not mirrors:
        raise DownloadError(f"cannot download {archive.filename}: no mirrors given")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    destination = folder / archive.filename
    if progress is None:
        progress = sys.stderr.isatty()
    failures: list[tuple[str, Exception]] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + archive.filename
        try:
            _download_verified(
                url,
                archive,
                destination,
                timeout=timeout,
                stream=sys.stderr if progress else None,
            )
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append((url, e))
            continue
        return destination
    reasons = "\n".join(f"  {url}: {error}" for url, error in failures)
    if all(isinstance(error, ChecksumError) for _, error in failures):
        raise ChecksumError(
            f"every mirror sent a corrupt {archive.filename} (nothing was kept in "
            f"{folder}):\n{reasons}"
        )
    raise DownloadError(
        f"could not download {archive.filename} into {folder} from any of "
        f"{len(failures)} mirror(s):\n{reasons}"
    )


def _download_verified(
    url: str,
    archive: ArchiveSpec,
    destination: pathlib.Path,
    *,
    timeout: float,
    stream: TextIO | None,
) -> None:
    """Streams ``url`` to a temporary file, verifies it, then renames it into place."""
    with atomic_file(destination, suffix=".part") as f:
        digest = _stream_to_file(url, f, archive, timeout=timeout, stream=stream)
        received = f.tell()
        wrong_size = archive.size is not None and received != archive.size
        if digest != archive.checksum.lower() or wrong_size:
            expected_size = "" if archive.size is None else f" ({archive.size} bytes)"
            raise ChecksumError(
                f"{archive.filename}: {archive.algorithm} mismatch: expected "
                f"{archive.checksum.lower()}{expected_size}, "
                f"got {digest} ({received} bytes)"
            )


def _stream_to_file(
    url: str,
    f: BinaryIO,
    archive: ArchiveSpec,
    *,
    timeout: float,
    stream: TextIO | None,
) -> str:
    """Copies the body of ``url`` into ``f``; returns its hex digest."""
    digest = hashlib.new(archive.algorithm)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        header = response.headers.get("Content-Length")
        expected = int(header) if header and header.isdigit() else archive.size
        received = 0
        shown = -1
        try:
            while chunk := response.read(_CHUNK_SIZE):
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if stream is not None:
                    shown = _show_progress(stream, url, received, expected, shown)
        finally:
            if stream is not None and shown >= 0:
                stream.write("\n")  # end the progress line, even on failure
                stream.flush()
    if header and header.isdigit() and received != int(header):
        raise DownloadError(
            f"truncated transfer: received {received} of {int(header)} bytes "
            "(Content-Length)"
        )
    return digest.hexdigest()


def _show_progress(
    stream: TextIO, url: str, received: int, expected: int | None, shown: int
) -> int:
    """Rewrites the progress line when the percentage changes; returns what it shows."""
    if expected:
        percent = min(100, received * 100 // expected)
        if percent == shown:
            return shown
        text = f"{percent:3d}% of {expected / 1e6:.1f} MB"
    else:
        percent = received >> 20
        if percent == shown:
            return shown
        text = f"{received / 1e6:.1f} MB"
    stream.write(f"\rdownloading {url}: {text}")
    stream.flush()
    return percent
