"""The Ray engine against the local one: a local Ray with 2 CPUs, started and stopped here (after
the S3 server, so Ray's workers see it). Same secret, same sample key: the same ciphertext,
whichever engine made it; a failing worker is one clear error and leaves nothing complete."""
from __future__ import annotations

import gzip
import json
import logging
import shutil

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

from conftest import BUCKET  # noqa: E402
from ppdata.cli import cli  # noqa: E402
from ppdata.engines.raydata import read_webdataset, shard_urls  # noqa: E402
from ppdata.shards import read_manifest  # noqa: E402
from ppdata.sources import sample_archive  # noqa: E402
from test_remote import _samples, _tar_bytes, _tree  # noqa: E402


@pytest.fixture(scope="module")
def local_ray(s3):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def ppdata(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def sample_tar(tmp_path_factory):
    """The embedded sample as an uncompressed tar (Ray tasks read members by offset)."""
    p = tmp_path_factory.mktemp("sample") / "sample.tar"
    with gzip.open(sample_archive()) as f, open(p, "wb") as out:
        shutil.copyfileobj(f, out)
    return p


def test_ray_engine_writes_the_local_engines_shards(local_ray, sample_tar, tmp_path):
    """No skipped image: byte-identical shards, one task per shard, two workers."""
    common = ["--cs", "--seed", "5", "--shard-size", "128"]
    assert ppdata("encrypt", "folder", sample_tar, "--out", tmp_path / "local", *common).exit_code == 0
    r = ppdata("encrypt", "folder", sample_tar, "--out", tmp_path / "ray", *common, "--engine", "ray", "--workers", 2)
    assert r.exit_code == 0, r.output
    a, b = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    for sp in ("train", "test"):
        assert [s["sha256"] for s in a["splits"][sp]["shards"]] == [s["sha256"] for s in b["splits"][sp]["shards"]]
    assert b["engine"]["name"] == "ray" and b["keys"]["key_id"] == a["keys"]["key_id"]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(p.name for p in (tmp_path / "local").iterdir())
    # Ray Data reads the shards through the manifest's list (manifest.json never reaches it)
    assert len(shard_urls(tmp_path / "ray", "train")) == 4
    ds = read_webdataset(tmp_path / "ray", "train")
    assert ds.count() == 500


def test_same_sample_for_every_key_with_skips_resize_and_s3(local_ray, s3, tmp_path):
    """Mixed sizes at any depth, --resize S --crop HxW, an unreadable image: the Ray engine
    writing to s3:// from a tree on S3 gives the local engine's sample for every key."""
    tree = _tree(tmp_path / "tree", n=5)
    (tmp_path / "tree" / "train" / "cat" / "9.jpg").write_bytes(b"\xff\xd8 broken")
    from test_remote import _upload_tree

    _upload_tree(s3, tree, "ray-photos")
    common = ["--resize", "40", "--crop", "32x36", "--seed", "11", "--shard-size", "4"]
    assert ppdata("encrypt", "folder", tree, "--out", tmp_path / "local", *common).exit_code == 0
    url = f"s3://{BUCKET}/ray-out"
    r = ppdata("encrypt", "folder", f"s3://{BUCKET}/ray-photos", "--out", url, *common, "--engine", "ray")
    assert r.exit_code == 0, r.output
    want, got = _samples(tmp_path / "local"), _samples(url)
    assert got == want and len(got) == 10
    m = json.loads(s3.cat(f"{BUCKET}/ray-out/manifest.json"))
    local = read_manifest(tmp_path / "local")
    assert m["splits"]["train"]["skipped"]["count"] == 1
    assert m["splits"]["train"]["skipped"]["files"] == local["splits"]["train"]["skipped"]["files"]
    assert m["splits"]["train"]["skipped"]["files"][0]["path"] == "train/cat/9.jpg"
    assert sorted(p.rsplit("/", 1)[1] for p in s3.ls(f"{BUCKET}/ray-out"))[0] == "manifest.json"


def test_a_failing_worker_is_one_clear_error_and_nothing_complete(local_ray, tmp_path):
    tree = _tree(tmp_path / "tree", n=4, sizes=((32, 32),))
    (tmp_path / "tree" / "train" / "dog" / "bad.jpg").write_bytes(b"not an image")
    tar = tmp_path / "t.tar"
    tar.write_bytes(_tar_bytes(tree))
    r = ppdata("encrypt", "folder", tar, "--strict", "--out", tmp_path / "o", "--engine", "ray", "--shard-size", "3")
    assert r.exit_code == 1
    assert "Ray worker failed" in r.output and "bad.jpg" in r.output
    assert not (tmp_path / "o").exists()  # every shard a task finished was removed with the journal
    r = ppdata("encrypt", "folder", tmp_path / "t.tar.gz", "--out", tmp_path / "o", "--engine", "ray")
    assert r.exit_code == 1
    gz = tmp_path / "t.tar.gz"
    gz.write_bytes(gzip.compress(tar.read_bytes()))
    r = ppdata("encrypt", "folder", gz, "--out", tmp_path / "o", "--engine", "ray")
    assert r.exit_code == 1 and "compressed archive" in r.output


def test_ray_augment_writes_the_local_expansion(local_ray, sample_tar, tmp_path):
    assert ppdata("encrypt", "folder", sample_tar, "--cs", "--out", tmp_path / "s", "--shard-size", "150").exit_code == 0
    assert ppdata("augment", tmp_path / "s", "--out", tmp_path / "local", "--seed", "3").exit_code == 0
    r = ppdata("augment", tmp_path / "s", "--out", tmp_path / "ray", "--seed", "3", "--engine", "ray", "--workers", 2)
    assert r.exit_code == 0, r.output
    a, b = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == [s["sha256"] for s in b["splits"]["train"]["shards"]]
    assert [s["sha256"] for s in a["splits"]["test"]["shards"]] == [s["sha256"] for s in b["splits"]["test"]["shards"]]
    assert b["augment"]["order"]["uniform"] and b["splits"]["train"]["count"] == 4000
    # in place, as the local engine does it: split trainx8 added, the rest untouched
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir() if p.name != "manifest.json"}
    r = ppdata("augment", tmp_path / "s", "--seed", "3", "--engine", "ray")
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "s")
    assert m["splits"]["trainx8"]["count"] == 4000
    assert all((tmp_path / "s" / n).read_bytes() == d for n, d in before.items())
    # a damaged input shard stops the expansion before anything is written
    shard = tmp_path / "s" / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[7000] ^= 1
    shard.write_bytes(bytes(data))
    r = ppdata("augment", tmp_path / "s", "--out", tmp_path / "bad", "--engine", "ray")
    assert r.exit_code == 1 and "sha256" in r.output and not (tmp_path / "bad").exists()


def test_missing_ray_is_named_in_one_line(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when it is not installed
    r = ppdata("encrypt", "sample", "--engine", "ray", "--out", tmp_path / "o")
    assert r.exit_code == 1 and "pip install 'ppdata[ray]'" in r.output and len(r.output.strip().splitlines()) == 1
    r = ppdata("augment", tmp_path, "--engine", "ray")
    assert r.exit_code == 1 and "pip install 'ppdata[ray]'" in r.output
    assert not (tmp_path / "o").exists()
