"""Tests for jaxbp.data.datasets: finding, validating and loading dataset splits."""

import ast
import dataclasses
import gzip
import hashlib
import pathlib
import socket
import sys
import urllib.request

import numpy as np
import pytest

from jaxbp.data import (
    FASHION_MNIST,
    MNIST,
    CorruptFileError,
    DataNotFoundError,
    DownloadError,
    dataset_folders,
    dataset_spec,
    datasets,
    default_cache_dir,
    fetch_split,
    load_dataset,
    load_xy,
    one_hot,
    to_float,
    write_idx,
)

# Fashion-MNIST's files and folder, without the real sizes, for 20-image datasets.
TINY_FASHION = dataclasses.replace(
    FASHION_MNIST,
    splits={k: v._replace(num_examples=None) for k, v in FASHION_MNIST.splits.items()},
)
NUM_EXAMPLES = 20


def _forbid_network(*args, **kwargs):
    pytest.fail("the network was used")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No data folder, offline switch or network from outside; cache under tmp_path."""
    for name in ("JAXBP_DATA_DIR", "JAXBP_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAXBP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", _forbid_network)
    monkeypatch.setattr(socket, "create_connection", _forbid_network)
    monkeypatch.setattr(socket.socket, "connect", _forbid_network)


def write_split(folder, split="train", *, n=NUM_EXAMPLES, seed=0):
    """Writes a synthetic split (n images, labels cycling 0..9); returns the arrays."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    files = TINY_FASHION.splits[split]
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / files.images.filename, images)
    write_idx(folder / files.labels.filename, labels)
    return images, labels


# Names and specs.


@pytest.mark.parametrize(
    "name, spec",
    [
        ("mnist", MNIST),
        ("MNIST", MNIST),
        ("fashion_mnist", FASHION_MNIST),
        ("fashion-mnist", FASHION_MNIST),
        ("Fashion-MNIST", FASHION_MNIST),
    ],
)
def test_dataset_names(name, spec):
    assert dataset_spec(name) is spec


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; known: mnist"):
        load_dataset("cifar10", "train")
    with pytest.raises(
        ValueError, match="unknown split 'valid' of mnist; known: train"
    ):
        load_dataset("mnist", "valid")


@pytest.mark.parametrize("spec", [MNIST, FASHION_MNIST])
def test_specs_name_the_standard_files(spec):
    assert (
        spec.folder == {"mnist": "mnist", "fashion_mnist": "fashion-mnist"}[spec.name]
    )
    assert [(f.images.filename, f.labels.filename) for f in spec.splits.values()] == [
        ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    ]
    assert len(spec.mirrors) >= 2


def test_data_package_does_not_import_jax():
    package = pathlib.Path(__file__).parents[1] / "jaxbp" / "data"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] in ("jax", "jaxlib") for n in names), path


# Where files come from.


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("JAXBP_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "jaxbp"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "jaxbp"
    monkeypatch.setenv("JAXBP_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize(
    "platform, local_app_data, expected",
    [
        ("darwin", None, ("home", "Library", "Caches", "jaxbp")),
        ("win32", "appdata", ("appdata", "jaxbp", "Cache")),
        ("win32", None, ("home", "AppData", "Local", "jaxbp", "Cache")),
    ],
)
def test_default_cache_dir_follows_the_platform(
    monkeypatch, tmp_path, platform, local_app_data, expected
):
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.delenv("JAXBP_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # XDG_CACHE_HOME is a Linux convention: macOS and Windows ignore it.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if local_app_data is None:
        monkeypatch.delenv("LOCALAPPDATA", raising=False)
    else:
        monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / local_app_data))
    assert default_cache_dir() == tmp_path.joinpath(*expected)
    assert dataset_folders("mnist") == (tmp_path.joinpath(*expected, "mnist"),)
    # JAXBP_CACHE_DIR comes first everywhere.
    monkeypatch.setenv("JAXBP_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_missing_data_dir_falls_through_to_the_cache(monkeypatch, tmp_path):
    # A user with internet who runs the README's command has no ../shared/data: the
    # files come from the cache (or a download into it), as if the setting were unset.
    images, _ = write_split(tmp_path / "cache" / "fashion-mnist")
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "no" / "such" / "folder"))
    paths = fetch_split(TINY_FASHION, "train")
    assert paths.images.parent == tmp_path / "cache" / "fashion-mnist"
    np.testing.assert_array_equal(load_dataset(TINY_FASHION, "train")[0], images)


def test_missing_data_dir_falls_through_to_a_download(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "no" / "such" / "folder"))
    fetched = []

    def fake_download(archive, mirrors, folder, **kwargs):
        # Stands in for the network: records where the archive would go.
        fetched.append((archive.filename, folder))
        write_split(folder)
        return folder / archive.filename

    monkeypatch.setattr(datasets, "download_archive", fake_download)
    paths = fetch_split(TINY_FASHION, "train")
    cache = tmp_path / "cache" / "fashion-mnist"
    assert paths.images == cache / "train-images-idx3-ubyte.gz"
    assert fetched == [
        ("train-images-idx3-ubyte.gz", cache),
        ("train-labels-idx1-ubyte.gz", cache),
    ]


def test_missing_data_dir_is_named_as_missing_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(TINY_FASHION, "test", offline=True)
    lines = str(info.value).splitlines()
    assert any(
        str(tmp_path / "nowhere" / "fashion-mnist") in line and "no such folder" in line
        for line in lines
    )


def test_dataset_folders_order(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    assert dataset_folders("fashion-mnist") == (cache / "fashion-mnist",)
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "shared"))
    assert dataset_folders("mnist") == (tmp_path / "shared" / "mnist", cache / "mnist")
    assert dataset_folders("mnist", cache_dir=tmp_path / "c") == (
        tmp_path / "shared" / "mnist",
        tmp_path / "c" / "mnist",
    )
    assert dataset_folders("mnist", data_dir=tmp_path / "mine") == (tmp_path / "mine",)


def test_load_from_data_dir(tmp_path):
    images, labels = write_split(tmp_path / "anywhere")
    result = load_dataset(TINY_FASHION, "train", data_dir=tmp_path / "anywhere")
    assert result[0].dtype == np.uint8 and result[0].shape == (NUM_EXAMPLES, 28, 28)
    assert result[1].dtype == np.uint8 and result[1].shape == (NUM_EXAMPLES,)
    np.testing.assert_array_equal(result[0], images)
    np.testing.assert_array_equal(result[1], labels)


def test_load_from_env_data_dir(monkeypatch, tmp_path):
    images, _ = write_split(tmp_path / "shared" / "fashion-mnist", "test")
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "shared"))
    np.testing.assert_array_equal(load_dataset(TINY_FASHION, "test")[0], images)


@pytest.mark.parametrize("how", ["JAXBP_CACHE_DIR", "XDG_CACHE_HOME", "cache_dir="])
def test_load_from_cache(monkeypatch, tmp_path, how):
    if how == "XDG_CACHE_HOME":
        monkeypatch.delenv("JAXBP_CACHE_DIR")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        folder = tmp_path / "xdg" / "jaxbp" / "fashion-mnist"
    elif how == "cache_dir=":
        folder = tmp_path / "explicit" / "fashion-mnist"
    else:
        folder = tmp_path / "cache" / "fashion-mnist"
    images, _ = write_split(folder)
    kwargs = {"cache_dir": tmp_path / "explicit"} if how == "cache_dir=" else {}
    np.testing.assert_array_equal(
        load_dataset(TINY_FASHION, "train", **kwargs)[0], images
    )


def test_search_order(monkeypatch, tmp_path):
    explicit, _ = write_split(tmp_path / "explicit", seed=1)
    shared, _ = write_split(tmp_path / "shared" / "fashion-mnist", seed=2)
    cached, _ = write_split(tmp_path / "cache" / "fashion-mnist", seed=3)
    np.testing.assert_array_equal(load_dataset(TINY_FASHION, "train")[0], cached)
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "shared"))
    np.testing.assert_array_equal(load_dataset(TINY_FASHION, "train")[0], shared)
    result = load_dataset(TINY_FASHION, "train", data_dir=tmp_path / "explicit")
    np.testing.assert_array_equal(result[0], explicit)


def test_each_file_found_on_its_own(monkeypatch, tmp_path):
    images, labels = write_split(tmp_path / "cache" / "fashion-mnist")
    (tmp_path / "cache" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").unlink()
    write_split(tmp_path / "shared" / "fashion-mnist")
    (tmp_path / "shared" / "fashion-mnist" / "train-images-idx3-ubyte.gz").unlink()
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "shared"))
    paths = fetch_split(TINY_FASHION, "train")
    assert paths.images.parent == tmp_path / "cache" / "fashion-mnist"
    assert paths.labels.parent == tmp_path / "shared" / "fashion-mnist"
    np.testing.assert_array_equal(load_dataset(TINY_FASHION, "train")[1], labels)


# Missing files and offline mode (the network is forbidden by the autouse fixture).


@pytest.mark.parametrize("missing", ["train-images-idx3-ubyte.gz", "both"])
def test_missing_file_in_data_dir_is_an_error_not_a_download(tmp_path, missing):
    folder = tmp_path / "mine"
    write_split(folder)
    if missing == "both":
        for path in folder.iterdir():
            path.unlink()
    else:
        (folder / missing).unlink()
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion_mnist", "train", data_dir=folder, offline=False)
    message = str(info.value)
    assert f"not found: {folder / 'train-images-idx3-ubyte.gz'}" in message
    assert "nothing is downloaded when data_dir is given" in message
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("switch", ["env", "keyword"])
def test_offline_error_says_what_to_put_where(monkeypatch, tmp_path, switch):
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "shared"))
    if switch == "env":
        monkeypatch.setenv("JAXBP_OFFLINE", "1")
        kwargs = {}
    else:
        kwargs = {"offline": True}
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", "test", **kwargs)
    message = str(info.value)
    assert message.startswith(
        "mnist 'test' split: missing t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz; offline mode is on "
        + ("(JAXBP_OFFLINE=1)" if switch == "env" else "(offline=True)")
    )
    assert f"  {tmp_path / 'shared' / 'mnist'}  (from JAXBP_DATA_DIR=" in message
    assert f"  {tmp_path / 'cache' / 'mnist'}  (cache" in message
    assert "\n  t10k-images-idx3-ubyte.gz\n  t10k-labels-idx1-ubyte.gz\n" in message
    assert "set JAXBP_DATA_DIR to a folder whose mnist/ subfolder holds them" in message
    assert "data_dir=" in message
    # Only the environment variable can be unset by the user.
    assert ("unset JAXBP_OFFLINE" in message) == (switch == "env")
    assert not (tmp_path / "cache").exists()


def test_offline_lists_only_the_missing_files(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXBP_OFFLINE", "yes")
    write_split(tmp_path / "cache" / "fashion-mnist")
    (tmp_path / "cache" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="missing train-labels-idx1-ubyte.gz;"):
        load_dataset(TINY_FASHION, "train")


@pytest.mark.parametrize("value", ["0", "false", "", "off"])
def test_offline_env_false_values_allow_downloads(monkeypatch, value):
    monkeypatch.setenv("JAXBP_OFFLINE", value)
    with pytest.raises(DownloadError, match="no mirrors given"):
        load_dataset("mnist", "test", mirrors=())


# Validation of local files: each error names the file.


def _rewrite(path, array):
    write_idx(path, array)


def _images(folder):
    return folder / "train-images-idx3-ubyte.gz"


def _labels(folder):
    return folder / "train-labels-idx1-ubyte.gz"


CASES = {
    "truncated gzip": (
        _images,
        lambda p: p.write_bytes(p.read_bytes()[:-100]),
        "truncated gzip data",
    ),
    "corrupt gzip": (
        _labels,
        lambda p: p.write_bytes(
            p.read_bytes()[:-8] + b"\0\0\0\0" + p.read_bytes()[-4:]
        ),
        "corrupt gzip data",
    ),
    "wrong magic": (
        _images,
        lambda p: p.write_bytes(b"\x08\x03" + gzip.decompress(p.read_bytes())[2:]),
        "wrong magic number",
    ),
    "wrong type code": (
        _labels,
        lambda p: _rewrite(p, np.zeros(NUM_EXAMPLES, np.int32)),
        r"IDX element type int32, expected unsigned byte \(type code 0x08\) labels",
    ),
    "wrong dims 27x28": (
        _images,
        lambda p: _rewrite(p, np.zeros((NUM_EXAMPLES, 27, 28), np.uint8)),
        r"dims \(20, 27, 28\), expected images \(N, 28, 28\)",
    ),
    "flat images": (
        _images,
        lambda p: _rewrite(p, np.zeros((NUM_EXAMPLES, 784), np.uint8)),
        r"dims \(20, 784\), expected images \(N, 28, 28\)",
    ),
    "2-d labels": (
        _labels,
        lambda p: _rewrite(p, np.zeros((NUM_EXAMPLES, 1), np.uint8)),
        r"dims \(20, 1\), expected labels \(N,\)",
    ),
    "wrong payload size": (
        _images,
        lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-1])),
        r"wrong payload size: .* need 15680 bytes, file has 15679 bytes",
    ),
    "label 10": (
        _labels,
        lambda p: _rewrite(p, np.array([3] * 7 + [10] + [0] * 12, np.uint8)),
        r"label 10 is out of range 0..9 \(first bad label at index 7: 10\)",
    ),
    "label 255": (
        _labels,
        lambda p: _rewrite(p, np.array([1, 255] + [11] * 18, np.uint8)),
        r"label 255 is out of range 0..9 \(first bad label at index 1: 255\)",
    ),
    "count mismatch": (
        _labels,
        lambda p: _rewrite(p, np.zeros(NUM_EXAMPLES - 1, np.uint8)),
        r"holds 20 images but .*train-labels-idx1-ubyte.gz holds 19 labels",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_invalid_files_are_rejected_naming_the_file(tmp_path, case):
    pick, corrupt, match = CASES[case]
    folder = tmp_path / "mine"
    write_split(folder)
    corrupt(pick(folder))
    with pytest.raises(CorruptFileError, match=match) as info:
        load_dataset(TINY_FASHION, "train", data_dir=folder)
    assert str(pick(folder)) in str(info.value)


def test_real_spec_checks_the_number_of_examples(tmp_path):
    write_split(tmp_path / "mine")
    with pytest.raises(
        CorruptFileError, match="20 images, the fashion_mnist 'train' split has 60000"
    ):
        load_dataset("fashion_mnist", "train", data_dir=tmp_path / "mine")


def test_recompressed_and_uncompressed_copies_are_accepted(tmp_path):
    images, labels = write_split(tmp_path / "mine")
    path = _images(tmp_path / "mine")
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1))
    _labels(tmp_path / "mine").write_bytes(
        gzip.decompress(_labels(tmp_path / "mine").read_bytes())
    )
    result = load_dataset(TINY_FASHION, "train", data_dir=tmp_path / "mine")
    np.testing.assert_array_equal(result[0], images)
    np.testing.assert_array_equal(result[1], labels)


# Conversions.


def test_to_float():
    images = np.array([[[0, 255], [51, 102]], [[1, 2], [3, 4]]], dtype=np.uint8)
    x = to_float(images)
    assert x.dtype == np.float32 and x.shape == (2, 4)
    np.testing.assert_allclose(x[0], [0.0, 1.0, 0.2, 0.4])
    assert to_float(images, dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="expects uint8 images, got float32"):
        to_float(x)
    with pytest.raises(TypeError, match="needs a floating dtype"):
        to_float(images, dtype=np.int32)


def test_one_hot():
    y = one_hot(np.array([2, 0, 9], dtype=np.uint8))
    assert y.dtype == np.float32 and y.shape == (3, 10)
    np.testing.assert_array_equal(y.argmax(axis=1), [2, 0, 9])
    np.testing.assert_array_equal(y.sum(axis=1), [1, 1, 1])
    assert one_hot(np.array([1]), num_classes=3, dtype=np.int32).tolist() == [[0, 1, 0]]
    with pytest.raises(ValueError, match=r"labels must lie in 0..2, got values 0..3"):
        one_hot(np.array([0, 3]), num_classes=3)
    with pytest.raises(ValueError, match="1-D integer labels"):
        one_hot(np.zeros((2, 2), np.int32))


def test_load_xy(tmp_path):
    images, labels = write_split(tmp_path / "mine")
    x, y = load_xy(TINY_FASHION, "train", data_dir=tmp_path / "mine")
    assert x.shape == (NUM_EXAMPLES, 784) and x.dtype == np.float32
    assert y.shape == (NUM_EXAMPLES,) and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x * 255, images.reshape(NUM_EXAMPLES, -1))
    np.testing.assert_array_equal(y, labels)


# The real files, from the shared data folder.


@pytest.fixture(scope="module")
def fashion(shared_data_dir):
    """Fashion-MNIST's two splits, loaded once for this module, offline."""
    folder = shared_data_dir / "fashion-mnist"
    return {
        split: load_dataset("fashion_mnist", split, data_dir=folder, offline=True)
        for split in ("train", "test")
    }


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(fashion, split, n):
    images, labels = fashion[split]
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.uint8
    assert labels.max() == 9 and labels.min() == 0
    # Fashion-MNIST is exactly balanced: n / 10 examples per class.
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [n // 10] * 10)
    assert images.max() == 255 and images.min() == 0
    x = to_float(images[:100])
    assert x.shape == (100, 784) and 0.0 <= x.min() and x.max() <= 1.0


def test_real_fashion_mnist_through_env(monkeypatch, shared_data_dir):
    monkeypatch.setenv("JAXBP_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("JAXBP_OFFLINE", "1")
    paths = fetch_split("fashion-mnist", "test")
    assert (
        paths.images == shared_data_dir / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    )
    images, labels = load_dataset("fashion-mnist", "test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)


# MNIST as published: the IDX payloads' SHA-256 (header and bytes, after gunzip) and
# the class counts of the 60,000/10,000 split.
MNIST_PAYLOAD_SHA256 = {
    "train-images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "test-images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "test-labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_CLASS_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


def _idx_payload_sha256(array):
    """SHA-256 of the IDX bytes of an unsigned-byte array: header, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return hashlib.sha256(header + np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def mnist(shared_data_dir):
    """MNIST's two splits from ``$JAXBP_DATA_DIR/mnist``, offline, loaded once."""
    folder = shared_data_dir / "mnist"
    wanted = [a.filename for files in MNIST.splits.values() for a in files[:2]]
    if missing := [name for name in wanted if not (folder / name).is_file()]:
        pytest.skip(f"{folder} lacks {', '.join(missing)}: no real MNIST files")
    return {
        split: load_dataset("mnist", split, data_dir=folder, offline=True)
        for split in ("train", "test")
    }


@pytest.mark.parametrize(
    "split, n, first_labels",
    [
        ("train", 60000, [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
        ("test", 10000, [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
    ],
)
def test_real_mnist(mnist, split, n, first_labels):
    images, labels = mnist[split]
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[:10], first_labels)
    np.testing.assert_array_equal(np.bincount(labels), MNIST_CLASS_COUNTS[split])
    assert images.min() == 0 and images.max() == 255
    # The pixels and labels are the published payloads, byte for byte.
    assert _idx_payload_sha256(images) == MNIST_PAYLOAD_SHA256[f"{split}-images"]
    assert _idx_payload_sha256(labels) == MNIST_PAYLOAD_SHA256[f"{split}-labels"]


def test_real_mnist_pixel_sums(mnist):
    # A second, independent checksum: the sum of all pixels (mean 33.32 of 255 for
    # the training images, the 0.1307 that MNIST inputs are usually centred by).
    train, test = mnist["train"][0], mnist["test"][0]
    assert int(train.sum(dtype=np.int64)) == 1567298545
    assert int(test.sum(dtype=np.int64)) == 264923200
    assert round(float(train.mean()) / 255, 4) == 0.1307


def test_real_mnist_through_env(monkeypatch, mnist, shared_data_dir):
    monkeypatch.setenv("JAXBP_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("JAXBP_OFFLINE", "1")
    paths = fetch_split("mnist", "train")
    assert paths.images == shared_data_dir / "mnist" / "train-images-idx3-ubyte.gz"
    x, y = load_xy("mnist", "train")
    assert x.shape == (60000, 784) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int32
    np.testing.assert_array_equal(y, mnist["train"][1])
