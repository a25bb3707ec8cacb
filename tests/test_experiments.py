"""train.experiments: the conditions of every experiment, the cache keys, resumability, the
reports, and one tiny experiment end to end on the embedded sample."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from ppdata.errors import PpdataError
from ppdata.sources import SampleSource

from train.experiments import report
from train.experiments.__main__ import main
from train.experiments.plan import Run, Shards, figure
from train.experiments.runner import Harness, attack_available
from train.experiments.source import join_archives, resolve_data

REPO = Path(__file__).resolve().parents[1]

COMPARED = ["plain"] + [f"{s}-{k}" for s in ("np", "npcs", "icip-np", "icip-npcs", "le", "etc", "chaos")
                        for k in ("same", "independent")]
FIG11 = [f"{b}-{a}" for b in ("plain", "np-same", "np-independent", "npcs-same", "npcs-independent")
         for a in ("none", "shift", "flip", "flipshift")]


def dry(args, tmp_path, cwd=None) -> str:
    r = CliRunner().invoke(main, [*args, "--dry-run", "--work", str(tmp_path / "work"),
                                  "--results", str(tmp_path / "results")])
    assert r.exit_code == 0, r.output
    return r.output


def listed(out: str) -> list[str]:
    return [line.split("] ", 1)[1].split(":")[0] for line in out.splitlines() if line.startswith("# [")]


# ---------------------------------------------------------------------------------------------
# dry runs: the conditions and commands of each experiment


@pytest.mark.parametrize("name,conds", [("fig8a", COMPARED), ("fig8b", COMPARED), ("fig10", COMPARED),
                                        ("fig11", FIG11), ("fig12", COMPARED)])
def test_dry_run_lists_the_conditions(tmp_path, name, conds):
    out = dry([name, "--profile", "fast", "--data", "sample"], tmp_path)
    assert listed(out) == conds
    train = [l for l in out.splitlines() if " -m train." in l and " -m train.experiments" not in l]
    assert len(train) == len(conds)
    assert all(("-m train.densenet" if name == "fig12" else "-m train.resnet") in l for l in train)
    assert all("--eval plain=" in l and "--profile fast --no-augment" in l for l in train)
    adapt = {c: l for c, l in zip(conds, train)}
    for c, l in adapt.items():
        want = "--adapt icip" if c.startswith("icip") else "--adapt tanaka" if c.startswith("le") else None
        assert (want in l) if want else ("--adapt" not in l), (c, l)
    assert not (tmp_path / "work").exists() and not (tmp_path / "results").exists()   # a dry run writes nothing


def test_dry_run_commands_follow_the_framework(tmp_path):
    a = dry(["fig8a", "--data", "sample"], tmp_path)
    assert "--augment flip,shift" in a and "ppdata augment" not in a
    assert "--epochs 5" in a                       # fast: 5 epochs of the x8 set = 40 of the original
    b = dry(["fig8b", "--data", "sample"], tmp_path)
    assert "ppdata augment" in b and "--augment flip,shift" not in b
    # same-key folders: a client-side key file, outside every shard folder
    same = [l for l in b.splitlines() if "--keys same" in l]
    assert len(same) == 7 and all("--key-file" in l and "/keys/" in l for l in same)
    assert "mkdir -p" in b
    f11 = dry(["fig11", "--data", "sample"], tmp_path)
    assert "--no-flip" in f11 and "--shift 0" in f11
    epochs = {int(l.split("--epochs ")[1].split()[0]) for l in f11.splitlines() if "-m train.resnet" in l}
    assert epochs == {40, 10, 20, 5}                # the same number of images seen per condition
    default = dry(["fig8b", "--data", "sample"], tmp_path)  # the paper's set, by name in the command
    assert default.count("--shifts paper") == 15 and "diagonal" not in default
    u = dry(["fig8b", "--data", "sample", "--diagonal"], tmp_path)
    assert listed(u) == COMPARED and u.count("--shifts diagonal") == 15 and "--epochs 5" in u
    assert "flipshift-diagonal" in u
    a = dry(["fig8a", "--data", "sample", "--diagonal"], tmp_path)  # the client's expansion too
    assert "--augment flip,shift,diagonal" in a
    r = CliRunner().invoke(main, ["fig11", "--data", "sample", "--diagonal", "--dry-run"])
    assert r.exit_code == 2 and "fig8b" in r.output
    paper = dry(["fig8b", "--profile", "paper", "--data", "sample"], tmp_path)
    assert "--profile paper" in paper and "--epochs" not in paper


def test_dry_run_joins_split_archives(tmp_path, split_archives):
    out = dry(["fig8b", "--data", str(split_archives), "--subset", "3,2", "--only", "plain"], tmp_path)
    join = [l for l in out.splitlines() if "train.experiments.source" in l]
    assert len(join) == 1 and "--subset 3,2" in join[0]
    joined = join[0].split("--out ")[1].split()[0]
    assert f"ppdata encrypt folder {joined} --plain" in out
    whole = dry(["fig8b", "--data", str(split_archives), "--only", "plain"], tmp_path)
    assert "train.experiments.source" not in whole  # no --subset: both archives go to ppdata as they are
    assert "train.tar.gz" in whole and "test.tar.gz" in whole


def test_table2_runs_the_attack_package_or_says_pending(tmp_path, split_archives):
    out = dry(["table2", "--profile", "smoke", "--data", "sample"], tmp_path)
    assert "python -m attack.coa" in out and "--source sample" in out and "--epochs 1" in out
    out = dry(["table2", "--profile", "paper", "--data", str(split_archives)], tmp_path)
    assert f"--source folder --train {split_archives / 'train.tar.gz'} --test {split_archives / 'test.tar.gz'}" in out
    assert "--epochs" not in out                   # the paper's schedule is attack.coa's default
    if not attack_available():
        assert "PENDING" in out
        r = CliRunner().invoke(main, ["table2", "--data", "sample", "--work", str(tmp_path / "w"),
                                      "--results", str(tmp_path / "r")])
        assert r.exit_code == 1 and "pending" in r.output and not (tmp_path / "r").exists()


@pytest.mark.slow  # the attack package's smoke run on the sample: ~6 s alone, more on a busy machine
@pytest.mark.skipif(not attack_available(), reason="the attack package is not in this checkout")
def test_table2_smoke_reports_the_attacks_numbers(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "train.experiments", "table2", "--profile", "smoke", "--data", "sample",
                        "--device", "cpu", "--work", "w", "--results", "res"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(next((tmp_path / "w" / "attack").glob("coa-smoke-*/metrics.json")).read_text())
    rows = list(csv.DictReader(open(tmp_path / "res" / "table2.csv")))
    assert {(x["scheme"], x["keys"], x["attack"]) for x in rows} == {
        (s, k, a) for s in ("NP", "NP+CS") for k in ("same", "independent") for a in ("encrypted", "fold", "coa-1x1")}
    for x in rows:
        s = rec["conditions"][f"{'np' if x['scheme'] == 'NP' else 'npcs'}-{x['keys']}"]["attacks"][x["attack"]]
        assert float(x["ssim"]) == s["summary"]["ssim"]["mean"] and float(x["psnr"]) == s["summary"]["psnr"]["mean"]
    md = (tmp_path / "res" / "table2.md").read_text()
    fold = next(x for x in rows if x["attack"] == "fold" and x["scheme"] == "NP" and x["keys"] == "same")
    assert f"| NP | {float(fold['ssim']):.3f} |" in md and "Smoke check" in md
    assert (tmp_path / "res" / "table2.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_options(tmp_path):
    r = CliRunner().invoke(main, ["fig8b", "--data", str(tmp_path / "nope"), "--dry-run"])
    assert r.exit_code == 1 and "nope" in r.output
    r = CliRunner().invoke(main, ["fig8b", "--data", "sample", "--only", "zzz", "--dry-run"])
    assert r.exit_code == 1 and "zzz" in r.output and "np-same" in r.output
    r = CliRunner().invoke(main, ["fig8b", "--data", "sample", "--subset", "3,2", "--dry-run"])
    assert r.exit_code == 1 and "--subset" in r.output
    r = CliRunner().invoke(main, ["table2", "--data", "sample", "--subset", "3,2", "--dry-run"])
    assert r.exit_code == 1 and "--subset" in r.output
    r = CliRunner().invoke(main, ["fig9", "--dry-run"])
    assert r.exit_code == 2


# ---------------------------------------------------------------------------------------------
# cache keys


def _h(tmp_path, name="fig8b", profile="fast", data="sample", subset=None, **kw) -> Harness:
    work = tmp_path / "work"
    return Harness(figure(name), profile, resolve_data(data, work, subset), work, tmp_path / "results", **kw)


def test_cache_keys_change_with_every_option(tmp_path, split_archives):
    h = _h(tmp_path)
    base = Shards("pixel", cs=True, keys="independent", augment="flip+shift", domain="encrypted")
    variants = [Shards("pixel", cs=False, keys="independent", augment="flip+shift"),
                Shards("pixel", cs=True, keys="same", augment="flip+shift"),
                Shards("pixel", cs=True, keys="independent", augment="shift"),
                Shards("pixel", cs=True, keys="independent", augment="flip+shift", domain="plain"),
                Shards("icip", cs=True, keys="independent", augment="flip+shift")]
    dirs = {h.shard_dir(s) for s in [base, *variants]}
    assert len(dirs) == 6
    assert h.shard_dir(base) == _h(tmp_path).shard_dir(base)                   # stable
    assert h.shard_dir(base) != _h(tmp_path, fmt="webdataset").shard_dir(base)
    assert h.shard_dir(base) != _h(tmp_path, data=str(split_archives)).shard_dir(base)
    sub = [_h(tmp_path, data=str(split_archives), subset=s).shard_dir(base) for s in ((3, 2), (4, 2))]
    assert sub[0] != sub[1]
    # plain folders ignore the key mode and CS: one plain folder serves every condition
    assert h.shard_dir(Shards("plain", keys="same")) == h.shard_dir(Shards("plain", cs=True))

    run = Run("resnet", base)
    rd = h.run_dir(run)
    assert rd == _h(tmp_path).run_dir(run)
    others = [h.run_dir(Run("densenet", base)), h.run_dir(Run("resnet", base, "icip")),
              _h(tmp_path, profile="smoke").run_dir(run), _h(tmp_path, extra=["--width", "16"]).run_dir(run),
              _h(tmp_path, data=str(split_archives)).run_dir(run)]
    assert len({rd, *others}) == 6
    # the device is not part of the key: a run finished on a GPU is reused anywhere
    assert _h(tmp_path, device="cpu").run_dir(run) == rd


def test_fig10_reuses_the_runs_of_fig8b(tmp_path):
    h8, h10 = _h(tmp_path, "fig8b"), _h(tmp_path, "fig10")
    assert [h8.run_dir(c.run) for c in h8.conditions()] == [h10.run_dir(c.run) for c in h10.conditions()]
    h11 = _h(tmp_path, "fig11")
    shared = {h8.run_dir(c.run) for c in h8.conditions()} & {h11.run_dir(c.run) for c in h11.conditions()}
    assert len(shared) == 5                             # the flip + shift column of Fig. 11


# ---------------------------------------------------------------------------------------------
# resumability and reports (finished runs faked; no training)


def _fake_metrics(rd: Path, test: float, plain: float, complete: bool = True) -> None:
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "metrics.json").write_text(json.dumps({
        "complete": complete, "epochs_done": 5, "seconds": 12.5, "images_per_s": 1000.0, "device": "cpu (test)",
        "train": {"count": 4000},
        "eval": {"test": {"final_acc": test, "best_acc": test}, "plain": {"final_acc": plain, "best_acc": plain}}}))


def test_finished_conditions_are_skipped_and_reported(tmp_path, monkeypatch):
    h = _h(tmp_path, "fig10", only=["plain", "np-*"])
    values = {"plain": (0.91, 0.91), "np-same": (0.8512, 0.3), "np-independent": (0.8877, 0.8601)}
    for c in h.conditions():
        _fake_metrics(h.run_dir(c.run), *values[c.name])

    def no_subprocess(*a, **k):
        raise AssertionError("a finished condition must not run anything")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    out = h.execute(say=lambda m: None)
    assert [o.status for o in out] == ["done"] * 3
    assert "# python -m train.resnet" in h.describe()               # shown as done (commented out)
    paths = report.write_all(h.figure, h, out, "python -m train.experiments fig10 ...")
    rows = {r["condition"]: r for r in csv.DictReader(open(paths[0]))}
    assert float(rows["np-same"]["acc_enc_q"]) == 85.12 and float(rows["np-same"]["acc_plain_q"]) == 30.0
    assert float(rows["np-independent"]["acc_plain_q"]) == 86.01 and rows["np-independent"]["keys"] == "independent"
    md = paths[1].read_text()
    assert "| NP | 85.12 | 30.00 | 88.77 | 86.01 |" in md
    assert "| plain | 91.00 | 91.00 | 91.00 | 91.00 |" in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_only_measured_values(tmp_path):
    h = _h(tmp_path, "fig8b", only=["plain", "np-same", "np-independent"])
    c = h.conditions()
    _fake_metrics(h.run_dir(c[1].run), 0.8, 0.2)
    out = h.collect()
    assert [o.status for o in out] == ["pending", "done", "pending"]
    paths = report.write_all(h.figure, h, out, "cmd")
    rows = {r["condition"]: r for r in csv.DictReader(open(paths[0]))}
    assert rows["plain"]["acc_enc_q"] == "" and rows["plain"]["status"] == "pending"
    assert rows["plain"]["published"] == "92.98" and rows["np-same"]["published"] == "85.15"
    md = paths[1].read_text()
    assert "| NP | 80.00 | - | 85.15 (same key) |" in md and "| plain | - | - | 92.98 |" in md
    assert "1 of 3 conditions measured" in md


def test_interrupted_runs_resume_or_restart(tmp_path):
    h = _h(tmp_path, "fig8b", only=["np-same"])
    run = h.conditions()[0].run
    rd = h.run_dir(run)
    assert h.run_state(rd) == "new" and "--resume" not in h.state_command(run)
    _fake_metrics(rd, 0.5, 0.5, complete=False)
    assert h.run_state(rd) == "restart" and h.state_command(run)[-1] == "--overwrite"
    (rd / "checkpoint.pt").write_bytes(b"x")
    assert h.run_state(rd) == "resume" and h.state_command(run)[-1] == "--resume"
    _fake_metrics(rd, 0.5, 0.5, complete=True)
    assert h.run_state(rd) == "done"


# ---------------------------------------------------------------------------------------------
# data: split archives


@pytest.fixture(scope="module")
def split_archives(tmp_path_factory) -> Path:
    """train.tar.gz / test.tar.gz of real images (the embedded sample), ImageFolder layout."""
    root = tmp_path_factory.mktemp("data")
    src = SampleSource()
    for split in ("train", "test"):
        b = next(src.batches(split, 500))
        with tarfile.open(root / f"{split}.tar.gz", "w:gz") as tf:
            for i, (img, lab) in enumerate(zip(b.images, b.labels)):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, "PNG")
                info = tarfile.TarInfo(f"{split}/{src.classes[lab]}/{i:04d}.png")
                info.size = len(buf.getvalue())
                tf.addfile(info, io.BytesIO(buf.getvalue()))
    return root


def test_join_archives_keeps_the_layout_and_the_subset(tmp_path, split_archives):
    out = tmp_path / "joined.tar"
    counts = join_archives([split_archives / "train.tar.gz", split_archives / "test.tar.gz"], out, (3, 2))
    assert counts == {"train": 30, "test": 20}
    with tarfile.open(out) as tf:
        names = tf.getnames()
    assert len(names) == 50 and all(n.split("/")[0] in ("train", "test") and n.count("/") == 2 for n in names)
    from ppdata.sources import FolderSource

    fs = FolderSource(out)
    assert fs.splits() == ["train", "test"] and fs.count("train") == 30 and len(fs.classes) == 10
    assert not (tmp_path / "joined.tar.part").exists()


def test_join_archives_refuses_another_layout(tmp_path):
    bad = tmp_path / "train.tar"
    with tarfile.open(bad, "w") as tf:
        info = tarfile.TarInfo("a/b/c/d.png")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(PpdataError, match="a/b/c/d.png"):
        join_archives([bad], tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists() and not (tmp_path / "out.tar.part").exists()


# ---------------------------------------------------------------------------------------------
# end to end on the embedded sample (prepare, train, resume, report)


@pytest.mark.slow  # two tiny trainings and four ppdata commands in subprocesses: ~30 s on 2 busy cores
def test_smoke_experiment_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "train.experiments", "fig8b", "--profile", "smoke", "--data", "sample",
           "--only", "plain,npcs-independent", "--device", "cpu", "--work", "w", "--results", "res"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {x["condition"]: x for x in csv.DictReader(open(tmp_path / "res" / "fig8b.csv"))}
    assert set(rows) == {"plain", "npcs-independent"}
    for name, row in rows.items():
        m = json.loads((tmp_path / row["run_dir"] / "metrics.json").read_text())
        assert m["complete"] and m["train"]["count"] == 4000                          # 500 x 8, server side
        assert m["train"]["scheme"]["name"] == ("plain" if name == "plain" else "pixel")
        assert float(row["acc_enc_q"]) == round(100 * m["eval"]["test"]["final_acc"], 2)
        assert float(row["acc_plain_q"]) == round(100 * m["eval"]["plain"]["final_acc"], 2)
        assert m["config"]["flip"] is False and m["config"]["model_args"] == {"width": 4}
    md = (tmp_path / "res" / "fig8b.md").read_text()
    assert "Smoke check of the harness" in md and f"| {float(rows['plain']['acc_enc_q']):.2f} |" in md
    assert (tmp_path / "res" / "fig8b.png").read_bytes()[:4] == b"\x89PNG"
    # the same command again trains nothing
    stamp = {n: (tmp_path / row["run_dir"] / "metrics.json").stat().st_mtime_ns for n, row in rows.items()}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr.count("reusing") == 2 and "-m train.resnet" not in r.stderr
    assert stamp == {n: (tmp_path / row["run_dir"] / "metrics.json").stat().st_mtime_ns for n, row in rows.items()}


CPU_TABLE = ["plain", "np-independent", "npcs-independent", "npcs-independent-raw", "npcs-same", "plain-small",
             "npcs-independent-small", "icip-npcs-same", "icip-npcs-same-adapt", "etc-same", "le-same-adapt",
             "chaos-same", "etc-independent", "le-independent-adapt", "chaos-independent", "npcs-independent-x8-enc",
             "npcs-independent-x8-plain", "npcs-independent-none", "npcs-independent-shift", "npcs-independent-flip"]


def test_cpu_table_dry_run_budgets_and_inputs(tmp_path):
    """cifar10-cpu: the five full-budget rows run the recipe as it is (fold for NP/NP+CS, raw where
    named); every small-budget row sees 400,000 images: 8 epochs of the 50,000, or 1 epoch of x8,
    2 of x4, 4 of x2, without on-device augmentation for an expansion."""
    out = dry(["cifar10-cpu", "--profile", "cpu", "--data", "sample"], tmp_path)
    assert listed(out) == CPU_TABLE
    train = dict(zip(CPU_TABLE, [l for l in out.splitlines() if " -m train.resnet" in l]))
    assert all("--profile cpu" in l and "--eval plain=" in l for l in train.values())
    for name in CPU_TABLE[:5]:
        assert "--widths" not in train[name] and "--epochs" not in train[name]
        assert ("--input raw" in train[name]) == (name in ("npcs-independent-raw", "npcs-same"))
    epochs = {"npcs-independent-x8-enc": 1, "npcs-independent-x8-plain": 1, "npcs-independent-shift": 2,
              "npcs-independent-flip": 4}
    for name in CPU_TABLE[5:]:
        assert "--widths 32,128,128" in train[name]
        assert f"--epochs {epochs.get(name, 8)} " in train[name]
        assert ("--no-augment" in train[name]) == (name in epochs or name == "npcs-independent-none")
    assert "--adapt icip" in train["icip-npcs-same-adapt"] and "--adapt" not in train["icip-npcs-same"]
    assert "--adapt tanaka" in train["le-same-adapt"] and "--input raw" in train["icip-npcs-same"]
    assert "--augment flip,shift" in out and "augment " in out  # Enc(f_d(T)) by the client, f_d(Enc(T)) by the server


def test_cpu_table_end_to_end_on_the_sample(tmp_path):
    """Two conditions of cifar10-cpu on the embedded sample with tiny widths: the report, the
    summary in the issue's schema, the machine description and the runs' metrics."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "train.experiments", "cifar10-cpu", "--profile", "cpu", "--data", "sample",
           "--only", "plain,npcs-independent", "--train-args", "--widths 8,16,16 --epochs 1", "--work", "w",
           "--results", "res"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = tmp_path / "res"
    summ = json.loads((res / "summary.json").read_text())["conditions"]
    assert set(summ) == {"plain", "npcs-independent"}
    for name, s in summ.items():
        m = json.loads((res / "runs" / name / "metrics.json").read_text())
        assert s["enc_q"] == round(100 * m["eval"]["test"]["final_acc"], 2) and s["budget"] == "full"
        assert s["plain_q"] == round(100 * m["eval"]["plain"]["final_acc"], 2) and s["epochs"] == 1
        assert s["cpu_minutes"] == round(m["seconds"] / 60, 2) and m["recipe"] == "cpu"
    assert summ["npcs-independent"]["enc_q"] == summ["npcs-independent"]["plain_q"]  # fold: Q and Enc(Q) alike
    report = (res / "report.md").read_text()
    assert "plain - NP+CS (independent keys, fold)" in report and "2 of 20 conditions measured" in report
    assert json.loads((res / "machine.json").read_text())["cores"] == os.cpu_count()
