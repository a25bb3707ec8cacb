"""Key-format helpers shared by the comparison schemes: extension streams, exactly uniform
permutations, key bits, and the block layout of block-based schemes.

Block layout: ``(N, H, W, 3) -> (N, nb, b*b*3)``, blocks row-major, values in (row, column,
channel) order inside a block.
"""
from __future__ import annotations

import numpy as np

from ..keys import KeyStream


class KeyExtension:
    """Fallback key bytes for the (astronomically rare) rejections, per image, consumed in order.

    Image ``indices[row]`` owns one extension stream of ``pool`` bytes
    (``KeyStream.extension(split, index, pool)``; ``pool`` is fixed per scheme and shape, so the
    extensions of different images never overlap). Successive requests for a row get successive,
    disjoint slices, so no key byte serves two purposes. Callable as ``more(row, nbytes)``.
    """

    def __init__(self, stream: KeyStream, split: str, indices, pool: int):
        self.stream, self.split, self.pool = stream, split, int(pool)
        self.indices = np.asarray(indices, np.int64).reshape(-1)
        self._buf: dict[int, np.ndarray] = {}
        self._pos: dict[int, int] = {}

    def __call__(self, row: int, nbytes: int) -> np.ndarray:
        if row not in self._buf:
            self._buf[row] = self.stream.extension(self.split, int(self.indices[row]), self.pool)
            self._pos[row] = 0
        a = self._pos[row]
        if a + nbytes > self.pool:
            raise ValueError("key material exhausted: more rejections than planned (astronomically unlikely)")
        self._pos[row] = a + nbytes
        return self._buf[row][a : a + nbytes]


def words_of(material: np.ndarray, n: int) -> np.ndarray:
    """``n`` little-endian uint64 words per row from the first ``8 n`` bytes, ``(N, n)``."""
    return np.ascontiguousarray(material[:, : 8 * n]).view("<u8").reshape(len(material), n)


def uniform_permutations(words: np.ndarray, more=None) -> np.ndarray:
    """Exactly uniform permutations ``perm = argsort(words)``, ``(N, n)`` int64, from uint64 words.

    A row holding two equal words is redrawn with ``8 n`` fresh bytes from ``more(row, 8 n)``
    (a ``KeyExtension``) until its words are distinct; without ``more`` that raises ValueError.
    """
    words = np.asarray(words, np.uint64)
    rows, n = words.shape
    perm = np.argsort(words, axis=1, kind="stable")
    if n > 1:
        ranked = np.take_along_axis(words, perm, axis=1)
        tied = np.flatnonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1))
        for r in tied.tolist():  # per row only on the rejection path
            w = words[r]
            while len(np.unique(w)) < n:
                if more is None:
                    raise ValueError("equal permutation words and no extension stream to redraw them")
                w = words_of(more(r, 8 * n)[None, :], n)[0]
            perm[r] = np.argsort(w, kind="stable")
    return perm.astype(np.int64, copy=False)


def bits(material: np.ndarray, n: int) -> np.ndarray:
    """``n`` key bits per row (``np.unpackbits`` order), ``(N, n)`` uint8 in {0, 1}."""
    return np.unpackbits(np.ascontiguousarray(material), axis=1, count=n)


def check_block_shape(shape, b: int) -> None:
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"images must have shape (H, W, 3), got {tuple(shape)}")
    h, w = shape[0], shape[1]
    if h % b or w % b:
        raise ValueError(f"images of {h}x{w} pixels cannot be divided into {b}x{b} blocks: choose a "
                         f"--block-size that divides both sides, or --resize the images")


def check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return int(block_size)


def to_blocks(x: np.ndarray, b: int) -> np.ndarray:
    """``(N, H, W, 3) -> (N, nb, b*b*3)``: blocks row-major, values in (row, column, channel) order."""
    n, h, w, c = x.shape
    nb = (h // b) * (w // b)
    return x.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, nb, b * b * c)


def from_blocks(blocks: np.ndarray, h: int, w: int, b: int) -> np.ndarray:
    n = blocks.shape[0]
    out = blocks.reshape(n, h // b, w // b, b, b, 3).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(out).reshape(n, h, w, 3)
