"""The model every recipe trains and every run folder holds: ``Classifier`` (the input
transform, an optional adaptation network, the network), its optimiser and one training step,
and ``load_model`` to get it back from a run folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ppdata.errors import PpdataError

from . import adapt as A
from .augment import Augment
from .config import SGDS, Config
from .models import MODELS
from .preprocess import Preprocess
from .rundir import CHECKPOINT
from .runtime import Kernels


class Classifier(nn.Module):
    """``Preprocess`` (fold, normalise), the optional adaptation network, then the network;
    input NCHW uint8. An adaptation network with ``raw_input`` gets the values before
    normalisation (see ``train.adapt``). ``channels_last``: the network's input in NHWC memory
    layout (as the batches arrive: ``x.permute(0, 3, 1, 2)`` of NHWC), else made NCHW-contiguous."""

    def __init__(self, pre: Preprocess, net: nn.Module, channels_last: bool = False, adapt: nn.Module | None = None):
        super().__init__()
        self.pre, self.net, self.channels_last = pre, net, channels_last
        self.adapt = adapt

    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the network sees of NCHW uint8 ``x``: the input transform, then the adaptation network."""
        raw = self.adapt is not None and getattr(self.adapt, "raw_input", False)
        x = self.pre.transform(x) if raw else self.pre(x)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if self.adapt is not None:
            x = self.adapt(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.net_input(x))


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
    head = "net.head.weight" if "net.head.weight" in ck["model"] else "net.fc.weight"
    n_classes = ck["model"][head].shape[0]
    net = MODELS[cfg["model"]](num_classes=n_classes, **cfg["model_args"])
    adapt = A.build(cfg["adapt"], cfg.get("adapt_args") or {}) if cfg.get("adapt") not in (None, "none") else None
    model = Classifier(Preprocess(ck["norm"]["mean"], ck["norm"]["std"], cfg["input"], sort), net, True, adapt)
    model.load_state_dict(ck["model"])
    return model.to(device).eval()
