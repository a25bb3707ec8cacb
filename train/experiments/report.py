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
