"""Privacy against accuracy, per scheme and key mode: ``python -m train.experiments frontier``.

For every scheme (``pixel`` NP and NP+CS, ``icip`` NP+CS, ``etc``, ``le``, ``chaos``) and key mode
(``independent``, ``same``):

- x: the mean luminance SSIM of the strongest *realistic* attack (no oracle pick) of
  ``ppdata audit`` on the 96x96 photos' test split (scenes96; the attacker's own images from its
  train split), run here: ``ppdata encrypt folder TEST --split test ...`` then ``ppdata audit``,
  cached under ``--work`` (a finished report is reused);
- y: top-1 accuracy on Enc(Q) of the same scheme and key mode from the harness's finished runs:
  the whole-CIFAR-10 CPU table (``docs/results/cifar10-cpu/summary.json``, the default; its
  full-budget rows where they exist, else its small-budget rows, marked) or ``fig8b`` CSV files
  (``--accuracy``); blank where no run exists. Plain training is a point at SSIM 1 (nothing
  hidden).

``--audits-from CSV`` takes x from an earlier ``frontier.csv`` (and ``frontier-attacks.csv``
beside it) instead of running the audits again: the same audits, a new y.

Writes ``RESULTS/frontier.csv``, ``frontier.md`` (with a table of every attack of every audit),
``frontier.png`` and ``frontier-attacks.csv``.
"""
from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ppdata.errors import PpdataError

KEY_MODES = ("independent", "same")


@dataclass(frozen=True)
class Condition:
    label: str  # e.g. "NP+CS"
    scheme: str
    options: tuple[str, ...]
    cs: bool | None  # for matching harness rows (pixel/icip only)

    def slug(self, mode: str) -> str:
        return f"{self.label.lower().replace('+', '').replace(' ', '-')}-{mode}"


CONDITIONS = (
    Condition("pixel NP", "pixel", (), False),
    Condition("pixel NP+CS", "pixel", ("--cs",), True),
    Condition("icip NP+CS", "icip", ("--cs",), True),
    Condition("etc 4x4", "etc", (), None),
    Condition("le 4x4", "le", (), None),
    Condition("chaos", "chaos", (), None),
)
DEFAULT_ACCURACY = ("docs/results/cifar10-cpu/summary.json",)
# cifar10-cpu condition for each (scheme, cs, keys) of the frontier, in order of preference: the
# full budget first (the recipe as it is, fold input for NP/NP+CS), then the small budget
CPU_TABLE = {("pixel", False, "independent"): ("np-independent",),
             ("pixel", True, "independent"): ("npcs-independent", "npcs-independent-small"),
             ("pixel", True, "same"): ("npcs-same",),
             ("icip", True, "same"): ("icip-npcs-same-adapt", "icip-npcs-same"),
             **{(s, None, k): (f"{s}-{k}-adapt" if s == "le" else f"{s}-{k}",) for s in ("etc", "le", "chaos")
                for k in KEY_MODES}}


def audit_commands(cond: Condition, mode: str, data: Path, work: Path, audit_args: list[str]) -> list[list[str]]:
    """The two ``ppdata`` commands of one condition: encrypt the test split, audit it."""
    shards = work / "shards" / cond.slug(mode)
    keys = ["--keys", "same", "--key-file", str(work / "keys" / f"{cond.slug(mode)}.json")] if mode == "same" else []
    enc = ["ppdata", "-q", "encrypt", "folder", str(data / "test.tar.gz"), "--split", "test", "--scheme", cond.scheme,
           *cond.options, *keys, "--out", str(shards), "--overwrite"]
    aud = ["ppdata", "audit", str(shards), "--plain", "folder", str(data / "train.tar.gz"), str(data / "test.tar.gz"),
           "--out", str(work / "audit" / cond.slug(mode)), "--overwrite", *audit_args]
    return [enc, aud]


def run_audits(data: Path, work: Path, audit_args: list[str], dry_run: bool, log) -> dict[tuple[str, str], dict]:
    """Run (or reuse) every condition's audit; returns (label, mode) -> metrics record."""
    out = {}
    for cond in CONDITIONS:
        for mode in KEY_MODES:
            report = work / "audit" / cond.slug(mode) / "metrics.json"
            cmds = audit_commands(cond, mode, data, work, audit_args)
            if dry_run:
                log(("# done: " if report.is_file() else "") + " && ".join(shlex.join(c) for c in cmds))
                continue
            if not report.is_file():
                (work / "keys").mkdir(parents=True, exist_ok=True)
                for c in cmds:
                    log("$ " + shlex.join(c))
                    rc = subprocess.call([sys.executable, "-m", "ppdata", *c[1:]])
                    if rc != 0:
                        raise PpdataError(f"{shlex.join(c)} exited with {rc}")
            out[(cond.label, mode)] = json.loads(report.read_text())
    return out


def read_accuracy(paths) -> dict[tuple[str, bool | None, str], dict]:
    """Enc(Q) accuracy of finished harness runs: (scheme, cs, keys) -> {acc, source, condition, scale,
    budget} ("plain" keys the plain run: (plain, None, None)). ``paths``: cifar10-cpu
    ``summary.json`` files and/or fig8b CSV files; the first file that has a condition wins."""
    out: dict = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            continue
        if p.suffix == ".json":
            conds = json.loads(p.read_text()).get("conditions", {})
            for key, names in {**CPU_TABLE, ("plain", None, None): ("plain",)}.items():
                name = next((n for n in names if n in conds), None)
                if name is None or key in out:
                    continue
                c = conds[name]
                w = "/".join(str(v) for v in c.get("widths") or [])
                out[key] = {"acc": c["enc_q"], "source": str(p), "condition": name, "budget": c.get("budget", ""),
                            "scale": f"CPU recipe, AirNet {w}, {c['epochs']} epoch(s) of {c['train_images']:,} "
                                     f"images ({c.get('budget', '')} budget)"}
            continue
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                if r.get("status") != "done" or r.get("scheme") is None or not r.get("acc_enc_q"):
                    continue
                if r["scheme"] == "plain":
                    key = ("plain", None, None)
                else:
                    cs = None if r["scheme"] not in ("pixel", "icip") else r.get("cs") == "True"
                    key = (r["scheme"], cs, r["keys"])
                if key in out and out[key]["source"] != str(p):
                    continue
                out[key] = {"acc": float(r["acc_enc_q"]), "source": str(p), "condition": r["condition"], "budget": "",
                            "scale": f"{r.get('profile', '?')} profile, {r.get('epochs', '?')} epoch(s), "
                                     f"{r.get('train_images', '?')} training images, {r.get('augment', '')} on "
                                     f"{r.get('device', '?')}"}
    return out


def plain_row(acc: dict, images) -> dict | None:
    """Plain training as a frontier point: SSIM 1 (the images are not hidden at all)."""
    a = acc.get(("plain", None, None))
    if a is None:
        return None
    return {"scheme": "plain (no encryption)", "keys": "-", "attack": "none needed (the image itself)", "ssim": 1.0,
            "psnr": 100.0, "attack_no_kpa": "", "ssim_no_kpa": "", "upper_bound": "", "ssim_upper_bound": "",
            "acc_enc_q": a["acc"], "acc_source": a["source"], "acc_scale": a["scale"], "acc_condition": a["condition"],
            "acc_budget": a["budget"], "audit_images": images, "audit_seconds": ""}


def audits_from(path: Path) -> tuple[list[dict], list[dict]]:
    """The x side of an earlier frontier: its rows (accuracy columns dropped) and its attacks."""
    if not path.is_file():
        raise PpdataError(f"--audits-from {path}: no such file")
    with open(path, newline="") as f:
        table = [r for r in csv.DictReader(f) if not r["scheme"].startswith("plain")]
    attacks_csv = path.parent / "frontier-attacks.csv"
    attacks = []
    if attacks_csv.is_file():
        with open(attacks_csv, newline="") as f:
            for r in csv.DictReader(f):
                r["oracle"] = r["oracle"] == "True"
                for k in ("ssim", "psnr", "ssim_ge_0.5"):
                    r[k] = float(r[k])
                attacks.append(r)
    return table, attacks


def with_accuracy(table: list[dict], acc: dict) -> list[dict]:
    """``table``'s rows with the accuracy columns from ``acc`` (matched by scheme label and keys)."""
    label = {c.label: c for c in CONDITIONS}
    out = []
    for r in table:
        c = label[r["scheme"]]
        a = acc.get((c.scheme, c.cs, r["keys"]))
        r = {k: v for k, v in r.items() if not k.startswith("acc_")}
        r.update({"acc_enc_q": a["acc"] if a else "", "acc_source": a["source"] if a else "",
                  "acc_scale": a["scale"] if a else "", "acc_condition": a["condition"] if a else "",
                  "acc_budget": a["budget"] if a else ""})
        out.append(r)
    return out


def rows(audits: dict, acc: dict) -> list[dict]:
    table = []
    for cond in CONDITIONS:
        for mode in KEY_MODES:
            rec = audits.get((cond.label, mode))
            if rec is None:
                continue
            v = rec["verdict"]
            a = acc.get((cond.scheme, cond.cs, mode))
            s, f, u = v["strongest"], v["strongest_without_known_plaintext"], v["upper_bound"]
            if s is None:  # no attack of this audit applies: the ciphertext itself is what an attacker has
                e = rec["attacks"]["encrypted"]["summary"]
                s = f = {"attack": "none applies (the encrypted image)", "ssim": e["ssim"]["mean"],
                         "psnr": e["psnr"]["mean"]}
            table.append({
                "scheme": cond.label, "keys": mode,
                "attack": s["attack"] if s else "", "ssim": round(s["ssim"], 4) if s else "",
                "psnr": round(s["psnr"], 2) if s else "",
                "attack_no_kpa": f["attack"] if f else "", "ssim_no_kpa": round(f["ssim"], 4) if f else "",
                "upper_bound": u["attack"] if u else "", "ssim_upper_bound": round(u["ssim"], 4) if u else "",
                "acc_enc_q": a["acc"] if a else "", "acc_source": a["source"] if a else "",
                "acc_scale": a["scale"] if a else "", "acc_condition": a["condition"] if a else "",
                "acc_budget": a["budget"] if a else "", "audit_images": rec["images"],
                "audit_seconds": rec.get("seconds", ""),
            })
    return table


def attack_rows(audits: dict) -> list[dict]:
    """Every attack of every audit: scheme, keys, attack, needs, oracle, mean SSIM and PSNR, images."""
    out = []
    for cond in CONDITIONS:
        for mode in KEY_MODES:
            rec = audits.get((cond.label, mode))
            for name, a in (rec or {}).get("attacks", {}).items():
                s = a["summary"]
                out.append({"scheme": cond.label, "keys": mode, "attack": name, "needs": a["needs"],
                            "oracle": a["oracle"], "ssim": round(s["ssim"]["mean"], 4),
                            "ssim_colour": round(s["ssim_colour"]["mean"], 4) if "ssim_colour" in s else "",
                            "psnr": round(s["psnr"]["mean"], 2), "ssim_ge_0.5": round(s.get("ssim_ge_0.5", 0), 3),
                            "images": s["n"], "note": a.get("note", "")})
    return out


def write(table: list[dict], results: Path, command: str, data_desc: str, attacks: list[dict] = ()) -> list[Path]:
    results.mkdir(parents=True, exist_ok=True)
    paths = [results / "frontier.csv", results / "frontier.md", results / "frontier.png"]
    with open(paths[0], "w", newline="") as f:
        w = csv.DictWriter(f, list(table[0]))
        w.writeheader()
        w.writerows(table)
    scales = sorted({r["acc_scale"] for r in table if r["acc_scale"]})
    lines = ["# Privacy against accuracy, per scheme and key mode", "",
             f"- x: mean luminance SSIM of the strongest realistic attack (`ppdata audit`, no oracle) on {data_desc}",
             "- y: top-1 accuracy on Enc(Q), CIFAR-10, from the harness runs that exist, at their scale: "
             + ("; ".join(scales) if scales else "none found"),
             f"- command: `{command}`", "",
             "| scheme | keys | strongest realistic attack | SSIM | PSNR dB | without known plaintext | SSIM | "
             "upper bound (oracle) | SSIM | Enc(Q) accuracy % | accuracy run |",
             "|---|---|---|---:|---:|---|---:|---|---:|---:|---|"]
    for r in table:
        run = f"{r.get('acc_condition', '')}{' (small budget)' if r.get('acc_budget') == 'small' else ''}"
        lines.append(f"| {r['scheme']} | {r['keys']} | {r['attack']} | {_f(r['ssim'])} | {_f(r['psnr'], 2)} | "
                     f"{r['attack_no_kpa'] or '-'} | {_f(r['ssim_no_kpa'])} | {r['upper_bound'] or '-'} | "
                     f"{_f(r['ssim_upper_bound'])} | {_f(r['acc_enc_q'], 2) if r['acc_enc_q'] != '' else 'not run'} | "
                     f"{run or '-'} |")
    lines += ["", "Lower SSIM is more private; higher accuracy is more useful. Accuracy and SSIM come from "
              "different data sets (CIFAR-10 and the 96x96 photos). Accuracy rows marked *small budget* trained "
              "a quarter-width network on 400,000 images: compare them with each other and with the small-budget "
              "NP+CS row of the CPU table, not with the full-budget rows.", ""]
    if attacks:
        lines += ["## Every attack", "",
                  "Mean luminance SSIM / colour SSIM / PSNR over the images each attack covers; *(oracle)* rows pick "
                  "the global transform with the original and are upper bounds, *(chosen)* rows are the attacker's "
                  "own pick.", "",
                  "| scheme | keys | attack | needs | SSIM | colour SSIM | PSNR dB | SSIM >= 0.5 | images |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|"]
        for r in attacks:
            name = f"{r['attack']} (upper bound)" if r["oracle"] and "(oracle)" not in r["attack"] else r["attack"]
            lines.append(f"| {r['scheme']} | {r['keys']} | {name} | {r['needs']} | {r['ssim']:.3f} | "
                         f"{_f(r['ssim_colour'])} | {r['psnr']:.2f} | {100 * r['ssim_ge_0.5']:.0f}% | {r['images']} |")
        lines.append("")
        with open(results / "frontier-attacks.csv", "w", newline="") as f:
            w = csv.DictWriter(f, list(attacks[0]))
            w.writeheader()
            w.writerows(attacks)
        paths.append(results / "frontier-attacks.csv")
    paths[1].write_text("\n".join(lines))
    _plot(table, paths[2], scales)
    return paths


def _f(v, digits: int = 3) -> str:
    return "-" if v == "" or v is None else f"{float(v):.{digits}f}"


def _plot(table: list[dict], path: Path, scales: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, ax = plt.subplots(figsize=(7.5, 4.8))
    marker = {"independent": "o", "same": "s", "-": "*"}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    schemes = list(dict.fromkeys(r["scheme"] for r in table))
    placed: list[tuple[float, float]] = []
    for r in table:
        c = colours[schemes.index(r["scheme"]) % len(colours)]
        x = float(r["ssim"]) if r["ssim"] != "" else None
        if x is None:
            continue
        if r["acc_enc_q"] == "":
            ax.plot([x], [0], marker=marker[r["keys"]], color=c, mfc="none", ms=8, clip_on=False)
            continue
        small = r.get("acc_budget") == "small"
        ax.plot([x], [float(r["acc_enc_q"])], marker=marker[r["keys"]], color=c, ms=11 if r["keys"] == "-" else 8,
                linestyle="none", alpha=0.55 if small else 1.0)
        y = float(r["acc_enc_q"])
        near = sum(abs(x - a) < 0.08 and abs(y - b) < 4 for a, b in placed)  # stack labels of close points
        placed.append((x, y))
        right = x > 0.8
        ax.annotate(f"{r['scheme']}" + (f", {r['keys']}" if r["keys"] != "-" else "") + (" (small)" if small else ""),
                    (x, y), textcoords="offset points", xytext=(-6 if right else 6, 4 - 10 * near), fontsize=7,
                    ha="right" if right else "left")
    for s in schemes:
        ax.plot([], [], "o", color=colours[schemes.index(s) % len(colours)], label=s)
    ax.plot([], [], "ko", label="independent keys")
    ax.plot([], [], "ks", label="one key (same)")
    ax.plot([], [], "ko", mfc="none", label="accuracy not run (on the x axis)")
    ax.plot([], [], "ko", alpha=0.55, label="small budget (faded)")
    ax.set_xlabel("strongest realistic attack: mean SSIM on the 96x96 photos' test split (lower = more private)")
    ax.set_ylabel("Enc(Q) top-1 accuracy, CIFAR-10 (%)")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(0, 100)
    ax.set_title("Privacy against accuracy (accuracy: CIFAR-10, CPU recipe; see frontier.md)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    f.tight_layout()
    f.savefig(path, dpi=130)
    plt.close(f)


def main(data: str, work: str, results: str, accuracy, audit_args: list[str], dry_run: bool, command: str,
         log, audits_csv: str | None = None) -> list[Path]:
    acc = read_accuracy(accuracy or DEFAULT_ACCURACY)
    if audits_csv:  # the same audits as before, new accuracies
        table, attacks = audits_from(Path(audits_csv))
        if dry_run:
            return []
        table = with_accuracy(table, acc)
        desc = f"the test split of the 96x96 photos ({table[0]['audit_images']} images; audits of {audits_csv})"
    else:
        data_p, work_p = Path(data), Path(work) / "frontier"
        for name in ("train.tar.gz", "test.tar.gz"):
            if not (data_p / name).is_file():
                raise PpdataError(f"frontier needs {data_p / name} (the 96x96 photos: --data FOLDER with train.tar.gz "
                                  f"and test.tar.gz)")
        audits = run_audits(data_p, work_p, audit_args, dry_run, log)
        if dry_run:
            return []
        table, attacks = rows(audits, acc), attack_rows(audits)
        desc = f"{data_p} test split ({table[0]['audit_images']} images)" if table else ""
    if not table:
        raise PpdataError("no audit finished")
    p = plain_row(acc, table[0]["audit_images"])
    return write(([p] if p else []) + table, Path(results), command, desc, attacks)
