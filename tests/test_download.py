"""Tests for jaxbp.data.download against a local HTTP server on 127.0.0.1."""

import dataclasses
import gzip
import hashlib
import http.server
import os
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

from jaxbp.data import (
    ArchiveSpec,
    ChecksumError,
    DataNotFoundError,
    DatasetSpec,
    DownloadError,
    SplitFiles,
    download_archive,
    file_checksum,
    load_dataset,
    write_idx,
)

IMAGES = "train-images-idx3-ubyte.gz"
LABELS = "train-labels-idx1-ubyte.gz"


@dataclasses.dataclass
class Route:
    """What the server sends for one path."""

    body: bytes
    mode: str = "ok"  # "ok", "truncate" (Content-Length too large), "stall"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if route.mode == "stall":
            time.sleep(0.5)  # longer than the client's timeout
        extra = 1000 if route.mode == "truncate" else 0
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(route.body) + extra))
            self.end_headers()
            self.wfile.write(route.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the stall case)
        if route.mode == "truncate":
            self.close_connection = True

    def log_message(self, format, *args):
        pass


@pytest.fixture
def server():
    """A threaded HTTP server on 127.0.0.1:<free port>, shut down after the test."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes = {}
    httpd.requests = []
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def closed_port_url():
    """The URL of a port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    for name in ("JAXBP_DATA_DIR", "JAXBP_OFFLINE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAXBP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def archives():
    """Two small gzip IDX archives (20 images, 20 labels), their bytes and arrays."""
    rng = np.random.default_rng(0)
    arrays = {
        IMAGES: rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        LABELS: (np.arange(20) % 10).astype(np.uint8),
    }
    return {
        name: (gzip.compress(b"\0\0\x08" + _idx_body(array), mtime=0), array)
        for name, array in arrays.items()
    }


def _idx_body(array):
    dims = b"".join(d.to_bytes(4, "big") for d in array.shape)
    return bytes([array.ndim]) + dims + array.tobytes()


def make_spec(archives, mirrors, algorithm="sha256"):
    """A one-split dataset spec with the archives' real checksums and sizes."""

    def archive(name):
        data = archives[name][0]
        digest = hashlib.new(algorithm, data).hexdigest()
        return ArchiveSpec(name, digest, algorithm, len(data))

    return DatasetSpec(
        name="tiny",
        folder="tiny",
        mirrors=tuple(mirrors),
        splits={"train": SplitFiles(archive(IMAGES), archive(LABELS))},
    )


def corrupted(data):
    """The archive with its middle byte flipped."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def serve(server, prefix, archives, *, mode="ok", corrupt=False):
    """Serves the archives under /prefix/, possibly corrupted or truncated."""
    for name, (data, _) in archives.items():
        if corrupt:
            data = corrupted(data)
        server.routes[f"/{prefix}/{name}"] = Route(data, mode)
    return f"{server.url}/{prefix}/"


def cache_listing(tmp_path):
    """Every file in the cache folder, hidden ones included."""
    folder = tmp_path / "cache" / "tiny"
    return sorted(os.listdir(folder)) if folder.exists() else []


def assert_loaded(result, archives):
    np.testing.assert_array_equal(result[0], archives[IMAGES][1])
    np.testing.assert_array_equal(result[1], archives[LABELS][1])


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_good_mirror_lands_in_cache_and_loads(server, archives, tmp_path, algorithm):
    spec = make_spec(archives, [serve(server, "good", archives)], algorithm)
    assert_loaded(load_dataset(spec, "train", progress=False), archives)
    assert cache_listing(tmp_path) == [IMAGES, LABELS]
    for name, (data, _) in archives.items():
        expected = hashlib.sha256(data).hexdigest()
        assert file_checksum(tmp_path / "cache" / "tiny" / name) == expected
    assert server.requests == [f"/good/{IMAGES}", f"/good/{LABELS}"]
    # A second load uses the cache and does not touch the network.
    assert_loaded(load_dataset(spec, "train", offline=True), archives)
    assert len(server.requests) == 2


def test_mirrors_keyword_overrides_the_spec(server, archives, tmp_path):
    spec = make_spec(archives, ["http://127.0.0.1:9/never/"])
    mirrors = [serve(server, "other", archives)]
    assert_loaded(load_dataset(spec, "train", mirrors=mirrors), archives)
    assert cache_listing(tmp_path) == [IMAGES, LABELS]


def test_only_missing_files_are_downloaded(monkeypatch, server, archives, tmp_path):
    shared = tmp_path / "shared" / "tiny"
    shared.mkdir(parents=True)
    (shared / LABELS).write_bytes(archives[LABELS][0])
    monkeypatch.setenv("JAXBP_DATA_DIR", str(tmp_path / "shared"))
    spec = make_spec(archives, [serve(server, "good", archives)])
    assert_loaded(load_dataset(spec, "train"), archives)
    assert server.requests == [f"/good/{IMAGES}"]
    assert cache_listing(tmp_path) == [IMAGES]


def test_corrupt_mirror_then_good_mirror(server, archives, tmp_path):
    mirrors = [
        serve(server, "bad", archives, corrupt=True),
        serve(server, "good", archives),
    ]
    assert_loaded(load_dataset(make_spec(archives, mirrors), "train"), archives)
    assert server.requests == [
        f"/bad/{IMAGES}",
        f"/good/{IMAGES}",
        f"/bad/{LABELS}",
        f"/good/{LABELS}",
    ]
    assert cache_listing(tmp_path) == [IMAGES, LABELS]


def test_every_mirror_corrupt_raises_checksum_error(server, archives, tmp_path):
    mirrors = [
        serve(server, "bad1", archives, corrupt=True),
        serve(server, "bad2", archives, corrupt=True),
    ]
    spec = make_spec(archives, mirrors)
    with pytest.raises(ChecksumError) as info:
        load_dataset(spec, "train")
    message = str(info.value)
    expected = spec.splits["train"].images.checksum
    actual = hashlib.sha256(corrupted(archives[IMAGES][0])).hexdigest()
    assert f"every mirror sent a corrupt {IMAGES}" in message
    for mirror in mirrors:
        assert f"{mirror}{IMAGES}: {IMAGES}: sha256 mismatch: expected {expected}" in (
            message
        )
    assert message.count(f"got {actual}") == 2
    assert isinstance(info.value, DownloadError)
    assert cache_listing(tmp_path) == []


def test_wrong_published_checksum_is_a_checksum_error(server, archives, tmp_path):
    data = archives[LABELS][0]
    archive = ArchiveSpec(LABELS, "0" * 32, "md5")
    url = serve(server, "good", archives)
    actual = hashlib.md5(data).hexdigest()
    with pytest.raises(ChecksumError, match=f"expected {'0' * 32}, got {actual} "):
        download_archive(archive, [url], tmp_path / "cache" / "tiny", progress=False)
    assert cache_listing(tmp_path) == []


def test_wrong_size_is_a_checksum_error(server, archives, tmp_path):
    data = archives[LABELS][0]
    archive = ArchiveSpec(LABELS, hashlib.sha256(data).hexdigest(), size=len(data) + 1)
    url = serve(server, "good", archives)
    with pytest.raises(ChecksumError, match=rf"\({len(data)} bytes\)"):
        download_archive(archive, [url], tmp_path / "cache" / "tiny", progress=False)
    assert cache_listing(tmp_path) == []


def test_truncated_transfer_then_good_mirror(server, archives, tmp_path):
    mirrors = [
        serve(server, "short", archives, mode="truncate"),
        serve(server, "good", archives),
    ]
    assert_loaded(load_dataset(make_spec(archives, mirrors), "train"), archives)
    assert f"/short/{IMAGES}" in server.requests
    assert cache_listing(tmp_path) == [IMAGES, LABELS]


def test_truncated_transfer_everywhere(server, archives, tmp_path):
    mirrors = [serve(server, "short", archives, mode="truncate")]
    size = len(archives[IMAGES][0])
    with pytest.raises(DownloadError) as info:
        load_dataset(make_spec(archives, mirrors), "train")
    assert not isinstance(info.value, ChecksumError)
    assert (
        f"{mirrors[0]}{IMAGES}: truncated transfer: received {size} of "
        f"{size + 1000} bytes" in str(info.value)
    )
    assert cache_listing(tmp_path) == []


def test_down_mirror_then_good_mirror(server, archives, tmp_path, closed_port_url):
    mirrors = [closed_port_url, serve(server, "good", archives)]
    assert_loaded(load_dataset(make_spec(archives, mirrors), "train"), archives)
    assert cache_listing(tmp_path) == [IMAGES, LABELS]


def test_every_mirror_failing_lists_each_reason(
    server, archives, tmp_path, closed_port_url
):
    mirrors = [
        closed_port_url,
        serve(server, "bad", archives, corrupt=True),
        serve(server, "short", archives, mode="truncate"),
        f"{server.url}/missing/",
    ]
    with pytest.raises(DownloadError) as info:
        load_dataset(make_spec(archives, mirrors), "train")
    assert not isinstance(info.value, ChecksumError)
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"could not download {IMAGES} into ")
    assert lines[0].endswith("from any of 4 mirror(s):")
    assert lines[1].startswith(f"  {closed_port_url}{IMAGES}: ")
    assert "refused" in lines[1].lower()
    assert lines[2].startswith(f"  {mirrors[1]}{IMAGES}: {IMAGES}: sha256 mismatch")
    assert lines[3].startswith(f"  {mirrors[2]}{IMAGES}: truncated transfer")
    assert lines[4] == f"  {mirrors[3]}{IMAGES}: HTTP Error 404: Not Found"
    # The hint says where the files could be put by hand.
    assert "Put these files into one of those folders:" in str(info.value)
    assert cache_listing(tmp_path) == []


def test_stalled_mirror_times_out(server, archives, tmp_path):
    mirrors = [serve(server, "slow", archives, mode="stall")]
    with pytest.raises(DownloadError, match="timed out"):
        download_archive(
            ArchiveSpec(IMAGES, "0" * 64),
            mirrors,
            tmp_path / "cache" / "tiny",
            timeout=0.2,
            progress=False,
        )
    assert cache_listing(tmp_path) == []


def test_offline_never_opens_a_socket(monkeypatch, server, archives, tmp_path):
    def forbid(*args, **kwargs):
        pytest.fail("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", forbid)
    monkeypatch.setattr(socket, "create_connection", forbid)
    monkeypatch.setenv("JAXBP_OFFLINE", "1")
    spec = make_spec(archives, [serve(server, "good", archives)])
    with pytest.raises(DataNotFoundError, match=f"missing {IMAGES}, {LABELS}; offline"):
        load_dataset(spec, "train")
    assert server.requests == []
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("progress", [True, False])
def test_progress_on_stderr(server, archives, tmp_path, capsys, progress):
    url = serve(server, "good", archives)
    data = archives[IMAGES][0]
    archive = ArchiveSpec(IMAGES, hashlib.sha256(data).hexdigest())
    download_archive(archive, [url], tmp_path / "dl", progress=progress)
    captured = capsys.readouterr()
    assert captured.out == ""
    if progress:
        assert captured.err.startswith(f"\rdownloading {url}{IMAGES}: ")
        assert captured.err.endswith("100% of 0.0 MB\n")
    else:
        assert captured.err == ""


def test_download_replaces_nothing_on_failure(server, archives, tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / LABELS).write_bytes(b"old")
    url = serve(server, "bad", archives, corrupt=True)
    data = archives[LABELS][0]
    archive = ArchiveSpec(LABELS, hashlib.sha256(data).hexdigest())
    with pytest.raises(ChecksumError):
        download_archive(archive, [url], folder, progress=False)
    assert os.listdir(folder) == [LABELS]
    assert (folder / LABELS).read_bytes() == b"old"


def test_no_mirrors(tmp_path):
    with pytest.raises(DownloadError, match=f"cannot download {LABELS}: no mirrors"):
        download_archive(ArchiveSpec(LABELS, "0"), [], tmp_path, progress=False)


def test_written_archives_match_write_idx(archives, tmp_path):
    # The hand-built archives are the IDX files write_idx would write.
    write_idx(tmp_path / LABELS, archives[LABELS][1])
    assert gzip.decompress((tmp_path / LABELS).read_bytes()) == gzip.decompress(
        archives[LABELS][0]
    )
