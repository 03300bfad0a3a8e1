"""Exceptions raised by :mod:`jaxbp.data`.

Every error names the file (or files, folders, URLs) it is about, so that a message
alone says what to fix.

Hierarchy::

    DataError
    ├── DataNotFoundError   (also FileNotFoundError)  files are not where we looked
    ├── CorruptFileError    (also ValueError)         a file is not a valid IDX file
    └── DownloadError       (also OSError)            every mirror failed
        └── ChecksumError                             ... each with a checksum mismatch
"""


class DataError(Exception):
    """Base class for every error raised by :mod:`jaxbp.data`.

    Attributes:
      field: the argument at fault, when one is (``"data_dir"`` for a folder given
        that lacks a file), else ``None``; a caller that names its arguments
        otherwise (the command line's flags) prefixes its own name to the message.
    """

    field: str | None = None


class DataNotFoundError(DataError, FileNotFoundError):
    """Dataset files are in no folder searched, and were not downloaded."""


class CorruptFileError(DataError, ValueError):
    """A file is not a valid IDX file, or not the IDX file its dataset expects."""


class DownloadError(DataError, OSError):
    """Every mirror failed to deliver a complete, verified archive."""


class ChecksumError(DownloadError):
    """Every mirror sent an archive whose checksum or size is not the published one."""
