"""Shared fixtures. Real data: ``$PPDATA_DATA`` or ``<repo>/../shared/data``; tests that need it
skip cleanly when it is absent."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


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
    """Copy the first ``per_class`` images of every class of an ImageFolder archive."""
    counts: dict[str, int] = {}
    with tarfile.open(src, "r|*") as tf, tarfile.open(dst, "w") as out:
        for m in tf:
            if not m.isfile():
                continue
            cls = "/".join(m.name.split("/")[:-1])
            if counts.get(cls, 0) >= per_class:
                continue
            counts[cls] = counts.get(cls, 0) + 1
            data = tf.extractfile(m).read()
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dst


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
