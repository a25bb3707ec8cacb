"""The run folder every recipe writes: ``log.csv`` (one row per epoch, a column per evaluation
set across resumptions), ``metrics.json`` (rewritten each epoch with ``"complete": false`` until
the run ends) and ``checkpoint.pt``; checks before starting and before resuming.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from ppdata.errors import PpdataError
from ppdata.fileio import atomic_json, atomic_write
from ppdata.shards import ShardSet

from .config import Config

CHECKPOINT, METRICS, LOG = "checkpoint.pt", "metrics.json", "log.csv"


def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a killed run never leaves half a checkpoint."""
    atomic_write(path, lambda f: torch.save(obj, f))


def prepare_out(out: Path, resume: bool, overwrite: bool) -> dict | None:
    """Check the run folder; returns the checkpoint to resume from, if any."""
    ours = [n for n in (CHECKPOINT, METRICS, LOG) if (out / n).exists()]
    if out.exists() and not out.is_dir():
        raise PpdataError(f"--out {out} exists and is not a folder")
    if resume:
        if not (out / CHECKPOINT).exists():
            raise PpdataError(f"--resume: {out / CHECKPOINT} does not exist")
        try:
            return torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise PpdataError(f"--resume: cannot read {out / CHECKPOINT}: {e}") from None
    if ours and not overwrite:
        raise PpdataError(f"--out {out} already holds a run ({', '.join(ours)}); pass --resume to continue it "
                          f"or --overwrite to start again")
    return None


def check_resume(cfg: Config, ck: dict, train: ShardSet) -> None:
    old = {**Config().to_json(), **ck["config"]}  # fields added since take their defaults
    if old.get("recipe") == "loop":  # the paper recipe's name before it had a module of its own
        old["recipe"] = "paper"
    for k, v in cfg.to_json().items():
        if k in Config.RUNTIME or k == "profile" or (k == "epochs" and cfg.schedule == "step"):
            continue
        if old.get(k) != v:
            raise PpdataError(f"--resume: {k} is {v!r} but the checkpoint was trained with {old.get(k)!r}")
    if ck["train"]["manifest_id"] != train.manifest.get("id"):
        raise PpdataError(f"--resume: {train.directory} is not the shard folder the checkpoint was trained on")


def log_fields(evals: list[EvalSet], history: list[dict]) -> list[str]:
    """log.csv columns: an accuracy column for each current evaluation set, then for each set
    an earlier part of a resumed run evaluated but this one does not."""
    accs = [f"acc_{es.name}" for es in evals]
    for h in history:
        accs += [k for k in h if k.startswith("acc_") and k not in accs]
    return ["epoch", "lr", "train_loss", "train_acc", *accs, "train_seconds", "images_per_s", "elapsed_seconds"]


def write_log(path: Path, fields: list[str], history: list[dict]) -> None:
    """The whole log.csv, atomically (an empty cell where a row lacks a column)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, restval="", extrasaction="ignore")
    w.writeheader()
    w.writerows(history)
    atomic_write(path, buf.getvalue(), fsync=False)


def eval_summary(evals: list[EvalSet], history: list[dict]) -> dict:
    """Per evaluation set: its folder and the final and best accuracy over the epochs that
    evaluated it (None before the first)."""
    out = {}
    for es in evals:
        accs = [(h[f"acc_{es.name}"], h["epoch"]) for h in history if h.get(f"acc_{es.name}", "") not in ("", None)]
        best = max(accs, key=lambda a: a[0]) if accs else (None, None)
        out[es.name] = {**es.describe(), "final_acc": accs[-1][0] if accs else None,
                        "final_epoch": accs[-1][1] if accs else None, "best_acc": best[0], "best_epoch": best[1]}
    return out


__all__ = ["CHECKPOINT", "METRICS", "LOG", "atomic_save", "atomic_json", "prepare_out", "check_resume",
           "log_fields", "write_log", "eval_summary"]
