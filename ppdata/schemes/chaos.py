"""A chaotic logistic map + RC4 cipher (Gaata and Hantoosh), with an RC4 keystream from OpenSSL
(numpy fallback). Our reading of the paper and the ``ChaosKey`` format: ``ppdata.schemes``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..keys import KeyStream
from .base import Scheme, check_images, register, same_rows


def _openssl_arc4():
    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
        from cryptography.hazmat.primitives.ciphers import Cipher

        Cipher(ARC4(bytes(16)), mode=None).encryptor().update(bytes(1))
        return ARC4, Cipher
    except Exception:  # noqa: BLE001 (old cryptography, or an OpenSSL without the legacy provider)
        return None


_ARC4_KEY_BYTES = frozenset({5, 7, 8, 10, 16, 20, 24, 32})  # the key sizes cryptography's ARC4 accepts


def _rc4_numpy(keys: np.ndarray, length: int) -> np.ndarray:
    """RC4 keystreams for every row of ``keys`` (N, klen) at once: the KSA and PRGA loops run over
    byte positions (RC4 is sequential), each step vectorised over the batch."""
    n, klen = keys.shape
    rows = np.arange(n)
    s = np.tile(np.arange(256, dtype=np.int64), (n, 1))
    k = keys.astype(np.int64)
    j = np.zeros(n, np.int64)
    for i in range(256):
        j = (j + s[:, i] + k[:, i % klen]) & 255
        si = s[:, i].copy()
        s[:, i] = s[rows, j]
        s[rows, j] = si
    out = np.empty((n, length), np.uint8)
    j[:] = 0
    for t in range(length):
        i = (t + 1) & 255
        si = s[:, i].copy()
        j = (j + si) & 255
        sj = s[rows, j]
        s[:, i] = sj
        s[rows, j] = si
        out[:, t] = s[rows, (si + sj) & 255]
    return out


def rc4_keystream(keys: np.ndarray, length: int, impl: str = "auto") -> np.ndarray:
    """RC4 keystream (no dropped bytes), ``(N, length)`` uint8, for keys ``(N, klen)`` uint8.

    impl: ``"openssl"`` (``cryptography``'s ARC4, one C call per key; keys of 5, 7, 8, 10, 16, 20,
    24 or 32 bytes), ``"numpy"`` (``_rc4_numpy``, any length 1..256), or ``"auto"`` (OpenSSL where
    it applies). Both give the RFC 6229 test vectors.
    """
    keys = np.ascontiguousarray(keys, np.uint8)
    if keys.ndim != 2 or not 1 <= keys.shape[1] <= 256:
        raise ValueError("RC4 keys must be (N, 1..256) bytes")
    lib = _openssl_arc4() if impl in ("auto", "openssl") else None
    if impl == "openssl" and lib is None:
        raise RuntimeError("cryptography's ARC4 is not available here")
    if lib is None or keys.shape[1] not in _ARC4_KEY_BYTES:
        if impl == "openssl":
            raise ValueError(f"cryptography's ARC4 takes keys of {sorted(_ARC4_KEY_BYTES)} bytes only")
        return _rc4_numpy(keys, length)
    arc4, cipher = lib
    zeros = bytes(length)
    out = np.empty((len(keys), length), np.uint8)
    for r in range(len(keys)):  # one C call per image; RC4 itself is sequential
        out[r] = np.frombuffer(cipher(arc4(keys[r].tobytes()), mode=None).encryptor().update(zeros), np.uint8)
    return out


def logistic_rc4_key(x0: np.ndarray, r: np.ndarray, transient: int = 1000, nbytes: int = 32) -> np.ndarray:
    """The RC4 keys of the chaos scheme, ``(N, nbytes)`` uint8: iterate ``x <- (r * x) * (1 - x)``
    ``transient`` times, then byte t is ``floor(x_{transient + 1 + t} * 1e14) mod 256``."""
    x = np.array(x0, np.float64, ndmin=1)
    r = np.broadcast_to(np.asarray(r, np.float64), x.shape)
    for _ in range(transient):
        x = r * x * (1.0 - x)
    seq = np.empty((len(x), nbytes), np.float64)
    for t in range(nbytes):
        x = r * x * (1.0 - x)
        seq[:, t] = x
    return (np.floor(seq * 1e14).astype(np.int64) & 255).astype(np.uint8)


@dataclass(frozen=True)
class ChaosKey:
    """Keys of the chaos scheme for a batch: the logistic map's ``x0`` and ``r`` (N,) float64, and
    the RC4 ``keystream`` (N, 3HW) uint8 XORed with the values in (row, column, channel) order."""

    x0: np.ndarray
    r: np.ndarray
    keystream: np.ndarray

    def __len__(self) -> int:
        return len(self.x0)

    def __getitem__(self, item) -> "ChaosKey":
        return ChaosKey(self.x0[item], self.r[item], self.keystream[item])


@register
class ChaosScheme(Scheme):
    """Chaotic logistic map + RC4 stream cipher over pixel values (Gaata and Hantoosh; see the
    module docstring for our reading)."""

    name = "chaos"
    KEY_BYTES = 12

    def __init__(self, transient: int = 1000, rc4_key_bytes: int = 32):
        for name, v, lo, hi in (("transient", transient, 0, 1 << 20), ("rc4_key_bytes", rc4_key_bytes, 1, 256)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        self.transient = int(transient)
        self.rc4_key_bytes = int(rc4_key_bytes)

    def options(self) -> dict:
        return {"transient": self.transient, "rc4_key_bytes": self.rc4_key_bytes}

    def check_shape(self, shape) -> None:
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"images must have shape (H, W, 3), got {tuple(shape)}")

    def key_nbytes(self, shape) -> int:
        return self.KEY_BYTES

    @staticmethod
    def parameters(material: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x0, r)`` from 12-byte material rows (module docstring)."""
        m8 = np.asarray(material, np.uint8)[:, :12].astype(np.uint64)
        hi = np.zeros(len(m8), np.uint64)
        for i in range(8):
            hi = (hi << np.uint64(8)) | m8[:, i]
        lo = np.zeros(len(m8), np.uint64)
        for i in range(8, 12):
            lo = (lo << np.uint64(8)) | m8[:, i]
        m = hi >> np.uint64(12)
        k = ((hi & np.uint64(0xFFF)) << np.uint64(32)) | lo
        x0 = (m * np.uint64(2) + np.uint64(1)).astype(np.float64) * 2.0 ** -53
        r = 4.0 - (k + np.uint64(1)).astype(np.float64) * 2.0 ** -51
        return x0, r

    def keys_from_material(self, material: np.ndarray, shape, more=None) -> ChaosKey:
        self.check_shape(shape)
        material = np.asarray(material, np.uint8)
        if material.ndim != 2 or material.shape[1] < self.KEY_BYTES:
            raise ValueError(f"chaos needs {self.KEY_BYTES} bytes of key material per image")
        h, w, c = shape
        x0, r = self.parameters(material)
        stream = rc4_keystream(logistic_rc4_key(x0, r, self.transient, self.rc4_key_bytes), h * w * c)
        return ChaosKey(x0, r, stream)

    def _derive(self, stream: KeyStream, split: str, indices, shape) -> ChaosKey:
        indices = np.asarray(indices, np.int64).reshape(-1)
        if same_rows(stream) and len(indices) > 1:
            k = self.keys_from_material(stream.material(split, indices[:1], self.KEY_BYTES), shape)
            n = len(indices)
            return ChaosKey(np.broadcast_to(k.x0, (n,)), np.broadcast_to(k.r, (n,)),
                            np.broadcast_to(k.keystream, (n, k.keystream.shape[1])))
        return self.keys_from_material(stream.material(split, indices, self.KEY_BYTES), shape)

    def _xor(self, images: np.ndarray, key: ChaosKey) -> np.ndarray:
        x = check_images(images)
        n = len(x)
        size = int(np.prod(x.shape[1:]))
        if key.keystream.shape != (n, size):
            raise ValueError(f"chaos keystream of shape {key.keystream.shape} does not fit images {x.shape}")
        return (x.reshape(n, size) ^ key.keystream).reshape(x.shape)

    def encrypt(self, images: np.ndarray, key: ChaosKey) -> np.ndarray:
        return self._xor(images, key)

    def decrypt(self, images: np.ndarray, key: ChaosKey) -> np.ndarray:
        return self._xor(images, key)
