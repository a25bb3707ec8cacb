"""Shared fixtures. Real data: ``$PPDATA_DATA`` or ``<repo>/../shared/data``; tests that need it
skip cleanly when it is absent."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BUCKET = "ppdata-test"


def shared_data_dir() -> Path | None:
    p = Path(os.environ.get("PPDATA_DATA", REPO.parent / "shared" / "data"))
    return p if p.is_dir() else None


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests use tiny tensors: one intra-op thread is fastest, and far faster on a busy machine."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    p = shared_data_dir()
    if p is None:
        pytest.skip("shared data folder not available (set PPDATA_DATA)")
    return p


def _slice_archive(src: Path, dst: Path, per_class: int) -> Path:
    from train.experiments.source import slice_archive

    return slice_archive(src, dst, per_class)


@pytest.fixture(scope="session")
def slice_archive():
    """``slice_archive(src, dst, per_class)``: the first images of every class of an archive."""
    return _slice_archive


@pytest.fixture(scope="session")
def cifar_test_slice(shared_data, tmp_path_factory) -> Path:
    """A small real CIFAR-10 archive: 20 test images per class (200), as test/<class>/<file>."""
    return _slice_archive(shared_data / "cifar10-jpeg" / "test.tar.gz",
                          tmp_path_factory.mktemp("cifar") / "test-slice.tar", 20)


@pytest.fixture(scope="session")
def scenes_test_slice(shared_data, tmp_path_factory) -> Path:
    """A small real 96x96 photo archive: 8 test images per class (48)."""
    return _slice_archive(shared_data / "scenes96" / "test.tar.gz",
                          tmp_path_factory.mktemp("scenes") / "test-slice.tar", 8)


@pytest.fixture(scope="session")
def sample_images() -> np.ndarray:
    """The embedded sample's 100 test images, (100, 32, 32, 3) uint8 (real CIFAR-10 images)."""
    from ppdata.sources import SampleSource

    return np.concatenate([b.images for b in SampleSource(split="test").batches("test")])


def _fake_cifar10_archive(path: Path, n_train: int = 4, n_test: int = 3, seed: int = 0) -> dict:
    """A tar.gz laid out like the official CIFAR-10 python archive (tiny batches); returns the
    arrays written and the MD5s a ``ppdata.sources.standard.Dataset`` needs."""
    import gzip
    import hashlib
    import pickle

    rng = np.random.default_rng(seed)
    files, arrays = {}, {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for n in names:
        k = n_test if n == "test_batch" else n_train
        data = rng.integers(0, 256, (k, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, k).tolist()
        arrays[n] = (data, labels)
        files[n] = pickle.dumps({"data": data, "labels": labels, "batch_label": n})
    files["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for n, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{n}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    md5 = {n: hashlib.md5(d).hexdigest() for n, d in files.items()}
    return {"arrays": arrays, "md5": md5, "archive_md5": hashlib.md5(path.read_bytes()).hexdigest()}


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """A fake CIFAR-10 archive served over HTTP on localhost, and ppdata's CIFAR-10 entry pointed at
    it: ``{"url", "arrays", "served": [paths requested], "stop": callable}``."""
    import dataclasses
    import http.server
    import threading

    from ppdata.sources import standard

    site = tmp_path / "site"
    site.mkdir()
    info = _fake_cifar10_archive(site / "cifar-10-python.tar.gz")
    served = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(site), **kw)

        def log_message(self, *a):
            served.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"
    ds = standard.DATASETS["cifar10"]
    md5 = info["md5"]
    fake = dataclasses.replace(
        ds, url=url, archive_md5=info["archive_md5"],
        splits={"train": [(f"data_batch_{i}", md5[f"data_batch_{i}"]) for i in range(1, 6)],
                "test": [("test_batch", md5["test_batch"])]},
        meta=("batches.meta", md5["batches.meta"]))
    monkeypatch.setitem(standard.DATASETS, "cifar10", fake)

    def stop():
        server.shutdown()
        server.server_close()

    yield {"url": url, "arrays": info["arrays"], "served": served, "stop": stop}
    try:
        stop()
    except OSError:
        pass


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def s3():
    """A real S3 API: moto in server mode on a free port, stopped at the end of the session; AWS_*
    variables point every client (s3fs, worker processes, Ray workers started later) at it.
    Yields an s3fs file system with bucket ``BUCKET``. Skips without moto or s3fs."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("the moto S3 server did not start")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": url}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    fs.endpoint = url
    try:
        yield fs
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
