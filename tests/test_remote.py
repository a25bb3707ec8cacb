"""Sources and output folders at URLs, against a real S3 API: moto in server mode, started on a
free port by a fixture and stopped after the module (no mock objects). The ownership rules of
an output folder carried over to object storage: lock, journal, create-only uploads, manifest
last, nothing deleted that ppdata did not write."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import BUCKET  # noqa: E402
from ppdata.cli import cli  # noqa: E402
from ppdata.errors import PpdataError  # noqa: E402
from ppdata.remote import RemoteFolder  # noqa: E402

def ppdata(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


def _tree(root, n=3, sizes=((40, 60), (50, 30), (33, 47))):
    """A small ImageFolder tree of mixed-size JPEGs at any depth: train/<class>/[sub/]<i>.jpg."""
    rng = np.random.default_rng(1)
    for c in ("cat", "dog"):
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            p = root / "train" / c / ("deep/er" if i % 2 else "") / f"{i}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, quality=92)
    return root


def _upload_tree(fs, local, prefix):
    for dirpath, _, files in os.walk(local):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), local)
            fs.put_file(os.path.join(dirpath, f), f"{BUCKET}/{prefix}/{rel}")


def _tar_bytes(root) -> bytes:
    """The tree as a tar whose member order is ImageFolder's order (classes, then each class
    folder walked with sorted folders and names): the same indices as the directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for c in sorted(os.listdir(root / "train")):
            for dirpath, _, files in sorted(os.walk(root / "train" / c)):
                for f in sorted(files):
                    full = os.path.join(dirpath, f)
                    tf.add(full, arcname=os.path.relpath(full, root))
    return buf.getvalue()


def _samples(folder_url_or_path, split="train") -> dict:
    """key -> (image bytes, label) of a split, read back through the shard files."""
    import ppdata.remote as remote
    from ppdata.engines.raydata import read_manifest_at, shard_urls
    from ppdata.shards.tar import parse_records, record_size

    m, _ = read_manifest_at(str(folder_url_or_path))
    shape = tuple(m["shape"])
    rec = record_size(shape)
    out = {}
    for url, s in zip(shard_urls(folder_url_or_path, split), m["splits"][split]["shards"]):
        data = remote.read_ref(remote_ref(url))
        assert len(data) == s["bytes"]
        samples = parse_records(np.frombuffer(data[: s["count"] * rec], np.uint8).reshape(-1, rec), shape, url)
        for k, img, lab in zip(samples.keys, samples.images, samples.labels):
            out[str(k)] = (img.tobytes(), int(lab))
    return out


def remote_ref(url):
    from ppdata.sources import Ref

    return Ref(url)


# ---------------------------------------------------------------------------------------------


def test_s3_directory_and_tar_sources_to_s3_out_match_local(s3, tmp_path):
    """A mixed-size tree at any depth, as an S3 prefix and as a plain tar on S3, encrypted with
    --resize S --crop HxW into s3:// gives the same samples as the local tree into a local folder."""
    tree = _tree(tmp_path / "tree")
    _upload_tree(s3, tree, "photos")
    s3.pipe(f"{BUCKET}/photos.tar", _tar_bytes(tree))
    common = ["--resize", "40", "--crop", "32x32", "--cs", "--seed", "3", "--shard-size", "4"]
    r = ppdata("encrypt", "folder", tree, "--out", tmp_path / "local", *common)
    assert r.exit_code == 0, r.output
    want = _samples(tmp_path / "local")
    assert len(want) == 6
    for src, out in ((f"s3://{BUCKET}/photos", f"s3://{BUCKET}/enc-dir"),
                     (f"s3://{BUCKET}/photos.tar", f"s3://{BUCKET}/enc-tar")):
        r = ppdata("encrypt", "folder", src, "--out", out, *common, "--workers", "2")
        assert r.exit_code == 0, r.output
        names = sorted(p.rsplit("/", 1)[1] for p in s3.ls(out.removeprefix("s3://")))
        assert names == ["manifest.json", "train-000000.tar", "train-000001.tar"]  # no lock, no journal left
        m = json.loads(s3.cat(f"{out.removeprefix('s3://')}/manifest.json"))
        assert m["decode"]["resize"] == 40 and m["decode"]["crop"] == [32, 32]
        assert _samples(out) == want  # every sample key: the same ciphertext


def test_http_archive_source_is_read(s3, tmp_path):
    tree = _tree(tmp_path / "tree")
    data = gzip.compress(_tar_bytes(tree), mtime=0)
    s3.pipe(f"{BUCKET}/public/photos.tar.gz", data, ACL="public-read")
    url = f"{s3.endpoint}/{BUCKET}/public/photos.tar.gz"
    r = ppdata("encrypt", "folder", url, "--resize", "24x24", "--plain", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["splits"]["train"]["count"] == 6 and m["source"]["path"] == "photos.tar.gz"
    r = ppdata("encrypt", "folder", tmp_path / "tree", "--resize", "24x24", "--plain", "--out", url)
    assert r.exit_code == 1 and "read-only" in r.output


def test_keystore_must_be_local(s3, tmp_path):
    r = ppdata("encrypt", "sample", "--out", f"s3://{BUCKET}/ks", "--keep-keys", f"s3://{BUCKET}/k.json")
    assert r.exit_code == 1 and "local file" in r.output
    assert not s3.exists(f"{BUCKET}/ks/manifest.json") and not s3.exists(f"{BUCKET}/k.json")


def test_foreign_objects_are_never_deleted_and_overwrite_replaces_only_ours(s3, tmp_path):
    out = f"s3://{BUCKET}/own"
    assert ppdata("encrypt", "sample", "--out", out, "--shard-size", "200").exit_code == 0
    before = set(s3.ls(f"{BUCKET}/own"))
    r = ppdata("encrypt", "sample", "--out", out)
    assert r.exit_code == 1 and "not empty" in r.output
    s3.pipe(f"{BUCKET}/own/notes.txt", b"mine")
    r = ppdata("encrypt", "sample", "--out", out, "--overwrite")
    assert r.exit_code == 1 and "notes.txt" in r.output and "did not write" in r.output
    assert set(s3.ls(f"{BUCKET}/own")) == before | {f"{BUCKET}/own/notes.txt"}
    s3.rm(f"{BUCKET}/own/notes.txt")
    r = ppdata("encrypt", "sample", "--out", out, "--overwrite", "--shard-size", "300")
    assert r.exit_code == 0, r.output
    names = sorted(p.rsplit("/", 1)[1] for p in s3.ls(f"{BUCKET}/own"))
    assert names == ["manifest.json", "test-000000.tar", "train-000000.tar", "train-000001.tar"]


def test_lock_one_writer_and_stale_lock_taken_over(s3, tmp_path):
    url = f"s3://{BUCKET}/locked"
    with RemoteFolder(url) as first:
        with pytest.raises(PpdataError, match="being written by another ppdata process"):
            RemoteFolder(url).__enter__()
        assert first.lost is None
    assert not s3.exists(f"{BUCKET}/locked/.ppdata-lock")
    # a run that died: its lock is not renewed; once stale, the next run takes over and cleans up
    s3.pipe(f"{BUCKET}/locked/.ppdata-lock", json.dumps({"run": "dead", "heartbeat": time.time() - 3600}).encode())
    s3.pipe(f"{BUCKET}/locked/.ppdata-incomplete",
            (json.dumps({"run": "dead"}) + "\n" + json.dumps({"claim": "train-000000.tar"}) + "\n").encode())
    s3.pipe(f"{BUCKET}/locked/train-000000.tar", b"half")
    r = ppdata("encrypt", "sample", "--out", url)
    assert r.exit_code == 0, r.output
    m = json.loads(s3.cat(f"{BUCKET}/locked/manifest.json"))
    assert m["splits"]["train"]["count"] == 500
    assert not s3.exists(f"{BUCKET}/locked/.ppdata-lock")


def test_failed_run_leaves_nothing_that_looks_complete(s3, tmp_path):
    """A run that fails half way (an unreadable image with --strict, after a shard was uploaded)
    removes its objects, journal and lock: the prefix is empty again."""
    tree = _tree(tmp_path / "tree", n=6, sizes=((32, 32),))
    (tmp_path / "tree" / "train" / "dog" / "5.jpg").write_bytes(b"not a jpeg")
    url = f"s3://{BUCKET}/failed"
    r = ppdata("encrypt", "folder", tree, "--out", url, "--strict", "--shard-size", "2", "--workers", "1")
    assert r.exit_code == 1 and "5.jpg" in r.output
    assert not s3.exists(f"{BUCKET}/failed") or s3.ls(f"{BUCKET}/failed") == []
    r = ppdata("encrypt", "folder", tree, "--out", url, "--shard-size", "2")
    assert r.exit_code == 0, r.output
    m = json.loads(s3.cat(f"{BUCKET}/failed/manifest.json"))
    assert m["splits"]["train"]["count"] == 12 and m["splits"]["train"]["skipped"]["count"] == 1  # 12 + the bad one
