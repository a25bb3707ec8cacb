"""``Samples``: a batch read from shards."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Samples:
    """A batch read from shards: images (B,H,W,3) uint8, labels (B,) int64, keys (B,) str."""

    images: np.ndarray
    labels: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item) -> "Samples":
        return Samples(self.images[item], self.labels[item], self.keys[item])


def concat(parts: list[Samples]) -> Samples:
    if len(parts) == 1:
        return parts[0]
    return Samples(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                   np.concatenate([p.keys for p in parts]))
