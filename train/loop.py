"""The training loop shared by ``train.resnet`` and ``train.densenet``.

``run(cfg, shards_dir, ...)`` trains on the folder's ``train`` split, evaluates every epoch on
its ``test`` split (Enc(Q), whatever key mode wrote it) and on each extra evaluation folder
(plain Q, same-key Enc(Q), ...), and writes into the run folder:

- ``log.csv``: one row per epoch (lr, train loss/accuracy, accuracy per evaluation set, seconds);
  a column for every evaluation set the run has had, across resumptions;
- ``metrics.json``: final and best accuracy per evaluation set, seconds, images/s, the full
  configuration, every folder's manifest scheme and key mode (rewritten each epoch with
  ``"complete": false`` until the run ends);
- ``checkpoint.pt``: model, optimiser, history; ``resume=True`` continues from it.

SGD with momentum; a step schedule (the paper's) or a one-cycle schedule (linear warm-up, then
linear decay to zero), set per step. Precision and kernels (``--amp``, ``--channels-last``,
``--sgd``, ``--compile``) run on any device; ``auto`` turns bf16 autocast and the fused SGD step
on for CUDA only, and channels_last (NHWC) on everywhere. A few throwaway steps before the clock
starts (``prewarm``) absorb cuDNN autotuning and compilation; epochs are timed with CUDA events
on a GPU. Under ``torchrun`` (any number of processes, one included) the model is wrapped in
DistributedDataParallel (NCCL on CUDA, gloo on CPU); rank 0 writes all files.

The fast recipe (``--profile fast``) is ``train.fast``: one file, one device, data resident on it.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ppdata.errors import PpdataError
from ppdata.fileio import atomic_json, atomic_write
from ppdata.machine import cpu_name
from ppdata.shards import ShardSet, expansions_of, open_shards, read_manifest

from . import adapt as A
from . import data as D
from .augment import FILLS, Augment
from .models import DenseNet, ResNet18, count_parameters
from .preprocess import INPUTS, NORMS, Preprocess, norm_stats

MODELS: dict[str, Callable[..., nn.Module]] = {"resnet18": ResNet18, "densenet40": DenseNet}
SCHEDULES = ("step", "onecycle")
AMPS = ("auto", "bf16", "off")  # auto: bf16 on CUDA, off elsewhere
SGDS = ("auto", "fused", "foreach", "plain")  # auto: fused on CUDA, foreach elsewhere
RECIPES = ("loop", "fast")  # this module's run(), or train.fast.run()
INPUT_MODES = (*INPUTS, "auto")  # auto: fold for the pixel schemes (pixel, icip), raw otherwise
FOLD_SCHEMES = ("pixel", "icip")  # schemes whose key-free invariant is the fold (NP, optional CS)
CHECKPOINT, METRICS, LOG = "checkpoint.pt", "metrics.json", "log.csv"

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
    recipe: str = "loop"  # "loop" (this module) or "fast" (train.fast)
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
    tta: bool = False  # fast recipe: evaluate on each image and its mirror (mean of the logits)
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
    shuffle_buffer: int = 10000
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
        if self.recipe != "fast" and (self.ema or self.tta):
            bad("--ema/--tta", "belong to the fast recipe (--profile fast)")
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


@dataclass(frozen=True)
class Kernels:
    """What the precision and kernel settings mean on this device."""

    amp: bool
    channels_last: bool
    sgd: str

    @classmethod
    def of(cls, cfg: Config, device: torch.device) -> "Kernels":
        cuda = device.type == "cuda"
        amp = cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)
        channels_last = True if cfg.channels_last is None else bool(cfg.channels_last)
        sgd = cfg.sgd if cfg.sgd != "auto" else ("fused" if cuda else "foreach")
        return cls(amp, channels_last, sgd)

    def describe(self) -> dict:
        return {"amp": "bf16" if self.amp else "off", "channels_last": self.channels_last, "sgd": self.sgd}


# ---------------------------------------------------------------------------------------------
# processes and devices


@dataclass
class Proc:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    ddp: bool = False  # a process group exists (torchrun), even with one process

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def setup_process(device: str) -> Proc:
    """Device and (under torchrun) the process group. ``device`` is auto, cpu or cuda."""
    ddp = under_torchrun()
    world = int(os.environ.get("WORLD_SIZE", "1")) if ddp else 1
    rank = int(os.environ.get("RANK", "0")) if ddp else 0
    local = int(os.environ.get("LOCAL_RANK", "0")) if ddp else 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise PpdataError("--device cuda: no CUDA device is available (use --device cpu)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device == "cpu":
        dev = torch.device("cpu")
        if world > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    else:
        raise PpdataError(f"--device must be auto, cpu or cuda, not {device!r}")
    if ddp and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return Proc(rank, world, local, dev, ddp)


def _all_sum(proc: Proc, t: torch.Tensor) -> torch.Tensor:
    if proc.ddp:
        dist.all_reduce(t)
    return t


def _all_min(proc: Proc, value: int) -> int:
    """The smallest ``value`` over all processes."""
    if not proc.ddp:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=proc.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def choose_data_mode(cfg: Config, train: ShardSet, proc: Proc) -> str:
    """``--data``, with ``auto`` decided once for all processes from the smallest free memory
    among them: a process choosing differently would run a different number of steps and
    leave the others waiting in an all-reduce."""
    if cfg.data != "auto":
        return cfg.data
    return D.choose_mode("auto", train, proc.device, free=_all_min(proc, D.free_memory(proc.device)))


def sync_batchnorm_stats(model: nn.Module, proc: Proc) -> None:
    """Give every process the same BatchNorm running statistics: the mean over processes of
    ``running_mean``/``running_var`` (DDP keeps parameters equal, not these buffers: each process
    updates them from its own last batches). Called before evaluating and checkpointing."""
    if not proc.ddp or proc.world == 1:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for b in (m.running_mean, m.running_var):
                dist.all_reduce(b)
                b.div_(proc.world)
            dist.broadcast(m.num_batches_tracked, 0)


class Clock:
    """Seconds between ``start()`` and ``stop()``: CUDA events on a GPU (recorded on the stream,
    no host synchronisation until ``stop``), ``perf_counter`` elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            self._a = torch.cuda.Event(enable_timing=True)
            self._a.record()
        else:
            self._t = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            b = torch.cuda.Event(enable_timing=True)
            b.record()
            b.synchronize()
            return self._a.elapsed_time(b) / 1000
        return time.perf_counter() - self._t


def prewarm(steps: int, model: nn.Module, opt: torch.optim.Optimizer, step: Callable[[], None],
            evaluate: Callable[[], None] | None = None) -> float:
    """Run ``step()`` ``steps`` times and ``evaluate()`` once (cuDNN autotuning, torch.compile,
    allocator growth), then restore the model, the optimiser and the random generators: the run
    continues exactly as if nothing had happened. Returns the seconds spent."""
    if steps <= 0:
        return 0.0
    t = time.perf_counter()
    dev = next(model.parameters()).device
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        for _ in range(steps):
            step()
        if evaluate is not None:
            evaluate()
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# the model and its optimiser


class Classifier(nn.Module):
    """``Preprocess`` (fold, normalise), the optional adaptation network, then the network;
    input NCHW uint8. An adaptation network with ``raw_input`` gets the values before
    normalisation (see ``train.adapt``). ``channels_last``: the network's input in NHWC memory
    layout (as the batches arrive: ``x.permute(0, 3, 1, 2)`` of NHWC), else made NCHW-contiguous."""

    def __init__(self, pre: Preprocess, net: nn.Module, channels_last: bool = False, adapt: nn.Module | None = None):
        super().__init__()
        self.pre, self.net, self.channels_last = pre, net, channels_last
        self.adapt = adapt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.adapt is not None and getattr(self.adapt, "raw_input", False)
        x = self.pre.transform(x) if raw else self.pre(x)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if self.adapt is not None:
            x = self.adapt(x)
        return self.net(x)


def make_model(cfg: Config, num_classes: int, mean, std, sort: bool, device: torch.device,
               channels_last: bool = False) -> Classifier:
    net = MODELS[cfg.model](num_classes=num_classes, **cfg.model_args)
    adapt = A.build(cfg.adapt, cfg.adapt_args) if cfg.adapt not in (None, "none") else None
    model = Classifier(Preprocess(mean, std, cfg.input, sort), net, channels_last, adapt).to(device)
    if device.type == "cpu":
        avoid_onednn_narrow_strided_1x1(model)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def avoid_onednn_narrow_strided_1x1(model: nn.Module) -> bool:
    """Turn oneDNN off for CPU convolutions if ``model`` has a strided 1x1 convolution with fewer
    than 8 input channels (narrow test widths such as ``--width 4``): the AVX2 kernel of its
    weight gradient crashes the process (segmentation fault) on NHWC input in this torch build.
    Real widths (ResNet-18's 64) never take this path. Returns True if oneDNN was turned off."""
    narrow = any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8
                 for m in model.modules())
    if narrow and torch.backends.mkldnn.enabled:
        torch.backends.mkldnn.enabled = False
        return True
    return False


def param_groups(model: nn.Module, weight_decay: float, norm_bias_decay: bool = True) -> list[dict]:
    """Optimiser parameter groups: one group, or (``norm_bias_decay=False``) weights with
    ``weight_decay`` and BatchNorm parameters plus every bias (all 1-D parameters) without."""
    params = [p for p in model.parameters() if p.requires_grad]
    if norm_bias_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    flat = [p for p in params if p.ndim <= 1]
    ids = {id(p) for p in flat}
    return [{"params": [p for p in params if id(p) not in ids], "weight_decay": weight_decay},
            {"params": flat, "weight_decay": 0.0}]


def make_optimizer(cfg: Config, model: nn.Module, impl: str | None = None) -> torch.optim.SGD:
    """SGD with momentum (Nesterov if configured). ``impl``: fused, foreach or plain (a Python
    loop over parameters); default from ``cfg.sgd`` and the model's device (``Kernels``)."""
    impl = impl or Kernels.of(cfg, next(model.parameters()).device).sgd
    if impl not in SGDS[1:]:
        raise PpdataError(f"--sgd must be one of {SGDS}, not {impl!r}")
    kw = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    return torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.norm_bias_decay), lr=cfg.lr,
                           momentum=cfg.momentum, nesterov=cfg.nesterov, **kw)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, augment: Augment,
               gen: torch.Generator | None, amp: bool, label_smoothing: float = 0.0):
    """One SGD step on an NHWC uint8 batch already on the device; returns (loss, logits), detached.

    No host synchronisation: nothing here waits for the device."""
    if augment.active:
        x = augment(x, gen)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x.permute(0, 3, 1, 2))
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), logits.detach()


def synthetic_batch(shape, batch_size: int, classes: int, device: torch.device, seed: int = 0):
    """A random NHWC uint8 batch and labels on ``device`` (for warm-up steps)."""
    g = D.generator(device, seed, 0xC0FFEE)
    x = torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8, device=device, generator=g)
    y = torch.randint(0, max(1, classes), (batch_size,), device=device, generator=g)
    return x, y


# ---------------------------------------------------------------------------------------------
# evaluation sets


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
def evaluate(model: nn.Module, es: EvalSet, cfg: Config, proc: Proc, amp: bool, tta: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``es`` (each process a slice, counts summed). ``tta``: the
    mean of the logits of each image and its mirror (flipping commutes with the per-pixel
    cipher, so this needs no key)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=proc.device)
    count = torch.zeros((), dtype=torch.int64, device=proc.device)
    for x, y in D.eval_batches(es.split, cfg.eval_batch_size, proc.rank, proc.world):
        x = x.permute(0, 3, 1, 2)
        with torch.autocast(proc.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
            if tta:
                logits = logits + model(x.flip(3)).float()
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    stats = _all_sum(proc, torch.stack([correct, count]))
    return stats[0].item() / max(1, stats[1].item())


# ---------------------------------------------------------------------------------------------
# run folder


def _atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_json(obj, path: Path) -> None:
    atomic_json(path, obj)


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


# ---------------------------------------------------------------------------------------------
# the run


def describe_device(proc: Proc) -> str:
    if proc.device.type == "cuda":
        return f"{proc.device} ({torch.cuda.get_device_name(proc.device)})"
    return f"cpu ({cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


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


def _expansion_next_to(folder: Path) -> Path | None:
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


def say_fn(quiet: bool, proc: Proc):
    return (lambda *a: None) if (quiet or not proc.main) else (lambda m: tqdm.write(m, file=sys.stderr))


def run(cfg: Config, shards_dir: str | os.PathLike, out: str | os.PathLike, eval_dirs: list[str] = (),
        device: str = "auto", resume: bool = False, overwrite: bool = False, quiet: bool = False,
        command: str | None = None) -> dict:
    """Train ``cfg`` on ``shards_dir`` and write the run folder ``out``; returns the metrics (rank 0).

    ``command``: the command line, recorded in metrics.json. ``cfg.recipe == "fast"`` runs
    ``train.fast.run`` instead."""
    if cfg.recipe == "fast":
        from .fast import run as run_fast

        return run_fast(cfg, shards_dir, out, eval_dirs, device, resume, overwrite, quiet, command)
    t_start = time.perf_counter()
    cfg.check()
    proc = setup_process(device)
    kern = Kernels.of(cfg, proc.device)
    out = Path(out)
    say = say_fn(quiet, proc)

    cfg.train_split = train_split_of(cfg, shards_dir, say)
    train = open_shards(shards_dir, cfg.train_split)
    if not train.classes:
        raise PpdataError(f"{shards_dir}: the manifest lists no classes")
    resolve(cfg, train, str(shards_dir))
    if not train.augment and not (cfg.flip or cfg.shift):
        hint = _expansion_next_to(Path(shards_dir))
        say(f"note: {shards_dir} is not expanded and this profile does no on-device flip/shift"
            + (f"; {hint} holds an expansion of it (ppdata augment): train on that" if hint else
               "; expand it with `ppdata augment` or pass --augment"))
    evals = eval_sets(train, shards_dir, list(eval_dirs), cfg.test_split)
    ck = prepare_out(out, resume, overwrite)
    if ck is not None:
        check_resume(cfg, ck, train)
    if proc.ddp:
        dist.barrier()  # every process has checked the folder before rank 0 writes to it
    if proc.main:
        out.mkdir(parents=True, exist_ok=True)
    sort = bool(train.scheme.get("cs")) and cfg.input == "fold"

    # data
    t0 = time.perf_counter()
    mode = choose_data_mode(cfg, train, proc)
    if mode == "memory":
        tsplit = D.load_split(train, proc.device)
        loader = D.DeviceLoader(tsplit, cfg.batch_size, cfg.seed, proc.rank, proc.world)
        stat_images = tsplit.images
    else:
        loader = D.StreamLoader(train, cfg.batch_size, proc.device, cfg.seed, proc.rank, proc.world,
                                cfg.workers, cfg.shuffle_buffer)
        stat_images = None
    for es in evals:
        es.split = D.load_split(es.shards, proc.device)
    if ck is not None:
        mean, std = ck["norm"]["mean"], ck["norm"]["std"]
    else:
        if stat_images is None and cfg.norm == "train":
            stat_images = D.head_images(train)
        mean, std = norm_stats(cfg.norm, stat_images, cfg.input, sort)
    del stat_images
    load_seconds = time.perf_counter() - t0
    augment = Augment(cfg.flip, cfg.shift, cfg.fill)

    # model and optimiser
    torch.manual_seed(cfg.seed)  # the initial weights (DDP then broadcasts rank 0's)
    model = make_model(cfg, len(train.classes), mean, std, sort, proc.device, kern.channels_last)
    net = model.net
    opt = make_optimizer(cfg, model, kern.sgd)
    history: list[dict] = []
    start_epoch, prior_seconds = 0, 0.0
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        history, start_epoch, prior_seconds = ck["history"], ck["epoch"], ck["seconds"]
    step_model = model
    if proc.ddp:
        cuda_ids = [proc.device.index] if proc.device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=cuda_ids)
    if cfg.compile:
        step_model = torch.compile(step_model)
    steps = len(loader)

    info = {
        "model": cfg.model, "params": count_parameters(net), "profile": cfg.profile, "recipe": "loop",
        "command": command, "config": cfg.to_json(),
        "device": describe_device(proc), "world_size": proc.world, "torch": torch.__version__,
        "effective": {**kern.describe(), "compile": cfg.compile, "data": mode, "ddp": proc.ddp,
                      "steps_per_epoch": steps, "global_batch": cfg.batch_size * proc.world},
        "train": {"dir": str(train.directory), "split": train.split, "count": len(train), "format": train.format,
                  "scheme": train.scheme, "key_mode": train.key_mode, "manifest_id": train.manifest.get("id")},
        "input": {"mode": cfg.input, "sort": sort}, "norm": {"mode": cfg.norm, "mean": mean, "std": std},
        "adapt": ({"name": cfg.adapt, "args": cfg.adapt_args, "params": count_parameters(model.adapt)}
                  if model.adapt is not None else None),
        "augment": augment.describe(),
    }
    fields = log_fields(evals, history)
    if proc.main:
        write_log(out / LOG, fields, history)
    adapt_text = f" behind adaptation network {cfg.adapt} ({info['adapt']['params']:,})" if info["adapt"] else ""
    say(f"{cfg.model} ({info['params']:,} parameters){adapt_text}, profile {cfg.profile}, {info['device']}"
        f"{f' x{proc.world}' if proc.world > 1 else ''}; train {len(train):,} images ({train.format}, "
        f"{_scheme_text(train)}), {mode} loading in {load_seconds:.1f}s; eval on "
        + ", ".join(f"{es.name} ({len(es.shards):,}, {_scheme_text(es.shards)})" for es in evals)
        + (f"; resuming after epoch {start_epoch}" if ck is not None else ""))

    # warm-up outside the clock: the first steps autotune cuDNN and compile; workers start
    prewarm_seconds = 0.0
    if start_epoch < cfg.epochs:
        if isinstance(loader, D.StreamLoader):
            loader.prefetch(start_epoch)
        wx, wy = synthetic_batch(train.shape, cfg.batch_size, len(train.classes), proc.device, cfg.seed)
        wgen = D.generator(proc.device, cfg.seed, 0xC0FFEE)
        prewarm_seconds = prewarm(
            cfg.prewarm, model, opt,
            lambda: train_step(step_model, opt, wx, wy, augment, wgen, kern.amp, cfg.label_smoothing),
            lambda: evaluate(model, EvalSet("warm-up", train, D.Split(train, wx[: cfg.eval_batch_size],
                                                                       wy[: cfg.eval_batch_size])),
                             cfg, proc, kern.amp) if evals else None)

    def metrics(complete: bool) -> dict:
        m = dict(info)
        train_s = sum(h["train_seconds"] for h in history)
        seen = len(history) * steps * cfg.batch_size * proc.world
        m.update(complete=complete, epochs_done=len(history),
                 seconds=prior_seconds + time.perf_counter() - t_start, load_seconds=load_seconds,
                 prewarm_seconds=prewarm_seconds, train_seconds=train_s,
                 images_per_s=seen / train_s if train_s else None,
                 final_train_loss=history[-1]["train_loss"] if history else None,
                 final_train_acc=history[-1]["train_acc"] if history else None)
        m["eval"] = eval_summary(evals, history)
        return m

    def save_checkpoint(epoch: int) -> None:
        _atomic_save({"config": cfg.to_json(), "epoch": epoch, "model": model.state_dict(),
                      "optimizer": opt.state_dict(), "history": history, "norm": {"mean": mean, "std": std},
                      "train": info["train"], "seconds": prior_seconds + time.perf_counter() - t_start},
                     out / CHECKPOINT)

    clock = Clock(proc.device)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            step_model.train()
            clock.start()
            loss_sum = torch.zeros((), device=proc.device)
            correct = torch.zeros((), dtype=torch.int64, device=proc.device)
            gen = D.generator(proc.device, cfg.seed, epoch, proc.rank, 7)
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr,
                       disable=quiet or not proc.main, mininterval=1.0, unit="batch")
            for i, (x, y) in enumerate(loader.epoch(epoch)):
                lr = lr_at(cfg, epoch * steps + i, steps)
                set_lr(opt, lr)
                loss, logits = train_step(step_model, opt, x, y, augment, gen, kern.amp, cfg.label_smoothing)
                loss_sum += loss.float() * len(y)
                correct += (logits.argmax(1) == y).sum()
                bar.update(1)
            bar.close()
            sums = _all_sum(proc, torch.stack([loss_sum.double(), correct.double()]))
            train_s = clock.stop()
            sync_batchnorm_stats(model, proc)
            n = steps * cfg.batch_size * proc.world
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": sums[0].item() / n, "train_acc": sums[1].item() / n,
                   "train_seconds": train_s, "images_per_s": n / train_s}
            last = epoch + 1 == cfg.epochs
            for es in evals:
                do = last or (epoch + 1) % max(1, cfg.eval_every) == 0
                row[f"acc_{es.name}"] = evaluate(model, es, cfg, proc, kern.amp) if do else ""
            row["elapsed_seconds"] = prior_seconds + time.perf_counter() - t_start
            history.append(row)
            if proc.main:
                write_log(out / LOG, fields, history)
                if last or (epoch + 1) % max(1, cfg.checkpoint_every) == 0:
                    save_checkpoint(epoch + 1)
                _atomic_json(metrics(False), out / METRICS)
            accs = "  ".join(f"{es.name} {row[f'acc_{es.name}']:.2%}" for es in evals if row[f"acc_{es.name}"] != "")
            say(f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  train {row['train_acc']:.2%}  "
                f"{accs}  lr {lr:.4g}  {train_s:.1f}s ({row['images_per_s']:,.0f} img/s)")
    finally:
        if isinstance(loader, D.StreamLoader):
            loader.close()

    result = metrics(True)
    if proc.ddp:
        result["ranks_in_sync"] = ranks_in_sync(model, proc)
    if proc.main:
        _atomic_json(result, out / METRICS)
        say(f"done in {result['seconds']:.1f}s: " + ", ".join(
            f"{k} final {v['final_acc']:.2%} best {v['best_acc']:.2%}" for k, v in result["eval"].items()
            if v["final_acc"] is not None) + f"; {out / METRICS}")
    if proc.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return result


def ranks_in_sync(model: nn.Module, proc: Proc) -> bool:
    """True when every process holds bit-identical parameters (DDP's invariant) and buffers
    (BatchNorm statistics, after ``sync_batchnorm_stats``)."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in (*model.parameters(), *model.buffers())])
    probe = torch.stack([flat.sum(), (flat * torch.arange(1, len(flat) + 1, device=flat.device)).sum()])
    everyone = [torch.zeros_like(probe) for _ in range(proc.world)]
    dist.all_gather(everyone, probe)
    return all(torch.equal(everyone[0], e) for e in everyone)


def _scheme_text(s: ShardSet) -> str:
    sch = s.scheme or {}
    if not sch.get("encrypted"):
        return "plain"
    parts = [k.upper() for k in ("np", "cs") if sch.get(k)]
    name = "+".join(parts) if sch.get("name") == "pixel" and parts else sch.get("name", "?")
    return f"{name}, {s.key_mode or '?'} keys"


def load_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Classifier:
    """The trained classifier of a run folder (from its checkpoint), in eval mode.

    Input: NCHW uint8 tensors (``images.permute(0, 3, 1, 2)`` of NHWC shards); output: logits.
    For a fast-recipe run these are its evaluated (EMA) weights."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise PpdataError(f"{path} does not exist")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    sort = bool(ck["train"]["scheme"].get("cs")) and cfg["input"] == "fold"
    n_classes = ck["model"]["net.fc.weight"].shape[0]
    net = MODELS[cfg["model"]](num_classes=n_classes, **cfg["model_args"])
    adapt = A.build(cfg["adapt"], cfg.get("adapt_args") or {}) if cfg.get("adapt") not in (None, "none") else None
    model = Classifier(Preprocess(ck["norm"]["mean"], ck["norm"]["std"], cfg["input"], sort), net, True, adapt)
    model.load_state_dict(ck["model"])
    return model.to(device).eval()
