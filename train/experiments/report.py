"""``results/NAME.csv``, ``NAME.md`` (markdown tables) and ``NAME.png`` (grouped bar chart).

Only measured values are written: a condition without a finished run shows ``-`` in the tables,
an empty CSV cell and no bar. Accuracies are the final top-1 accuracy of the run (after its last
epoch), in percent.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

from .plan import SMALL_BUDGET as SMALL_BUDGET_TEXT
from .plan import Figure
from .runner import Harness, Outcome
from .source import _rel

CSV_FIELDS = ["experiment", "condition", "group", "series", "model", "scheme", "cs", "keys", "adapt", "augment",
              "domain", "status", "acc_enc_q", "acc_plain_q", "best_enc_q", "published", "epochs", "train_images",
              "seconds", "images_per_s", "device", "profile", "run_dir"]


def _pct(v) -> float | None:
    return None if v is None else round(100 * v, 2)


def rows(fig: Figure, outcomes: list[Outcome], profile: str) -> list[dict]:
    out = []
    for o in outcomes:
        c, m = o.condition, o.metrics or {}
        ev = m.get("eval", {})
        sh = c.run.train
        out.append({
            "experiment": fig.name, "condition": c.name, "group": c.group, "series": c.series,
            "model": c.run.model, "scheme": sh.scheme, "cs": sh.cs if sh.scheme in ("pixel", "icip") else "",
            "keys": sh.keys if sh.scheme != "plain" else "", "adapt": c.run.adapt or "",
            "augment": sh.augment, "domain": sh.domain if sh.augment != "none" else "",
            "status": o.status,
            "acc_enc_q": _pct(ev.get("test", {}).get("final_acc")),
            "acc_plain_q": _pct(ev.get("plain", {}).get("final_acc")),
            "best_enc_q": _pct(ev.get("test", {}).get("best_acc")),
            "published": c.published if c.published is not None else "",
            "epochs": m.get("epochs_done", ""), "train_images": m.get("train", {}).get("count", ""),
            "seconds": round(m["seconds"], 1) if m.get("seconds") is not None else "",
            "images_per_s": round(m["images_per_s"]) if m.get("images_per_s") else "",
            "device": m.get("device", ""), "profile": profile, "run_dir": _rel(o.run_dir),
        })
    return out


def write_csv(path: Path, table: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        for r in table:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})


def _fmt(v) -> str:
    return "-" if v in (None, "") else f"{v:.2f}"


METRIC_COLUMN = {"test": "acc_enc_q", "plain": "acc_plain_q"}


def _layout(fig: Figure, table: list[dict]):
    order = list(dict.fromkeys(c.series for c in fig.conditions))  # the figure's order, whatever --only kept
    groups = list(dict.fromkeys(r["group"] for r in table))
    series = sorted({r["series"] for r in table if r["series"] != "-"}, key=order.index)
    cell = {(r["group"], r["series"]): r for r in table}
    return groups, series, cell


def markdown(fig: Figure, h: Harness, table: list[dict], command: str) -> str:
    groups, series, cell = _layout(fig, table)
    devices = sorted({r["device"] for r in table if r["device"]})
    done = sum(r["status"] == "done" for r in table)
    lines = [f"# {fig.title}", "", fig.what, ""]
    if h.profile == "smoke":
        lines += ["**Smoke check of the harness, not a measurement**: tiny networks trained for one epoch "
                  f"on {h.data.describe()}; the numbers only show that every step runs end to end.", ""]
    lines += [f"- data: {h.data.describe()}",
              f"- profile: {h.profile} (training options: `{' '.join(h.run_options(fig.conditions[0].run))}`"
              f"{' ...' if h.profile == 'fast' else ''})",
              f"- device: {', '.join(devices) if devices else '-'}",
              f"- written: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; "
              f"{done} of {len(table)} conditions measured",
              f"- command: `{command}`", "",
              "Top-1 accuracy (%), final epoch."]
    if fig.published_source:
        lines.append(f"Published: {fig.published_source}.")
    lines.append("")
    cols = [(s, k, lab) for s in series for k, lab in fig.metrics]
    head = ["condition"] + [f"{s}: {lab}" if len(fig.metrics) > 1 else s for s, k, lab in cols]
    if any(r["published"] != "" for r in table):
        head.append("published")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for g in groups:
        cells = []
        plain_row = cell.get((g, "-"))
        for s, k, lab in cols:
            r = plain_row or cell.get((g, s))
            cells.append(_fmt(r[METRIC_COLUMN[k]]) if r else "")
        if "published" in head:
            pub = [f"{cell[(g, s)]['published']:.2f} ({s})" for s in series
                   if (g, s) in cell and cell[(g, s)]["published"] != ""]
            if plain_row and plain_row["published"] != "":
                pub = [f"{plain_row['published']:.2f}"]
            cells.append(", ".join(pub))
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += ["", "Plain training has no key: its row repeats one value across the key columns." if any(
        (g, "-") in cell for g in groups) and len(series) > 1 else "", "",
        "<details><summary>Runs</summary>", "",
        "| condition | Enc(Q) | plain Q | epochs | training images | seconds | device | run folder |",
        "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in table:
        lines.append(f"| {r['condition']} | {_fmt(r['acc_enc_q'])} | {_fmt(r['acc_plain_q'])} | {r['epochs']} | "
                     f"{r['train_images']} | {r['seconds']} | {r['device']} | {r['run_dir']} |")
    lines += ["", "</details>", ""]
    return "\n".join(x for x in lines if x is not None)


def chart(fig: Figure, table: list[dict], path: Path, subtitle: str) -> None:
    """A grouped bar chart of ``fig.chart`` accuracy: groups on the x axis, one bar per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups, series, cell = _layout(fig, table)
    series = series or ["-"]
    key = METRIC_COLUMN[fig.chart]
    metric_label = dict(fig.metrics).get(fig.chart, fig.chart)
    fig_w = max(7.0, 1.1 * len(groups) + 2)
    f, ax = plt.subplots(figsize=(fig_w, 4.2))
    width = 0.8 / len(series)
    x = np.arange(len(groups))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # keyless groups (plain training): one grey bar in the middle of the group
    keyless = [i for i, g in enumerate(groups) if (g, "-") in cell]
    if keyless and series != ["-"]:
        vals = [cell[(groups[i], "-")][key] for i in keyless]
        vals = [np.nan if v in (None, "") else v for v in vals]
        bars = ax.bar(x[keyless], vals, width, label="no encryption", color="0.55")
        for b, v in zip(bars, vals):
            if not np.isnan(v):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
    for j, s in enumerate(series):
        vals = []
        for g in groups:
            r = cell.get((g, s)) or (cell.get((g, "-")) if series == ["-"] else None)
            vals.append(r[key] if r and r[key] not in (None, "") else np.nan)
        offs = x - 0.4 + width * (j + 0.5)
        bars = ax.bar(offs, vals, width, label=s, color=colours[j % len(colours)])
        for b, v in zip(bars, vals):
            if not np.isnan(v):
                ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"accuracy on {metric_label} (%)")
    ax.set_title(f"{fig.title}\n{subtitle}", fontsize=9)
    if len(series) > 1 or series != ["-"]:
        ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    f.tight_layout()
    f.savefig(path, dpi=120)
    plt.close(f)


def write_all(fig: Figure, h: Harness, outcomes: list[Outcome], command: str) -> list[Path]:
    """Write ``results/NAME.{csv,md,png}``; returns the paths."""
    h.results.mkdir(parents=True, exist_ok=True)
    table = rows(fig, outcomes, h.profile)
    paths = [h.results / f"{fig.name}.csv", h.results / f"{fig.name}.md", h.results / f"{fig.name}.png"]
    write_csv(paths[0], table)
    paths[1].write_text(markdown(fig, h, table, command))
    sub = f"profile {h.profile}, data {h.data.spec}" + (" (SMOKE CHECK, not a measurement)" if h.profile == "smoke" else "")
    chart(fig, table, paths[2], sub)
    return paths


# ---------------------------------------------------------------------------------------------
# table2


def attack_tables(fig: Figure, h: Harness, metrics_path: Path, command: str) -> list[Path]:
    """table2.{csv,md,png} from ``python -m attack.coa``'s metrics.json (conditions
    ``{np,npcs}-{same,independent}``, per attack a summary with mean SSIM and PSNR)."""
    rec = json.loads(metrics_path.read_text())
    table = []
    for cond, c in rec.get("conditions", {}).items():
        for attack, a in c.get("attacks", {}).items():
            s = a.get("summary", {})
            table.append({"condition": cond, "scheme": c.get("scheme", ""), "keys": c.get("keys", ""),
                          "attack": attack, "ssim": s.get("ssim", {}).get("mean"), "psnr": s.get("psnr", {}).get("mean"),
                          "seconds": a.get("seconds", "")})
    h.results.mkdir(parents=True, exist_ok=True)
    paths = [h.results / "table2.csv", h.results / "table2.md", h.results / "table2.png"]
    with open(paths[0], "w", newline="") as f:
        w = csv.DictWriter(f, ["condition", "scheme", "keys", "attack", "ssim", "psnr", "seconds"])
        w.writeheader()
        w.writerows(table)
    attacks = list(dict.fromkeys(r["attack"] for r in table))
    schemes = list(dict.fromkeys(r["scheme"] for r in table))
    cell = {(r["attack"], r["scheme"], r["keys"]): r for r in table}
    lines = [f"# {fig.title}", "", fig.what, "",
             f"- profile: {h.profile}; data: {h.data.describe()}; device: {rec.get('device', '-')}",
             f"- written: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
             f"- command: `{command}`; the attack's own report: {_rel(metrics_path.parent / 'table.md')}", ""]
    if h.profile == "smoke":
        lines += ["**Smoke check of the harness, not a measurement.**", ""]
    for at in attacks:
        lines += [f"## {at}", "", "| scheme | same key SSIM | same key PSNR | independent keys SSIM | "
                  "independent keys PSNR |", "|---|---:|---:|---:|---:|"]
        for s in schemes:
            cells = []
            for k in ("same", "independent"):
                r = cell.get((at, s, k))
                cells += [f"{r['ssim']:.3f}" if r and r["ssim"] is not None else "-",
                          f"{r['psnr']:.2f}" if r and r["psnr"] is not None else "-"]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        lines.append("")
    paths[1].write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    conds = [(s, k) for s in schemes for k in ("same", "independent")]
    f, ax = plt.subplots(figsize=(max(7.0, 1.2 * len(conds) + 2), 4))
    width = 0.8 / max(1, len(attacks))
    x = np.arange(len(conds))
    for j, at in enumerate(attacks):
        vals = [cell[(at, s, k)]["ssim"] if (at, s, k) in cell and cell[(at, s, k)]["ssim"] is not None else np.nan
                for s, k in conds]
        ax.bar(x - 0.4 + width * (j + 0.5), vals, width, label=at)
    ax.set_xticks(x, [f"{s}\n{k}" for s, k in conds], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean SSIM")
    ax.set_title(f"{fig.title} (profile {h.profile})", fontsize=9)
    ax.legend(fontsize=7)
    f.tight_layout()
    f.savefig(paths[2], dpi=120)
    plt.close(f)
    return paths


# ---------------------------------------------------------------------------------------------
# cifar10-cpu: report.md, summary.json, machine.json and the runs' metrics beside them


def _minutes(m: dict) -> float | None:
    return None if m.get("seconds") is None else round(m["seconds"] / 60, 2)


def cpu_summary(outcomes: list[Outcome]) -> dict:
    """``{"conditions": {NAME: {"enc_q", "plain_q", "cpu_minutes", "budget", "epochs", ...}}}`` for
    every finished condition. ``cpu_minutes``: wall-clock minutes of the whole training command
    (loading, whitening, training, evaluation) on the machine of ``machine.json``."""
    conds = {}
    for o in outcomes:
        if o.status != "done" or not o.metrics:
            continue
        m, ev = o.metrics, o.metrics.get("eval", {})
        conds[o.condition.name] = {
            "enc_q": _pct(ev.get("test", {}).get("final_acc")),
            "plain_q": _pct(ev.get("plain", {}).get("final_acc")) if o.condition.run.train.scheme != "plain"
            else _pct(ev.get("test", {}).get("final_acc")),
            "cpu_minutes": _minutes(m), "budget": o.condition.budget, "epochs": m.get("epochs_done"),
            "train_images": m.get("train", {}).get("count"), "widths": (m.get("config", {}).get("model_args") or {}).get("widths"),
            "input": m.get("input", {}).get("mode"), "process_cpu_minutes": round(m["cpu_seconds"] / 60, 2)
            if m.get("cpu_seconds") is not None else None,
            "load_average": m.get("load_average"), "label": o.condition.group, "series": o.condition.series,
        }
    return {"conditions": conds}


def cpu_report(fig: Figure, h: Harness, outcomes: list[Outcome], command: str) -> list[Path]:
    """``report.md``, ``summary.json``, ``machine.json`` and ``runs/NAME/{metrics.json,log.csv}``
    in the results folder (beside ``write_all``'s files)."""
    import shutil

    from ppdata.machine import describe, summary

    out = h.results
    out.mkdir(parents=True, exist_ok=True)
    summ = cpu_summary(outcomes)
    machine = describe()
    (out / "summary.json").write_text(json.dumps(summ, indent=2) + "\n")
    (out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    for o in outcomes:
        if o.status == "done":
            dst = out / "runs" / o.condition.name
            dst.mkdir(parents=True, exist_ok=True)
            for n in ("metrics.json", "log.csv"):
                if (o.run_dir / n).is_file():
                    shutil.copyfile(o.run_dir / n, dst / n)
    c = summ["conditions"]

    def row(name: str) -> str:
        r = c.get(name)
        if r is None:
            return f"| {name} | - | - | - | - | - | - |"
        load = r["load_average"] or {}
        ld = (f"{load['start'][0]:.1f} / {load['end'][0]:.1f}" if load.get("start") and load.get("end") else "-")
        plain = "-" if r["plain_q"] is None else f"{r['plain_q']:.2f}"
        return (f"| {r['label']} | {r['enc_q']:.2f} | {plain} | {r['epochs']} x {r['train_images']:,} | "
                f"{r['cpu_minutes']:.1f} | {r['process_cpu_minutes']:.1f} | {ld} |")

    head = ["| condition | Enc(Q) % | plain Q % | epochs x images | minutes | CPU-minutes (process) | load start / end |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    full = [x.name for x in fig.conditions if x.budget == "full"]
    small = [x.name for x in fig.conditions if x.budget == "small"]
    gap = ""
    if "plain" in c and "npcs-independent" in c:
        gap = (f"**plain - NP+CS (independent keys, fold) = {c['plain']['enc_q'] - c['npcs-independent']['enc_q']:.2f} "
               f"points** at the same budget ({c['plain']['enc_q']:.2f}% vs {c['npcs-independent']['enc_q']:.2f}% "
               f"on Enc(Q); {c['npcs-independent']['plain_q']:.2f}% on plain Q).")
    lines = [f"# {fig.title}", "", fig.what, "",
             f"- machine: {summary(machine)}; CPU features {', '.join(machine.get('cpu_features') or []) or '-'} "
             "(`machine.json`)",
             f"- data: {h.data.describe()} (CIFAR-10 as JPEG q75: a model trained on it scores somewhat lower "
             "than on the lossless original)",
             f"- written: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; "
             f"{len(c)} of {len(fig.conditions)} conditions measured",
             f"- command: `{command}`", "",
             "Top-1 accuracy after the last epoch (the recipe's test-time augmentation). *minutes*: wall-clock "
             "minutes of the whole training command (loading, whitening, training, evaluation with TTA on Enc(Q) "
             "and plain Q), one process, two threads; *load*: the machine's one-minute load average when the run "
             "started and ended (two means the two cores were the run's alone). Every run's `metrics.json` and "
             "`log.csv` are in `runs/`.", ""]
    if gap:
        lines += [gap, ""]
    lines += ["## Full budget: the CPU recipe as it is", "", *head, *[row(n) for n in full], "",
              f"## Small budget: {SMALL_BUDGET_TEXT}", "", *head, *[row(n) for n in small], ""]
    (out / "report.md").write_text("\n".join(lines))
    return [out / "report.md", out / "summary.json", out / "machine.json"]
