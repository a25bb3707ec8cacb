"""Hostile and careless input: nothing a user owns is lost, nothing is written outside --out,
damaged input is never reported as success. One section per mechanism; the cases a hostile user
found are regression tests here, and generated inputs (hypothesis) cover the ones nobody listed."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ppdata import open_shards, read_manifest
from ppdata.cli import cli
from ppdata.errors import PpdataError
from ppdata.names import check_class, check_split, inside
from ppdata.shards import OutputFolder
from ppdata.sources import FolderSource

REPO = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ppdata(*args, cwd=None):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256)."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    """The embedded sample, NP+CS, independent keys kept: (folder, keystore)."""
    d = tmp_path_factory.mktemp("enc")
    r = ppdata("encrypt", "sample", "--cs", "--out", d / "s", "--keep-keys", d / "k.json", "--shard-size", "40")
    assert r.exit_code == 0, r.output
    return d / "s", d / "k.json"


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_manifest(folder: Path, fn) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))


# ---------------------------------------------------------------------------------------------
# ownership: only files ppdata can prove it wrote are ever deleted or replaced


def test_keystore_is_never_replaced(tmp_path, enc):
    ks = tmp_path / "k.json"
    assert ppdata("encrypt", "sample", "--out", tmp_path / "a", "--keep-keys", ks).exit_code == 0
    before = ks.read_bytes()
    r = ppdata("encrypt", "sample", "--out", tmp_path / "b", "--keep-keys", ks)
    assert r.exit_code == 1 and "never replaces a keystore" in r.output
    assert ks.read_bytes() == before and not (tmp_path / "b").exists()  # refused before any work
    # the first dataset still decrypts with it
    assert ppdata("decrypt", tmp_path / "a", "--keys", ks, "--out", tmp_path / "d").exit_code == 0


LOOKALIKES = ["photos.h5", "holiday-000001.tar", "train-000009.tar", "movie.mkv.part", ".manifest.backup.tmp",
              ".shuffle-0000.part", "test.h5.part", "notes.txt"]


@pytest.mark.parametrize("command", ["encrypt", "decrypt-webdataset", "decrypt-png", "augment"])
def test_overwrite_never_deletes_files_ppdata_did_not_write(tmp_path, enc, command):
    src, ks = enc
    out = tmp_path / "out"

    def run():
        if command == "encrypt":
            return ppdata("encrypt", "sample", "--out", out, "--overwrite")
        if command == "augment":
            return ppdata("augment", src, "--out", out, "--overwrite")
        fmt = command.split("-")[1]
        return ppdata("decrypt", src, "--keys", ks, "--out", out, "--format", fmt, "--overwrite")

    assert run().exit_code == 0
    for name in LOOKALIKES:
        (out / name).write_bytes(b"the user's own " + name.encode())
    mine = {n: (out / n).read_bytes() for n in LOOKALIKES}
    ours_before = snapshot(out)
    r = run()
    assert r.exit_code == 1 and "did not write" in r.output
    for n in LOOKALIKES[:3]:
        assert n in r.output or "more" in r.output
    assert snapshot(out) == ours_before  # nothing removed, not even ppdata's own files
    assert {n: (out / n).read_bytes() for n in LOOKALIKES} == mine
    for n in LOOKALIKES:  # once the user moves them away, --overwrite replaces ppdata's own files
        os.unlink(out / n)
    assert run().exit_code == 0


def test_source_archive_inside_out_is_never_deleted(tmp_path, cifar_test_slice):
    out = tmp_path / "out"
    out.mkdir()
    archive = out / "photos.tar"
    archive.write_bytes(cifar_test_slice.read_bytes())
    r = ppdata("encrypt", "folder", archive, "--out", out, "--overwrite")
    assert r.exit_code == 1 and "photos.tar" in r.output
    assert archive.read_bytes() == cifar_test_slice.read_bytes()


def test_png_overwrite_replaces_the_earlier_tree_completely(tmp_path, enc):
    src, ks = enc
    out = tmp_path / "png"
    assert ppdata("decrypt", src, "--keys", ks, "--out", out, "--format", "png").exit_code == 0
    first = snapshot(out)
    assert len([f for f in first if f.endswith(".png")]) == 600
    # a folder with only the test split, decrypted over the earlier tree
    only_test = copy_folder(src, tmp_path / "t")
    edit_manifest(only_test, lambda m: m["splits"].pop("train"))
    for f in only_test.glob("train-*.tar"):
        f.unlink()
    assert ppdata("decrypt", only_test, "--keys", ks, "--out", out, "--format", "png", "--overwrite").exit_code == 0
    pngs = [f for f in snapshot(out) if f.endswith(".png")]
    assert len(pngs) == 100 and all(f.startswith("test/") for f in pngs)
    assert not (out / "train").exists()


def test_interrupted_run_cleans_only_what_its_journal_claims(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(out) as folder:
            (p,) = folder.claim("train-000000.tar.part")
            p.write_bytes(b"partial")
            os.kill(os.getpid(), 0)
            # a kill -9 would leave the journal: simulate it by not letting __exit__ clean up
            folder._claimed.clear()
            raise KeyboardInterrupt
    # __exit__ removed nothing claimed (we cleared its memory) but the journal on disk was removed too;
    # rebuild a killed run's state by hand: journal + claimed file + a user's file
    out.mkdir(exist_ok=True)
    (out / ".ppdata-incomplete").write_text(json.dumps({"run": "x", "pid": 1}) + "\n"
                                            + json.dumps({"claim": "train-000000.tar.part"}) + "\n")
    (out / "train-000000.tar.part").write_bytes(b"partial")
    assert ppdata("encrypt", "sample", "--out", out).exit_code == 0  # an interrupted run: starts again
    assert sorted(os.listdir(out)) == ["manifest.json", "test-000000.tar", "train-000000.tar"]
    # the same, but with a file the journal does not claim: refused, nothing deleted
    (out / "manifest.json").unlink()
    (out / ".ppdata-incomplete").write_text(json.dumps({"run": "y", "pid": 1}) + "\n")
    (out / "keep.jpg").write_bytes(b"user")
    r = ppdata("encrypt", "sample", "--out", out)
    assert r.exit_code == 1 and "keep.jpg" in r.output and (out / "keep.jpg").exists()


@SETTINGS
@given(names=st.lists(st.sampled_from(LOOKALIKES + ["manifest.json.part", "train-000000.tar", "x.h5", "sub/a.png",
                                                    ".ppdata-incomplete", "test-000000.tar.part"]),
                      min_size=1, max_size=4, unique=True))
def test_generated_folder_contents_are_never_deleted(tmp_path_factory, names):
    """Whatever a folder holds that ppdata did not write survives every command, byte for byte."""
    out = tmp_path_factory.mktemp("gen") / "out"
    out.mkdir()
    for n in names:
        (out / n).parent.mkdir(parents=True, exist_ok=True)
        (out / n).write_bytes(b"user data " + n.encode())
    before = snapshot(out)
    r = ppdata("encrypt", "sample", "--out", out, "--overwrite", "--split", "test")
    if r.exit_code == 0:  # only possible if every entry was provably ppdata's (none is here but a
        pytest.fail(f"ppdata wrote over a folder holding user files: {sorted(before)}")
    after = snapshot(out)
    assert all(after.get(k) == v for k, v in before.items())


# ---------------------------------------------------------------------------------------------
# one writer per folder (an OS lock held for the whole run)


def test_second_writer_fails_at_once_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "ppdata", "encrypt", "sample", "--out", str(out)],
                           capture_output=True, text=True, cwd=REPO)
        assert p.returncode == 1 and "being written by another ppdata process" in p.stderr
        assert f"pid {os.getpid()}" in p.stderr
        assert time.perf_counter() - t < 30
        assert sorted(os.listdir(out)) == [".ppdata-incomplete"]  # the second touched nothing


def test_two_real_processes_racing_for_one_folder(tmp_path):
    """Two encrypt runs into one --out, started close together: one wins, the other fails with a
    clear message, and the folder verifies."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ppdata", "-q", "encrypt", "folder", str(REPO / "ppdata" / "data" / "sample.tar.gz"),
           "--out", str(out), "--batch-size", "16"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(0.8)
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 1
    assert "being written by another ppdata process" in second.stderr or "not empty" in second.stderr
    assert ppdata("info", out, "--verify").exit_code == 0


# ---------------------------------------------------------------------------------------------
# names: one safe alphabet; every path resolves inside its folder


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_any_split_name_is_safe_or_refused(name):
    try:
        check_split(name)
    except PpdataError:
        return
    assert "/" not in name and "." not in name and "_" not in name and name.isascii() and name.isalnum()


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_class_or_file_name_stays_inside_its_folder(tmp_path_factory, name):
    folder = Path("/tmp/ppdata-names-root")
    try:
        check_class(name)
    except PpdataError:
        pass
    else:
        assert "/" not in name and name not in (".", "..") and not name.startswith(".")
    try:
        p = inside(folder, name)
    except PpdataError:
        return
    assert p.parent == folder


HOSTILE = ["../../../X", "/etc/passwd", "..", ".", "a/b", "a\\b", "", "x\0y", ".hidden", " sp"]


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_class_names_in_a_manifest_are_refused(tmp_path, enc, bad):
    src, ks = enc
    d = copy_folder(src, tmp_path / "in")
    edit_manifest(d, lambda m: m["classes"].__setitem__(0, bad))
    parent = snapshot(tmp_path)
    r = ppdata("decrypt", d, "--keys", ks, "--out", tmp_path / "o" / "png", "--format", "png")
    assert r.exit_code == 1 and "class" in r.output
    assert snapshot(tmp_path) == parent  # nothing written anywhere


@pytest.mark.parametrize("bad", ["../stolen.tar", "/etc/passwd", "test-000000.tar/../../x", "Test-000000.tar",
                                 "test-000001.tar", "test.h5", "manifest.json"])
def test_hostile_shard_names_in_a_manifest_are_refused_by_every_consumer(tmp_path, enc, bad):
    src, ks = enc
    d = copy_folder(src, tmp_path / "in")
    (tmp_path / "stolen.tar").write_bytes((d / "test-000000.tar").read_bytes())
    edit_manifest(d, lambda m: m["splits"]["test"]["shards"][0].__setitem__("name", bad))
    before = set(os.listdir(tmp_path))
    for args in (["info", d, "--verify"], ["augment", d, "--out", tmp_path / "aug"],
                 ["decrypt", d, "--keys", ks, "--out", tmp_path / "dec"], ["preview", d, "-o", tmp_path / "g.png"]):
        r = ppdata(*args)
        assert r.exit_code == 1 and "shard" in r.output, (args, r.output)
    with pytest.raises(PpdataError):
        open_shards(d, "test")
    assert set(os.listdir(tmp_path)) == before  # no link, no output outside (or at) --out


@pytest.mark.parametrize("split", ["../X", "my_split", "v1.2", "a/b", "", "train-1"])
def test_split_option_is_validated_before_anything_is_written(tmp_path, split):
    r = ppdata("encrypt", "sample", "--out", tmp_path / "o", "--split", split)
    assert r.exit_code == 2 and "split" in r.output
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args", [["encrypt", "folder", ""], ["encrypt", "sample", "--out", ""], ["info", ""],
                                  ["augment", "", "--out", "x"]])
def test_empty_paths_are_errors_not_the_current_folder(tmp_path, args, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = ppdata(*args)
    assert r.exit_code != 0 and "empty path" in r.output
    assert os.listdir(tmp_path) == []


@st.composite
def mutated_manifests(draw):
    """A valid manifest with one field replaced by a hostile or malformed value."""
    field = draw(st.sampled_from(["format", "shape", "classes", "splits", "split_name", "count", "shard_name",
                                  "shard_count", "sha256", "bytes", "augment"]))
    junk = draw(st.one_of(st.none(), st.integers(-5, 10**12), st.text(max_size=12), st.sampled_from(HOSTILE),
                          st.lists(st.integers(-3, 70000), max_size=4), st.dictionaries(st.text(max_size=4),
                                                                                        st.integers(), max_size=2)))
    return field, junk


@SETTINGS
@given(mutated_manifests())
def test_generated_hostile_manifests_fail_cleanly_or_read_exactly(tmp_path_factory, enc, mutation):
    src, _ = enc
    d = copy_folder(src, tmp_path_factory.mktemp("m") / "in")
    field, junk = mutation

    def mutate(m):
        test = m["splits"]["test"]
        if field in ("format", "shape", "classes", "splits", "augment"):
            m[field] = junk
        elif field == "split_name":
            m["splits"] = {junk if isinstance(junk, str) else str(junk): test}
        elif field == "count":
            test["count"] = junk
        else:
            test["shards"][0][{"shard_name": "name", "shard_count": "count"}.get(field, field)] = junk

    edit_manifest(d, mutate)
    try:
        m = read_manifest(d)
        for sp in m["splits"]:
            s = open_shards(d, sp).load()
            assert len(s) == m["splits"][sp]["count"]  # exactly what the manifest says, or an error
    except PpdataError as e:
        assert str(e)


# ---------------------------------------------------------------------------------------------
# trust nothing that was read: archives to their end, shards against their manifest


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_archive_at_random_points_is_an_error(tmp_path, cifar_test_slice, compress):
    """Any cut that loses data or the end-of-archive marker is an error; a cut inside the record
    padding after the marker loses nothing and reads all 200 images."""
    data = cifar_test_slice.read_bytes()
    with tarfile.open(cifar_test_slice) as tf:
        last = tf.getmembers()[-1]
    complete = last.offset_data + -(-last.size // 512) * 512 + 1024  # data, then two zero blocks
    if compress:
        data = _gz(data)
    rng = np.random.default_rng(0)
    cuts = set(rng.integers(1, len(data) - 1, 10).tolist()) | {len(data) // 2, len(data) - 1}
    if not compress:
        cuts |= {complete - 512, complete - 1, complete, last.offset_data}
    for cut in sorted(cuts):
        p = tmp_path / ("cut.tar.gz" if compress else "cut.tar")
        p.write_bytes(data[:cut])
        if not compress and cut >= complete:
            src = FolderSource(p)
            assert sum(len(b) for b in src.batches("test")) == 200 and not src.skipped
            continue
        with pytest.raises(PpdataError, match="archive|truncated|ends"):
            src = FolderSource(p)
            sum(len(b) for b in src.batches("test"))
        r = ppdata("encrypt", "folder", p, "--out", tmp_path / f"o{cut}")
        assert r.exit_code == 1 and str(p) in r.output, r.output
        assert not (tmp_path / f"o{cut}").exists()


def test_the_real_cifar_test_archive_cut_in_half_is_an_error(tmp_path, shared_data):
    """The case a user hit: the real 10,000-image test archive cut in half gave 5,141 images."""
    data = (shared_data / "cifar10-jpeg" / "test.tar.gz").read_bytes()
    p = tmp_path / "test.tar.gz"
    p.write_bytes(data[: len(data) // 2])
    r = ppdata("encrypt", "folder", p, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "truncated" in r.output and not (tmp_path / "o").exists()


def _tar(members: list[tuple[str, bytes | None]], link_to: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.LNKTYPE, link_to
            else:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("compress", [False, True])
def test_repeated_and_link_members_are_counted_skips_never_two_samples(tmp_path, compress):
    members = [("a/0.png", _png(10)), ("a/1.png", _png(20)), ("b/2.png", _png(30)),
               ("a/0.png", _png(40)),            # tar -r: a newer copy of a/0.png
               ("b/3.png", None)]                 # a hard link to a/1.png
    data = _tar(members, link_to="a/1.png")
    p = tmp_path / ("x.tar.gz" if compress else "x.tar")
    p.write_bytes(_gz(data) if compress else data)
    src = FolderSource(p)
    got = {int(i): (int(img[0, 0, 0]), int(lab)) for b in src.batches("train") for i, img, lab in
           zip(b.index, b.images, b.labels)}
    # indices in archive order; the earlier copy of a/0.png (index 0) and the link (4) are skipped
    assert got == {1: (20, 0), 2: (30, 1), 3: (40, 0)}
    reasons = {s.index: s.reason for s in src.skipped}
    assert set(reasons) == {0, 4} and "superseded" in reasons[0] and "hard link" in reasons[4]


def test_member_names_leaving_the_tree_refuse_the_archive(tmp_path):
    p = tmp_path / "evil.tar"
    p.write_bytes(_tar([("a/0.png", _png(1)), ("a/../../x.png", _png(2))]))
    with pytest.raises(PpdataError, match="leaves the archive"):
        FolderSource(p)


def _damage(folder: Path, how: str) -> None:
    shard = folder / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    if how == "flip":
        data[5000] ^= 0xFF  # inside an image: only the hash sees it
    elif how == "flip-header":
        data[5 * 5120 + 10] ^= 0x01  # a member name inside a later record's header
    elif how == "cut-at-record":
        data = data[: 20 * 5120] + bytes(1024)
    elif how == "count":
        edit_manifest(folder, lambda m: m["splits"]["train"]["shards"][1].__setitem__("count", 41)
                      or m["splits"]["train"].__setitem__("count", 501))
        return
    elif how == "extra":
        data = data[:-1024] + data[:5120] + bytes(1024)
    shard.write_bytes(bytes(data))


DAMAGE = ["flip", "flip-header", "cut-at-record", "count", "extra"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_shards_are_errors_for_every_consumer(tmp_path, enc, how):
    src, ks = enc
    d = copy_folder(src, tmp_path / "in")
    _damage(d, how)
    consumers = {
        "info": ["info", d, "--verify"],
        "decrypt": ["decrypt", d, "--keys", ks, "--out", tmp_path / "dec"],
        "decrypt-png": ["decrypt", d, "--keys", ks, "--out", tmp_path / "png", "--format", "png"],
        "augment": ["augment", d, "--out", tmp_path / "aug"],
    }
    for name, args in consumers.items():
        r = ppdata(*args)
        assert r.exit_code == 1 and "train-000001.tar" in r.output, (name, r.output)
    for out in ("dec", "png", "aug"):
        assert not (tmp_path / out).exists()  # no output, not even a partial one
    with pytest.raises(PpdataError, match="train-000001.tar"):
        open_shards(d, "train").load()


def test_decrypt_output_manifest_counts_what_was_written(tmp_path, enc):
    src, ks = enc
    assert ppdata("decrypt", src, "--keys", ks, "--out", tmp_path / "d").exit_code == 0
    m = read_manifest(tmp_path / "d")
    assert m["splits"]["train"]["count"] == 500 and len(open_shards(tmp_path / "d", "train").load()) == 500
    assert ppdata("info", tmp_path / "d", "--verify").exit_code == 0


def test_preview_and_head_never_silently_use_fewer_images(tmp_path, enc):
    src, _ = enc
    d = copy_folder(src, tmp_path / "in")
    edit_manifest(d, lambda m: (m["splits"]["test"]["shards"][0].__setitem__("count", 45),
                                m["splits"]["test"].__setitem__("count", 105)))
    r = ppdata("preview", d, "-o", tmp_path / "g.png", "--split", "test", "-n", "8")
    assert r.exit_code == 1 and "test-000000.tar" in r.output


def test_truncated_hdf5_is_one_line_naming_the_file(tmp_path):
    out = tmp_path / "h"
    assert ppdata("encrypt", "sample", "--out", out, "--format", "hdf5").exit_code == 0
    h5 = out / "train.h5"
    h5.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    for verify in (True, False):
        with pytest.raises(PpdataError, match="train.h5"):
            open_shards(out, "train", verify=verify).load()
    r = ppdata("info", out, "--verify")
    assert r.exit_code == 1 and "train.h5" in r.output and "Traceback" not in r.output


def test_manifest_without_key_id_refuses_to_decrypt(tmp_path, enc):
    src, ks = enc
    d = copy_folder(src, tmp_path / "in")
    edit_manifest(d, lambda m: m["keys"].pop("key_id"))
    r = ppdata("decrypt", d, "--keys", ks, "--out", tmp_path / "o")
    assert r.exit_code == 1 and "no key id" in r.output and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# images: bombs, orientation, messages


def test_decompression_bomb_is_a_counted_skip_naming_the_limit(tmp_path):
    d = tmp_path / "src" / "a"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "ok.png")
    Image.new("L", (3000, 3000)).save(d / "big.png")  # small file, 9 Mpixel
    src = FolderSource(tmp_path / "src", max_pixels=1_000_000, resize=(8, 8))
    n = sum(len(b) for b in src.batches("train"))
    assert n == 1 and len(src.skipped) == 1
    assert "3000x3000" in src.skipped[0].reason and "1,000,000" in src.skipped[0].reason
    r = ppdata("encrypt", "folder", tmp_path / "src", "--max-pixels", "1000000", "--resize", "8x8",
               "--out", tmp_path / "o")
    assert r.exit_code == 0 and read_manifest(tmp_path / "o")["splits"]["train"]["skipped"]["count"] == 1


def test_exif_orientation_is_applied(tmp_path):
    d = tmp_path / "src" / "a"
    d.mkdir(parents=True)
    img = np.zeros((4, 8, 3), np.uint8)
    img[:, :4] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(img).save(d / "r.png", exif=exif)
    (b,) = FolderSource(tmp_path / "src").batches("train")
    shown = b.images[0]
    assert shown.shape == (8, 4, 3)  # displayed upright: portrait
    assert shown[:4].mean() == 255 and shown[4:].mean() == 0  # the white half is now on top


def test_unreadable_image_reasons_show_no_internals(tmp_path):
    d = tmp_path / "src" / "a"
    d.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "ok.png")
    (d / "junk.jpg").write_bytes(b"not an image at all")
    p = tmp_path / "x.tar"
    with tarfile.open(p, "w") as tf:
        tf.add(tmp_path / "src", arcname="src")
    for path in (tmp_path / "src", p):
        src = FolderSource(path)
        list(src.batches("train"))
        (s,) = src.skipped
        assert "object at 0x" not in s.reason and "BytesIO" not in s.reason and s.reason
