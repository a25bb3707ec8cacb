"""python -m train.experiments frontier: audits against harness accuracies."""
from __future__ import annotations

import csv
import shlex

from click.testing import CliRunner

from train.experiments import frontier
from train.experiments.__main__ import main


def _record(attacks: dict, images: int = 10) -> dict:
    def summ(ssim):
        return {"ssim": {"mean": ssim}, "psnr": {"mean": 10 + 10 * ssim}, "ssim_colour": {"mean": ssim},
                "ssim_ge_0.5": float(ssim >= 0.5), "n": images}

    att = {k: {"attack": k.split(" ")[0], "needs": needs, "oracle": "(oracle)" in k, "summary": summ(v),
               "images": images}
           for k, (v, needs) in attacks.items()}
    from attack.audit import verdict

    rec = {"images": images, "attacks": att, "seconds": 1.0}
    rec["verdict"] = verdict(rec)
    return rec


def test_frontier_table_and_plot(tmp_path):
    acc = tmp_path / "fig8b.csv"
    with open(acc, "w", newline="") as f:
        w = csv.DictWriter(f, ["condition", "scheme", "cs", "keys", "status", "acc_enc_q", "profile", "epochs",
                               "train_images", "augment", "device"])
        w.writeheader()
        w.writerow({"condition": "npcs-independent", "scheme": "pixel", "cs": "True", "keys": "independent",
                    "status": "done", "acc_enc_q": "37.85", "profile": "fast", "epochs": "1", "train_images": "80000",
                    "augment": "flip+shift", "device": "cpu"})
        w.writerow({"condition": "le-same", "scheme": "le", "cs": "", "keys": "same", "status": "done",
                    "acc_enc_q": "46.4", "profile": "fast", "epochs": "1", "train_images": "80000",
                    "augment": "flip+shift", "device": "cpu"})
    audits = {
        ("pixel NP+CS", "independent"): _record({"encrypted": (0.04, "nothing"), "fold-raw": (0.44, "nothing"),
                                                 "fold (oracle)": (0.56, "nothing"),
                                                 "fold (chosen)": (0.45, "nothing")}),
        ("le 4x4", "same"): _record({"encrypted": (0.05, "nothing"), "le-components (oracle)": (0.98, "nothing"),
                                     "le-components (chosen)": (0.97, "nothing"),
                                     "known-plaintext": (1.0, "known pairs")}),
    }
    table = frontier.rows(audits, frontier.read_accuracy([acc]))
    by = {(r["scheme"], r["keys"]): r for r in table}
    r = by[("pixel NP+CS", "independent")]
    assert r["attack"] == "fold (chosen)" and r["ssim"] == 0.45 and r["acc_enc_q"] == 37.85
    assert r["upper_bound"] == "fold (oracle)"  # the oracle is reported as a bound, never as the x value
    r = by[("le 4x4", "same")]
    assert r["attack"] == "known-plaintext" and r["attack_no_kpa"] == "le-components (chosen)"
    assert r["acc_enc_q"] == 46.4
    paths = frontier.write(table, tmp_path / "out", "python -m train.experiments frontier", "photos",
                           frontier.attack_rows(audits))
    assert all(p.stat().st_size > 0 for p in paths)
    text = (tmp_path / "out" / "frontier.md").read_text()
    assert "| pixel NP+CS | independent | fold (chosen) | 0.450 |" in text and "## Every attack" in text


def test_frontier_dry_run_lists_every_scheme_and_key_mode(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    for name in ("train.tar.gz", "test.tar.gz"):
        (data / name).write_bytes(b"")
    r = CliRunner().invoke(main, ["frontier", "--dry-run", "--data", str(data), "--work", str(tmp_path / "w"),
                                  "--audit-args", "--learned --budget 15"])
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if "ppdata" in x]
    assert len(lines) == len(frontier.CONDITIONS) * 2
    for line in lines:
        enc, aud = line.split(" && ")
        assert shlex.split(enc)[:3] == ["ppdata", "-q", "encrypt"]
        assert "--learned" in shlex.split(aud) and "train.tar.gz" in aud
    assert sum("--keys same" in x for x in lines) == len(frontier.CONDITIONS)


def test_frontier_from_the_cpu_table_with_plain_at_ssim_1(tmp_path):
    """y from the cifar10-cpu summary (full budget preferred, small budget marked), plain training a
    point at SSIM 1; --audits-from reuses an earlier frontier's x values unchanged."""
    import json

    summ = tmp_path / "summary.json"
    conds = {"plain": (90.35, "full"), "npcs-independent": (86.29, "full"), "npcs-independent-small": (80.0, "small"),
             "le-same-adapt": (55.0, "small")}
    summ.write_text(json.dumps({"conditions": {k: {"enc_q": a, "plain_q": a, "cpu_minutes": 9.0, "budget": b,
                                                   "epochs": 10, "train_images": 50000, "widths": [64, 256, 256]}
                                               for k, (a, b) in conds.items()}}))
    acc = frontier.read_accuracy([summ])
    assert acc[("pixel", True, "independent")]["acc"] == 86.29  # full budget wins over the small one
    assert acc[("le", None, "same")]["budget"] == "small" and acc[("plain", None, None)]["acc"] == 90.35
    audits = {("pixel NP+CS", "independent"): _record({"encrypted": (0.04, "nothing"),
                                                       "fold (oracle)": (0.56, "nothing"),
                                                       "fold (chosen)": (0.45, "nothing")})}
    first = tmp_path / "first"
    frontier.write(frontier.rows(audits, acc), first, "cmd", "photos", frontier.attack_rows(audits))
    paths = frontier.main("unused", str(tmp_path / "w"), str(tmp_path / "again"), [summ], [], False, "cmd",
                          lambda m: None, str(first / "frontier.csv"))
    rows = list(csv.DictReader(open(paths[0])))
    assert rows[0]["scheme"].startswith("plain") and float(rows[0]["ssim"]) == 1.0
    assert float(rows[0]["acc_enc_q"]) == 90.35
    npcs = next(r for r in rows if r["scheme"] == "pixel NP+CS")
    assert float(npcs["ssim"]) == 0.45 and float(npcs["acc_enc_q"]) == 86.29  # same x, new y
    text = (tmp_path / "again" / "frontier.md").read_text()
    assert "| plain (no encryption) | - |" in text and "npcs-independent |" in text
