"""MNIST and Fashion-MNIST: where their files are, fetching them, loading them.

Each split of a dataset is two IDX archives, images ``(N, 28, 28)`` and labels
``(N,)``, both unsigned bytes. :func:`fetch_split` finds them, or downloads them;
:func:`load_dataset` reads and validates them. Files are looked up in this order:

1. ``data_dir=`` if given: the folder holding the dataset's files themselves. A
   missing file is an error there; nothing is searched or downloaded instead.
2. ``$JAXBP_DATA_DIR/<folder>/``, where ``<folder>`` is ``mnist`` or
   ``fashion-mnist`` (the layout of the shared data folder).
3. The cache, ``<cache>/<folder>/``, where ``<cache>`` is ``cache_dir=``, else
   ``$JAXBP_CACHE_DIR``, else the platform's cache folder (see
   :func:`default_cache_dir`).
4. A download into the cache, from the dataset's mirrors in order, each archive
   checked against its published checksum. Never with ``offline=True`` or
   ``JAXBP_OFFLINE=1``: then a missing file is an error that says what to put where.

Each file is looked up on its own, so a folder may hold only some of them. Files
found locally are validated by their IDX structure (type code, dimensions, exact
payload length, label range, matching counts), not by archive checksum: a
recompressed copy with the original payload is accepted.
"""

import dataclasses
import os
import pathlib
import sys
import types
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jaxbp.data.download import ArchiveSpec, download_archive
from jaxbp.data.errors import CorruptFileError, DataNotFoundError, DownloadError
from jaxbp.data.idx import read_idx

__all__ = [
    "DATASETS",
    "FASHION_MNIST",
    "MNIST",
    "SPLITS",
    "DatasetSpec",
    "SplitFiles",
    "SplitPaths",
    "dataset_folders",
    "dataset_spec",
    "default_cache_dir",
    "fetch_split",
    "load_dataset",
    "load_xy",
    "one_hot",
    "to_float",
]

DATA_DIR_ENV = "JAXBP_DATA_DIR"
CACHE_DIR_ENV = "JAXBP_CACHE_DIR"
OFFLINE_ENV = "JAXBP_OFFLINE"
SPLITS = ("train", "test")
_FALSE_WORDS = ("", "0", "false", "no", "off")


class SplitFiles(NamedTuple):
    """The two archives of one split, and how many examples it must hold.

    Attributes:
      images: the images archive, IDX ``(N, height, width)`` unsigned bytes.
      labels: the labels archive, IDX ``(N,)`` unsigned bytes.
      num_examples: the ``N`` both must have, or ``None`` to accept any.
    """

    images: ArchiveSpec
    labels: ArchiveSpec
    num_examples: int | None = None


class SplitPaths(NamedTuple):
    """Where the two archives of a split are on disk."""

    images: pathlib.Path
    labels: pathlib.Path


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """An image-classification dataset stored as IDX archives.

    Attributes:
      name: the name used in messages, e.g. ``"fashion_mnist"``.
      folder: the folder that holds its files under ``$JAXBP_DATA_DIR`` and the
        cache, e.g. ``"fashion-mnist"``.
      mirrors: base URLs to download from, tried in order.
      splits: split name (``"train"``, ``"test"``) to its archives.
      image_shape: ``(height, width)`` of each image.
      num_classes: labels lie in ``0 .. num_classes - 1``.
    """

    name: str
    folder: str
    mirrors: tuple[str, ...]
    splits: Mapping[str, SplitFiles]
    image_shape: tuple[int, int] = (28, 28)
    num_classes: int = 10


# SHA-256 and sizes as listed by TensorFlow Datasets for the Google mirror; the
# files on the torchvision (ossci) mirror are the same original archives.
MNIST = DatasetSpec(
    name="mnist",
    folder="mnist",
    mirrors=(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    splits={
        "train": SplitFiles(
            ArchiveSpec(
                "train-images-idx3-ubyte.gz",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                size=9912422,
            ),
            ArchiveSpec(
                "train-labels-idx1-ubyte.gz",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                size=28881,
            ),
            60000,
        ),
        "test": SplitFiles(
            ArchiveSpec(
                "t10k-images-idx3-ubyte.gz",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                size=1648877,
            ),
            ArchiveSpec(
                "t10k-labels-idx1-ubyte.gz",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                size=4542,
            ),
            10000,
        ),
    },
)

# MD5s as published in zalandoresearch/fashion-mnist's README (no sizes published).
FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    folder="fashion-mnist",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    splits={
        "train": SplitFiles(
            ArchiveSpec(
                "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "md5"
            ),
            ArchiveSpec(
                "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "md5"
            ),
            60000,
        ),
        "test": SplitFiles(
            ArchiveSpec(
                "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "md5"
            ),
            ArchiveSpec(
                "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "md5"
            ),
            10000,
        ),
    },
)

# Keys are normalised names: lowercase, "-" read as "_".
DATASETS: Mapping[str, DatasetSpec] = types.MappingProxyType(
    {"mnist": MNIST, "fashion_mnist": FASHION_MNIST}
)


def dataset_spec(name: str | DatasetSpec) -> DatasetSpec:
    """Returns the spec of a dataset by name.

    Args:
      name: ``"mnist"``, ``"fashion_mnist"`` or ``"fashion-mnist"`` (any case); a
        :class:`DatasetSpec` is returned as is.

    Returns:
      The dataset's spec.

    Raises:
      ValueError: if the name is not a known dataset.
    """
    if isinstance(name, DatasetSpec):
        return name
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[key]


def default_cache_dir() -> pathlib.Path:
    """Returns the parent cache folder; each dataset lives in a subfolder of it.

    ``$JAXBP_CACHE_DIR`` if set, else the platform's convention for caches:

    - Linux and other Unix: ``$XDG_CACHE_HOME/jaxbp``, else ``~/.cache/jaxbp``;
    - macOS: ``~/Library/Caches/jaxbp``;
    - Windows: ``%LOCALAPPDATA%\\jaxbp\\Cache``, else
      ``~\\AppData\\Local\\jaxbp\\Cache``.

    Returns:
      The folder (it may not exist yet; downloads create it).
    """
    return _cache_dir_and_source()[0]


def dataset_folders(
    name: str | DatasetSpec,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[pathlib.Path, ...]:
    """Returns the folders searched for a dataset's files, in order.

    Args:
      name: the dataset, see :func:`dataset_spec`.
      data_dir: the folder holding the files themselves; if given, the only one.
      cache_dir: the parent cache folder; default :func:`default_cache_dir`.

    Returns:
      ``(data_dir,)`` if given, else ``$JAXBP_DATA_DIR/<folder>`` (when set) and
      ``<cache>/<folder>``. Downloads go to the last one.
    """
    return tuple(folder for folder, _ in _search_folders(name, data_dir, cache_dir))


def fetch_split(
    name: str | DatasetSpec,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> SplitPaths:
    """Finds the two archives of a split, downloading missing ones into the cache.

    The search order is in the module docstring: ``data_dir`` alone if given, else
    ``$JAXBP_DATA_DIR/<folder>``, then ``<cache>/<folder>``, then a download into
    ``<cache>/<folder>`` unless offline.

    Args:
      name: the dataset, see :func:`dataset_spec`.
      split: ``"train"`` or ``"test"``.
      data_dir: the folder holding the dataset's files themselves.
      cache_dir: the parent cache folder; default :func:`default_cache_dir`.
      offline: never use the network; ``None`` reads ``$JAXBP_OFFLINE`` (``1``,
        ``true``, ``yes``, ``on`` mean offline).
      mirrors: base URLs to download from; default the spec's mirrors.
      timeout: seconds to wait for a connection and for each read.
      progress: show download progress on stderr; ``None`` means "if a terminal".

    Returns:
      The paths of the images and labels archives. Local files are returned as
      found, not validated: :func:`load_dataset` validates them.

    Raises:
      ValueError: if the dataset or split is unknown.
      DataNotFoundError: if a file is missing from ``data_dir``, or missing from
        every folder while offline; the message lists the files, the folders
        searched, and how to point at them.
      DownloadError: if a download failed on every mirror (``ChecksumError`` if
        every mirror sent a corrupt archive); the message lists each mirror.
    """
    spec = dataset_spec(name)
    files = _split_spec(spec, split)
    archives = (files.images, files.labels)
    folders = _search_folders(spec, data_dir, cache_dir)
    found: dict[str, pathlib.Path] = {}
    for archive in archives:
        for folder, _ in folders:
            if (folder / archive.filename).is_file():
                found[archive.filename] = folder / archive.filename
                break
    missing = [archive for archive in archives if archive.filename not in found]
    if missing and data_dir is not None:
        paths = ", ".join(str(folders[0][0] / a.filename) for a in missing)
        error = DataNotFoundError(
            f"{spec.name} {split!r} split: not found: {paths}. data_dir= must be "
            f"the folder holding the files {_names(archives)} themselves; nothing "
            "is downloaded when data_dir is given."
        )
        error.field = "data_dir"
        raise error
    offline_source = _offline_source(offline)
    if missing and offline_source:
        raise DataNotFoundError(
            _missing_message(spec, split, missing, folders, offline_source)
        )
    cache_folder = folders[-1][0]
    for archive in missing:
        try:
            found[archive.filename] = download_archive(
                archive,
                spec.mirrors if mirrors is None else mirrors,
                cache_folder,
                timeout=timeout,
                progress=progress,
            )
        except DownloadError as e:
            hint = _missing_message(spec, split, missing, folders, None)
            raise type(e)(f"{e}\n{hint}") from e
    return SplitPaths(found[files.images.filename], found[files.labels.filename])


def load_dataset(
    name: str | DatasetSpec,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads one split of a dataset as raw bytes, validated.

    Files are found (or downloaded) by :func:`fetch_split`; its arguments are the
    same. Search order: ``data_dir`` alone if given, else ``$JAXBP_DATA_DIR/<folder>``,
    then the cache ``<cache>/<folder>``, then a download into the cache unless
    ``offline`` or ``$JAXBP_OFFLINE``.

    Args:
      name: ``"mnist"``, ``"fashion_mnist"`` (or ``"fashion-mnist"``), or a spec.
      split: ``"train"`` or ``"test"``.
      data_dir: the folder holding the dataset's files themselves.
      cache_dir: the parent cache folder; default :func:`default_cache_dir`.
      offline: never use the network; ``None`` reads ``$JAXBP_OFFLINE``.
      mirrors: base URLs to download from; default the spec's mirrors.
      timeout: seconds to wait for a connection and for each read.
      progress: show download progress on stderr; ``None`` means "if a terminal".

    Returns:
      ``(images, labels)``: ``uint8`` arrays of shapes ``(N, 28, 28)`` and ``(N,)``,
      labels in ``0..9``.

    Raises:
      ValueError: if the dataset or split is unknown.
      DataNotFoundError: if files are missing and cannot be downloaded here.
      DownloadError: if a download failed on every mirror.
      CorruptFileError: if a file is not valid: bad gzip, wrong magic number or
        type code, wrong dimensions, wrong payload length, labels out of range, or
        image and label counts that differ. The message names the file.

    Examples:
      >>> images, labels = load_dataset("fashion_mnist", "test")  # doctest: +SKIP
      >>> images.shape, labels.shape  # doctest: +SKIP
      ((10000, 28, 28), (10000,))
    """
    spec = dataset_spec(name)
    files = _split_spec(spec, split)
    paths = fetch_split(
        spec,
        split,
        data_dir=data_dir,
        cache_dir=cache_dir,
        offline=offline,
        mirrors=mirrors,
        timeout=timeout,
        progress=progress,
    )
    images = read_idx(paths.images)
    _check_ubyte(images, paths.images, "images", (None, *spec.image_shape))
    labels = read_idx(paths.labels)
    _check_ubyte(labels, paths.labels, "labels", (None,))
    if labels.size and (top := int(labels.max())) >= spec.num_classes:
        index = int(np.argmax(labels >= spec.num_classes))
        raise CorruptFileError(
            f"{paths.labels}: label {top} is out of range 0..{spec.num_classes - 1} "
            f"(first bad label at index {index}: {labels[index]})"
        )
    if len(images) != len(labels):
        raise CorruptFileError(
            f"{paths.images} holds {len(images)} images but {paths.labels} holds "
            f"{len(labels)} labels; a split needs one label per image"
        )
    if files.num_examples is not None and len(images) != files.num_examples:
        raise CorruptFileError(
            f"{paths.images}: {len(images)} images, the {spec.name} {split!r} split "
            f"has {files.num_examples}"
        )
    return images, labels


def load_xy(
    name: str | DatasetSpec,
    split: str,
    *,
    dtype: np.dtype | type = np.float32,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a split as model inputs: flat pixels in ``[0, 1]`` and integer labels.

    Args:
      name: the dataset, see :func:`load_dataset`.
      split: ``"train"`` or ``"test"``.
      dtype: the floating dtype of ``x``.
      **kwargs: passed to :func:`load_dataset` (``data_dir``, ``offline``, ...).

    Returns:
      ``(x, y)``: ``x`` of shape ``(N, 784)`` and ``dtype``, ``y`` ``int32`` of
      shape ``(N,)``.

    Raises:
      The errors of :func:`load_dataset`.
    """
    images, labels = load_dataset(name, split, **kwargs)
    return to_float(images, dtype=dtype), labels.astype(np.int32)


def to_float(images: np.ndarray, *, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Flattens ``uint8`` images to rows of floats in ``[0, 1]`` (pixel / 255).

    Args:
      images: ``uint8`` array of shape ``(N, H, W)`` (or any ``(N, ...)``).
      dtype: a floating dtype for the result.

    Returns:
      Array of shape ``(N, H * W)`` and ``dtype``.

    Raises:
      TypeError: if ``images`` is not ``uint8`` or ``dtype`` is not floating.

    Examples:
      >>> to_float(np.array([[[0, 255], [51, 102]]], dtype=np.uint8))
      array([[0. , 1. , 0.2, 0.4]], dtype=float32)
    """
    images = np.asarray(images)
    dtype = np.dtype(dtype)
    if images.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
    if not np.issubdtype(dtype, np.floating):
        raise TypeError(f"to_float needs a floating dtype, got {dtype}")
    x = images.reshape(len(images), -1).astype(dtype)
    x /= 255
    return x


def one_hot(
    labels: np.ndarray, num_classes: int = 10, *, dtype: np.dtype | type = np.float32
) -> np.ndarray:
    """Encodes integer labels as one-hot rows.

    Args:
      labels: integer array of shape ``(N,)`` with values in ``0..num_classes-1``.
      num_classes: the number of classes ``C``.
      dtype: the dtype of the result.

    Returns:
      Array of shape ``(N, C)`` with a single 1 per row, at the label's column.

    Raises:
      ValueError: if ``labels`` is not 1-D integers or has values out of range.

    Examples:
      >>> one_hot(np.array([2, 0]), num_classes=3)
      array([[0., 0., 1.],
             [1., 0., 0.]], dtype=float32)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"one_hot expects 1-D integer labels, got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got values "
            f"{labels.min()}..{labels.max()}"
        )
    return np.eye(num_classes, dtype=dtype)[labels]


def _split_spec(spec: DatasetSpec, split: str) -> SplitFiles:
    """The archives of ``split``, or a ValueError naming the known splits."""
    if split not in spec.splits:
        raise ValueError(
            f"unknown split {split!r} of {spec.name}; known: {', '.join(spec.splits)}"
        )
    return spec.splits[split]


def _search_folders(
    name: str | DatasetSpec,
    data_dir: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
) -> list[tuple[pathlib.Path, str]]:
    """The folders to search, each with where it came from (for messages)."""
    spec = dataset_spec(name)
    if data_dir is not None:
        return [(pathlib.Path(data_dir).expanduser(), "data_dir=")]
    folders = []
    if value := os.environ.get(DATA_DIR_ENV):
        folder = pathlib.Path(value).expanduser() / spec.folder
        folders.append((folder, f"from {DATA_DIR_ENV}={value}"))
    if cache_dir is not None:
        cache, source = pathlib.Path(cache_dir), "cache_dir="
    else:
        cache, source = _cache_dir_and_source()
    folders.append(
        (cache.expanduser() / spec.folder, f"cache, {source}; downloads go here")
    )
    return folders


def _cache_dir_and_source() -> tuple[pathlib.Path, str]:
    """The default cache folder, and what chose it (for messages)."""
    if value := os.environ.get(CACHE_DIR_ENV):
        return pathlib.Path(value).expanduser(), f"from {CACHE_DIR_ENV}"
    if sys.platform == "darwin":
        return pathlib.Path.home() / "Library" / "Caches" / "jaxbp", "macOS default"
    if sys.platform == "win32":
        if value := os.environ.get("LOCALAPPDATA"):
            return pathlib.Path(value) / "jaxbp" / "Cache", "from LOCALAPPDATA"
        local = pathlib.Path.home() / "AppData" / "Local"
        return local / "jaxbp" / "Cache", "Windows default"
    if value := os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(value).expanduser() / "jaxbp", "from XDG_CACHE_HOME"
    return pathlib.Path.home() / ".cache" / "jaxbp", "default"


def _offline_source(offline: bool | None) -> str | None:
    """What switched offline mode on (for messages), or None when online."""
    if offline is not None:
        return "offline=True" if offline else None
    value = os.environ.get(OFFLINE_ENV, "")
    if value.strip().lower() in _FALSE_WORDS:
        return None
    return f"{OFFLINE_ENV}={value}"


def _names(archives: Sequence[ArchiveSpec]) -> str:
    return ", ".join(archive.filename for archive in archives)


def _missing_message(
    spec: DatasetSpec,
    split: str,
    missing: Sequence[ArchiveSpec],
    folders: Sequence[tuple[pathlib.Path, str]],
    offline_source: str | None,
) -> str:
    """Says which files are missing, where we looked, and how to provide them."""
    lines = [f"{spec.name} {split!r} split: missing {_names(missing)}"]
    if offline_source:
        lines[0] += (
            f"; offline mode is on ({offline_source}), so nothing was downloaded."
        )
    lines.append("Looked in, in order:")
    lines += [
        f"  {folder}  ({source}{'' if folder.is_dir() else '; no such folder'})"
        for folder, source in folders
    ]
    lines.append("Put these files into one of those folders:")
    lines += [f"  {archive.filename}" for archive in missing]
    lines.append(
        f"or set {DATA_DIR_ENV} to a folder whose {spec.folder}/ subfolder holds "
        "them, or pass data_dir= the folder holding the files themselves"
        + (
            f", or unset {OFFLINE_ENV} to download them."
            if offline_source and offline_source.startswith(OFFLINE_ENV)
            else "."
        )
    )
    return "\n".join(lines)


def _check_ubyte(
    array: np.ndarray,
    path: pathlib.Path,
    what: str,
    shape: tuple[int | None, ...],
) -> None:
    """Checks that an IDX array is unsigned bytes with ``shape`` (None: any size)."""
    if array.dtype != np.uint8:
        raise CorruptFileError(
            f"{path}: IDX element type {array.dtype}, expected unsigned byte "
            f"(type code 0x08) {what}"
        )
    matches = array.ndim == len(shape) and all(
        want is None or got == want
        for got, want in zip(array.shape, shape, strict=True)
    )
    if not matches:
        wanted = "(" + ", ".join("N" if d is None else str(d) for d in shape)
        wanted += ",)" if len(shape) == 1 else ")"
        raise CorruptFileError(f"{path}: dims {array.shape}, expected {what} {wanted}")
