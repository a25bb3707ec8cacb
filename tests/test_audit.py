"""ppdata audit on every scheme and key mode, and the layering of the audit command."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from ppdata.cli import cli

SCHEMES = [("pixel", ["--cs"]), ("pixel", []), ("icip", ["--cs"]), ("etc", []), ("le", []), ("chaos", [])]


def _run(args):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)


def _encrypt(tmp_path, scheme, opts, mode, name="v"):
    out = tmp_path / name
    keys = ["--keys", "same", "--key-file", str(tmp_path / f"{name}.key")] if mode == "same" else []
    r = _run(["encrypt", "sample", "--split", "test", "--scheme", scheme, *opts, *keys, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("mode", ["independent", "same"])
@pytest.mark.parametrize("scheme,opts", SCHEMES)
def test_audit_runs_on_every_scheme_and_key_mode(tmp_path, scheme, opts, mode):
    shards = _encrypt(tmp_path, scheme, opts, mode)
    report = tmp_path / "r"
    r = _run(["audit", str(shards), "--plain", "sample", "--limit", "40", "--attacker-images", "40",
              "--jigsaw-images", "2", "--out", str(report)])
    assert r.exit_code == 0, r.output
    rec = json.loads((report / "metrics.json").read_text())
    att = rec["attacks"]
    assert rec["key_mode"] == mode and rec["scheme"]["name"] == scheme
    enc = att["encrypted"]["summary"]["ssim"]["mean"]
    assert enc < 0.2
    if mode == "same":
        kpa = att["known-plaintext"]["summary"]
        assert kpa["n"] == 39  # the first image is the known pair
        assert kpa["ssim"]["mean"] > 0.999 if opts != ["--cs"] else kpa["ssim"]["mean"] > 0.98
    if scheme in ("pixel", "icip"):
        # the fold needs neither key nor choice; the choice made from 40 of the attacker's images can be
        # worse than none (a fixed transform fitted to them), never better than the oracle's
        assert att["fold-raw"]["summary"]["ssim"]["mean"] > enc + 0.2
        assert att["fold (oracle)"]["summary"]["ssim"]["mean"] >= att["fold (chosen)"]["summary"]["ssim"]["mean"] - 1e-9
    if scheme == "le":
        assert att["le-components (oracle)"]["summary"]["ssim"]["mean"] > enc + 0.3
    if scheme == "etc":
        assert att["jigsaw (oracle)"]["images"] == (40 if mode == "same" else 2)
    # the verdict never rests on an oracle row
    strongest = rec["verdict"]["strongest"]
    if strongest is not None:
        assert not att[strongest["attack"]]["oracle"]
    text = (report / "report.md").read_text()
    assert "## Verdict" in text and "| encrypted |" in text
    if any(a["oracle"] for a in att.values()):
        assert "(upper bound)" in text
    assert (report / "grid.png").stat().st_size > 0


def test_audit_cross_fits_without_attacker_images_and_keeps_reports(scenes_test_slice, tmp_path):
    shards, report = tmp_path / "v", tmp_path / "report"
    r = _run(["encrypt", "folder", str(scenes_test_slice), "--split", "test", "--cs", "--out", str(shards)])
    assert r.exit_code == 0, r.output
    r = _run(["audit", str(shards), "--plain", "folder", str(scenes_test_slice), "--out", str(report)])
    assert r.exit_code == 0, r.output
    rec = json.loads((report / "metrics.json").read_text())
    assert rec["images"] == 48 and "cross-fitted" in rec["attacker_images"]
    att = rec["attacks"]
    # measured on this slice: fold about 0.55 (oracle), neighbour about 0.33
    assert att["fold (oracle)"]["summary"]["ssim"]["mean"] > att["encrypted"]["summary"]["ssim"]["mean"] + 0.3
    assert att["fold-raw"]["summary"]["ssim"]["mean"] > 0.3
    assert len(rec["per_image"]["fold (chosen)"]["ssim"]) == 48
    r = _run(["audit", str(shards), "--plain", "folder", str(scenes_test_slice), "--out", str(report)])
    assert r.exit_code == 1 and "--overwrite" in r.output


def test_audit_refuses_plain_shards_and_wrong_sources(tmp_path):
    plain = tmp_path / "p"
    assert _run(["encrypt", "sample", "--plain", "--split", "test", "--out", str(plain)]).exit_code == 0
    r = _run(["audit", str(plain), "--plain", "sample", "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "nothing to attack" in r.output
    enc = tmp_path / "e"
    assert _run(["encrypt", "sample", "--split", "test", "--out", str(enc)]).exit_code == 0
    r = _run(["audit", str(enc), "--plain", "folder", "--out", str(tmp_path / "r2")])
    assert r.exit_code == 1 and "PATH" in r.output


@pytest.mark.slow
def test_audit_learned_on_the_sample(tmp_path):
    enc = _encrypt(tmp_path, "pixel", ["--cs"], "independent")
    r = _run(["audit", str(enc), "--plain", "sample", "--learned", "--epochs", "1", "--budget", "0.1",
              "--attacker-images", "40", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert {"coa-1x1", "candidates"} <= set(rec["attacks"])
    assert rec["attacks"]["candidates"]["images"] == 100
    assert rec["learned"]["candidates"]["output"] in ("argmax", "mean")
    assert "train split" in rec["learned"]["training_data"]


@pytest.mark.slow
def test_audit_learned_on_another_scheme(tmp_path):
    enc = _encrypt(tmp_path, "chaos", [], "independent")
    r = _run(["audit", str(enc), "--plain", "sample", "--learned", "--epochs", "1", "--budget", "0.05",
              "--limit", "40", "--attacker-images", "40", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert {"coa-1x1", "unet"} <= set(rec["attacks"])


def test_core_cli_imports_neither_attack_nor_torch():
    code = ("import sys, ppdata.cli, ppdata.cipher, ppdata.shards, ppdata.sources, ppdata.keys; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'attack', 'train', 'torch', 'skimage'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_audit_names_the_extra_when_the_attack_package_is_missing(tmp_path, monkeypatch):
    enc = _encrypt(tmp_path, "pixel", [], "independent")
    monkeypatch.setitem(sys.modules, "attack.audit", None)  # import fails as if not installed
    r = _run(["audit", str(enc), "--plain", "sample", "--out", str(tmp_path / "r")])
    assert r.exit_code == 1
    assert "pip install 'ppdata[attack]'" in r.output and len(r.output.strip().splitlines()) == 1


def test_audit_accepts_several_plain_paths(tmp_path, slice_archive, shared_data):
    """Train and test archives together: the train split becomes the attacker's own images."""
    data = shared_data / "scenes96"
    train = slice_archive(data / "train.tar.gz", tmp_path / "train.tar", 4)
    test = slice_archive(data / "test.tar.gz", tmp_path / "test.tar", 4)
    shards = tmp_path / "v"
    r = _run(["encrypt", "folder", str(test), "--split", "test", "--out", str(shards)])
    assert r.exit_code == 0, r.output
    r = _run(["audit", str(shards), "--plain", "folder", str(train), str(test), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "train split" in rec["attacker_images"] and rec["images"] == 24
    assert np.isfinite(rec["attacks"]["fold (chosen)"]["summary"]["ssim"]["mean"])
