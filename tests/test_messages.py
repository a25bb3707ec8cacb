"""What ppdata prints about hostile input: names with their control characters escaped, repeated
skip reasons summarised, options checked before any work, preview never replacing a file it did
not write, Ray start-up failures in one line."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ppdata.cli import cli


def run(*args, quiet=False):
    return CliRunner().invoke(cli, [*(["-q"] if quiet else []), *map(str, args)], catch_exceptions=False)


def _targz(path: Path, members: dict[str, bytes]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return path


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_names_from_archives_are_printed_with_control_characters_escaped(tmp_path):
    evil = "train/cat/\x1b]2;owned\x07\x1b[31mred\u202e.png"
    a = _targz(tmp_path / "a.tar.gz", {"train/cat/ok.png": _png(), evil: b"not an image"})
    r = run("encrypt", "folder", a, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\u202e" not in r.output
    assert "\\x1b[31mred\\u202e.png" in r.output
    r = run("encrypt", "folder", a, "--out", tmp_path / "p", "--strict")
    assert r.exit_code == 1 and "\x1b" not in r.output and "\\x1b" in r.output


def test_repeated_skip_reasons_are_summarised(tmp_path):
    """The reported case: an archive of 200,000 empty members printed 200,003 warning lines."""
    members = {"train/cat/ok.png": _png()} | {f"train/cat/{i:06d}.png": b"" for i in range(3000)}
    a = _targz(tmp_path / "a.tar.gz", members)
    r = run("encrypt", "folder", a, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("WARNING")]
    assert len(lines) <= 8, r.output
    assert "2,995 more skipped images" in r.output, r.output
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["splits"]["train"]["skipped"]["count"] == 3000  # every skip still counted


def test_keep_keys_at_a_dangling_link_is_refused_before_any_work(tmp_path, monkeypatch):
    """The reported case: refused only after all the encryption work, without naming the keystore."""
    import ppdata.sources

    def no_work(*a, **kw):
        raise AssertionError("the source was opened before --keep-keys was checked")

    monkeypatch.setattr(ppdata.sources, "open_source", no_work)
    ks = tmp_path / "keys.json"
    ks.symlink_to(tmp_path / "elsewhere" / "k.json")
    r = run("encrypt", "sample", "--out", tmp_path / "o", "--keep-keys", ks, quiet=True)
    assert r.exit_code == 1 and str(ks) in r.output and "symbolic link" in r.output, r.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "elsewhere").exists()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("s") / "s"
    assert run("encrypt", "sample", "--split", "test", "--out", d, quiet=True).exit_code == 0
    return d


def test_preview_replaces_only_a_sheet_it_wrote(tmp_path, shards):
    """The reported case: preview -o replaced an existing file ppdata did not write."""
    mine = tmp_path / "holiday.png"
    mine.write_bytes(_png(3))
    before = mine.read_bytes()
    r = run("preview", shards, "-o", mine, quiet=True)
    assert r.exit_code == 1 and "--overwrite" in r.output and mine.read_bytes() == before, r.output
    sheet = tmp_path / "sheet.png"
    assert run("preview", shards, "-o", sheet, "-n", "4", quiet=True).exit_code == 0
    assert run("preview", shards, "-o", sheet, "-n", "8", quiet=True).exit_code == 0  # its own sheet: replaced
    assert run("preview", shards, "-o", mine, "--overwrite", quiet=True).exit_code == 0
    assert mine.read_bytes() != before
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "target.png")
    r = run("preview", shards, "-o", link, "--overwrite", quiet=True)
    assert r.exit_code == 1 and not (tmp_path / "target.png").exists()


def test_preview_output_with_an_unknown_extension_is_a_usage_error(tmp_path, shards):
    """The reported case: ``preview -o notes.txt`` was a ValueError traceback."""
    r = run("preview", shards, "-o", tmp_path / "notes.txt", quiet=True)
    assert r.exit_code == 2 and ".png" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "notes.txt").exists()


def test_a_ray_start_up_failure_is_one_line(tmp_path, shards, monkeypatch):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")

    def failing_init(*a, **kw):
        raise RuntimeError("Traceback (most recent call last):\n  File \"ray/_private/worker.py\"\n"
                           "ConnectionError: could not reach the GCS at 10.0.0.1:6379")

    monkeypatch.setattr(ray, "init", failing_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    r = run("augment", shards, "--split", "test", "--engine", "ray", "--ray-address", "10.0.0.1:6379", "--out",
            tmp_path / "o", quiet=True)
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "10.0.0.1:6379" in lines[0] and "could not reach" in lines[0], r.output
