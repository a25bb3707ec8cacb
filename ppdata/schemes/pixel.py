"""The paper's pixel-based cipher (``pixel``) and the identity (``plain``).

Conventions: images are ``(N, H, W, 3)`` uint8 arrays, channels R, G, B, C-contiguous.
Every scheme turns per-image key material (``ppdata.keys.KeyStream``) into its own key
object, and has an exact inverse: ``decrypt(encrypt(x, k), k) == x``.

=========  ===================================================================================
scheme     what it does
=========  ===================================================================================
``plain``  identity (``--plain``: baselines and plain-Q test sets, same layout as encrypted)
``pixel``  Sirichotedumrong, Kinoshita and Kiya (IEEE Access 2019): negative-positive
           transform (NP) of every pixel *and channel* with a key bit, ``p' = p XOR 255`` where
           the bit is 1; then optionally a colour shuffle (CS): per pixel a code k in 0..5
           selects the channel order of the paper's Table 1,
           ``0:(R,G,B) 1:(R,B,G) 2:(G,R,B) 3:(G,B,R) 4:(B,R,G) 5:(B,G,R)``, i.e.
           ``out[c] = in[PERMUTATIONS[k, c]]``. A true permutation (the widely copied
           implementation that assigns channels through aliased views duplicates channels for
           five of six codes and cannot be decrypted; this one is tested against
           ``np.take_along_axis``). Decryption undoes CS, then NP.
=========  ===================================================================================

Key format of ``pixel`` (``PixelKey``): ``np_mask`` ``(N, H, W, 3)`` bool, True where the value
is negated; ``cs_code`` ``(N, H, W)`` uint8 in 0..5 or None. From material: the first
``ceil(3HW / 8)`` bytes are the NP bits (``np.unpackbits`` order over H, W, C), the rest gives
the codes through exact rejection sampling (``ppdata.keys.uniform_codes``).

Key-free invariant: NP only flips the sign of ``p - 127.5``, so ``min(p, 255 - p)`` per channel
(sorted per pixel under CS) is the same for the plain and the encrypted image (``fold``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..keys import KeyStream, code_bytes_needed, uniform_codes
from .base import PERMUTATIONS, Scheme, check_images, register  # noqa: F401 (PERMUTATIONS: Table 1)

_CHUNK_BYTES = 1 << 18  # work in cache-sized chunks


@register
class PlainScheme(Scheme):
    """Identity: the plain images in the same layout (no key)."""

    name = "plain"
    encrypted = False

    def key_nbytes(self, shape) -> int:
        return 0

    def derive_keys(self, stream, split, indices, shape):
        return None

    def encrypt(self, images, key=None):
        return check_images(images).copy()

    def decrypt(self, images, key=None):
        return check_images(images).copy()


@dataclass(frozen=True)
class PixelKey:
    """Keys of the pixel-based scheme for a batch.

    np_mask: (N, H, W, 3) bool, True where the value is negated (p -> 255 - p).
    cs_code: (N, H, W) uint8 in 0..5 (rows of ``PERMUTATIONS``), or None without CS.
    """

    np_mask: np.ndarray
    cs_code: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.np_mask)

    def __getitem__(self, item) -> "PixelKey":
        return PixelKey(self.np_mask[item], None if self.cs_code is None else self.cs_code[item])


def _swap_stage(flat: np.ndarray, mbuf: np.ndarray, sel: np.ndarray, first: int) -> None:
    """Swap channels ``first`` and ``first + 1`` of the pixels where ``sel`` is set, in place.

    flat: the chunk's bytes, (B*H*W*3,) uint8. mbuf: (B*H*W, 3) uint8 scratch whose columns 1
    and 2 are zero. sel: (B*H*W,) bool. Works on the interleaved bytes with two overlapping
    views (no gather): t = (x[i] ^ x[i+1]) & mask[i - first]; x[i] ^= t; x[i+1] ^= t.
    """
    np.negative(sel.view(np.uint8), out=mbuf[:, 0])
    L = flat.shape[0]
    lo = flat[first : L - 2 + first]
    hi = flat[first + 1 : L - 1 + first]
    t = np.bitwise_xor(lo, hi)
    t &= mbuf.reshape(-1)[: L - 2]
    lo ^= t
    hi ^= t


def _cs_stages(codes: np.ndarray):
    """The colour shuffle as three conditional adjacent swaps: (selector, first channel).

    Code k = 2r + s: r picks the channel that goes first, s swaps the other two. Applied in
    order: swap(1,2) if r == 2, swap(0,1) if r >= 1, swap(1,2) if s == 1.
    """
    return [(codes >= 4, 1), (codes >= 2, 0), ((codes & 1).astype(bool), 1)]


def _apply_cs(out: np.ndarray, codes: np.ndarray, inverse: bool) -> None:
    """Apply CS (or its inverse) in place to ``out`` (B, H, W, 3) with codes (B, H, W)."""
    B = out.shape[0]
    if B == 0:
        return
    per_image = out[0].size
    step = max(1, _CHUNK_BYTES // per_image)
    mbuf = np.zeros((min(B, step) * per_image // 3, 3), np.uint8)
    for a in range(0, B, step):
        b = min(B, a + step)
        flat = out[a:b].reshape(-1)
        m = mbuf[: flat.size // 3]
        stages = _cs_stages(codes[a:b].reshape(-1))
        for sel, first in reversed(stages) if inverse else stages:
            _swap_stage(flat, m, sel, first)


def _apply_np(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """p XOR 255 where mask is True: a new array."""
    out = np.empty_like(images)
    if len(images) == 0:
        return out
    flat_in = images.reshape(len(images), -1)
    flat_out = out.reshape(len(images), -1)
    m = mask.reshape(len(mask), -1).view(np.uint8)
    step = max(1, _CHUNK_BYTES // flat_in.shape[1])
    for a in range(0, len(images), step):
        b = min(len(images), a + step)
        np.negative(m[a:b], out=flat_out[a:b])  # 1 -> 255, 0 -> 0
        flat_out[a:b] ^= flat_in[a:b]
    return out


@register
class PixelScheme(Scheme):
    """NP per pixel and channel, optional CS per pixel (see module docstring)."""

    name = "pixel"

    def __init__(self, cs: bool = False, np: bool = True):  # noqa: A002 (paper's name, as in manifests)
        self.cs = bool(cs)
        self.np_transform = bool(np)
        if not (self.cs or self.np_transform):
            raise ValueError("pixel scheme needs NP, CS or both")

    def options(self) -> dict:
        return {"np": self.np_transform, "cs": self.cs}

    def _np_bytes(self, shape) -> int:
        h, w, c = shape
        return -(-(h * w * c) // 8) if self.np_transform else 0

    def key_nbytes(self, shape) -> int:
        h, w, _ = shape
        return self._np_bytes(shape) + (code_bytes_needed(h * w) if self.cs else 0)

    def _derive(self, stream: KeyStream, split: str, indices, shape) -> PixelKey:
        h, w, c = shape
        indices = np.asarray(indices, np.int64).reshape(-1)
        mat = stream.material(split, indices, self.key_nbytes(shape))
        nb = self._np_bytes(shape)
        n = len(indices)
        if self.np_transform:
            bits = np.unpackbits(mat[:, :nb], axis=1, count=h * w * c)
            np_mask = bits.view(bool).reshape(n, h, w, c)
        else:
            np_mask = np.zeros((n, h, w, c), bool)
        codes = None
        if self.cs:
            def more(row, nbytes):
                return stream.extension(split, int(indices[row]), nbytes)

            codes = uniform_codes(mat[:, nb:], h * w, more).reshape(n, h, w)
        return PixelKey(np_mask, codes)

    def encrypt(self, images: np.ndarray, key: PixelKey) -> np.ndarray:
        images = check_images(images)
        _check_key(images, key)
        out = _apply_np(images, key.np_mask) if self.np_transform else images.copy()
        if self.cs:
            _apply_cs(out, key.cs_code, inverse=False)
        return out

    def decrypt(self, images: np.ndarray, key: PixelKey) -> np.ndarray:
        images = check_images(images)
        _check_key(images, key)
        out = images.copy()
        if self.cs:
            _apply_cs(out, key.cs_code, inverse=True)
        if self.np_transform:
            out = _apply_np(out, key.np_mask)
        return out




def _check_key(images: np.ndarray, key: PixelKey) -> None:
    n, h, w, _ = images.shape
    if key.np_mask.shape != images.shape:
        raise ValueError(f"key for shape {key.np_mask.shape} does not fit images of shape {images.shape}")
    if key.cs_code is not None and key.cs_code.shape != (n, h, w):
        raise ValueError(f"colour-shuffle codes of shape {key.cs_code.shape} do not fit images {images.shape}")


def fold(images: np.ndarray, cs: bool = False) -> np.ndarray:
    """The key-free invariant of the pixel scheme: ``min(p, 255 - p)`` per channel, sorted per
    pixel when ``cs`` (ascending). Equal for a plain image and any encryption of it."""
    images = check_images(images)
    f = np.minimum(images, 255 - images)
    if cs:
        f = np.sort(f, axis=-1)
    return f
