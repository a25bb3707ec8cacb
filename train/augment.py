"""Random flip and shift of a batch, on the device, in the encrypted domain.

A per-pixel cipher commutes with both: flipping Enc(x) gives Enc'(flip(x)) under the flipped
key, shifting gives Enc'(shift(x)) under the shifted key. So the server can augment encrypted
images on the fly without any key, as an alternative to ``ppdata augment``'s fixed 8x expansion
(flip x2 and the four shifts (+-4, +-4)). Here every image gets, independently:

- a horizontal flip with probability 1/2;
- a translation (dy, dx), each uniform in ``-shift..shift``; vacated pixels are filled with 0
  (``fill="zero"``, as in the fixed expansion) or mirrored from the image (``fill="reflect"``,
  which is Enc'(reflect(x)) exactly).

Images are NHWC uint8 tensors (B, H, W, C); one gather per batch, no Python loop over images.
"""
from __future__ import annotations

import torch

FILLS = ("zero", "reflect")


def flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of NHWC ``x`` left-right with probability 1/2."""
    m = torch.rand(len(x), device=x.device, generator=generator) < 0.5
    return torch.where(m[:, None, None, None], x.flip(2), x)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Mirror indices into 0..n-1 without repeating the edge (numpy/torch 'reflect')."""
    period = 2 * (n - 1) if n > 1 else 1
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, fill: str = "zero") -> torch.Tensor:
    """Shift image b of NHWC ``x`` down by ``dy[b]`` and right by ``dx[b]`` pixels."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    B, H, W, _ = x.shape
    ys = torch.arange(H, device=x.device)[None, :] - dy[:, None]  # source row of each output row
    xs = torch.arange(W, device=x.device)[None, :] - dx[:, None]
    if fill == "reflect":
        out = x[torch.arange(B, device=x.device)[:, None, None], _reflect(ys, H)[:, :, None],
                _reflect(xs, W)[:, None, :]]
        return out
    valid = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]
    out = x[torch.arange(B, device=x.device)[:, None, None], ys.clamp(0, H - 1)[:, :, None],
            xs.clamp(0, W - 1)[:, None, :]]
    return torch.where(valid[..., None], out, torch.zeros((), dtype=x.dtype, device=x.device))


class Augment:
    """``flip`` and/or random ``shift`` (pixels) of NHWC uint8 batches, seeded per call site."""

    def __init__(self, flip: bool = True, shift: int = 4, fill: str = "zero"):
        if shift < 0:
            raise ValueError("shift must be >= 0")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        self.do_flip, self.shift, self.fill = flip, shift, fill

    @property
    def active(self) -> bool:
        return self.do_flip or self.shift > 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.do_flip:
            x = flip(x, generator)
        if self.shift:
            d = torch.randint(-self.shift, self.shift + 1, (2, len(x)), device=x.device, generator=generator)
            x = translate(x, d[0], d[1], self.fill)
        return x

    def describe(self) -> dict:
        return {"flip": self.do_flip, "shift": self.shift, "fill": self.fill}
