"""Sources: ImageFolder directories and archives, image modes, sizes, bad files, torchvision."""
import os
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ppdata.errors import PpdataError
from ppdata.sources import (ArraySource, FolderSource, SampleSource, StandardSource, decode_image,
                            open_source, sample_key)


def save(path, array, mode=None, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    img.save(path, fmt)
    return path


def collect(src, split):
    batches = list(src.batches(split, batch_size=3))
    return (np.concatenate([b.images for b in batches]), np.concatenate([b.labels for b in batches]),
            np.concatenate([b.index for b in batches]))


def test_sample_source_is_real_cifar():
    s = SampleSource()
    assert s.splits() == ["train", "test"]
    assert s.count("train") == 500 and s.count("test") == 100
    assert s.classes[:3] == ["airplane", "automobile", "bird"] and len(s.classes) == 10
    x, y, i = collect(s, "test")
    assert x.shape == (100, 32, 32, 3) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [10] * 10
    assert i.tolist() == list(range(100))
    assert 40 < x.mean() < 200 and x.std() > 30  # natural images, not noise or blanks


def test_sample_key_has_no_dots():
    assert sample_key("train", 123) == "train_000123"
    assert "." not in sample_key("test", 10**7)


def test_directory_layouts_and_order(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    save(tmp_path / "wrap" / "dogs" / "2.png", b)
    save(tmp_path / "wrap" / "cats" / "1.png", a)
    save(tmp_path / "wrap" / "cats" / "0.png", b)
    (tmp_path / "wrap" / "README.txt").write_text("not an image")
    src = FolderSource(tmp_path)
    assert src.classes == ["cats", "dogs"] and src.splits() == ["train"]
    x, y, _ = collect(src, "train")
    assert y.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(x[0], b)  # cats/0.png first (sorted)
    np.testing.assert_array_equal(x[1], a)
    # class-only layout named by --split
    assert FolderSource(tmp_path, split="test").splits() == ["test"]


def test_split_layout_in_a_tar_gz(tmp_path):
    rng = np.random.default_rng(0)
    tree = tmp_path / "tree"
    for split in ("train", "test"):
        for c in ("x", "y"):
            for k in range(2):
                save(tree / split / c / f"{k}.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    arc = tmp_path / "a.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
    src = FolderSource(arc)
    assert src.splits() == ["train", "test"] and src.classes == ["x", "y"]
    x, y, _ = collect(src, "test")
    assert len(x) == 4 and sorted(y.tolist()) == [0, 0, 1, 1]
    ref = FolderSource(tree)
    xr, yr, _ = collect(ref, "test")
    # same images (archive order may differ from sorted order)
    assert sorted(map(bytes, x)) == sorted(map(bytes, xr))
    with pytest.raises(PpdataError, match="split 'val' not in"):
        src.select_splits("val")


def test_image_modes_converted_to_rgb(tmp_path):
    g = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    save(tmp_path / "c" / "l.png", g, "L")
    la = np.stack([g, np.full_like(g, 128)], -1)
    save(tmp_path / "c" / "la.png", la, "LA")
    rgba = np.dstack([np.full((4, 4, 3), 200, np.uint8), np.full((4, 4), 7, np.uint8)])
    save(tmp_path / "c" / "rgba.png", rgba, "RGBA")
    pal = Image.fromarray(np.zeros((4, 4), np.uint8), "P")
    pal.putpalette([90, 40, 10] + [0] * 765)
    pal.save(tmp_path / "c" / "p.png")
    Image.fromarray(np.full((4, 4, 3), 60, np.uint8)).convert("CMYK").save(tmp_path / "c" / "cmyk.jpg", quality=100)
    g16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 0..65535
    Image.fromarray(g16).save(tmp_path / "c" / "g16.png")
    out = {p.name: decode_image(p) for p in (tmp_path / "c").iterdir()}
    for name, arr in out.items():
        assert arr.shape == (4, 4, 3) and arr.dtype == np.uint8, name
    np.testing.assert_array_equal(out["l.png"][..., 0], g)
    np.testing.assert_array_equal(out["la.png"][..., 1], g)
    assert (out["rgba.png"] == 200).all()
    assert (out["p.png"] == [90, 40, 10]).all()
    assert np.abs(out["cmyk.jpg"].astype(int) - 60).max() <= 3
    np.testing.assert_array_equal(out["g16.png"][..., 0], (np.arange(16).reshape(4, 4) * 17).astype(np.uint8))


def test_mixed_sizes_error_names_the_file_unless_resize(tmp_path):
    save(tmp_path / "c" / "a.png", np.zeros((4, 4, 3), np.uint8))
    save(tmp_path / "c" / "b.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(PpdataError, match=r"b\.png.*--resize"):
        collect(FolderSource(tmp_path), "train")
    x, _, _ = collect(FolderSource(tmp_path, resize=(3, 2)), "train")
    assert x.shape == (2, 3, 2, 3)


def test_truncated_image_skipped_or_strict(tmp_path):
    rng = np.random.default_rng(0)
    save(tmp_path / "c" / "ok.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), fmt="JPEG")
    good = (tmp_path / "c" / "ok.jpg").read_bytes()
    (tmp_path / "c" / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "c" / "zzz.png").write_bytes(b"not a png at all")
    src = FolderSource(tmp_path)
    x, _, idx = collect(src, "train")
    assert len(x) == 1 and idx.tolist() == [0]
    assert sorted(s.path for s in src.skipped) == ["c/trunc.jpg", "c/zzz.png"]
    with pytest.raises(PpdataError, match=r"trunc\.jpg"):
        collect(FolderSource(tmp_path, strict=True), "train")


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PpdataError, match="holds no images"):
        FolderSource(tmp_path / "empty")
    with pytest.raises(PpdataError, match="does not exist"):
        FolderSource(tmp_path / "nope")
    (tmp_path / "broken.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(PpdataError, match="cannot read archive"):
        FolderSource(tmp_path / "broken.tar.gz")
    with pytest.raises(PpdataError, match="needs a PATH"):
        open_source("folder", None)


def test_missing_torchvision_dataset_gives_one_clear_message(tmp_path):
    with pytest.raises(PpdataError) as e:
        StandardSource("cifar10", root=tmp_path, download=False)
    msg = str(e.value)
    assert "--no-download" in msg and "--root" in msg and "folder" in msg and "\n" not in msg


def test_cifar10_is_downloaded_checked_and_read_without_torch(tmp_path, fake_cifar10):
    """The official archive layout, fetched over HTTP with its MD5 checked, read as (N,32,32,3)
    uint8 in torchvision's on-disk layout; a second run reads the local copy."""
    root = tmp_path / "data"
    src = StandardSource("cifar10", root=root, download=True, progress=False)
    assert fake_cifar10["served"] and (root / "cifar-10-batches-py" / "test_batch").is_file()
    x, y, _ = collect(src, "test")
    data, labels = fake_cifar10["arrays"]["test_batch"]
    assert x.shape == (3, 32, 32, 3) and y.tolist() == labels
    np.testing.assert_array_equal(x[0], data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert src.classes[0] == "c0" and src.count("train") == 20
    fake_cifar10["stop"]()
    again = StandardSource("cifar10", root=root, download=True, split="test")  # no network needed now
    np.testing.assert_array_equal(collect(again, "test")[0], x)


def test_damaged_or_hostile_dataset_files_are_refused(tmp_path, fake_cifar10):
    import pickle

    root = tmp_path / "data"
    StandardSource("cifar10", root=root, download=True, progress=False, split="test")
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(PpdataError, match="MD5"):
        StandardSource("cifar10", root=root, download=False, split="test")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    from ppdata.sources.standard import _unpickle

    with pytest.raises(PpdataError, match="not allowed"):
        _unpickle(pickle.dumps({"data": Evil()}), batch)


def test_stl10_binary_layout(tmp_path, monkeypatch):
    """STL-10's column-major planes come out upright as (N, 96, 96, 3), labels from 0."""
    import dataclasses

    from ppdata.sources import standard

    base = tmp_path / "stl10_binary"
    base.mkdir()
    img = np.zeros((2, 96, 96, 3), np.uint8)
    img[0, :10, :, 0] = 255  # image 0: a red band at the top
    img[1, :, :10, 2] = 255  # image 1: a blue band on the left
    (base / "test_X.bin").write_bytes(img.transpose(0, 3, 2, 1).tobytes())  # the file's order
    (base / "test_y.bin").write_bytes(bytes([1, 10]))
    (base / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)) + "\n")
    ds = dataclasses.replace(standard.DATASETS["stl10"], splits={"test": [("test_X.bin", None), ("test_y.bin", None)]})
    monkeypatch.setitem(standard.DATASETS, "stl10", ds)
    x, y, _ = collect(StandardSource("stl10", root=tmp_path, split="test"), "test")
    np.testing.assert_array_equal(x, img)
    assert y.tolist() == [0, 9]


def test_array_source_validates():
    with pytest.raises(ValueError):
        ArraySource({"train": (np.zeros((2, 4, 4), np.uint8), [0, 1])})
    s = ArraySource({"train": (np.zeros((5, 4, 4, 3), np.uint8), [0, 1, 2, 0, 1])})
    assert s.classes == ["0", "1", "2"]
    assert [len(b) for b in s.batches("train", 2)] == [2, 2, 1]


def test_real_cifar_archive_slice(cifar_test_slice):
    src = FolderSource(cifar_test_slice)
    assert src.splits() == ["test"] and len(src.classes) == 10
    x, y, idx = collect(src, "test")
    assert x.shape == (200, 32, 32, 3)
    assert np.bincount(y).tolist() == [20] * 10
    assert idx.tolist() == list(range(200))
    # the first image decodes exactly as Pillow decodes the member
    with tarfile.open(cifar_test_slice) as tf:
        first = next(m for m in tf if m.isfile())
        ref = np.asarray(Image.open(io.BytesIO(tf.extractfile(first).read())).convert("RGB"))
    np.testing.assert_array_equal(x[0], ref)


def test_several_folder_paths_are_joined(tmp_path):
    rng = np.random.default_rng(0)
    for split, classes in (("train", ("b", "c")), ("test", ("a", "c"))):
        for c in classes:
            save(tmp_path / split / split / c / "0.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    src = open_source("folder", [str(tmp_path / "train"), str(tmp_path / "test")])
    assert src.splits() == ["train", "test"] and src.classes == ["a", "b", "c"]
    _, y_train, _ = collect(src, "train")
    _, y_test, _ = collect(src, "test")
    assert y_train.tolist() == [1, 2] and y_test.tolist() == [0, 2]  # one label per class across splits
    assert src.describe() == {"name": "folder", "path": ["train", "test"]}
    with pytest.raises(PpdataError, match="split 'train' is in both"):
        open_source("folder", [str(tmp_path / "train"), str(tmp_path / "train")])


def test_real_cifar_train_and_test_archives(shared_data, slice_archive, tmp_path):
    from ppdata.pipeline import encrypt
    from ppdata.cipher import get_scheme
    from ppdata.keys import KeyStream, secret_from_seed
    from ppdata import open_shards
    tr = slice_archive(shared_data / "cifar10-jpeg" / "train.tar.gz", tmp_path / "train.tar", 3)
    te = slice_archive(shared_data / "cifar10-jpeg" / "test.tar.gz", tmp_path / "test.tar", 2)
    src = open_source("folder", [str(tr), str(te)])
    m = encrypt(src, tmp_path / "s", scheme=get_scheme("pixel", cs=True), keys=KeyStream(secret_from_seed(1)),
                progress=False)
    assert m["splits"]["train"]["count"] == 30 and m["splits"]["test"]["count"] == 20
    assert open_shards(tmp_path / "s", "test").load().labels.tolist() == [i // 2 for i in range(20)]
