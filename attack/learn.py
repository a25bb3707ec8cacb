"""Learned ciphertext-only attacks: the paper's 1x1 locally connected network and a small U-Net.

Both map an attacker-side input to the plain image and are trained with MSE on the attacker's own
(Enc(T), T) pairs. Tensors are (N, 3, H, W) float32 in [0, 1]; numpy images (N, H, W, 3) uint8.

``COANet`` (the paper's attack): three 1x1 *locally connected* layers with 8, 32 and 3 filters:
a separate small per-pixel network at every pixel position (weights not shared between
positions), ReLU after the first two layers, a linear output (clipped to [0, 1] when images are
made). Input: the encrypted image. Each pixel is reconstructed from its own three encrypted
values only, so under independent keys it can learn no more than E[p | e] per position.

``UNet``: a small convolutional encoder-decoder (3 levels, skip connections, BatchNorm, ReLU,
sigmoid output) that sees neighbourhoods. Input: the fold of the encrypted image (sorted per
pixel under CS), which holds all that the ciphertext says about the plain image (the key bits
it drops are independent of the image), so its results are the same for every key.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ppdata.cipher import fold


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def to_images(t: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8 (clipped, rounded)."""
    return t.detach().clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class _PixelLinear(torch.autograd.Function):
    """y = bias + x @ weight per position, x (P, N, Cin), weight (P, Cin, Cout), bias (P, 1, Cout).

    The backward pass makes its operands contiguous: autograd's default for ``baddbmm`` hands
    transposed views to ``bmm``, which then falls back to one small product per position
    (about 100x slower on CPU)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias, x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = torch.bmm(grad, weight.transpose(1, 2).contiguous())
        gw = torch.bmm(x.transpose(1, 2).contiguous(), grad)
        gb = grad.sum(dim=1, keepdim=True)
        return gx, gw, gb


class LocallyConnected1x1(nn.Module):
    """A 1x1 convolution whose weights differ at every pixel position: (N, Cin, H, W) ->
    (N, Cout, H, W), weight (H*W, Cin, Cout), bias (H*W, 1, Cout). Initialised like
    ``nn.Linear`` at every position."""

    def __init__(self, height: int, width: int, cin: int, cout: int):
        super().__init__()
        self.shape = (height, width)
        bound = 1.0 / math.sqrt(cin)
        self.weight = nn.Parameter(torch.empty(height * width, cin, cout).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(height * width, 1, cout).uniform_(-bound, bound))

    def forward_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """x: (H*W, N, Cin) -> (H*W, N, Cout): one batched matrix product over positions."""
        return _PixelLinear.apply(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.forward_pixels(x.permute(2, 3, 0, 1).reshape(h * w, n, c))
        return y.reshape(h, w, n, -1).permute(2, 3, 0, 1)


class COANet(nn.Module):
    """The paper's ciphertext-only attack network: 1x1 locally connected 3 -> 8 -> 32 -> 3."""

    def __init__(self, height: int, width: int, widths=(8, 32)):
        super().__init__()
        dims = (3, *widths, 3)
        self.layers = nn.ModuleList(LocallyConnected1x1(height, width, a, b) for a, b in zip(dims, dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = x.permute(2, 3, 0, 1).reshape(h * w, n, c)  # positions first, for batched products
        for i, layer in enumerate(self.layers):
            y = layer.forward_pixels(y)
            if i < len(self.layers) - 1:
                y = F.relu(y)
        return y.reshape(h, w, n, 3).permute(2, 3, 0, 1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A small U-Net on the fold: widths w, 2w, 4w at full, 1/2 and 1/4 resolution (H, W
    divisible by 4).

    ``head="candidates"`` (default): the network does not paint pixels, it chooses among the
    cipher's candidates. Input x = fold / 255 in [0, 0.5]. Per pixel it predicts, for every output
    channel c, the probability q_c that the value is the bright reading (1 - f rather than f) and,
    under CS, soft weights a_cj (softmax over j) for which sorted fold value j feeds channel c:
    ``out_c = sum_j a_cj (q_c (1 - x_j) + (1 - q_c) x_j)`` (NP: a = identity). Where it is sure it
    reproduces a candidate exactly, with all the fold's detail; where it is unsure it blends.
    ``head="direct"``: a sigmoid image, as a plain image-to-image network."""

    def __init__(self, width: int = 16, cs: bool = False, head: str = "candidates"):
        super().__init__()
        if head not in ("candidates", "direct"):
            raise ValueError(f"unknown head {head!r}")
        self.cs, self.head = cs, head
        w = width
        self.enc1, self.enc2, self.mid = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.out = nn.Conv2d(w, 3 + (9 if (cs and head == "candidates") else 0), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        z = self.out(self.dec1(torch.cat([self.up1(d2), e1], 1)))
        if self.head == "direct":
            return torch.sigmoid(z)
        q = torch.sigmoid(z[:, :3])  # (N, 3, H, W): bright reading of output channel c
        if not self.cs:
            return q * (1 - x) + (1 - q) * x
        n, _, h, w = x.shape
        a = torch.softmax(z[:, 3:].reshape(n, 3, 3, h, w), dim=2)  # (N, c, j, H, W)
        src = torch.einsum("ncjhw,njhw->nchw", a, x)  # sum_j a_cj x_j
        return q * (1 - src) + (1 - q) * src


@dataclass
class TrainConfig:
    """Training settings. Defaults: the paper's COA (SGD, momentum 0.9, 70 epochs, lr 0.1 /10 at
    epochs 40 and 60, weight decay 5e-4, batch 128). ``milestones=None`` scales 40/70 and 60/70
    to ``epochs``. ``optimizer="adam"`` uses Adam (lr, weight decay as given). ``crop``: train on
    random crops of this size (convolutional models only). ``loss_scale`` multiplies the mean
    squared error (``H*W`` for the locally connected network: each position's weights then
    learn at ``lr`` as if that position were trained alone)."""

    epochs: int = 70
    lr: float = 0.1
    milestones: list[int] | None = None
    gamma: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 128
    optimizer: str = "sgd"
    crop: int | None = None
    max_steps: int | None = None
    loss_scale: float = 1.0
    seed: int = 0
    log: list[dict] = field(default_factory=list)

    def schedule(self) -> list[int]:
        if self.milestones is not None:
            return list(self.milestones)
        return sorted({max(1, round(self.epochs * 40 / 70)), max(1, round(self.epochs * 60 / 70))})


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fit(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, cfg: TrainConfig,
        device: torch.device | str = "cpu", progress=None) -> nn.Module:
    """Train ``model`` with MSE from ``inputs`` to ``targets`` ((N, H, W, 3) uint8 each).

    Data stay uint8 on the device; batches are converted on the fly. ``progress(epoch, loss)``
    is called after each epoch. Stops early after ``cfg.max_steps`` steps (tests)."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    X = torch.from_numpy(np.ascontiguousarray(inputs)).to(device)
    Y = torch.from_numpy(np.ascontiguousarray(targets)).to(device)
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, cfg.schedule(), cfg.gamma)
    n, h, w, _ = X.shape
    steps = 0
    for epoch in range(cfg.epochs):
        t0 = time.time()
        perm = torch.randperm(n, generator=g).to(device)
        total, count = 0.0, 0
        for a in range(0, n, cfg.batch_size):
            idx = perm[a : a + cfg.batch_size]
            x, y = X[idx], Y[idx]
            if cfg.crop and cfg.crop < min(h, w):
                i = int(torch.randint(0, h - cfg.crop + 1, (1,), generator=g))
                j = int(torch.randint(0, w - cfg.crop + 1, (1,), generator=g))
                x, y = x[:, i : i + cfg.crop, j : j + cfg.crop], y[:, i : i + cfg.crop, j : j + cfg.crop]
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            y = y.permute(0, 3, 1, 2).float().div_(255.0)
            loss = F.mse_loss(model(x), y) * cfg.loss_scale
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) / cfg.loss_scale * len(idx)
            count += len(idx)
            steps += 1
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
        sched.step()
        cfg.log.append({"epoch": epoch + 1, "loss": total / max(1, count), "lr": opt.param_groups[0]["lr"],
                        "seconds": round(time.time() - t0, 2)})
        if progress is not None:
            progress(epoch + 1, total / max(1, count))
        if cfg.max_steps is not None and steps >= cfg.max_steps:
            break
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, inputs: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 256) -> np.ndarray:
    """Reconstructions (N, H, W, 3) uint8 of ``inputs`` (N, H, W, 3) uint8."""
    model.eval()
    out = []
    for a in range(0, len(inputs), batch_size):
        out.append(to_images(model(to_tensor(inputs[a : a + batch_size]).to(device))))
    return np.concatenate(out) if out else np.zeros_like(inputs)


def unet_input(encrypted: np.ndarray, cs: bool) -> np.ndarray:
    """The U-Net's input: the key-free fold of the encrypted images (sorted per pixel under CS)."""
    return fold(encrypted, cs)
