"""Readers bound every size before allocating: tar headers (negative, huge, pax-overridden sizes),
HDF5 layouts (external storage, links, virtual datasets, declared shapes and chunks), image files
(special files, byte limit, the pixel limit after resizing, aspect ratio), counts in manifests.
Generated hostile inputs (hypothesis) beside the reported cases; the cases that could hang or
exhaust memory run in a subprocess under a memory limit and a time limit."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ppdata.archive import checked_members
from ppdata.cli import cli
from ppdata.errors import PpdataError
from ppdata.sources import FolderSource

REPO = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ppdata(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


@contextmanager
def within(seconds: int):
    """Fail instead of hanging: SIGALRM after ``seconds``."""
    def alarm(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_limited(args: list[str], cwd: Path, memory: int = 2 << 30, timeout: int = 60) -> tuple[subprocess.CompletedProcess, float]:
    """``ppdata ARGS`` in a subprocess with its address space limited to ``memory`` bytes."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
        from ppdata.cli import main
        sys.argv = ["ppdata"] + {args!r}
        main()
    """)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    return p, time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# tar headers


def _base256(n: int) -> bytes:
    return b"\xff" + (256 ** 11 + n).to_bytes(11, "big") if n < 0 else b"\x80" + n.to_bytes(11, "big")


def _set_size(block: bytearray, at: int, field: bytes) -> None:
    block[at + 124:at + 136] = field
    block[at + 148:at + 156] = b" " * 8
    block[at + 148:at + 156] = b"%06o\0 " % sum(block[at:at + 512])


def hostile_tar(name: str, *, declared: int | None = None, pax: str | None = None, long_size: int | None = None,
                data: bytes = b"\x89PNG not really" * 4) -> bytes:
    """A one-member tar whose member (or its extended header) declares a hostile size."""
    info = tarfile.TarInfo(name if long_size is None else "train/cat/" + "l" * 120 + ".png")
    info.size = len(data)
    fmt = tarfile.GNU_FORMAT
    if pax is not None:
        info.pax_headers = {"size": pax}
        fmt = tarfile.PAX_FORMAT
    hdr = bytearray(info.tobuf(format=fmt))
    if declared is not None:
        _set_size(hdr, len(hdr) - 512, _base256(declared) if declared < 0 or declared >= 8 ** 11 else b"%011o\0" % declared)
    if long_size is not None:  # the GNU long-name header comes first
        _set_size(hdr, 0, _base256(long_size))
    pad = -len(data) % 512
    return bytes(hdr) + data + bytes(pad) + bytes(1024)


SIZES = st.one_of(st.integers(-2 ** 87, -1), st.integers(2 ** 40 + 1, 2 ** 87 - 1), st.integers(10 ** 6, 2 ** 40))
PAX_SIZES = st.one_of(st.integers(-2 ** 70, -1).map(str), st.integers(2 ** 40 + 1, 2 ** 70).map(str),
                      st.sampled_from(["", "12x", "0x10", " ", "-", "1e9", "\x1b[2J"]))


@st.composite
def hostile_headers(draw):
    kind = draw(st.sampled_from(["declared", "pax", "long"]))
    if kind == "declared":
        return {"declared": draw(SIZES)}
    if kind == "pax":
        return {"pax": draw(PAX_SIZES)}
    return {"long_size": draw(st.one_of(st.integers(-2 ** 60, -1), st.integers(2 ** 21, 2 ** 60)))}


@SETTINGS
@given(hostile_headers(), st.booleans())
def test_generated_hostile_tar_sizes_are_errors_for_every_reader(tmp_path_factory, header, compress):
    d = tmp_path_factory.mktemp("tar")
    raw = hostile_tar("train/cat/x.png", **header)
    path = d / ("a.tar.gz" if compress else "a.tar")
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    with within(20):
        with pytest.raises(PpdataError) as e:
            FolderSource(path)
        assert any(w in str(e.value) for w in ("size", "ends inside member", "truncated")), str(e.value)
        with pytest.raises(PpdataError):
            for _ in checked_members(io.BytesIO(raw), "a.tar"):
                pass
        # the same header in a shard, read by the generic shard reader
        shard = d / "s"
        shard.mkdir()
        (shard / "train-000000.tar").write_bytes(hostile_tar("train_000000.npy", **header))
        (shard / "manifest.json").write_text(json.dumps({
            "format": "webdataset", "shape": [1, 1, 3], "classes": ["a"],
            "splits": {"train": {"count": 1, "shards": [{"name": "train-000000.tar", "count": 1}]}}}))
        from ppdata import open_shards

        with pytest.raises(PpdataError):
            open_shards(shard, "train", verify=False).load()


@pytest.mark.parametrize("case", ["negative gnu", "pax -512", "huge gnu"])
def test_reported_tar_sizes_end_within_seconds_in_bounded_memory(tmp_path, case):
    """The reported cases: a 273-byte .tar.gz whose member has a negative GNU base-256 size hung
    with memory growing (1.1 GB in 40 s); a pax size=-512 was accepted with a phantom member."""
    header = {"negative gnu": {"declared": -512}, "pax -512": {"pax": "-512"}, "huge gnu": {"declared": 2 ** 80}}[case]
    raw = hostile_tar("train/cat/\x1b[31mevil.png", **header)
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(raw, mtime=0))
    p, seconds = run_limited(["-q", "encrypt", "folder", "a.tar.gz", "--out", "o"], tmp_path, memory=1536 << 20,
                             timeout=60)
    assert p.returncode == 1, p.stderr
    assert seconds < 30
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "evil.png" in lines[0] and "size" in lines[0], p.stderr
    assert "\x1b" not in p.stderr and "\\x1b" in p.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# HDF5: only data stored in the file itself, within its size


@pytest.fixture(scope="module")
def h5folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("h5")
    r = ppdata("encrypt", "sample", "--split", "test", "--format", "hdf5", "--out", d / "s", "--keep-keys",
               d / "k.json")
    assert r.exit_code == 0, r.output
    import h5py

    with h5py.File(d / "s" / "test.h5", "r") as f:
        arrays = {k: f[k][()] for k in ("images", "labels", "keys")}
    return d / "s", d / "k.json", arrays


LAYOUTS = ["external storage", "external link", "virtual", "soft link", "compressed", "declared beyond the file",
           "huge chunk"]


def _hostile_h5(path: Path, outside: Path, arrays: dict, layout: str, target: str) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name, a in arrays.items():
            if name != target:
                f.create_dataset(name, data=a, dtype=h5py.string_dtype("ascii") if name == "keys" else a.dtype)
                continue
            a = np.asarray(a)
            if layout == "external storage":
                if name == "keys":
                    layout = "external link"
                else:
                    raw = outside / f"{name}.raw"
                    raw.write_bytes(a.tobytes())
                    f.create_dataset(name, shape=a.shape, dtype=a.dtype, external=[(str(raw), 0, a.nbytes)])
                    continue
            dt = h5py.string_dtype("ascii") if name == "keys" else a.dtype
            if layout == "external link":
                with h5py.File(outside / "other.h5", "w") as o:
                    o.create_dataset(name, data=a, dtype=dt)
                f[name] = h5py.ExternalLink(str(outside / "other.h5"), f"/{name}")
            elif layout == "virtual":
                with h5py.File(outside / "other.h5", "w") as o:
                    o.create_dataset(name, data=a, dtype=dt)
                vl = h5py.VirtualLayout(shape=a.shape, dtype=dt)
                vl[...] = h5py.VirtualSource(str(outside / "other.h5"), name, shape=a.shape)
                f.create_virtual_dataset(name, vl)
            elif layout == "soft link":
                f.create_dataset(f"data/{name}", data=a, dtype=dt)
                f[name] = h5py.SoftLink(f"/data/{name}")
            elif layout == "compressed":
                f.create_dataset(name, data=a, dtype=dt, compression="gzip", chunks=True)
            elif layout == "declared beyond the file":  # shape grown, nothing written (the reported 2 KB case)
                ds = f.create_dataset(name, shape=a.shape, maxshape=(None, *a.shape[1:]), dtype=dt,
                                      chunks=(len(a), *a.shape[1:]))
                ds[...] = a
                ds.resize(1_000_000, axis=0)
            else:  # one chunk larger than any read should take (the data itself is all there)
                row = 16 if name == "keys" else int(np.prod(a.shape[1:], dtype=np.int64)) * a.dtype.itemsize
                rows = (64 << 20) // row + 1  # (writing the data allocates one chunk: keep it near the limit)
                ds = f.create_dataset(name, shape=a.shape, dtype=dt, chunks=(rows, *a.shape[1:]),
                                      maxshape=(None, *a.shape[1:]))
                ds[...] = a


@SETTINGS
@given(st.sampled_from(LAYOUTS), st.sampled_from(["images", "labels", "keys"]))
def test_generated_hdf5_layouts_are_refused_by_every_consumer(tmp_path_factory, h5folder, layout, target):
    src, ks, arrays = h5folder
    base = tmp_path_factory.mktemp("h")
    outside = base / "outside"
    outside.mkdir()
    d = base / "s"
    shutil.copytree(src, d)
    _hostile_h5(d / "test.h5", outside, arrays, layout, target)
    data = (d / "test.h5").read_bytes()
    m = json.loads((d / "manifest.json").read_text())
    m["splits"]["test"]["shards"][0].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (d / "manifest.json").write_text(json.dumps(m))
    from ppdata import open_shards
    from ppdata.dataset import ShardDataset

    with within(60):
        for args in (["info", d, "--verify"], ["decrypt", d, "--keys", ks, "--out", base / "o"],
                     ["augment", d, "--split", "test", "--out", base / "a", "--shift", "0"]):
            r = ppdata(*args)
            assert r.exit_code == 1, (layout, target, args[0], r.output)
            errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
            assert len(errors) == 1 and "test.h5" in r.output and "Traceback" not in r.output, r.output
        for read in (lambda: open_shards(d, "test").load(), lambda: ShardDataset(d, "test")[0]):
            with pytest.raises(PpdataError, match="test.h5"):
                read()


def test_the_reported_2kb_hdf5_declaring_a_million_images_is_refused_before_allocating(tmp_path, h5folder):
    """A small file whose images declare 1,000,000 rows in one chunk, and a manifest that agrees:
    refused from sizes alone, under a memory limit far below the 3 GB it would take."""
    import h5py

    src, ks, arrays = h5folder
    d = tmp_path / "s"
    shutil.copytree(src, d)
    with h5py.File(d / "test.h5", "w") as f:
        f.create_dataset("images", shape=(1_000_000, 32, 32, 3), dtype=np.uint8, chunks=(1_000_000, 32, 32, 3))
        f.create_dataset("labels", shape=(1_000_000,), dtype=np.int64, chunks=(1_000_000,))
        f.create_dataset("keys", shape=(1_000_000,), dtype=h5py.string_dtype("ascii"), chunks=(1_000_000,))
    data = (d / "test.h5").read_bytes()
    assert len(data) < 16 << 10
    m = json.loads((d / "manifest.json").read_text())
    m["splits"]["test"].update(count=1_000_000)
    m["splits"]["test"]["shards"][0].update(count=1_000_000, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (d / "manifest.json").write_text(json.dumps(m))
    p, seconds = run_limited(["-q", "info", str(d), "--verify"], tmp_path, memory=1 << 30)
    assert p.returncode == 1 and seconds < 30, p.stderr
    assert p.stderr.count("\n") == 1 and "test.h5" in p.stderr and "Traceback" not in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# image files


def _png(path: Path, w: int, h: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (10, 200, 30)).save(path)
    return path


def test_resize_after_the_pixel_limit_under_a_memory_limit(tmp_path):
    """The reported case: --resize 256 --crop 224x224 on a 129-byte 16000x1 PNG peaked at 10.3 GB
    (the shorter side brought to 256 makes the other side 4 million pixels). The limit now
    applies to the size the resize would make, before resizing: a counted skip, in bounded memory."""
    tree = tmp_path / "tree"
    thin = _png(tree / "a" / "thin.png", 16000, 1)
    assert thin.stat().st_size < 200
    _png(tree / "a" / "wide.png", 1000, 4)  # aspect 250:1, but resize 256 makes 64000x256 = 16.4 M pixels
    for i in range(3):
        _png(tree / "a" / f"ok{i}.png", 300, 200)
        _png(tree / "b" / f"ok{i}.png", 200, 300)
    p, seconds = run_limited(["-q", "encrypt", "folder", "tree", "--resize", "256", "--crop", "224x224", "--out", "o",
                              "--max-pixels", "10000000", "--workers", "1"], tmp_path, memory=2 << 30)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    skipped = {f["path"]: f["reason"] for f in m["splits"]["train"]["skipped"]["files"]}
    assert set(skipped) == {"a/thin.png", "a/wide.png"} and m["splits"]["train"]["count"] == 6
    assert "aspect ratio" in skipped["a/thin.png"]
    assert "--resize would make it 64000x256" in skipped["a/wide.png"] and "10,000,000" in skipped["a/wide.png"]


def test_special_files_and_large_files_are_counted_skips_that_never_block(tmp_path):
    """A FIFO named *.png blocked forever; a link to /dev/zero was read without limit."""
    tree = tmp_path / "tree"
    for i in range(3):
        _png(tree / "a" / f"{i}.png", 32, 32)
    os.mkfifo(tree / "a" / "fifo.png")
    os.symlink("/dev/zero", tree / "a" / "zero.png")
    big = tree / "a" / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 5000
    p, seconds = run_limited(["-q", "encrypt", "folder", "tree", "--out", "o", "--max-bytes", "5000"], tmp_path,
                             timeout=60)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    skipped = {f["path"]: f["reason"] for f in m["splits"]["train"]["skipped"]["files"]}
    assert set(skipped) == {"a/fifo.png", "a/zero.png", "a/big.png"}
    assert "not a regular file" in skipped["a/fifo.png"] and "not a regular file" in skipped["a/zero.png"]
    assert "5,000" in skipped["a/big.png"]


def test_symlinked_class_folders_and_subfolders_are_followed_as_torchvision_does(tmp_path):
    """The reported case: symlinked class folders and subfolders were dropped without a word
    (1 class and 4 images where torchvision's ImageFolder finds 2 classes and 10)."""
    torchvision = pytest.importorskip("torchvision.datasets")
    real = tmp_path / "real"
    for i in range(3):
        _png(real / "cat" / f"{i}.png", 8, 8)
        _png(real / "dogsub" / f"{i}.png", 8, 8)
    tree = tmp_path / "tree"
    for i in range(4):
        _png(tree / "dog" / f"{i}.png", 8, 8)
    (tree / "cat").symlink_to(real / "cat")
    (tree / "dog" / "sub").symlink_to(real / "dogsub")
    tv = torchvision.ImageFolder(str(tree))
    src = FolderSource(tree)
    assert src.classes == tv.classes == ["cat", "dog"]
    assert src.names("train") == [str(Path(p).relative_to(tree)) for p, _ in tv.samples]
    assert len(tv.samples) == 10
    # a link back to an enclosing folder is not followed (torchvision would walk it until the path is too long)
    (tree / "dog" / "loop").symlink_to(tree)
    with within(30):
        again = FolderSource(tree)
    assert again.names("train") == src.names("train")


def test_a_manifest_count_the_shard_cannot_hold_is_refused_before_allocating(tmp_path):
    r = ppdata("encrypt", "sample", "--split", "test", "--out", tmp_path / "s")
    assert r.exit_code == 0
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["splits"]["test"]["count"] = 10 ** 12
    m["splits"]["test"]["shards"][0]["count"] = 10 ** 12
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    p, seconds = run_limited(["-q", "augment", str(tmp_path / "s"), "--split", "test", "--out", str(tmp_path / "a")],
                             tmp_path, memory=1 << 30)
    assert p.returncode == 1 and "can hold" in p.stderr and p.stderr.count("\n") == 1, p.stderr
