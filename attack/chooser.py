"""Choosing a global variant without the original: a small naturalness model.

Key-free reconstructions (the fold, neighbour consistency, a solved jigsaw...) are right at best up
to a global transform (``attack.variants``: a sign per channel and, under CS, a channel order; 8
or 48 candidates). Scoring the candidate closest to the original is an *oracle* (an upper bound).
An attacker has no original; it has its own plain images of the same kind. ``Chooser`` is what
such an attacker trains: a scorer of candidate images, trained on the attacker's images only,
that ranks the transforms of a reconstruction; the top-ranked one is the attacker's pick.

Features of a candidate (``features``): its mean per channel on a 4x4 grid of regions (where sky,
ground, foliage sit and what colour they are), the standard deviation of every channel and the
correlation of every pair of channels (a negated channel correlates negatively with the others).
They are linear or quadratic in the base image, so the features of all 8 or 48 transforms come
from one set of per-image statistics. The model: an MLP (features -> 32 -> 32 -> 1) whose scores
are soft-maxed over the candidates of an image and trained with cross-entropy on the attacker's
images: the candidates are the transforms of the *same* reconstruction of the attacker's own
images (e.g. their fold), the label the candidate closest to the attacker's own original
(luminance SSIM; the attacker holds those originals). Arrays: images (N, H, W, 3) uint8;
features (N, T, F) float32.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

GRID = 4


def _stats(rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid means (N, G, G, 3) and channel covariance (N, 3, 3) of ``rec``, float64."""
    n, h, w, _ = rec.shape
    x = rec.astype(np.float64)
    hs = np.linspace(0, h, GRID + 1).astype(int)
    ws = np.linspace(0, w, GRID + 1).astype(int)
    rows = np.add.reduceat(x, hs[:-1], axis=1) / np.diff(hs)[None, :, None, None]
    grid = np.add.reduceat(rows, ws[:-1], axis=2) / np.diff(ws)[None, None, :, None]
    flat = x.reshape(n, -1, 3)
    m = flat.mean(axis=1)
    cov = np.einsum("npc,npd->ncd", flat, flat) / flat.shape[1] - m[:, :, None] * m[:, None, :]
    return grid, cov


def features(rec: np.ndarray, ts) -> np.ndarray:
    """Features (N, T, F) of every transform ``ts[t] = (perm, neg)`` of ``rec`` (see module
    docstring): grid means / 255 - 0.5 (3 G^2), channel std / 128 (3), channel correlations (3)."""
    grid, cov = _stats(rec)
    n = len(rec)
    std = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 1e-6))  # (N, 3)
    corr = cov / (std[:, :, None] * std[:, None, :])
    out = []
    for perm, neg in ts:
        s = np.where(neg, -1.0, 1.0)
        g = grid[..., perm] * s + np.where(neg, 255.0, 0.0)
        c = corr[:, perm][:, :, perm] * (s[:, None] * s[None, :])
        out.append(np.concatenate([g.reshape(n, -1) / 255.0 - 0.5, std[:, perm] / 128.0,
                                   c[:, [0, 0, 1], [1, 2, 2]]], axis=1))
    return np.stack(out, axis=1).astype(np.float32)


class Chooser(nn.Module):
    """Scores candidates: (N, T, F) features -> (N, T) logits."""

    def __init__(self, n_features: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f).squeeze(-1)


def fit(feats: np.ndarray, quality: np.ndarray, steps: int = 300, lr: float = 3e-3, seed: int = 0) -> Chooser:
    """Train a ``Chooser`` on features (N, T, F) of the attacker's own candidates and their
    quality (N, T) (luminance SSIM to the attacker's own originals): it maximises the expected
    quality of its pick, ``sum_t softmax(scores)_t quality_t``."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Chooser(feats.shape[-1])
    X, Q = torch.from_numpy(feats), torch.from_numpy(np.asarray(quality, np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    batch = min(max(16, 6144 // X.shape[1]), len(X))  # about 6,000 candidates a step
    for _ in range(steps):
        idx = torch.randint(0, len(X), (batch,), generator=g)
        loss = -(torch.softmax(model(X[idx]), dim=1) * Q[idx]).sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class Picker:
    """The attacker's rule for one kind of reconstruction: a ``Chooser``, or one fixed transform
    where the model did not beat it on the attacker's held-out images. ``pick(feats)`` -> (N,)."""

    def __init__(self, model: Chooser | None, constant: int, report: dict):
        self.model, self.constant, self.report = model, int(constant), report

    def pick(self, feats: np.ndarray) -> np.ndarray:
        if self.model is None:
            return np.full(len(feats), self.constant, np.int64)
        return choose(self.model, feats)

    def pick_common(self, feats: np.ndarray) -> int:
        """One transform for all images (reconstructions sharing one frame, e.g. from one key
        estimate): the highest summed log-probability over the images."""
        if self.model is None:
            return self.constant
        with torch.no_grad():
            return int(torch.log_softmax(self.model(torch.from_numpy(feats)), dim=1).sum(dim=0).argmax())


def train(feats: np.ndarray, quality: np.ndarray, holdout: float = 0.2, seed: int = 0,
          fixed: bool = True) -> Picker:
    """A ``Picker`` from the attacker's own candidates: fit on a random 80% of them, and keep the
    model only if its picks beat the best fixed transform (chosen on the same 80%) on the other 20%
    (by more than 0.005 SSIM; a check the attacker can make, holding its own originals; with fewer than
    100 images the fixed transform is used). ``fixed=False``: no fixed
    transform (for reconstructions whose frame is arbitrary, a fixed transform means nothing)."""
    n = len(feats)
    order = np.random.default_rng(seed).permutation(n)  # images often come ordered by class
    feats, quality = feats[order], quality[order]
    cut = max(1, min(n - 1, int(round(n * (1 - holdout))))) if n > 1 else n
    const = int(quality[:cut].mean(axis=0).argmax())
    if n < (10 if not fixed else 100):
        if fixed:
            return Picker(None, const, {"images": n, "rule": "fixed transform (fewer than 100 images: too few to "
                                                            "check a model)"})
        cut = n
    model = fit(feats[:cut], quality[:cut], seed=seed)
    if cut == n:
        return Picker(model, const, {"images": n, "rule": "model (no held-out check: too few images)"})
    rows = np.arange(cut, n)
    v_model = float(quality[rows, choose(model, feats[cut:])].mean())
    v_const = float(quality[cut:, const].mean())
    keep = v_model > v_const + 0.005 or not fixed
    report = {"images": n, "holdout": n - cut, "holdout_ssim_model": round(v_model, 4),
              "holdout_ssim_fixed": round(v_const, 4), "fixed_transform": const,
              "rule": "model" if keep else "fixed transform (the model did not beat it on held-out images)"}
    return Picker(model if keep else None, const, report)


@torch.no_grad()
def choose(model: Chooser, feats: np.ndarray) -> np.ndarray:
    """Index (N,) of the top-ranked candidate of every image."""
    return model(torch.from_numpy(feats)).argmax(dim=1).numpy()
