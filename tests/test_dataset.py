"""Shard folders through torch.utils.data.DataLoader: map-style and iterable, fork and spawn."""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import torch
import webdataset as wds
from click.testing import CliRunner

from ppdata import open_shards
from ppdata.cli import cli
from ppdata.dataset import ShardDataset
from ppdata.errors import PpdataError


@pytest.fixture(scope="module", params=["webdataset", "hdf5"])
def folder(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param) / "s"
    r = CliRunner().invoke(cli, ["-q", "encrypt", "sample", "--cs", "--seed", "1", "--out", str(d), "--format",
                                 request.param, "--shard-size", "64"])
    assert r.exit_code == 0, r.output
    return d


def to_chw(x):
    return torch.from_numpy(x).permute(2, 0, 1)


def test_map_style_matches_the_reader_and_applies_transforms(folder):
    ref = open_shards(folder, "test").load()
    ds = ShardDataset(folder, "test", transform=to_chw, target_transform=lambda y: y + 100)
    assert len(ds) == 100 and ds.classes == open_shards(folder, "test").classes
    for i in (0, 63, 64, 99, -1):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and y == int(ref.labels[i]) + 100
        np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), ref.images[i])
    with pytest.raises(IndexError):
        ds[100]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_map_style_with_worker_processes(folder, method):
    if method == "spawn" and folder.parent.name.startswith("webdataset") or \
            method == "forkserver" and folder.parent.name.startswith("hdf5"):
        pytest.skip("each start method runs on one format (process start-up costs seconds)")
    ref = open_shards(folder, "train").load()
    ds = ShardDataset(folder, "train", transform=to_chw)
    dl = torch.utils.data.DataLoader(ds, batch_size=50, num_workers=2, multiprocessing_context=mp.get_context(method))
    xs, ys = zip(*dl)
    np.testing.assert_array_equal(torch.cat(xs).permute(0, 2, 3, 1).numpy(), ref.images)
    np.testing.assert_array_equal(torch.cat(ys).numpy(), ref.labels)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_iterable_covers_every_sample_once_across_workers(folder, method):
    if method == "spawn" and folder.parent.name.startswith("hdf5"):
        pytest.skip("spawn runs on one format (process start-up costs seconds)")
    from ppdata.dataset import ShardIterableDataset

    ref = open_shards(folder, "train").load()
    ds = ShardIterableDataset(folder, "train", transform=to_chw, shuffle=True, seed=3)
    ds.set_epoch(2)
    dl = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2, multiprocessing_context=mp.get_context(method))
    xs, ys = zip(*dl)
    got = torch.cat(xs).permute(0, 2, 3, 1).numpy()
    assert len(got) == 500
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert key(got) == key(ref.images)  # every sample exactly once
    assert not np.array_equal(got, ref.images)  # shuffled


def test_foreign_tars_are_indexed_for_random_access(tmp_path):
    import hashlib
    import json

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (5, 8, 6, 3), dtype=np.uint8), rng.integers(0, 3, 5)
    d = tmp_path / "f"
    d.mkdir()
    with wds.TarWriter(str(d / "train-000000.tar")) as w:
        for i in range(5):
            w.write({"__key__": f"train_{i:06d}", "npy": x[i], "cls": int(y[i])})
    data = (d / "train-000000.tar").read_bytes()
    (d / "manifest.json").write_text(json.dumps({"format": "webdataset", "shape": [8, 6, 3], "classes": ["a", "b", "c"],
                                                 "splits": {"train": {"count": 5, "shards": [
                                                     {"name": "train-000000.tar", "count": 5, "bytes": len(data),
                                                      "sha256": hashlib.sha256(data).hexdigest()}]}}}))
    ds = ShardDataset(d, "train")
    for i in (4, 0, 2):
        img, label = ds[i]
        np.testing.assert_array_equal(img, x[i])
        assert label == y[i]


def test_a_damaged_record_is_an_error_not_a_sample(tmp_path):
    d = tmp_path / "s"
    assert CliRunner().invoke(cli, ["-q", "encrypt", "sample", "--split", "test", "--out", str(d)]).exit_code == 0
    shard = d / "test-000000.tar"
    data = bytearray(shard.read_bytes())
    data[5120 * 7 + 3] ^= 0x20  # a header byte of sample 7
    shard.write_bytes(bytes(data))
    ds = ShardDataset(d, "test")
    ds[6]
    with pytest.raises(PpdataError, match="test-000000.tar"):
        ds[7]
    with pytest.raises(PpdataError, match="test-000000.tar"):
        ShardDataset(d, "test", verify=True)
