"""Neighbour-consistency attack (training-free, key-free) on the pixel-based cipher.

What the cipher leaves: under NP each encrypted value ``e`` is ``p`` or ``255 - p`` by a coin flip,
so the plain pixel is one of 8 candidates (a sign per channel); under NP+CS also one of 6 channel
orders: 48 candidates. They are all functions of the key-free invariant ``f = fold(e)``
(``ppdata.cipher.fold``), and this attack reads only ``f``: its output is the same for every
key, same or independent.

In centred values ``v = x - 127.5`` a pixel's candidates are ``v_c = +-d_{pi(c)}`` with
``d = 127.5 - f >= 0.5``. Every pixel takes the candidate with the smallest weighted sum of L1
distances to predictions from already-decided neighbours. Two rules:

``nearest``      predictions = the values of the decided neighbours (left and up). This is the rule as usually stated, and it provably returns the
                 fold: all decided pixels carry the seed's transform T, and for a negative
                 sorted vector ``-d`` the candidate closest in L1 to any ``T(-d_n)`` is ``T(-d)``
                 (a sign flip moves a value across 0, away from the neighbour's; the sorted order
                 is L1-optimal by the rearrangement inequality; ties go to the lowest candidate
                 index, the seed's). So the output is exactly ``255 - fold(e, cs)``, and what
                 this rule "recovers" is the fold up to a global transform.
``extrapolate``  adds, at weight 2 each, linear extrapolations ``2 v[n1] - v[n2]`` from the left
                 and from above and the planar prediction ``v[left] + v[up] - v[up-left]``.
                 Unlike ``nearest`` it follows a gradient through mid-grey (127.5), where the
                 true sign changes and the fold bounces back (it recovers a smooth ramp exactly;
                 with weight 1 or less the neighbours' values outvote the extrapolation and it
                 does not). On photographs each decision is local, though, and a flip caused by
                 noise or texture spreads to the region behind it: on scenes96 it scores below
                 the plain fold (docs/attack.md).

Order: a wavefront from the top-left seed pixel. Pixel (i, j) is decided at step ``t = i + j``;
every pixel it reads (two to the left, two above, up-left) has a smaller t, so one step decides a
whole anti-diagonal of every image at once (``H + W - 1`` steps, vectorised over images and
pixels; we also tried the up-left and up-right lines, which added cost, not accuracy). The L1
cost separates over channels, so per pixel the attack scores 3 x 3 x 2 (output channel, source
channel, sign) terms and combines them per channel order: 6 evaluations under NP, 18 under NP+CS
instead of 24 or 144.

The seed's candidate is arbitrary, so the result is right at best up to a global transform (a
sign per channel and, under CS, a channel order; ``attack.variants``).
"""
from __future__ import annotations

import itertools

import numpy as np

from ppdata.cipher import check_images, fold

RULES = ("nearest", "extrapolate")
_PERMS = np.array(list(itertools.permutations(range(3))), np.int64)  # identity first
_PAD = 2
# causal neighbours n1 (left, up) and the next pixel n2 on the same line, as (di, dj)
_LINES = [((0, -1), (0, -2)), ((-1, 0), (-2, 0))]
_EXTRAPOLATION_WEIGHT = 2.0


_IDX = (np.arange(3) * 3)[None, :] + _PERMS  # (6, 3): flat (output channel, source) index of each order


def _predictions(V: np.ndarray, ii: np.ndarray, jj: np.ndarray, rule: str) -> list[tuple[float, np.ndarray]]:
    """(weight, prediction (3, B, m)) at pixels (ii, jj) from the padded values V (3, B, H+4, W+4);
    NaN where a neighbour is undecided or outside the image."""
    ii = ii + _PAD
    jj = jj + _PAD
    out = []
    for (a, b), (c, d) in _LINES:
        n1 = V[:, :, ii + a, jj + b]
        out.append((1.0, n1))
        if rule == "extrapolate":
            p = 2 * n1 - V[:, :, ii + c, jj + d]
            out.append((_EXTRAPOLATION_WEIGHT, np.clip(p, -127.5, 127.5)))
    if rule == "extrapolate":
        p = V[:, :, ii, jj - 1] + V[:, :, ii - 1, jj] - V[:, :, ii - 1, jj - 1]
        out.append((_EXTRAPOLATION_WEIGHT, np.clip(p, -127.5, 127.5)))
    return out


def _decide(d: np.ndarray, preds, cs: bool) -> np.ndarray:
    """Centred values (3, n) chosen for n pixels with distances ``d`` (3, n) (sorted under CS).

    Channels first, pixels last: numpy's broadcasting is fast only with a long innermost axis.
    g[c, j] (+ and - sign): cost of output channel c taking source value d_j with that sign,
    ``sum_k w_k |d_j -+ P_kc|``, computed as ``|w_k d_j -+ w_k P_kc|`` (exact: weights are 0, 1
    or 2)."""
    n = d.shape[1]
    w = np.array([wt for wt, _ in preds], np.float32)[:, None, None]
    P = np.stack([p for _, p in preds])  # (K, 3, n)
    valid = ~np.isnan(P[:, :1])  # (K, 1, n): a neighbour is decided for all channels or none
    Wk = np.where(valid, w, np.float32(0))
    wP = np.where(valid, P, np.float32(0)) * Wk
    wd = Wk * d
    a, b = (wd[:, None, :, :], wP[:, :, None, :]) if cs else (wd, wP)  # (K, 1, 3j, n), (K, 3c, 1, n)
    t = a - b
    np.abs(t, out=t)
    gp = t.sum(axis=0)
    np.add(a, b, out=t)
    np.abs(t, out=t)
    gm = t.sum(axis=0)
    sign = gm < gp  # True: negative; ties keep the positive (the seed's) reading
    if cs:
        total = np.minimum(gp, gm).reshape(9, n)[_IDX].sum(axis=1)  # (6, n)
        perm = _PERMS[total.argmin(axis=0)].T  # (3, n); ties: lowest index (identity first)
        val = np.take_along_axis(d, perm, axis=0)
        sgn = np.take_along_axis(sign.reshape(9, n), (np.arange(3) * 3)[:, None] + perm, axis=0)
    else:
        val, sgn = d, sign
    return np.where(sgn, -val, val)


def _attack_chunk(f: np.ndarray, cs: bool, rule: str) -> np.ndarray:
    B, H, W, _ = f.shape
    d = 127.5 - np.ascontiguousarray(f.transpose(3, 0, 1, 2)).astype(np.float32)  # (3, B, H, W)
    V = np.full((3, B, H + 2 * _PAD, W + 2 * _PAD), np.nan, np.float32)
    for t in range(H + W - 1):
        ii = np.arange(max(0, t - W + 1), min(H - 1, t) + 1)
        jj = t - ii
        n = B * len(ii)
        preds = [(wt, p.reshape(3, n)) for wt, p in _predictions(V, ii, jj, rule)]
        V[:, :, ii + _PAD, jj + _PAD] = _decide(d[:, :, ii, jj].reshape(3, n), preds, cs).reshape(3, B, -1)
    inner = V[:, :, _PAD : _PAD + H, _PAD : _PAD + W]
    return (inner + 127.5).astype(np.uint8).transpose(1, 2, 3, 0)  # exact: values are f or 255 - f


def neighbour_attack(encrypted: np.ndarray, cs: bool, rule: str = "extrapolate", chunk: int = 128) -> np.ndarray:
    """Reconstruct ``(N, H, W, 3)`` uint8 images encrypted with NP (``cs=False``) or NP+CS.

    Returns (N, H, W, 3) uint8, at best right up to a global transform (``attack.variants``).
    The output depends on ``encrypted`` only through ``fold(encrypted, cs)``."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    f = fold(check_images(encrypted), cs)
    out = np.empty_like(f)
    for a in range(0, len(f), chunk):
        out[a : a + chunk] = _attack_chunk(f[a : a + chunk], cs, rule)
    return out
