"""Ciphertext-only attack on Tanaka's learnable image encryption (LE), per image or under one key.

LE (``ppdata.schemes.LeScheme``) shuffles and reverses the 2d = 6 M^2 four-bit components of every
M x M block with one key shared by *all* blocks of an image. So each output component j is one
input component, possibly reversed, in every block: a row of nb values (one per block) that is,
for the d high nibbles, a sub-sampled copy of one colour channel of the image. The attack reads
the key's structure back from those rows (``components``: (2d, nb) per image, as in
``attack.known_plaintext.le_components``):

1. high nibbles: the d rows most correlated with the other rows (high nibbles carry the image;
   low nibbles are close to noise);
2. reversal: the sign of each high row in the leading eigenvector of their correlations (one
   global sign is left open: the image or its negative);
3. position in the block: the high rows minus the block mean, correlated with the block means'
   horizontal and vertical gradients (a component on the right of the block is brighter where
   the right neighbour is), then an assignment of 3 rows to each of the M^2 positions
   (``scipy.optimize.linear_sum_assignment``);
4. channel: the three rows of a position are labelled by matching their deviation from the
   position's mean (colour) against the rows already labelled, position by position; which
   label is R, G or B is left open.

Low nibbles are set to 8 (the middle). The result is right up to a global transform (the sign
and the channel order of ``attack.variants``: 48 candidates), chosen by an oracle or by
``attack.chooser``. With one key for all images (``--keys same``) the rows of many images are
pooled (``shared=True``): one key estimate for all. Images (N, H, W, 3) uint8.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .known_plaintext import le_components

_P6 = [list(p) for p in itertools.permutations(range(3))]


def _corr_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of every row of ``a`` (R, n) with ``b`` (n,)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean()
    return (a * b).sum(axis=-1) / (np.sqrt((a * a).sum(axis=-1)) * np.sqrt((b * b).sum()) + 1e-9)


def _gradients(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of block means (bh, bw) along x and y (0 on the border)."""
    gx = np.zeros_like(means)
    gy = np.zeros_like(means)
    gx[:, 1:-1] = means[:, 2:] - means[:, :-2]
    gy[1:-1] = means[2:] - means[:-2]
    return gx, gy


def estimate_key(C: np.ndarray, grid: tuple[int, int], m: int) -> dict:
    """Key structure from components ``C`` (G, 2d, nb) of G images under one key (G = 1 for an
    image under its own key). Returns ``{"rows": (d,) output rows of the high nibbles, "reversed":
    (d,) bool, "slot": (d,) position * 3 + channel label}``."""
    g_, two_d, nb = C.shape
    d = two_d // 2
    bh, bw = grid
    X = C.astype(np.float64)
    Z = X - X.mean(axis=2, keepdims=True)
    Z /= np.sqrt((Z * Z).mean(axis=2, keepdims=True)) + 1e-9
    R = np.einsum("gjn,gkn->jk", Z, Z) / (g_ * nb)  # (2d, 2d), pooled over the images
    rows = np.sort(np.argsort(-np.abs(R).mean(axis=1), kind="stable")[:d])
    # leading eigenvector (torch: respects its thread setting in worker processes, where numpy's
    # LAPACK would start threads of its own)
    _, vecs = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(R[np.ix_(rows, rows)])))
    sign = np.sign(vecs[:, -1].numpy())
    sign[sign == 0] = 1
    rev = sign < 0
    H = np.where(rev[None, :, None], 15 - X[:, rows], X[:, rows])  # (G, d, nb)
    means = H.mean(axis=1)  # (G, nb)
    res = (H - means[:, None]).transpose(1, 0, 2).reshape(d, -1)
    gx, gy = zip(*(_gradients(mb.reshape(bh, bw)) for mb in means))
    cx = _corr_rows(res, np.concatenate([g.ravel() for g in gx]))
    cy = _corr_rows(res, np.concatenate([g.ravel() for g in gy]))
    pos = np.arange(m * m)
    pr, pc = pos // m - (m - 1) / 2, pos % m - (m - 1) / 2
    slots = np.repeat(pos, 3)
    r_idx, s_idx = linear_sum_assignment(-(cx[:, None] * pc[slots][None] + cy[:, None] * pr[slots][None]))
    position = np.empty(d, np.int64)
    position[r_idx] = slots[s_idx]
    # channel labels, position by position (largest colour deviation first)
    flat = H.transpose(1, 0, 2).reshape(d, -1)
    label = np.zeros(d, np.int64)
    ref = None
    groups = [np.flatnonzero(position == q) for q in pos]
    chroma = [flat[g] - flat[g].mean(axis=0) for g in groups]
    for q in np.argsort([-np.abs(c).mean() for c in chroma]):
        c = chroma[q]
        if ref is None:
            best = _P6[0]
            ref = c.copy()
        else:
            best = max(_P6, key=lambda p: float(np.einsum("kn,kn->", c[p], ref)))
            ref += c[best]
        label[groups[q][best]] = np.arange(3)
    return {"rows": rows, "reversed": rev, "slot": position * 3 + label}


def reconstruct(encrypted: np.ndarray, m: int, key: dict) -> np.ndarray:
    """Images (N, H, W, 3) uint8 from LE ciphertexts and an ``estimate_key`` result: the high
    nibbles where the key puts them, low nibbles 8."""
    n, h, w, _ = encrypted.shape
    bh, bw = h // m, w // m
    C = le_components(encrypted, m)[:, key["rows"]].astype(np.int16)  # (N, d, nb)
    C = np.where(key["reversed"][None, :, None], 15 - C, C)
    out = np.empty((n, 3 * m * m, bh * bw), np.uint8)
    out[:, key["slot"]] = (C * 16 + 8).astype(np.uint8)  # slot = (row, column, channel) byte index in the block
    return np.ascontiguousarray(out.reshape(n, m, m, 3, bh, bw).transpose(0, 4, 1, 5, 2, 3)).reshape(n, h, w, 3)


def attack(encrypted: np.ndarray, block_size: int = 4, shared: bool = False, pool: int = 256) -> np.ndarray:
    """Reconstruct LE-encrypted images (N, H, W, 3) uint8, right up to a global transform.

    ``shared``: all images under one key (the key is estimated once from the first ``pool``
    images); else every image's key is estimated from that image alone."""
    m = block_size
    n, h, w, _ = encrypted.shape
    grid = (h // m, w // m)
    if shared:
        key = estimate_key(le_components(encrypted[:pool], m), grid, m)
        return reconstruct(encrypted, m, key)
    out = np.empty_like(encrypted)
    comps = le_components(encrypted, m)
    for i in range(n):
        out[i : i + 1] = reconstruct(encrypted[i : i + 1], m, estimate_key(comps[i : i + 1], grid, m))
    return out
