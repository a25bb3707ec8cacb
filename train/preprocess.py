"""What the network sees: uint8 images -> (optional fold) -> per-channel normalisation.

``Preprocess`` is the model's first layer, so training and every evaluation set (Enc(Q) under
any key mode, plain Q) go through exactly the same transform, and checkpoints carry it.

Input modes (``--input``):

- ``raw``: the stored pixels (Enc(x) for encrypted shards).
- ``fold``: the key-free invariant of the pixel scheme, ``min(e, 255 - e)`` per channel, then
  sorted ascending over the three channels of each pixel when the training manifest says CS.
  NP flips the sign of each value at random and CS permutes the channels of each pixel at
  random, so the fold of Enc(x) equals the fold of x under any key: the discarded bits are
  pure key noise. A model trained on folded inputs gives identical predictions for Q and Enc(Q).
  Same as ``ppdata.cipher.fold``, done on the device.

Normalisation (``--norm``): ``train`` uses the per-channel mean/std of the training shards
*after* the input transform (the server computes them from what it holds: no plain
statistics are needed); ``half`` uses a fixed mean 127.5 and std 127.5 (i.e. 0.5/0.5 on [0, 1]).
"""
from __future__ import annotations

import torch
from torch import nn

INPUTS = ("raw", "fold")
NORMS = ("train", "half")


def fold(x: torch.Tensor, sort: bool, channel_dim: int = 1) -> torch.Tensor:
    """``min(x, 255 - x)`` per value, sorted ascending along ``channel_dim`` if ``sort``.

    Works on uint8 or float tensors of values 0..255 (exact in both)."""
    x = torch.minimum(x, 255 - x)
    if sort:
        x = x.sort(dim=channel_dim).values
    return x


class Preprocess(nn.Module):
    """uint8 (B, 3, H, W) -> float32 (B, 3, H, W): optional fold, then (x - mean) / std."""

    def __init__(self, mean, std, input: str = "raw", sort: bool = False):
        super().__init__()
        if input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
        self.input = input
        self.sort = bool(sort)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The input transform before normalisation (float32, values 0..255)."""
        x = x.float()
        if self.input == "fold":
            x = fold(x, self.sort)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.transform(x) - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"input={self.input}, sort={self.sort}"


@torch.no_grad()
def channel_stats(images: torch.Tensor, input: str = "raw", sort: bool = False,
                  values: int = 1 << 24) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of NHWC uint8 ``images`` after the input transform.

    Float64 sums over chunks of about ``values`` values (128 MiB as float64), on the images'
    device: memory stays bounded whatever the image size."""
    pre = Preprocess([0, 0, 0], [1, 1, 1], input, sort).to(images.device)
    s = torch.zeros(3, dtype=torch.float64, device=images.device)
    s2 = torch.zeros(3, dtype=torch.float64, device=images.device)
    n = 0
    chunk = max(1, values // max(1, images[0].numel())) if len(images) else 1
    for a in range(0, len(images), chunk):
        x = pre.transform(images[a : a + chunk].permute(0, 3, 1, 2)).double()
        s += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
        n += x.numel() // 3
    if n == 0:
        raise ValueError("no images to compute statistics from")
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(1e-6).sqrt()
    return mean.tolist(), std.tolist()


def norm_stats(norm: str, images: torch.Tensor | None, input: str, sort: bool):
    if norm == "half":
        return [127.5] * 3, [127.5] * 3
    if norm == "train":
        return channel_stats(images, input, sort)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
