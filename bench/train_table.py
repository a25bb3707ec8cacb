"""A markdown table of training runs from their ``metrics.json`` (for docs/results.md).

    python bench/train_table.py runs/plain runs/np runs/npcs runs/npcs-fold

One row per run: what it trained on (scheme, key mode, input), final (and best) accuracy on the
folder's test split (Enc(Q), or Q for plain shards) and on an evaluation set named ``plain``
(plain Q), wall seconds, training images/s, the device and the command.
"""
import json
import sys
from pathlib import Path


def condition(m: dict) -> str:
    s, t = m["train"]["scheme"], m["train"]
    if not s.get("encrypted"):
        text = "plain"
    else:
        text = "+".join(k.upper() for k in ("np", "cs") if s.get(k)) + f", {t['key_mode']} keys"
    return text + (", fold" if m["input"]["mode"] == "fold" else "")


def acc(e: dict | None) -> str:
    if not e or e.get("final_acc") is None:
        return "-"
    return f"{100 * e['final_acc']:.2f} ({100 * e['best_acc']:.2f})"


def main(paths):
    print("| model | condition | Enc(Q) (or Q) final (best) % | plain Q final (best) % | epochs | wall s | "
          "train img/s | device | command |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|")
    for p in paths:
        m = json.loads((Path(p) / "metrics.json").read_text())
        ev = m["eval"]
        test = ev.get("test")
        plain = ev.get("plain") or (test if not m["train"]["scheme"].get("encrypted") else None)
        flag = "" if m.get("complete") else " (incomplete)"
        print(f"| {m['model']} | {condition(m)}{flag} | {acc(test)} | {acc(plain)} | {m['epochs_done']} | "
              f"{m['seconds']:.0f} | {m['images_per_s']:,.0f} | {m['device']} | `{m.get('command') or ''}` |")


if __name__ == "__main__":
    main(sys.argv[1:])
