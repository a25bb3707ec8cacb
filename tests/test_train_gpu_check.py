"""scripts/gpu_check.py (``make gpu-check``): its tiny CPU run does every step and writes the report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory) -> Path:
    """train.tar.gz and test.tar.gz in CIFAR-10's layout, from the embedded sample's JPEGs."""
    d = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(REPO / "ppdata" / "data" / "sample.tar.gz") as src:
        members = [m for m in src.getmembers() if m.isfile()]
        for split in ("train", "test"):
            with tarfile.open(d / f"{split}.tar.gz", "w:gz") as out:
                for m in members:
                    if m.name.split("/")[0] == split:
                        out.addfile(m, src.extractfile(m))
    return d


def _run(args, timeout=400):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow  # every step starts torch in a new process: about a minute
def test_tiny_gpu_check_runs_every_step_and_writes_the_report(cifar_like, tmp_path):
    p = _run(["--tiny", "--data", str(cifar_like), "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")])
    assert p.returncode == 0, p.stderr[-3000:]
    (md,) = (tmp_path / "r").glob("gpu-*-tiny.md")
    rep = json.loads(md.with_suffix(".json").read_text())
    assert rep["tiny"] and rep["finished"] and rep["card"] is None and rep["machine"]
    st = rep["steps"]
    assert {k: v["status"] for k, v in st.items()} == {
        "prepare": "ok", "train-plain": "ok", "train-npcs-fold": "ok", "cpu-recipe": "ok", "ddp-smoke": "ok",
        "feed": "ok", "compile": "skipped"}
    assert st["prepare"]["result"]["shards"] == {"plain": 300, "npcs": 300}  # 30 per class of 10
    fold = st["train-npcs-fold"]["result"]
    assert fold["complete"] and fold["input"] == {"mode": "fold", "sort": True}
    assert fold["accuracy"]["test"] == fold["accuracy"]["plain"]  # Enc(Q) and plain Q: identical predictions
    assert set(fold["variants"]["test"]) == {"live", "live+tta", "ema", "ema+tta"}
    assert st["train-plain"]["result"]["complete"] and st["train-plain"]["result"]["accuracy"]["test"] is not None
    air = st["cpu-recipe"]["result"]  # the CPU recipe's network, to compare a GPU run with the CPU table
    assert air["complete"] and air["input"] == {"mode": "fold", "sort": True}
    assert air["accuracy"]["test"] == air["accuracy"]["plain"]
    ddp = st["ddp-smoke"]["result"]
    assert ddp["complete"] and ddp["world_size"] == 1 and ddp["effective"]["ddp"] and ddp["ranks_in_sync"]
    assert ddp["effective"]["data"] == "stream"
    feed = st["feed"]["result"]
    assert feed["ratio"] > 0 and feed["images_per_s"]["stream"] > 0 and feed["format"] == "webdataset"
    assert all(v["state"] == "tiny CPU check" for v in rep["verdicts"])
    text = md.read_text()
    assert "TINY CPU CHECK" in text and "| feed |" in text and "ratio" in text
    assert sys.executable not in text and "`python -m train.resnet" in text  # the interpreter as `python`


def test_gpu_check_skips_what_the_budget_cannot_hold(cifar_like, tmp_path):
    p = _run(["--tiny", "--budget", "1", "--data", str(cifar_like), "--work", str(tmp_path / "w"),
              "--results", str(tmp_path / "r")], timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    (js,) = (tmp_path / "r").glob("gpu-*-tiny.json")
    st = json.loads(js.read_text())["steps"]
    assert all(v["status"] == "skipped" for v in st.values())
    assert st["prepare"]["note"].startswith("budget") and "not prepared" in st["train-plain"]["note"]


def test_gpu_check_needs_the_archives(tmp_path):
    p = _run(["--tiny", "--data", str(tmp_path), "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")],
             timeout=120)
    assert p.returncode != 0 and "train.tar.gz" in p.stderr
