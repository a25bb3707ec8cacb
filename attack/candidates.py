"""Learned attack on the pixel scheme: classify, per pixel, which candidate of the fold is the plain pixel.

The fold ``f = fold(e, cs)`` (``ppdata.cipher.fold``) fixes every plain pixel up to T candidates:
a sign per channel (NP: T = 8) and, under CS, which sorted fold value feeds which channel (T = 48),
``cand_t[c] = f[perm_t[c]]`` or ``255 - f[perm_t[c]]`` where ``neg_t[c]`` (the transforms of
``attack.variants``, applied per pixel). ``CandidateUNet`` sees the fold (key-free: its output is
the same for every key, same or independent) and gives T logits per pixel; the reconstruction
takes the top candidate (``argmax``: wherever it is right the pixel is exact, colours included)
or the probability-weighted mean of the candidates (``mean``: softer where unsure). Training
minimises the cross-entropy of the *set* of right candidates (several are right where fold values
tie): ``logsumexp(all logits) - logsumexp(logits of right candidates)``.

Trained as an attacker trains it: on its own plain images, encrypted under fresh independent keys
(``attack.data.encrypt_as``) and folded, for a fixed wall-clock budget (``fit``), sized to the
device (``default_width``). Tensors are (N, C, H, W); images (N, H, W, 3) uint8.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import variants

PERMS = torch.from_numpy(variants.PERMS)  # (6, 3)


def _tables(cs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ts = variants.transforms(cs)
    perm = torch.from_numpy(np.stack([p for p, _ in ts]))  # (T, 3)
    neg = torch.from_numpy(np.stack([s for _, s in ts]))  # (T, 3) bool
    return perm, neg


def candidates(f: torch.Tensor, cs: bool) -> torch.Tensor:
    """Candidate values (N, T, 3, H, W) of fold ``f`` (N, 3, H, W), float in [0, 255]."""
    perm, neg = _tables(cs)
    perm, neg = perm.to(f.device), neg.to(f.device)
    src = f[:, perm]  # (N, T, 3, H, W)
    return torch.where(neg[None, :, :, None, None], 255 - src, src)


def right_candidates(f: torch.Tensor, x: torch.Tensor, cs: bool) -> torch.Tensor:
    """Mask (N, T, H, W): candidate t of fold ``f`` equals the plain pixel ``x`` (both (N, 3, H, W),
    integer values as float or uint8)."""
    perm, neg = _tables(cs)
    perm, neg = perm.to(f.device), neg.to(f.device)
    f, x = f.float(), x.float()
    pos = f[:, :, None] == x[:, None, :]  # (N, 3 source j, 3 channel c, H, W)
    negd = (255 - f)[:, :, None] == x[:, None, :]
    c = torch.arange(3, device=f.device)
    ok = torch.where(neg[None, :, :, None, None], negd[:, perm, c], pos[:, perm, c])  # (N, T, 3, H, W)
    return ok.all(dim=2)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CandidateUNet(nn.Module):
    """U-Net with ``levels`` resolutions (widths w, 2w, 4w, ...): fold (N, 3, H, W) in [0, 255] ->
    logits (N, T, H, W), T = 8 or 48 (H and W divisible by ``multiple``).

    ``scale`` = 2 runs the U-Net on the fold averaged over 2x2 pixels and upsamples its logits
    (bilinear) to every pixel: four times less computation for decisions that are mostly made per
    region (where the sign changes, the value is near mid-grey and both readings are close)."""

    def __init__(self, cs: bool, width: int = 16, levels: int = 4, scale: int = 1):
        super().__init__()
        self.cs, self.width, self.levels, self.scale = cs, width, levels, scale
        ws = [width * 2**i for i in range(levels)]
        self.down = nn.ModuleList([_block(3, ws[0])] + [_block(a, b) for a, b in zip(ws, ws[1:])])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(ws, ws[1:])])
        self.dec = nn.ModuleList([_block(2 * a, a) for a in ws[:-1]])
        self.head = nn.Conv2d(ws[0], 48 if cs else 8, 1)

    @property
    def multiple(self) -> int:
        return self.scale * 2 ** (self.levels - 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h = f / 63.75 - 1.0  # fold values 0..127.5 -> [-1, 1]
        if self.scale > 1:
            h = F.avg_pool2d(h, self.scale)
        skips = []
        for i, blk in enumerate(self.down):
            h = blk(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for i in reversed(range(self.levels - 1)):
            h = self.dec[i](torch.cat([self.up[i](h), skips[i]], 1))
        z = self.head(h)
        if self.scale > 1:
            z = F.interpolate(z, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return z


def set_cross_entropy(logits: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``-log P(right set)``: logits (N, T, H, W), right (N, T, H, W) bool."""
    z = torch.log_softmax(logits.float().permute(0, 2, 3, 1), -1)  # candidates last: reductions vectorise on CPU
    return -torch.logsumexp(z.masked_fill(~right.permute(0, 2, 3, 1), -1e4), -1).mean()


def reconstruct(logits: torch.Tensor, f: torch.Tensor, cs: bool, mode: str = "argmax") -> torch.Tensor:
    """Images (N, 3, H, W) float in [0, 255] from logits and fold: the top candidate per pixel
    (``argmax``) or the probability-weighted mean of the candidates (``mean``)."""
    cand = candidates(f.float(), cs)
    if mode == "argmax":
        k = logits.argmax(1)  # (N, H, W)
        return torch.gather(cand, 1, k[:, None, None].expand(-1, 1, 3, -1, -1))[:, 0]
    if mode == "mean":
        return (torch.softmax(logits, 1)[:, :, None] * cand).sum(1)
    raise ValueError(f"unknown mode {mode!r}")


def default_width(device: torch.device) -> int:
    """Base width by device: 16 on a CPU (a 15-minute budget sees a few epochs of 5,000
    96x96 images), 48 on a GPU."""
    return 48 if device.type == "cuda" else 16


@dataclass
class BudgetConfig:
    """Training of the candidate classifier under a wall-clock budget: Adam, lr ``lr`` with a
    linear warm-up over the first 3% of the budget and a cosine decay to 0 at the end (by
    elapsed time), random ``crop`` x ``crop`` crops (multiple of the net's ``multiple``) with a
    random horizontal flip, ``batch`` images per step. ``max_steps`` stops earlier (tests)."""

    minutes: float = 15.0
    lr: float = 2e-3
    batch: int = 16
    crop: int = 64
    weight_decay: float = 1e-4
    max_steps: int | None = None
    seed: int = 0
    log: list[dict] = field(default_factory=list)


def budget_config(device: torch.device, minutes: float, seed: int = 0) -> BudgetConfig:
    """Training settings sized to the device: on a GPU batches of 64 whole 96x96 images (crop 96),
    on a CPU batches of 16 crops of 64x64."""
    if device.type == "cuda":
        return BudgetConfig(minutes=minutes, batch=64, crop=96, seed=seed)
    return BudgetConfig(minutes=minutes, batch=16, crop=64, seed=seed)


def fit_budget(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, loss_fn, cfg: BudgetConfig,
               device: torch.device | str = "cpu", multiple: int = 1, progress=None) -> nn.Module:
    """Train ``model`` on ``inputs`` and ``targets`` ((N, H, W, 3) uint8 each, kept uint8 on the
    device) until ``cfg.minutes`` of wall-clock time have passed: random crops (a multiple of
    ``multiple``) and horizontal flips, ``loss_fn(model, input_float, target_uint8)`` on (B, 3,
    crop, crop) tensors. ``progress(step, seconds, loss)`` every 50 steps."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    model.to(memory_format=torch.channels_last)  # faster convolutions (oneDNN on CPU, cuDNN with bf16)
    Fd = torch.from_numpy(np.ascontiguousarray(inputs)).to(device).permute(0, 3, 1, 2).contiguous()
    Xd = torch.from_numpy(np.ascontiguousarray(targets)).to(device).permute(0, 3, 1, 2).contiguous()
    n, _, h, w = Fd.shape
    crop = max(multiple, min(cfg.crop, h, w) // multiple * multiple)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    budget = cfg.minutes * 60.0
    t0 = time.time()
    step, running = 0, None
    while True:
        elapsed = time.time() - t0
        if elapsed >= budget or (cfg.max_steps is not None and step >= cfg.max_steps):
            break
        frac = elapsed / budget
        lr = cfg.lr * min(1.0, frac / 0.03) * 0.5 * (1 + math.cos(math.pi * frac))
        for grp in opt.param_groups:
            grp["lr"] = max(lr, cfg.lr * 1e-3)
        idx = torch.randint(0, n, (cfg.batch,), generator=g).to(device)
        i = int(torch.randint(0, h - crop + 1, (1,), generator=g))
        j = int(torch.randint(0, w - crop + 1, (1,), generator=g))
        f = Fd[idx, :, i : i + crop, j : j + crop].float()
        x = Xd[idx, :, i : i + crop, j : j + crop]
        if bool(torch.randint(0, 2, (1,), generator=g)):
            f, x = f.flip(-1), x.flip(-1)
        f = f.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model, f, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        lv = float(loss.detach())
        running = lv if running is None else 0.98 * running + 0.02 * lv
        if step % 50 == 0:
            cfg.log.append({"step": step, "seconds": round(time.time() - t0, 1), "loss": round(running, 4),
                            "lr": round(lr, 6)})
            if progress is not None:
                progress(step, time.time() - t0, running)
    cfg.log.append({"step": step, "seconds": round(time.time() - t0, 1), "loss": running,
                    "images_seen": step * cfg.batch, "crop": crop})
    return model.eval()


def _candidate_loss(model, f, x):
    return set_cross_entropy(model(f), right_candidates(f, x, model.cs))


def fit(model: CandidateUNet, folds: np.ndarray, plain: np.ndarray, cfg: BudgetConfig,
        device: torch.device | str = "cpu", progress=None) -> CandidateUNet:
    """Train the candidate classifier on the attacker's folds and plain images ((N, H, W, 3)
    uint8 each) for ``cfg.minutes`` of wall-clock time (``fit_budget``)."""
    return fit_budget(model, folds, plain, _candidate_loss, cfg, device, model.multiple, progress)


@torch.no_grad()
def predict(model: CandidateUNet, folds: np.ndarray, device: torch.device | str = "cpu", mode: str = "argmax",
            batch: int = 32) -> np.ndarray:
    """Reconstructions (N, H, W, 3) uint8 from folds (N, H, W, 3) uint8 (images whose sides are
    not multiples of the net's ``multiple`` are padded by reflection and cropped back)."""
    model.eval()
    out = []
    m = model.multiple
    for a in range(0, len(folds), batch):
        f = torch.from_numpy(np.ascontiguousarray(folds[a : a + batch])).to(device).permute(0, 3, 1, 2).float()
        f = f.contiguous(memory_format=torch.channels_last)
        h, w = f.shape[2:]
        ph, pw = (-h) % m, (-w) % m
        fp = F.pad(f, (0, pw, 0, ph), mode="reflect") if (ph or pw) else f
        logits = model(fp)[:, :, :h, :w]
        rec = reconstruct(logits, f, model.cs, mode)
        out.append(rec.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros_like(folds)
