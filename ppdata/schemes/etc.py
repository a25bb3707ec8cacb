"""Block-scrambling EtC (Kurihara et al.): block permutation, rotation/inversion, NP and colour
shuffle per block. Faithfulness notes and the ``EtcKey`` format: ``ppdata.schemes`` (module docstring)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..keys import KeyStream, code_bytes_needed, uniform_codes
from .base import PERMUTATIONS, Scheme, check_images, register, same_rows
from .material import (KeyExtension, bits, check_block_shape, check_block_size, from_blocks, to_blocks,
                       uniform_permutations, words_of)


@dataclass(frozen=True)
class EtcKey:
    """Keys of the block-scrambling EtC for a batch (``nb`` blocks per image, row-major).

    perm: (N, nb) int64, output block j is input block ``perm[j]``.
    geometry: (N, nb) uint8 in 0..7, ``np.rot90`` by ``g & 3`` quarter turns, then a left-right
        mirror if ``g & 4`` (applied to the block that lands at position j).
    negate: (N, nb) bool, negative-positive transform (p -> 255 - p) of every value of block j.
    cs_code: (N, nb) uint8 in 0..5 (rows of ``PERMUTATIONS``, out[c] = in[P[k, c]]) or None.
    """

    perm: np.ndarray
    geometry: np.ndarray
    negate: np.ndarray
    cs_code: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.perm)

    def __getitem__(self, item) -> "EtcKey":
        return EtcKey(self.perm[item], self.geometry[item], self.negate[item],
                      None if self.cs_code is None else self.cs_code[item])


@functools.lru_cache(maxsize=16)
def _geometry_table(b: int) -> np.ndarray:
    """(8, b*b): within-block source position of every output position, per geometry code."""
    base = np.arange(b * b).reshape(b, b)
    rows = []
    for g in range(8):
        t = np.rot90(base, k=g & 3)
        if g & 4:
            t = np.fliplr(t)
        rows.append(t.reshape(-1))
    return np.stack(rows)


@functools.lru_cache(maxsize=16)
def _block_table(b: int) -> np.ndarray:
    """(48, b*b*3) intp: source value index within a block for code ``6 g + k`` (geometry g,
    colour order k): output (pos, c) takes input (G[g, pos], P[k, c])."""
    geo = _geometry_table(b)
    t = geo[:, None, :, None] * 3 + PERMUTATIONS.astype(np.intp)[None, :, None, :]
    return np.ascontiguousarray(t.reshape(48, b * b * 3))


@functools.lru_cache(maxsize=16)
def _block_inverse_table(b: int) -> np.ndarray:
    return np.ascontiguousarray(np.argsort(_block_table(b), axis=1))


@register
class EtcScheme(Scheme):
    """Block-scrambling encryption-then-compression (Kurihara et al.): block permutation, block
    rotation/inversion, block NP, block colour shuffle (see the module docstring)."""

    name = "etc"

    def __init__(self, block_size: int = 4, cs: bool = True):
        self.block_size = check_block_size(block_size)
        self.cs = bool(cs)

    def options(self) -> dict:
        return {"block_size": self.block_size, "cs": self.cs}

    def check_shape(self, shape) -> None:
        check_block_shape(shape, self.block_size)

    def _layout(self, shape):
        h, w, _ = shape
        nb = (h // self.block_size) * (w // self.block_size)
        sizes = [8 * nb, -(-3 * nb // 8), -(-nb // 8), code_bytes_needed(nb) if self.cs else 0]
        return nb, np.concatenate([[0], np.cumsum(sizes)]).tolist()

    def key_nbytes(self, shape) -> int:
        self.check_shape(shape)
        return self._layout(shape)[1][-1]

    def keys_from_material(self, material: np.ndarray, shape, more=None) -> EtcKey:
        """The key format from material rows ``(N, key_nbytes(shape))`` (module docstring)."""
        self.check_shape(shape)
        nb, off = self._layout(shape)
        material = np.asarray(material, np.uint8)
        if material.ndim != 2 or material.shape[1] < off[-1]:
            raise ValueError(f"etc needs {off[-1]} bytes of key material per image for {tuple(shape)}")
        perm = uniform_permutations(words_of(material[:, off[0] : off[1]], nb), more)
        g = bits(material[:, off[1] : off[2]], 3 * nb).reshape(-1, nb, 3)
        geometry = (g[..., 0] << 2 | g[..., 1] << 1 | g[..., 2]).astype(np.uint8)
        negate = bits(material[:, off[2] : off[3]], nb).view(bool)
        codes = None
        if self.cs:
            codes = uniform_codes(material[:, off[3] : off[4]], nb, more)
        return EtcKey(perm, geometry, negate, codes)

    def _derive(self, stream: KeyStream, split: str, indices, shape) -> EtcKey:
        indices = np.asarray(indices, np.int64).reshape(-1)
        nbytes = self.key_nbytes(shape)
        more = KeyExtension(stream, split, indices, 4 * nbytes + 1024)
        if same_rows(stream) and len(indices) > 1:
            k = self.keys_from_material(stream.material(split, indices[:1], nbytes), shape, more)
            n = len(indices)
            return EtcKey(*(None if a is None else np.broadcast_to(a, (n, *a.shape[1:]))
                            for a in (k.perm, k.geometry, k.negate, k.cs_code)))
        return self.keys_from_material(stream.material(split, indices, nbytes), shape, more)

    def _check_key(self, images: np.ndarray, key: EtcKey) -> None:
        n, h, w, _ = images.shape
        self.check_shape(images.shape[1:])
        nb = (h // self.block_size) * (w // self.block_size)
        if key.perm.shape != (n, nb) or key.geometry.shape != (n, nb) or key.negate.shape != (n, nb):
            raise ValueError(f"etc key for {key.perm.shape} blocks does not fit images {images.shape} "
                             f"with block size {self.block_size}")
        if self.cs and (key.cs_code is None or key.cs_code.shape != (n, nb)):
            raise ValueError("etc with cs=True needs colour-shuffle codes of shape (N, blocks)")

    def _plan(self, key: EtcKey):
        """Output block positions grouped by their (geometry, colour) code, for all images.

        Returns ``order`` (flat output positions ``n * nb + j`` sorted by code), ``src`` (the flat
        input block of each of them) and ``runs`` [(code, start, stop)] into ``order``."""
        n, nb = key.perm.shape
        code = key.geometry.astype(np.uint8) * np.uint8(6)
        if self.cs:
            code = code + key.cs_code.astype(np.uint8)
        code = code.reshape(-1)
        order = np.argsort(code, kind="stable")
        src = (np.arange(n, dtype=np.intp)[:, None] * nb + key.perm).reshape(-1)[order]
        counts = np.bincount(code, minlength=48)
        stops = np.cumsum(counts)
        runs = [(c, int(stops[c] - counts[c]), int(stops[c])) for c in np.flatnonzero(counts).tolist()]
        return order, src, runs

    @staticmethod
    def _rows(blocks: np.ndarray) -> np.ndarray:
        """(M, q) uint8 -> (M,) of q-byte items, so that a row gather moves whole blocks."""
        return np.ascontiguousarray(blocks).view(np.dtype((np.void, blocks.shape[1]))).reshape(-1)

    def encrypt(self, images: np.ndarray, key: EtcKey) -> np.ndarray:
        x = check_images(images)
        self._check_key(x, key)
        n, h, w, _ = x.shape
        bs = self.block_size
        q = bs * bs * 3
        table = _block_table(bs)
        blocks = to_blocks(x, bs).reshape(-1, q)
        order, src, runs = self._plan(key)
        g = self._rows(blocks)[src].view(np.uint8).reshape(-1, q)  # blocks moved, grouped by code
        for c, a, b in runs:
            if c:  # code 0: no rotation, no flip, colour order (R, G, B)
                g[a:b] = g[a:b][:, table[c]]
        out = np.empty_like(blocks)
        self._rows(out)[order] = self._rows(g)
        out ^= np.negative(np.ascontiguousarray(key.negate).view(np.uint8)).reshape(-1, 1)
        return from_blocks(out.reshape(n, key.perm.shape[1], q), h, w, bs)

    def decrypt(self, images: np.ndarray, key: EtcKey) -> np.ndarray:
        y = check_images(images)
        self._check_key(y, key)
        n, h, w, _ = y.shape
        bs = self.block_size
        q = bs * bs * 3
        inverse = _block_inverse_table(bs)
        blocks = to_blocks(y, bs).reshape(-1, q)
        blocks ^= np.negative(np.ascontiguousarray(key.negate).view(np.uint8)).reshape(-1, 1)
        order, src, runs = self._plan(key)
        g = self._rows(blocks)[order].view(np.uint8).reshape(-1, q)
        for c, a, b in runs:
            if c:
                g[a:b] = g[a:b][:, inverse[c]]
        out = np.empty_like(blocks)
        self._rows(out)[src] = self._rows(g)
        return from_blocks(out.reshape(n, key.perm.shape[1], q), h, w, bs)
