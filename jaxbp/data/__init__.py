"""Data layer of jaxbp: IDX files, MNIST and Fashion-MNIST, download and cache.

NumPy and the standard library only: this package never imports JAX.
"""

from jaxbp.data.datasets import DATASETS as DATASETS
from jaxbp.data.datasets import FASHION_MNIST as FASHION_MNIST
from jaxbp.data.datasets import MNIST as MNIST
from jaxbp.data.datasets import SPLITS as SPLITS
from jaxbp.data.datasets import DatasetSpec as DatasetSpec
from jaxbp.data.datasets import SplitFiles as SplitFiles
from jaxbp.data.datasets import SplitPaths as SplitPaths
from jaxbp.data.datasets import dataset_folders as dataset_folders
from jaxbp.data.datasets import dataset_spec as dataset_spec
from jaxbp.data.datasets import default_cache_dir as default_cache_dir
from jaxbp.data.datasets import fetch_split as fetch_split
from jaxbp.data.datasets import load_dataset as load_dataset
from jaxbp.data.datasets import load_xy as load_xy
from jaxbp.data.datasets import one_hot as one_hot
from jaxbp.data.datasets import to_float as to_float
from jaxbp.data.download import ArchiveSpec as ArchiveSpec
from jaxbp.data.download import download_archive as download_archive
from jaxbp.data.download import file_checksum as file_checksum
from jaxbp.data.errors import ChecksumError as ChecksumError
from jaxbp.data.errors import CorruptFileError as CorruptFileError
from jaxbp.data.errors import DataError as DataError
from jaxbp.data.errors import DataNotFoundError as DataNotFoundError
from jaxbp.data.errors import DownloadError as DownloadError
from jaxbp.data.idx import read_idx as read_idx
from jaxbp.data.idx import write_idx as write_idx

__all__ = [
    "DATASETS",
    "FASHION_MNIST",
    "MNIST",
    "SPLITS",
    "ArchiveSpec",
    "ChecksumError",
    "CorruptFileError",
    "DataError",
    "DataNotFoundError",
    "DatasetSpec",
    "DownloadError",
    "SplitFiles",
    "SplitPaths",
    "dataset_folders",
    "dataset_spec",
    "default_cache_dir",
    "download_archive",
    "fetch_split",
    "file_checksum",
    "load_dataset",
    "load_xy",
    "one_hot",
    "read_idx",
    "to_float",
    "write_idx",
]
