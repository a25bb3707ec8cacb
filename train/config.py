"""What defines a training run: ``Config``, its schedules, and the choices settled from the
training folder (input mode, adaptation network, the split to train on).

Every recipe (``train.paper``, ``train.fast``, ``train.cpu``) reads the same ``Config``; a profile
(``train.resnet``, ``train.densenet``) is a set of field values, and every command-line option
overrides one field.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ppdata.errors import PpdataError
from ppdata.shards import ShardSet, expansions_of, read_manifest

from . import adapt as A
from . import data as D
from .augment import FILLS
from .models import MODELS
from .preprocess import INPUTS, NORMS

SCHEDULES = ("step", "onecycle")
AMPS = ("auto", "bf16", "off")  # auto: bf16 on CUDA (the CPU recipe: whichever its probe measures faster)
SGDS = ("auto", "fused", "foreach", "plain")  # auto: fused on CUDA, foreach elsewhere
RECIPES = ("paper", "fast", "cpu")  # train.paper, train.fast, train.cpu (chosen in train.cli)
INPUT_MODES = (*INPUTS, "auto")  # auto: fold for the pixel schemes (pixel, icip), raw otherwise
FOLD_SCHEMES = ("pixel", "icip")  # schemes whose key-free invariant is the fold (NP, optional CS)

# the torch release that first has each feature this package uses; pyproject's floor covers them
TORCH_NEEDS = {
    "fused SGD step on CUDA (torch.optim.SGD(fused=True), pytorch#116585)": "2.3",
    "fused SGD step on CPU (pytorch#123629)": "2.4",
}


@dataclass
class Config:
    """Everything that defines a run. Profiles (see ``train.resnet``) are sets of overrides."""

    model: str = "resnet18"
    model_args: dict = field(default_factory=dict)
    profile: str = "custom"
    recipe: str = "paper"  # RECIPES: train.paper, train.fast or train.cpu
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1  # peak lr for onecycle
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    norm_bias_decay: bool = True  # False: no weight decay on BatchNorm parameters and biases
    schedule: str = "step"
    milestones: list = field(default_factory=list)  # epochs, for "step"
    gamma: float = 0.1  # lr factor at each milestone
    warmup: float = 0.0  # fraction of all steps, for "onecycle"
    label_smoothing: float = 0.0
    ema: float = 0.0  # fast recipe: EMA decay per step of the evaluated weights (0: none)
    tta: int = 0  # fast/cpu recipes: 1 = mean of the logits of each image and its mirror; 2 = also 1-px shifts
    lookahead: bool = False  # cpu recipe: pull the weights to a slow copy every 5 steps (airbench)
    amp: str = "off"  # bf16 autocast: "bf16", "off" or "auto" (CUDA only)
    channels_last: bool | None = None  # None: on (NHWC layout: the batches' own; tensor cores on CUDA)
    sgd: str = "auto"  # SGD step implementation (SGDS)
    compile: bool = False
    prewarm: int = 2  # throwaway steps before the clock starts (model and optimiser restored after)
    flip: bool = False
    shift: int = 0
    fill: str = "zero"
    input: str = "raw"
    norm: str = "train"
    adapt: str | None = None  # adaptation network (train.adapt): None, "auto" (by scheme) or a name
    adapt_args: dict = field(default_factory=dict)  # filled from the manifest when the run starts
    data: str = "auto"
    workers: int = 4
    stream_group: int = 4  # --data stream: shards (or HDF5 blocks) whose samples are shuffled together
    seed: int = 0
    eval_every: int = 1
    eval_batch_size: int = 1024
    checkpoint_every: int = 1
    train_split: str = "auto"  # auto: the in-place expansion of train (ppdata augment) unless flip/shift run on the device
    test_split: str = "test"

    # fields that may differ between a run and its resumption (speed and bookkeeping, not the maths)
    RUNTIME = ("data", "workers", "eval_every", "eval_batch_size", "checkpoint_every", "compile", "sgd",
               "channels_last", "prewarm")

    def check(self) -> None:
        def bad(opt, msg):
            raise PpdataError(f"{opt}: {msg}")

        if self.model not in MODELS:
            bad("model", f"unknown {self.model!r}")
        if self.recipe not in RECIPES:
            bad("recipe", f"must be one of {RECIPES}")
        if self.epochs < 1:
            bad("--epochs", "must be at least 1")
        if self.batch_size < 1:
            bad("--batch-size", "must be at least 1")
        if self.schedule not in SCHEDULES:
            bad("--schedule", f"must be one of {SCHEDULES}")
        if self.amp not in AMPS:
            bad("--amp", f"must be one of {AMPS}")
        if self.sgd not in SGDS:
            bad("--sgd", f"must be one of {SGDS}")
        if self.input not in INPUT_MODES:
            bad("--input", f"must be one of {INPUT_MODES}")
        if self.norm not in NORMS:
            bad("--norm", f"must be one of {NORMS}")
        if self.fill not in FILLS:
            bad("--fill", f"must be one of {FILLS}")
        if self.data not in D.DATA_MODES:
            bad("--data", f"must be one of {D.DATA_MODES}")
        if not 0 <= self.warmup < 1:
            bad("--warmup", "must be in [0, 1)")
        if self.lr <= 0:
            bad("--lr", "must be positive")
        if not 0 <= self.ema < 1:
            bad("--ema", "must be in [0, 1)")
        if self.prewarm < 0:
            bad("prewarm", "must be >= 0")
        if self.recipe == "paper" and (self.ema or self.tta or self.lookahead):
            bad("--ema/--tta/--lookahead", "belong to the fast and cpu recipes (--profile fast, --profile cpu)")
        if self.adapt not in (None, "none", A.AUTO, *A.ADAPTERS):
            bad("--adapt", f"must be one of auto, none, {', '.join(A.ADAPTERS)}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def lr_at(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based)."""
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    total = cfg.epochs * steps_per_epoch
    warm = max(1, round(cfg.warmup * total)) if cfg.warmup else 0
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (total - step) / max(1, total - warm))


def resolve(cfg: Config, train: ShardSet, where: str) -> None:
    """Settle the ``auto`` choices that depend on the training folder, in place (the checkpoint
    records what was used): the input (fold for the pixel schemes) and the adaptation network."""
    if cfg.input == "auto":
        sch = train.scheme or {}
        cfg.input = "fold" if sch.get("encrypted") and sch.get("name") in FOLD_SCHEMES else "raw"
    if cfg.adapt == A.AUTO or (cfg.adapt not in (None, "none") and not cfg.adapt_args):
        try:
            cfg.adapt, cfg.adapt_args = A.resolve(cfg.adapt, train.scheme)
        except ValueError as e:
            raise PpdataError(f"{e} ({where})") from None


def train_split_of(cfg: Config, shards_dir, say=lambda m: None) -> str:
    """The split to train on: ``cfg.train_split``, or for ``auto``: ``train``'s one in-place
    expansion (``ppdata augment DIR`` adds e.g. ``trainx8``) when the run does no flip/shift of its
    own on the device, else ``train``. Several expansions need ``--train-split``."""
    if cfg.train_split != "auto":
        return cfg.train_split
    if cfg.flip or cfg.shift:
        return "train"
    found = expansions_of(read_manifest(shards_dir), "train")
    if len(found) > 1:
        raise PpdataError(f"{shards_dir} holds several expansions of train ({', '.join(found)}); choose one with "
                          f"--train-split")
    if found:
        say(f"training on split {found[0]}, the expansion of train that ppdata augment added to {shards_dir}")
        return found[0]
    return "train"


def expansion_next_to(folder: Path) -> Path | None:
    """A sibling folder that ``ppdata augment`` made from ``folder`` (its default name), if any."""

    try:
        parent_id = json.loads((folder / "manifest.json").read_text()).get("id")
        for sib in sorted(folder.resolve().parent.glob(folder.resolve().name + "-x*")):
            m = json.loads((sib / "manifest.json").read_text())
            if (m.get("augment") or {}).get("parent", {}).get("id") == parent_id:
                return folder.parent / sib.name
    except (OSError, ValueError):
        return None
    return None
