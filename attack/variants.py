"""Global ambiguities of key-free reconstructions, and how an attacker resolves them.

A reconstruction computed from the key-free invariant (``ppdata.cipher.fold``) can only be right up
to a *global* transform: negating a channel everywhere (NP: 2^3 = 8 sign patterns) and, under CS,
reordering the channels everywhere (3! = 6 orders), 8 or 48 transforms in all. A transform is a
pair ``(perm, neg)``: ``out[..., c] = x[..., perm[c]]``, then ``255 - out[..., c]`` where
``neg[c]``.

An attacker resolves the ambiguity by looking at the 8 or 48 candidate images and keeping the
natural-looking one. ``best`` models that attacker by the transform with the highest luminance
SSIM to the original (an upper bound on a human's pick; it needs the original, so it is a
measurement device, not an attack on its own). All 8 or 48 SSIMs come from one set of Gaussian
moments per image (luminance is linear in R, G, B) and equal scikit-image's values to about 1e-7
(float32 arithmetic per transform); reported SSIMs are recomputed with scikit-image.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy.ndimage import gaussian_filter

from .metrics import LUMA, SSIM_SETTINGS

PERMS = np.array(list(itertools.permutations(range(3))), np.int64)  # (6, 3), identity first
SIGNS = np.array(list(itertools.product([False, True], repeat=3)), bool)  # (8, 3), none negated first


def transforms(cs: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 8 (NP) or 48 (NP+CS) global transforms ``(perm, neg)``; the identity first."""
    perms = PERMS if cs else PERMS[:1]
    return [(p, s) for p in perms for s in SIGNS]


def apply(images: np.ndarray, perm, neg) -> np.ndarray:
    """Apply one transform to ``(N, H, W, 3)`` uint8 images, or per image with ``perm`` (N, 3) and
    ``neg`` (N, 3)."""
    perm = np.asarray(perm)
    neg = np.asarray(neg, bool)
    if perm.ndim == 1:
        out = images[..., perm]
        return np.where(neg, 255 - out, out).astype(np.uint8)
    out = np.take_along_axis(images, perm[:, None, None, :], axis=-1)
    return np.where(neg[:, None, None, :], 255 - out, out).astype(np.uint8)


def _blur(a: np.ndarray) -> np.ndarray:
    """The Gaussian window of ``attack.metrics`` (sigma 1.5, truncate 3.5, reflect) over H, W of
    (B, H, W) float64 arrays: scikit-image's filter, image by image."""
    return gaussian_filter(a, sigma=(0, SSIM_SETTINGS["sigma"], SSIM_SETTINGS["sigma"]), truncate=3.5, mode="reflect")


def ssim_all(rec: np.ndarray, ref: np.ndarray, cs: bool, chunk: int = 16) -> np.ndarray:
    """Luminance SSIM (``attack.metrics.ssim``) of every transform of ``rec`` against ``ref``:
    (N, T) float64, T = 8 or 48 in the order of ``transforms(cs)``.

    A transform's luminance is ``k + sum_d u_d x_d`` (``u_d`` = the BT.601 weight of the output
    channel fed by input channel d, negated where that channel is negated), so its local means,
    variances and covariance with the reference's luminance follow from the Gaussian moments of
    x_d, x_d x_e, x_d y, y and y^2: 14 filtered maps per image instead of 5 per transform, and
    the per-transform part is a few products on the cropped maps."""
    ts = transforms(cs)
    n, h, w, _ = rec.shape
    out = np.empty((n, len(ts)), np.float64)
    L = SSIM_SETTINGS["data_range"]
    C1 = (SSIM_SETTINGS["K1"] * L) ** 2
    C2 = (SSIM_SETTINGS["K2"] * L) ** 2
    pad = 5  # the half-window of sigma 1.5, truncate 3.5, cropped as scikit-image does
    U = np.zeros((len(ts), 3))
    K = np.zeros(len(ts))
    for t, (perm, neg) in enumerate(ts):
        for c in range(3):
            U[t, perm[c]] += -LUMA[c] if neg[c] else LUMA[c]
            K[t] += 255.0 * LUMA[c] if neg[c] else 0.0
    pairs = [(d, e) for d in range(3) for e in range(d, 3)]
    UU = np.stack([U[:, d] * U[:, e] * (1.0 if d == e else 2.0) for d, e in pairs], axis=1)  # (T, 6)
    inner = (slice(None), slice(pad, h - pad), slice(pad, w - pad))
    for a in range(0, n, chunk):
        x = rec[a : a + chunk].astype(np.float64)
        y = ref[a : a + chunk].astype(np.float64) @ LUMA
        b = len(x)
        mx = [_blur(x[..., d]) for d in range(3)]
        my = _blur(y)
        cxx = np.stack([(_blur(x[..., d] * x[..., e]) - mx[d] * mx[e])[inner].ravel() for d, e in pairs])
        cxy = np.stack([(_blur(x[..., d] * y) - mx[d] * my)[inner].ravel() for d in range(3)])
        vy = (_blur(y * y) - my * my)[inner].ravel()
        f32 = np.float32
        mxs = np.stack([m[inner].ravel() for m in mx]).astype(f32)  # (3, M)
        my = my[inner].ravel().astype(f32)
        den_y = my * my + f32(C1)
        vy = (vy + C2).astype(f32)
        mu = U.astype(f32) @ mxs  # (T, M)
        mu += K.astype(f32)[:, None]
        var = UU.astype(f32) @ cxx.astype(f32)
        var += vy
        cov = U.astype(f32) @ cxy.astype(f32)
        cov *= 2
        cov += f32(C2)
        num = mu * my
        num *= 2
        num += f32(C1)
        num *= cov
        mu *= mu
        mu += den_y
        mu *= var  # the denominator
        num /= mu
        out[a : a + b] = num.reshape(len(ts), b, -1).mean(axis=2, dtype=np.float64).T
    return out


def best(rec: np.ndarray, ref: np.ndarray, cs: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the transform of ``rec`` with the highest luminance SSIM to ``ref``.
    Returns (images, index into ``transforms(cs)``)."""
    ts = transforms(cs)
    k = ssim_all(rec, ref, cs).argmax(axis=1)
    perm = np.stack([ts[i][0] for i in k]) if len(k) else np.zeros((0, 3), np.int64)
    neg = np.stack([ts[i][1] for i in k]) if len(k) else np.zeros((0, 3), bool)
    return apply(rec, perm, neg), k
