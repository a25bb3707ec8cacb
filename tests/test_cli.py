"""The ppdata command through click's test runner: the user's view, exit codes, messages."""
import json
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ppdata import __version__, open_shards
from ppdata.cli import cli
from ppdata.sources import FolderSource, SampleSource


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(cli, ["-q", *map(str, args)], catch_exceptions=False)


def test_version_and_help(runner):
    r = runner.invoke(cli, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    for cmd in ("encrypt", "decrypt", "info", "preview"):
        r = runner.invoke(cli, [cmd, "--help"])
        assert r.exit_code == 0 and "Example" in r.output and "ppdata " + cmd in r.output


def test_encrypt_info_preview_decrypt_sample(runner, tmp_path):
    out, ks = tmp_path / "s", tmp_path / "keys.json"
    r = invoke(runner, "encrypt", "sample", "--cs", "--out", out, "--keep-keys", ks)
    assert r.exit_code == 0, r.output
    assert "train 500, test 100" in r.output
    assert stat.S_IMODE(os.stat(ks).st_mode) == 0o600
    r = invoke(runner, "info", out, "--verify")
    assert r.exit_code == 0 and "verify    ok" in r.output and "pixel (np=True, cs=True)" in r.output
    r = invoke(runner, "preview", out, "-o", tmp_path / "g.png", "--plain", "sample", "-n", "8")
    assert r.exit_code == 0, r.output
    sheet = np.asarray(Image.open(tmp_path / "g.png"))
    assert sheet.shape[0] > 96 and sheet.shape[2] == 3
    r = invoke(runner, "decrypt", out, "--keys", ks, "--out", tmp_path / "png", "--format", "png")
    assert r.exit_code == 0, r.output
    # the decrypted PNG tree is an ImageFolder that reads back to the original pixels
    back = FolderSource(tmp_path / "png")
    assert back.splits() == ["train", "test"] and back.classes == SampleSource().classes
    got = {}
    for b in back.batches("test"):
        got.update({int(i): img for i, img in zip(b.index, b.images)})
    orig = np.concatenate([b.images for b in SampleSource().batches("test")])
    # files are named by sample key, so sorted order within a class is source order
    labels = np.concatenate([b.labels for b in SampleSource().batches("test")])
    assert sorted(map(bytes, got.values())) == sorted(map(bytes, orig))
    assert len(labels) == 100


def test_same_key_mode_with_key_file(runner, tmp_path):
    kf = tmp_path / "k.json"
    r = invoke(runner, "encrypt", "sample", "--split", "test", "--keys", "same", "--key-file", kf, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert json.loads(kf.read_text())["mode"] == "same"
    r = invoke(runner, "encrypt", "sample", "--split", "test", "--keys", "same", "--key-file", kf, "--out", tmp_path / "b")
    assert r.exit_code == 0
    a = open_shards(tmp_path / "a", "test").load().images
    b = open_shards(tmp_path / "b", "test").load().images
    np.testing.assert_array_equal(a, b)  # the key file is reused
    # one key for every image: the NP mask is identical, so e XOR e' equals x XOR x'
    x = np.concatenate([bb.images for bb in SampleSource().batches("test")])
    np.testing.assert_array_equal(a[0] ^ a[1], x[0] ^ x[1])
    r = invoke(runner, "decrypt", tmp_path / "a", "--keys", kf, "--out", tmp_path / "d")
    assert r.exit_code == 0
    np.testing.assert_array_equal(open_shards(tmp_path / "d", "test").load().images, x)


def test_hdf5_and_plain(runner, tmp_path):
    r = invoke(runner, "encrypt", "sample", "--plain", "--format", "hdf5", "--out", tmp_path / "p")
    assert r.exit_code == 0, r.output
    p = open_shards(tmp_path / "p", "test")
    assert p.format == "hdf5" and p.scheme["name"] == "plain" and p.key_mode is None
    np.testing.assert_array_equal(p.load().images, np.concatenate([b.images for b in SampleSource().batches("test")]))


def test_seed_is_reproducible_and_flagged(runner, tmp_path):
    for name in ("a", "b"):
        r = runner.invoke(cli, ["encrypt", "sample", "--split", "test", "--seed", "7", "--out", str(tmp_path / name)])
        assert r.exit_code == 0
        assert "NOT private" in r.output  # stderr is mixed into output by the runner
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert ma["keys"]["seeded"] is True and set(ma["keys"]) == {"mode", "key_id", "seeded", "derivation"}  # never the seed
    assert (tmp_path / "a" / "test-000000.tar").read_bytes() == (tmp_path / "b" / "test-000000.tar").read_bytes()
    r = invoke(runner, "info", tmp_path / "a")
    assert "SEEDED: not private" in r.output


def test_runtime_errors_exit_1_with_one_line(runner, tmp_path):
    invoke(runner, "encrypt", "sample", "--split", "test", "--out", tmp_path / "s")
    cases = [
        (["encrypt", "sample", "--out", tmp_path / "s"], "not empty"),
        (["encrypt", "sample", "--out", tmp_path / "t", "--keep-keys", tmp_path / "t" / "k.json"], "inside the output"),
        (["encrypt", "sample", "--out", tmp_path / "u", "--keep-keys", tmp_path / "nodir" / "k.json"], "not writable"),
        (["encrypt", "folder", tmp_path / "missing", "--out", tmp_path / "v"], "does not exist"),
        (["encrypt", "cifar10", "--no-download", "--root", tmp_path / "nodata", "--out", tmp_path / "w"],
         "--no-download"),
        (["encrypt", "sample", "--split", "val", "--out", tmp_path / "x"], "split 'val'"),
        (["info", tmp_path / "nothing"], "does not exist"),
        (["decrypt", tmp_path / "s", "--keys", tmp_path / "nokeys.json", "--out", tmp_path / "y"], "nokeys.json"),
    ]
    for args, msg in cases:
        r = runner.invoke(cli, ["-q", *map(str, args)])
        assert r.exit_code == 1, (args, r.output)
        assert msg in r.output, (args, r.output)
        assert r.output.strip().count("\n") == 0, r.output
    # nothing was created by the refused runs
    for name in ("t", "u", "w", "x"):
        assert not (tmp_path / name).exists()


def test_wrong_keystore_refused(runner, tmp_path):
    invoke(runner, "encrypt", "sample", "--split", "test", "--out", tmp_path / "a", "--keep-keys", tmp_path / "ka.json")
    invoke(runner, "encrypt", "sample", "--split", "test", "--out", tmp_path / "b", "--keep-keys", tmp_path / "kb.json")
    r = runner.invoke(cli, ["decrypt", str(tmp_path / "a"), "--keys", str(tmp_path / "kb.json"), "--out", str(tmp_path / "d")])
    assert r.exit_code == 1 and "does not belong" in r.output


def test_promised_first_command_writes_shards_and_downloads_by_default(runner, tmp_path, monkeypatch, fake_cifar10):
    """`ppdata encrypt cifar10 --keys independent --cs` (no --out): CIFAR-10 is downloaded (with a
    progress bar) into data/, the output goes to shards/; offline, one line says what to do."""
    monkeypatch.chdir(tmp_path)
    fake_cifar10["stop"]()  # offline first
    r = runner.invoke(cli, ["-q", "encrypt", "cifar10", "--keys", "independent", "--cs"])
    assert r.exit_code == 1
    assert "cannot download cifar10" in r.output and "--no-download" in r.output and "folder PATH" in r.output
    assert r.output.strip().count("\n") == 0 and not (tmp_path / "shards").exists()


def test_promised_first_command_online(runner, tmp_path, monkeypatch, fake_cifar10):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(cli, ["-q", "encrypt", "cifar10", "--keys", "independent", "--cs"])
    assert r.exit_code == 0, r.output
    assert fake_cifar10["served"] and (tmp_path / "data" / "cifar-10-batches-py").is_dir()
    ss = open_shards(tmp_path / "shards", "train")
    assert ss.scheme["cs"] and len(ss) == 20 and len(open_shards("shards", "test")) == 3


def test_usage_errors_exit_2(runner, tmp_path):
    cases = [
        ["encrypt", "imagenet", "--out", str(tmp_path / "a")],
        ["encrypt", "sample", "--keys", "same", "--out", str(tmp_path / "b")],  # no --key-file
        ["encrypt", "sample", "--plain", "--cs", "--out", str(tmp_path / "c")],
        ["encrypt", "sample", "--resize", "big", "--out", str(tmp_path / "d")],
        ["encrypt", "sample", "--shard-size", "0", "--out", str(tmp_path / "e")],
        ["encrypt", "sample", "--bogus"],
    ]
    for args in cases:
        r = runner.invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)


def test_info_verify_fails_on_tampering(runner, tmp_path):
    invoke(runner, "encrypt", "sample", "--split", "test", "--out", tmp_path / "s")
    shard = tmp_path / "s" / "test-000000.tar"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = runner.invoke(cli, ["info", str(tmp_path / "s"), "--verify"])
    assert r.exit_code == 1 and "MISMATCH" in r.output and "test-000000.tar" in r.output


@pytest.mark.slow
def test_real_cifar_slice_end_to_end(runner, tmp_path, cifar_test_slice):
    r = invoke(runner, "encrypt", "folder", cifar_test_slice, "--cs", "--out", tmp_path / "s",
               "--keep-keys", tmp_path / "k.json", "--shard-size", "64")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["splits"]["test"]["count"] == 200 and len(m["splits"]["test"]["shards"]) == 4
    assert m["source"] == {"name": "folder", "path": cifar_test_slice.name}
    r = invoke(runner, "decrypt", tmp_path / "s", "--keys", tmp_path / "k.json", "--out", tmp_path / "d")
    assert r.exit_code == 0
    orig = np.concatenate([b.images for b in FolderSource(cifar_test_slice).batches("test")])
    np.testing.assert_array_equal(open_shards(tmp_path / "d", "test").load().images, orig)
