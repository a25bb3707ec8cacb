"""Data plumbing for attacks: plain images by sample key, the attacker's own encryptions.

Images are ``(N, H, W, 3)`` uint8; sample keys are ``<split>_<index:06d>`` (``ppdata.sources``).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ppdata.cipher import PixelScheme, get_scheme
from ppdata.errors import PpdataError
from ppdata.keys import KeyStream
from ppdata.sources import Batch, Source, key_index, originals


class LimitedSource(Source):
    """The first ``limit`` images of one split of another source, with their real indices."""

    def __init__(self, source: Source, split: str, limit: int | None):
        super().__init__()
        self.source, self.split, self.limit = source, split, limit
        self.name = source.name
        self.classes = source.classes
        self.skipped = source.skipped

    def splits(self) -> list[str]:
        return [self.split]

    def count(self, split: str) -> int | None:
        n = self.source.count(split)
        return n if self.limit is None or n is None else min(n, self.limit)

    def describe(self) -> dict:
        return {**self.source.describe(), "limit": self.limit}

    def batches(self, split: str, batch_size: int = 256) -> Iterator[Batch]:
        left = self.limit
        for b in self.source.batches(split, batch_size):
            if left is not None and len(b) > left:
                b = Batch(b.images[:left], b.labels[:left], b.index[:left])
            if len(b):
                yield b
            if left is not None:
                left -= len(b)
                if left <= 0:
                    return


def read_split(source: Source, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and their source indices of ``split`` (the first ``limit``), in source order."""
    images, index = [], []
    for b in LimitedSource(source, split, limit).batches(split, 512):
        images.append(b.images)
        index.append(b.index)
    if not images:
        raise PpdataError(f"split {split} of source {source.name} holds no readable images")
    return np.concatenate(images), np.concatenate(index)


def read_spread(source: Source, split: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of ``split`` spread evenly over it (every k-th, k = count // n) and their source
    indices: sources are often ordered by class, and the first n images would all be of one or two
    classes. All images when ``n`` is None or at least the split's size."""
    count = source.count(split)
    if n is None or count is None or n >= count:
        return read_split(source, split, n)
    keep = set(np.linspace(0, count - 1, n).round().astype(np.int64).tolist())
    images, index = [], []
    for b in source.batches(split, 512):
        sel = np.array([int(i) in keep for i in b.index], bool)
        if sel.any():
            images.append(b.images[sel])
            index.append(b.index[sel])
    if not images:
        raise PpdataError(f"split {split} of source {source.name} holds no readable images")
    return np.concatenate(images), np.concatenate(index)


# the plain originals of given samples: ppdata's own lookup (also used by preview and audit)
plain_for_keys = originals


def encrypt_as(images: np.ndarray, split: str, indices: np.ndarray, cs: bool, stream: KeyStream) -> np.ndarray:
    """Encrypt ``images`` with ppdata's pixel cipher (NP, or NP+CS) under ``stream``, each image
    under the key of its index: what an attacker does with its own plain images."""
    scheme: PixelScheme = get_scheme("pixel", cs=cs)
    keys = scheme.derive_keys(stream, split, indices, images.shape[1:])
    return scheme.encrypt(images, keys)


def align_by_key(keys, split: str, images: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows of ``images`` (whose source indices are ``index``) for samples ``keys`` of ``split``."""
    idx = key_index(keys, split)
    row = {int(i): r for r, i in enumerate(index)}
    missing = [k for k, i in zip(keys, idx) if int(i) not in row]
    if missing:
        raise PpdataError(f"{len(missing)} sample(s) have no plain original (first: {missing[0]})")
    return images[[row[int(i)] for i in idx]]
