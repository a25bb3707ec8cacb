"""Known-plaintext recovery of a common key, for every scheme.

Under ``--keys same`` every image is encrypted with one key. An attacker who knows a few plain
images and their encryptions (a published photo, a shared benchmark image, a guessed blank
frame) solves for that key and decrypts every other image exactly. ``recover_key(scheme, plain,
encrypted)`` returns the key as the scheme's own key object for one image (batch of 1), built only
from the pairs; ``attack(scheme, plain_known, enc_known, enc_rest)`` decrypts the rest with the
scheme's own ``decrypt``. Pairs are (K, H, W, 3) uint8.

Per scheme (with K known pairs; where one pair leaves a choice open, further pairs narrow it, and
what stays open is taken at the first candidate):

``pixel``, ``icip``  per pixel, the CS code k (0..5) for which ``CS_k^-1(e)`` equals ``x`` up to a
                     negation per channel, and that negation (the NP mask); k is open where the
                     pixel has two equal values.
``etc``              per output block, the (input block, geometry, colour order, negation) whose
                     transform of the plain block is the encrypted block (all 96 variants of every
                     plain block hashed); open where blocks repeat (flat regions): taken without
                     reusing an input block where possible.
``le``               per output component, the input component equal to it (or to its reversal
                     ``15 - v``) in every block of every pair (Tanaka's key is shared by all
                     blocks).
``chaos``            the keystream: ``e XOR x``.
"""
from __future__ import annotations

import itertools

import numpy as np

from ppdata.cipher import PERMUTATIONS, PixelKey, PixelScheme, check_images
from ppdata.schemes import ChaosKey, ChaosScheme, EtcKey, EtcScheme, LeKey, LeScheme


def _pixel_key(scheme: PixelScheme, x: np.ndarray, e: np.ndarray) -> PixelKey:
    k_pairs, h, w, _ = x.shape
    if not scheme.cs:
        mask = e[0] != x[0]
        return PixelKey(mask[None], None)
    ok = np.ones((6, h, w), bool)
    masks = np.zeros((6, h, w, 3), bool)
    for k in range(6):
        perm = PERMUTATIONS[k]  # out[c] = in[perm[c]]: in[perm[c]] = out[c]
        inv = np.argsort(perm)
        y = e[..., inv]  # CS undone with code k
        ok[k] = ((y == x) | (y == 255 - x)).all(axis=(0, 3))
        masks[k] = y[0] != x[0]
    code = np.argmax(ok, axis=0).astype(np.uint8)  # first consistent code (0 where none: not a pair)
    mask = np.take_along_axis(masks, code[None, :, :, None].astype(np.intp), axis=0)[0]
    return PixelKey(mask[None], code[None])


def _chaos_key(x: np.ndarray, e: np.ndarray) -> ChaosKey:
    stream = (x[0] ^ e[0]).reshape(1, -1)
    return ChaosKey(np.full(1, np.nan), np.full(1, np.nan), stream)


def le_components(images: np.ndarray, m: int) -> np.ndarray:
    """LE's components of every block: (N, 2d, nb) uint8 in 0..15, d = 3 m^2; a block's d bytes
    in (row, column, channel) order, low nibbles then high nibbles (``ppdata.schemes``)."""
    n, h, w, _ = images.shape
    bh, bw = h // m, w // m
    xs = images.reshape(n, bh, m, bw, m, 3).transpose(0, 2, 4, 5, 1, 3).reshape(n, 3 * m * m, bh * bw)
    return np.concatenate([xs & 15, xs >> 4], axis=1)


def _le_key(scheme: LeScheme, x: np.ndarray, e: np.ndarray) -> LeKey:
    m = scheme.block_size
    ci = le_components(x, m).transpose(1, 0, 2).reshape(2 * 3 * m * m, -1)  # (2d, K * nb)
    co = le_components(e, m).transpose(1, 0, 2).reshape(ci.shape)
    same = (co[:, None, :] == ci[None, :, :]).all(axis=2)  # (out j, in i)
    rev = (co[:, None, :] == 15 - ci[None, :, :]).all(axis=2)
    cand = same | rev
    perm = _assign(cand)
    flip = rev[np.arange(len(perm)), perm] & ~same[np.arange(len(perm)), perm]
    return LeKey(perm[None], flip[None])


def _assign(cand: np.ndarray) -> np.ndarray:
    """A permutation choosing for every row a candidate column, without reusing a column where
    the candidates allow (rows with fewer candidates first); rows with none take a free column."""
    n = cand.shape[0]
    perm = np.full(n, -1, np.int64)
    used = np.zeros(cand.shape[1], bool)
    for j in np.argsort(cand.sum(axis=1), kind="stable"):
        free = np.flatnonzero(cand[j] & ~used)
        if len(free):
            perm[j] = free[0]
            used[free[0]] = True
    rest = np.flatnonzero(~used)
    perm[perm < 0] = rest[: int((perm < 0).sum())]
    return perm


def _etc_key(scheme: EtcScheme, x: np.ndarray, e: np.ndarray) -> EtcKey:
    k_pairs, h, w, _ = x.shape
    b = scheme.block_size
    nb = (h // b) * (w // b)
    codes = list(itertools.product(range(8), range(6) if scheme.cs else [None], (False, True)))
    # every variant of every plain block: encrypt under keys that keep the block order
    ident = np.tile(np.arange(nb), (k_pairs, 1))
    variants = []
    for g, k, neg in codes:
        key = EtcKey(ident, np.full((k_pairs, nb), g, np.uint8), np.full((k_pairs, nb), neg),
                     None if k is None else np.full((k_pairs, nb), k, np.uint8))
        variants.append(_blocks(scheme.encrypt(x, key), b))  # (K, nb, q)
    V = np.stack(variants, axis=1)  # (K, codes, nb, q)
    E = _blocks(e, b)  # (K, nb, q)
    # candidates (input block i, code c) for output block j, consistent over all pairs
    q = V.shape[-1]
    vrows = np.ascontiguousarray(V.transpose(1, 2, 0, 3).reshape(len(codes) * nb, k_pairs * q))
    erows = np.ascontiguousarray(E.transpose(1, 0, 2).reshape(nb, k_pairs * q))
    vkeys = vrows.view(np.dtype((np.void, vrows.shape[1]))).ravel()
    ekeys = erows.view(np.dtype((np.void, erows.shape[1]))).ravel()
    order = np.argsort(vkeys, kind="stable")
    lo = np.searchsorted(vkeys[order], ekeys, side="left")
    hi = np.searchsorted(vkeys[order], ekeys, side="right")
    count = hi - lo
    j_of = np.repeat(np.arange(nb), count)
    flat = order[np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())]  # (code, input) flat
    c_of, i_of = np.divmod(flat, nb)
    cand = np.zeros((nb, nb), bool)  # output j -> input i
    cand[j_of, i_of] = True
    first_code = np.full((nb, nb), len(codes), np.int64)
    np.minimum.at(first_code, (j_of, i_of), c_of)  # the lowest consistent code per (j, i)
    perm = _assign(cand)
    code = first_code[np.arange(nb), perm]
    g = np.array([codes[c][0] for c in code], np.uint8)
    k = np.array([codes[c][1] or 0 for c in code], np.uint8)
    neg = np.array([codes[c][2] for c in code])
    return EtcKey(perm[None], g[None], neg[None], k[None] if scheme.cs else None)


def _blocks(images: np.ndarray, b: int) -> np.ndarray:
    n, h, w, _ = images.shape
    return images.reshape(n, h // b, b, w // b, b, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, b * b * 3)


def recover_key(scheme, plain: np.ndarray, encrypted: np.ndarray):
    """The common key, as the scheme's key object for a batch of one, from K known pairs."""
    x, e = check_images(plain), check_images(encrypted)
    if x.shape != e.shape or len(x) < 1:
        raise ValueError(f"need K >= 1 plain/encrypted pairs of one shape, got {x.shape} and {e.shape}")
    if isinstance(scheme, PixelScheme):
        return _pixel_key(scheme, x, e)
    if isinstance(scheme, EtcScheme):
        return _etc_key(scheme, x, e)
    if isinstance(scheme, LeScheme):
        return _le_key(scheme, x, e)
    if isinstance(scheme, ChaosScheme):
        return _chaos_key(x, e)
    raise ValueError(f"no known-plaintext attack for scheme {getattr(scheme, 'name', scheme)!r}")


def tile_key(key, n: int):
    """A batch-of-one key repeated for ``n`` images (the same key for all)."""
    if isinstance(key, PixelKey):
        return PixelKey(np.broadcast_to(key.np_mask, (n,) + key.np_mask.shape[1:]),
                        None if key.cs_code is None else np.broadcast_to(key.cs_code, (n,) + key.cs_code.shape[1:]))
    if isinstance(key, EtcKey):
        t = lambda a: None if a is None else np.ascontiguousarray(np.broadcast_to(a, (n,) + a.shape[1:]))  # noqa: E731
        return EtcKey(t(key.perm), t(key.geometry), t(key.negate), t(key.cs_code))
    if isinstance(key, LeKey):
        return LeKey(np.broadcast_to(key.perm, (n, key.perm.shape[1])),
                     np.broadcast_to(key.flip, (n, key.flip.shape[1])))
    if isinstance(key, ChaosKey):
        return ChaosKey(np.broadcast_to(key.x0, (n,)), np.broadcast_to(key.r, (n,)),
                        np.broadcast_to(key.keystream, (n, key.keystream.shape[1])))
    raise TypeError(f"unknown key type {type(key).__name__}")


def attack(scheme, plain_known: np.ndarray, enc_known: np.ndarray, enc_rest: np.ndarray) -> np.ndarray:
    """Decrypt ``enc_rest`` (N, H, W, 3) with the key recovered from the known pairs."""
    key = recover_key(scheme, plain_known, enc_known)
    return scheme.decrypt(check_images(enc_rest), tile_key(key, len(enc_rest)))
