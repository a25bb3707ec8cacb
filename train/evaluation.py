"""Evaluation sets and accuracy: the training folder's own test split (Enc(Q)) and every
``--eval`` folder (plain Q, same-key Enc(Q), ...), with optional test-time augmentation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ppdata.errors import PpdataError
from ppdata.shards import ShardSet, open_shards

from . import data as D
from .config import Config
from .runtime import Proc, all_sum


@dataclass
class EvalSet:
    name: str
    shards: ShardSet
    split: D.Split | None = None

    def describe(self) -> dict:
        return {"dir": str(self.shards.directory), "split": self.shards.split, "count": len(self.shards),
                "format": self.shards.format, "scheme": self.shards.scheme, "key_mode": self.shards.key_mode,
                "manifest_id": self.shards.manifest.get("id")}


def eval_sets(train: ShardSet, shards_dir, extra: list[str], split: str) -> list[EvalSet]:
    """The folder's own test split (if present) and ``NAME=DIR`` / ``DIR`` extra folders."""
    out: list[EvalSet] = []
    if split in train.manifest["splits"]:
        out.append(EvalSet("test", open_shards(shards_dir, split)))
    names = {"test"}
    for spec in extra:
        name, _, d = spec.partition("=") if "=" in spec and "/" not in spec.split("=")[0] else ("", "", spec)
        name = name or Path(d).name or "eval"
        base, i = name, 2
        while name in names:
            name, i = f"{base}{i}", i + 1
        names.add(name)
        s = open_shards(d, split)
        if s.shape != train.shape:
            raise PpdataError(f"--eval {d}: images are {s.shape}, the training shards {train.shape}")
        if len(s.classes) != len(train.classes):
            raise PpdataError(f"--eval {d}: {len(s.classes)} classes, the training shards {len(train.classes)}")
        out.append(EvalSet(name, s))
    return out


@torch.no_grad()
def logits_tta(model: nn.Module, x: torch.Tensor, level: int = 0) -> torch.Tensor:
    """float32 logits of NCHW uint8 ``x``. Test-time augmentation ``level``: 0 none; 1 the mean of
    the logits of each image and its mirror; 2 that mean at weight 1/2 plus, at 1/4 each, the
    same for the image shifted by one pixel up-left and down-right (reflect fill; airbench's
    level 2). Flips and shifts commute with the per-pixel cipher: no key is needed."""
    def mirrored(v):
        out = model(v).float()
        return out if level == 0 else (out + model(v.flip(3)).float()) / 2

    out = mirrored(x)
    if level >= 2:
        h, w = x.shape[2:]
        pad = F.pad(x.float(), (1, 1, 1, 1), mode="reflect").to(x.dtype)
        out = out / 2 + (mirrored(pad[:, :, :h, :w]) + mirrored(pad[:, :, 2:, 2:])) / 4
    return out


EVAL_PIXELS = 1 << 22  # pixels per evaluation batch at most: 1024 images of 64x64, 256 of 128x128


def eval_batch_size(requested: int, shape) -> int:
    """``requested`` (``--eval-batch-size``), lowered for large images so that an evaluation
    batch's activations stay bounded (a 1,024-image batch of 128x128 images is 16x CIFAR's)."""
    return max(1, min(requested, EVAL_PIXELS // max(1, int(shape[0]) * int(shape[1]))))


@torch.no_grad()
def evaluate(model: nn.Module, es: EvalSet, cfg: Config, proc: Proc, amp: bool, tta: int = 0) -> float:
    """Top-1 accuracy of ``model`` on ``es`` (each process a slice, counts summed), with
    test-time augmentation level ``tta`` (``logits_tta``)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=proc.device)
    count = torch.zeros((), dtype=torch.int64, device=proc.device)
    bs = eval_batch_size(cfg.eval_batch_size, es.split.images.shape[1:3])
    for x, y in D.eval_batches(es.split, bs, proc.rank, proc.world):
        with torch.autocast(proc.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = logits_tta(model, x.permute(0, 3, 1, 2), int(tta))
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    stats = all_sum(proc, torch.stack([correct, count]))
    return stats[0].item() / max(1, stats[1].item())


def scheme_text(s: ShardSet) -> str:
    """A folder's scheme and key mode in words, e.g. "NP+CS, independent keys"."""
    sch = s.scheme or {}
    if not sch.get("encrypted"):
        return "plain"
    parts = [k.upper() for k in ("np", "cs") if sch.get(k)]
    name = "+".join(parts) if sch.get("name") == "pixel" and parts else sch.get("name", "?")
    return f"{name}, {s.key_mode or '?'} keys"
