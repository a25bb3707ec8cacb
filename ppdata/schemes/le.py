"""Tanaka's learnable image encryption (LE): 4-bit components of every M x M block reversed and
shuffled with the same key in every block. Faithfulness notes and the ``LeKey`` format:
``ppdata.schemes`` (module docstring)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..keys import KeyStream
from .base import Scheme, check_images, register, same_rows
from .material import KeyExtension, bits, check_block_shape, check_block_size, uniform_permutations, words_of


@dataclass(frozen=True)
class LeKey:
    """Keys of LE for a batch; ``2d = 6 M^2`` components per block.

    perm: (N, 2d) int64, output component j of every block is input component ``perm[j]``.
    flip: (N, 2d) bool, output component j reversed (v -> 15 - v).
    """

    perm: np.ndarray
    flip: np.ndarray

    def __len__(self) -> int:
        return len(self.perm)

    def __getitem__(self, item) -> "LeKey":
        return LeKey(self.perm[item], self.flip[item])


def le_unpack(images: np.ndarray) -> np.ndarray:
    """The 6-channel view of (LE-encrypted or plain) images: ``(N, H, W, 6)`` uint8 in 0..15,
    channels (R, G, B) low nibbles, then (R, G, B) high nibbles. Inverse: ``le_pack``."""
    x = check_images(images)
    return np.concatenate([x & 15, x >> 4], axis=-1)


def le_pack(nibbles: np.ndarray) -> np.ndarray:
    """Inverse of ``le_unpack``: ``(N, H, W, 6)`` values in 0..15 -> ``(N, H, W, 3)`` uint8."""
    v = np.asarray(nibbles, np.uint8)
    if v.ndim != 4 or v.shape[-1] != 6 or (v > 15).any():
        raise ValueError("expected (N, H, W, 6) values in 0..15")
    return (v[..., 3:] << 4) | v[..., :3]


@register
class LeScheme(Scheme):
    """Tanaka's learnable image encryption: per M x M block, 4-bit components reversed and shuffled
    with the same key in every block; ciphertext bytes re-packed (see the module docstring)."""

    name = "le"

    def __init__(self, block_size: int = 4):
        self.block_size = check_block_size(block_size)

    def options(self) -> dict:
        return {"block_size": self.block_size}

    def check_shape(self, shape) -> None:
        check_block_shape(shape, self.block_size)

    def components(self) -> int:
        """``2d = 6 M^2`` components per block."""
        return 6 * self.block_size ** 2

    def key_nbytes(self, shape) -> int:
        self.check_shape(shape)
        c = self.components()
        return 8 * c + -(-c // 8)

    def keys_from_material(self, material: np.ndarray, shape, more=None) -> LeKey:
        nbytes = self.key_nbytes(shape)
        material = np.asarray(material, np.uint8)
        if material.ndim != 2 or material.shape[1] < nbytes:
            raise ValueError(f"le needs {nbytes} bytes of key material per image")
        c = self.components()
        perm = uniform_permutations(words_of(material, c), more)
        flip = bits(material[:, 8 * c : nbytes], c).view(bool)
        return LeKey(perm, flip)

    def _derive(self, stream: KeyStream, split: str, indices, shape) -> LeKey:
        indices = np.asarray(indices, np.int64).reshape(-1)
        nbytes = self.key_nbytes(shape)
        more = KeyExtension(stream, split, indices, 4 * nbytes + 1024)
        if same_rows(stream) and len(indices) > 1:
            k = self.keys_from_material(stream.material(split, indices[:1], nbytes), shape, more)
            n = len(indices)
            return LeKey(np.broadcast_to(k.perm, (n, k.perm.shape[1])),
                         np.broadcast_to(k.flip, (n, k.flip.shape[1])))
        return self.keys_from_material(stream.material(split, indices, nbytes), shape, more)

    def _check_key(self, images, key: LeKey) -> None:
        self.check_shape(images.shape[1:])
        want = (len(images), self.components())
        if key.perm.shape != want or key.flip.shape != want:
            raise ValueError(f"le key of shape {key.perm.shape} does not fit images {images.shape} "
                             f"with block size {self.block_size} (needs {want})")

    def _apply(self, images: np.ndarray, perm: np.ndarray, flip: np.ndarray, flip_after: bool) -> np.ndarray:
        """Shuffle (output component j = input component ``perm[j]`` in every block) and reverse.

        Works component-major: ``(N, 2d, nb)``, so that the shuffle moves whole rows of ``nb``
        values (one component of every block) and costs one row gather per batch."""
        n, h, w, _ = images.shape
        m = self.block_size
        bh, bw = h // m, w // m
        nb, d = bh * bw, 3 * m * m
        xs = images.reshape(n, bh, m, bw, m, 3).transpose(0, 2, 4, 5, 1, 3).reshape(n, d, nb)
        comp = np.empty((n, 2 * d, nb), np.uint8)
        np.bitwise_and(xs, 15, out=comp[:, :d])
        np.right_shift(xs, 4, out=comp[:, d:])
        fmask = (np.negative(np.ascontiguousarray(flip).view(np.uint8)) & 15)[:, :, None]  # 15 where reversed
        if not flip_after:
            comp ^= fmask
        rows = (np.arange(n, dtype=np.intp)[:, None] * (2 * d) + perm).reshape(-1)
        comp = comp.view(np.dtype((np.void, nb))).reshape(-1)[rows].view(np.uint8).reshape(n, 2 * d, nb)
        if flip_after:
            comp ^= fmask
        merged = (comp[:, d:] << 4) | comp[:, :d]
        out = merged.reshape(n, m, m, 3, bh, bw).transpose(0, 4, 1, 5, 2, 3)
        return np.ascontiguousarray(out).reshape(n, h, w, 3)

    def encrypt(self, images: np.ndarray, key: LeKey) -> np.ndarray:
        x = check_images(images)
        self._check_key(x, key)
        return self._apply(x, key.perm, key.flip, flip_after=True)

    def decrypt(self, images: np.ndarray, key: LeKey) -> np.ndarray:
        y = check_images(images)
        self._check_key(y, key)
        inverse = np.argsort(key.perm, axis=1)
        return self._apply(y, inverse, key.flip, flip_after=False)
