"""Atomic file writes: a temporary file beside the target, fsync, rename, fsync dir.

A reader, or a process killed at any moment, sees either the old complete file or the
new complete one, never a partial write; a failure removes the temporary file.
Standard library only, so the data layer can use it too.
"""

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike, *, suffix: str = ".tmp", mode: int = 0o644
) -> Iterator[BinaryIO]:
    """Yields a binary file that replaces ``path`` when the block ends without error.

    Args:
      path: the destination.
      suffix: suffix of the hidden temporary file (``.<name>.XXXX<suffix>``).
      mode: permission bits of the new file.

    Raises:
      Whatever the block raises, after removing the temporary file; ``path`` is then
      untouched.
    """
    path = pathlib.Path(path)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix
    )
    tmp = pathlib.Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomically(
    path: str | os.PathLike, data: bytes, *, mode: int = 0o644
) -> None:
    """Writes ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, mode=mode) as f:
        f.write(data)


def fsync_dir(folder: pathlib.Path) -> None:
    """Makes a rename in ``folder`` durable where the OS allows it (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
