"""Shard writers and readers: formats readable by plain webdataset and h5py, manifest, faults."""
import errno
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import webdataset as wds

from ppdata import open_shards, read_manifest
from ppdata.cipher import get_scheme
from ppdata.errors import PpdataError
from ppdata.keys import KeyStream, secret_from_seed
from ppdata.pipeline import encrypt
from ppdata.shards import INCOMPLETE, WebDatasetWriter, tar_records
from ppdata.sources import ArraySource, SampleSource

REPO = Path(__file__).resolve().parents[1]


def arrays(n=30, h=8, w=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), rng.integers(0, 10, n)


def run(out, fmt="webdataset", cs=True, n=30, seed=1, shard_size=7, **kw):
    x, y = arrays(n)
    src = ArraySource({"train": (x, y), "test": (x[:5], y[:5])}, classes=[f"c{i}" for i in range(10)])
    m = encrypt(src, out, scheme=get_scheme("pixel", cs=cs), keys=KeyStream(secret_from_seed(seed)), fmt=fmt,
                shard_size=shard_size, progress=False, batch_size=4, **kw)
    return x, y, m


def test_tar_records_parse_with_tarfile(tmp_path):
    x, y = arrays(3)
    recs = tar_records(["train_000000", "train_000001", "a_9"], x, y * 37)
    (tmp_path / "t.tar").write_bytes(recs.tobytes() + bytes(1024))
    with tarfile.open(tmp_path / "t.tar") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["train_000000.npy", "train_000000.cls", "train_000001.npy",
                                             "train_000001.cls", "a_9.npy", "a_9.cls"]
        assert all(m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)
        assert tf.extractfile(members[5]).read() == str(y[2] * 37).encode()


def test_webdataset_shards_read_by_vanilla_webdataset(tmp_path):
    x, y, m = run(tmp_path / "s")
    ss = open_shards(tmp_path / "s", "train")
    assert [p.name for p in ss.paths] == [f"train-{i:06d}.tar" for i in range(5)]
    assert [s["count"] for s in m["splits"]["train"]["shards"]] == [7, 7, 7, 7, 2]
    samples = list(wds.WebDataset(ss.urls, shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [f"train_{i:06d}" for i in range(30)]
    assert [s["cls"] for s in samples] == y.tolist()
    enc = np.stack([s["npy"] for s in samples])
    assert enc.shape == x.shape and enc.dtype == np.uint8 and (enc != x).mean() > 0.4
    ours = ss.load()
    np.testing.assert_array_equal(ours.images, enc)
    np.testing.assert_array_equal(ours.labels, y)


def test_hdf5_read_by_plain_h5py(tmp_path):
    x, y, m = run(tmp_path / "h", fmt="hdf5")
    with h5py.File(tmp_path / "h" / "train.h5", "r") as f:
        assert f["images"].shape == (30, 8, 6, 3) and f["images"].dtype == np.uint8
        assert f["labels"][:].tolist() == y.tolist()
        assert [k.decode() for k in f["keys"][:3]] == ["train_000000", "train_000001", "train_000002"]
        assert f["images"].chunks[1:] == (8, 6, 3)
        assert json.loads(f.attrs["scheme"])["cs"] is True
    # same keys (seed 1) -> identical ciphertext as the webdataset run
    run(tmp_path / "w", fmt="webdataset")
    np.testing.assert_array_equal(open_shards(tmp_path / "h", "train").load().images,
                                  open_shards(tmp_path / "w", "train").load().images)


def test_generic_reader_for_foreign_tars(tmp_path):
    """Shards written by webdataset's own TarWriter are read through the generic path."""
    x, y = arrays(4)
    d = tmp_path / "f"
    d.mkdir()
    with wds.TarWriter(str(d / "train-000000.tar")) as w:
        for i in range(4):
            w.write({"__key__": f"train_{i:06d}", "npy": x[i], "cls": int(y[i])})
    import hashlib

    sha = hashlib.sha256((d / "train-000000.tar").read_bytes()).hexdigest()
    manifest = {"format": "webdataset", "shape": [8, 6, 3], "classes": [],
                "splits": {"train": {"count": 4, "shards": [{"name": "train-000000.tar", "count": 4, "sha256": sha}]}}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    s = open_shards(d, "train").load()
    np.testing.assert_array_equal(s.images, x)
    assert s.keys.tolist() == [f"train_{i:06d}" for i in range(4)]


def test_manifest_contents_and_no_secret_in_output(tmp_path):
    secret = secret_from_seed(1)
    x, y, m = run(tmp_path / "s", keystore=tmp_path / "keys.json")
    disk = read_manifest(tmp_path / "s")
    assert disk == m
    assert m["format"] == "webdataset" and m["shape"] == [8, 6, 3] and m["classes"][0] == "c0"
    assert m["scheme"] == {"name": "pixel", "encrypted": True, "np": True, "cs": True}
    assert m["keys"]["mode"] == "independent" and m["keys"]["seeded"] is False
    assert m["splits"]["train"]["count"] == 30 and m["splits"]["test"]["count"] == 5
    assert all(len(s["sha256"]) == 64 for s in m["splits"]["train"]["shards"])
    assert m["ppdata_version"] and m["created"] and m["id"]
    # the secret appears nowhere in the output folder, in any encoding
    for f in (tmp_path / "s").iterdir():
        data = f.read_bytes()
        assert secret not in data and secret.hex().encode() not in data, f
    assert secret.hex() in (tmp_path / "keys.json").read_text()
    assert sorted(os.listdir(tmp_path / "s")) == ["manifest.json", "test-000000.tar"] + [
        f"train-{i:06d}.tar" for i in range(5)]


def test_deterministic_shards(tmp_path):
    run(tmp_path / "a")
    run(tmp_path / "b")
    for name in os.listdir(tmp_path / "a"):
        if name.endswith(".tar"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_verify_detects_tampering(tmp_path):
    run(tmp_path / "s")
    ss = open_shards(tmp_path / "s", "train")
    assert ss.verify() == []
    p = ss.paths[1]
    data = bytearray(p.read_bytes())
    data[2000] ^= 1
    p.write_bytes(bytes(data))
    problems = open_shards(tmp_path / "s", "train").verify()
    assert len(problems) == 1 and "train-000001.tar" in problems[0]


def test_output_folder_not_empty_refused_then_overwrite(tmp_path):
    run(tmp_path / "s")
    with pytest.raises(PpdataError, match="not empty.*--overwrite"):
        run(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").write_text("mine")
    with pytest.raises(PpdataError, match="did not write.*notes.txt"):
        run(tmp_path / "s", shard_size=100, overwrite=True)
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine" and (tmp_path / "s" / "manifest.json").exists()
    (tmp_path / "s" / "notes.txt").unlink()
    run(tmp_path / "s", shard_size=100, overwrite=True)
    names = sorted(os.listdir(tmp_path / "s"))
    assert names == ["manifest.json", "test-000000.tar", "train-000000.tar"]


def test_keystore_inside_output_refused(tmp_path):
    with pytest.raises(PpdataError, match="inside the output folder"):
        run(tmp_path / "s", keystore=tmp_path / "s" / "sub" / "k.json")
    assert not (tmp_path / "s").exists()
    with pytest.raises(PpdataError, match="not writable"):
        run(tmp_path / "s", keystore=tmp_path / "missing-dir" / "k.json")
    assert not (tmp_path / "s").exists()  # checked before any work


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``limit`` bytes."""

    def __init__(self, f, limit):
        self.f, self.left = f, limit

    def write(self, data):
        n = len(data) if isinstance(data, bytes) else data.nbytes
        if n > self.left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_disk_full_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    orig_open = WebDatasetWriter._open

    def failing_open(self):
        orig_open(self)
        self._f = _FullDisk(self._f, 3 * 2048 if len(self.shards) == 2 else 10**9)

    monkeypatch.setattr(WebDatasetWriter, "_open", failing_open)
    (tmp_path / "s").mkdir()
    with pytest.raises(PpdataError, match="disk full while writing .*train-000002.tar.part"):
        run(tmp_path / "s")
    # the failed run removed what it wrote (completed shards included); the folder it did not
    # create stays, empty
    assert os.listdir(tmp_path / "s") == []
    with pytest.raises(PpdataError, match="no manifest.json"):
        open_shards(tmp_path / "s", "train")
    monkeypatch.undo()
    run(tmp_path / "s")  # rerun works without --overwrite
    assert open_shards(tmp_path / "s", "train").verify() == []


def test_killed_run_can_be_rerun(tmp_path):
    """SIGKILL in the middle of a run: no manifest, only a partial file; the rerun completes."""
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from ppdata.sources import ArraySource
        from ppdata.pipeline import encrypt
        from ppdata.cipher import get_scheme
        from ppdata.keys import KeyStream, secret_from_seed
        class Dying(ArraySource):
            def batches(self, split, batch_size=256):
                for i, b in enumerate(super().batches(split, batch_size)):
                    if i == 5:
                        os.kill(os.getpid(), signal.SIGKILL)
                    yield b
        rng = np.random.default_rng(0)
        src = Dying({{"train": (rng.integers(0, 256, (40, 8, 6, 3), dtype=np.uint8), np.zeros(40, int))}})
        encrypt(src, {str(tmp_path / 's')!r}, scheme=get_scheme("pixel"), keys=KeyStream(secret_from_seed(1)),
                shard_size=7, batch_size=4, progress=False)
    """)
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    names = sorted(os.listdir(tmp_path / "s"))
    assert "manifest.json" not in names and INCOMPLETE in names
    with pytest.raises(PpdataError, match="interrupted"):
        open_shards(tmp_path / "s", "train")
    run(tmp_path / "s", n=30)
    assert len(open_shards(tmp_path / "s", "train")) == 30


def test_skipped_images_recorded_in_manifest(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs" / "cls"
    d.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((4, 4, 3), i * 50, np.uint8)).save(d / f"{i}.png")
    (d / "1.png").write_bytes(b"broken")
    from ppdata.sources import FolderSource

    m = encrypt(FolderSource(tmp_path / "imgs"), tmp_path / "s", scheme=get_scheme("pixel"),
                keys=KeyStream(secret_from_seed(1)), progress=False)
    sk = m["splits"]["train"]["skipped"]
    assert sk["count"] == 1 and sk["files"][0]["path"] == "cls/1.png" and sk["files"][0]["index"] == 1
    s = open_shards(tmp_path / "s", "train").load()
    assert s.keys.tolist() == ["train_000000", "train_000002"]  # keys never shift


def test_sample_round_trip_through_shards(tmp_path):
    """Encrypt the embedded sample, decrypt with the keystore: the original pixels come back."""
    from ppdata.pipeline import decrypt

    src = SampleSource()
    encrypt(src, tmp_path / "s", scheme=get_scheme("pixel", cs=True), keys=KeyStream(secret_from_seed(9)),
            keystore=tmp_path / "k.json", progress=False)
    decrypt(tmp_path / "s", tmp_path / "k.json", tmp_path / "d", progress=False)
    for split in ("train", "test"):
        plain = open_shards(tmp_path / "d", split).load()
        orig = np.concatenate([b.images for b in SampleSource().batches(split)])
        np.testing.assert_array_equal(plain.images, orig)
