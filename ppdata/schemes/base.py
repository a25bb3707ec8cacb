"""The scheme interface every cipher implements, the registry, and key separation.

Conventions: images are ``(N, H, W, 3)`` uint8 arrays, channels R, G, B, C-contiguous. A scheme
turns per-image key material (``ppdata.keys.KeyStream``) into its own key object
(``derive_keys``) and has an exact inverse: ``decrypt(encrypt(x, k), k) == x``.

Key separation: ``derive_keys`` draws material from the stream bound to ``key_context(shape)``
(the scheme's name and options and the image shape, canonical JSON), so one secret reused
across schemes, options or image sizes never gives two of them the same key bytes
(``docs/format.md``, key derivation 2). Subclasses implement ``_derive``.
"""
from __future__ import annotations

import json
from typing import ClassVar

import numpy as np

from ..keys import KeyStream

# paper's Table 1: output channel c takes input channel PERMUTATIONS[k, c]
PERMUTATIONS = np.array(
    [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]], dtype=np.uint8
)


def check_images(images: np.ndarray) -> np.ndarray:
    """Validate a ``(N, H, W, 3)`` uint8 batch and return it C-contiguous."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    return np.ascontiguousarray(images)


class Scheme:
    """Base class: a perceptual encryption scheme. Subclasses register with ``@register``."""

    name: ClassVar[str] = ""
    encrypted: ClassVar[bool] = True

    def options(self) -> dict:
        """The options that define this scheme, as recorded in a manifest."""
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "encrypted": self.encrypted, **self.options()}

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        """Raise ValueError if images of ``(H, W, 3)`` cannot be encrypted by this scheme."""

    def key_nbytes(self, shape: tuple[int, int, int]) -> int:
        raise NotImplementedError

    def key_context(self, shape) -> bytes:
        """What a key is for: canonical JSON of the scheme (name, options) and the image shape."""
        return json.dumps({"scheme": self.describe(), "shape": [int(v) for v in shape]}, sort_keys=True,
                          separators=(",", ":")).encode()

    def derive_keys(self, stream: KeyStream, split: str, indices, shape):
        """Keys for images ``indices`` of ``split``, all of shape ``(H, W, 3)``, from ``stream``
        bound to this scheme and shape (see module docstring)."""
        return self._derive(stream.bind(self.key_context(shape)), split, indices, tuple(shape))

    def _derive(self, stream: KeyStream, split: str, indices, shape):
        raise NotImplementedError

    def encrypt(self, images: np.ndarray, key) -> np.ndarray:
        raise NotImplementedError

    def decrypt(self, images: np.ndarray, key) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


SCHEMES: dict[str, type[Scheme]] = {}


def register(cls: type[Scheme]) -> type[Scheme]:
    SCHEMES[cls.name] = cls
    return cls


def same_rows(stream: KeyStream) -> bool:
    """True if every image gets the same material (``--keys same``)."""
    return getattr(stream, "mode", None) == "same"
