"""The comparison schemes of the paper: block-scrambling EtC, Tanaka's learnable encryption (LE),
the conventional pixel-based method of the ICIP 2019 paper, and a chaotic logistic map + RC4 cipher.

Conventions as in ``ppdata.cipher``: images are ``(N, H, W, 3)`` uint8 (R, G, B), every scheme
turns per-image key material (``KeyStream.material``) into its own key object, and
``decrypt(encrypt(x, k), k) == x`` exactly. Every ciphertext is again an ``(N, H, W, 3)`` uint8
array, so it is sharded like any other. ``--keys same`` gives every image the same material (the
setting of the original papers), ``--keys independent`` a fresh key per image.

=========  ===============================================  ============================================
scheme     what the original papers specify                 choices made here (faithfulness notes)
=========  ===============================================  ============================================
``etc``    Kurihara et al. (PCS 2015; IEICE Trans. 2015),   Block size 4 by default (the size of the
           Chuman et al.: divide the image into B x B       DNN comparisons, as Tanaka's M = 4; the
           blocks; (1) permute the blocks with key K1,      JPEG papers use 8 or 16).
           (2) rotate and invert every block with K2,       (2): rotation 0/90/180/270 and inversion
           (3) negative-positive transform of every block   none/horizontal/vertical give only 8
           with a key bit of K3 (p -> p XOR 255),           distinct results (horizontal + vertical =
           (4) shuffle the three colour components of       180 degrees), the dihedral group; we draw
           every block with K4 (6 orders).                  these 8 uniformly (3 key bits per block):
                                                            ``np.rot90`` by ``g & 3`` quarter turns
                                                            (counter-clockwise), then a left-right
                                                            mirror if ``g & 4``. (3): one bit per block
                                                            for all three channels. (4): the 6 orders
                                                            of ``cipher.PERMUTATIONS`` (the paper's
                                                            Table 1), a true permutation (the
                                                            widely copied code duplicates channels);
                                                            ``cs=False`` leaves it out. The keys of
                                                            (2)-(4) belong to the *output* position
                                                            of a block. Sizes not divisible by B are
                                                            refused (no padding: it would not be
                                                            invertible to the original size).
                                                            Chuman's grayscale-based variant (colour
                                                            components as separate blocks) is not
                                                            implemented.
``le``     Tanaka (ICCE-TW 2018): M x M blocks (M = 4);     Follows the author's code (BlockScramble):
           every 8-bit value split into its upper and       a block's ``d = 3M^2`` bytes in (row,
           lower 4 bits (6 channels); the intensity of      column, channel) order give ``2d``
           key-selected 4-bit values reversed               components, the ``d`` low nibbles then the
           (v -> 15 - v); the components shuffled with      ``d`` high nibbles; after the shuffle they
           the same key in every block.                     are merged back, byte ``i`` = ``(c[d+i] <<
                                                            4) | c[i]``. So the ciphertext is an
                                                            ``(H, W, 3)`` uint8 image, exactly what
                                                            the author's network consumes (input
                                                            32x32x3, first layer a 4x4 stride-4
                                                            convolution); ``le_unpack`` gives the
                                                            6-channel view. Reversal: the paper draws
                                                            it at random; the code derives it from
                                                            the shuffle key (``rev = key > d``,
                                                            applied before and after the shuffle). We
                                                            draw one independent key bit per
                                                            component (applied after the shuffle);
                                                            the code's keys are the special case
                                                            ``flip[j] = rev[j] ^ rev[perm[j]]`` (a
                                                            test checks this against the code's
                                                            algorithm written out block by block).
                                                            Sizes not divisible by M
                                                            are refused (the code pads by edge
                                                            replication, which is not invertible).
``icip``   Sirichotedumrong et al. (ICIP 2019, arXiv        The pixel transform of ``pixel`` (NP of
           1905.01827): NP of every value with a key bit,   every value, optional CS, same key
           optionally CS of every pixel (Table 1), with     format), registered under its own name so
           one common key for all images; trained with      that manifests and the training side can
           an adaptation network (1x1 convolutions).        tell the method apart (adaptation
                                                            network). Its setting is ``--keys same``;
                                                            with ``--keys independent`` it is the
                                                            pixel transform under per-image keys.
``chaos``  Gaata and Hantoosh (2016): a chaotic logistic    Our reading (the comparison in the ICIP /
           map ``x <- r x (1 - x)`` keyed by its            Access papers only names the method): the
           initial value and parameter generates the key    key is ``(x0, r)`` per image; the map is
           of an RC4 stream cipher whose keystream is       iterated ``transient`` = 1000 times, the
           XORed with the pixel values.                     next ``rc4_key_bytes`` = 32 iterates give
                                                            the RC4 key bytes ``floor(x * 1e14) mod
                                                            256`` (a 256-bit key, the largest that
                                                            OpenSSL's ARC4 takes; up to 256 bytes run
                                                            on our numpy RC4); the RC4 keystream (no
                                                            dropped bytes) is XORed with the image
                                                            bytes in (row, column, channel) order. No
                                                            pixel permutation. The paper's constants
                                                            (transient, key length, byte extraction)
                                                            are our choices, recorded in manifests.
=========  ===============================================  ============================================

Key formats (from the bytes of ``KeyStream.material``; layouts are fixed per scheme and shape):

* Random permutations (EtC block order, LE shuffle) are exactly uniform: ``n`` little-endian 64-bit
  words ``w`` give ``perm = argsort(w)`` (``perm[j]`` is the index of the ``j``-th smallest word).
  Given distinct words this ranking is uniform; a row with two equal words (probability below
  ``n^2 / 2^65``) is redrawn from the image's extension stream until its words are distinct
  (``KeyExtension``), so the result is exactly uniform, not merely close.
* Codes in 0..5 (colour shuffle) use exact rejection sampling (``keys.uniform_codes``); bits and
  codes in 0..7 are read from key bits (``np.unpackbits`` order).
* ``EtcKey``: ``perm`` (N, nb) int64, output block j is input block ``perm[j]`` (blocks numbered
  row-major); ``geometry`` (N, nb) uint8 in 0..7; ``negate`` (N, nb) bool; ``cs_code`` (N, nb) uint8
  in 0..5 or None. Material: ``8 nb`` bytes of words, ``ceil(3 nb / 8)`` bytes of geometry bits,
  ``ceil(nb / 8)`` bytes of NP bits, then the colour codes' bytes.
* ``LeKey``: ``perm`` (N, 2d) int64, output component j of *every* block is input component
  ``perm[j]``; ``flip`` (N, 2d) bool, component j reversed after the shuffle. Material: ``16 d``
  bytes of words, then ``ceil(2d / 8)`` bytes of flip bits.
* ``ChaosKey``: ``x0``, ``r`` (N,) float64 and the RC4 ``keystream`` (N, 3HW) uint8. Material:
  12 bytes = 96 bits, big-endian: 52 bits ``m``, 44 bits ``k``; ``x0 = (2m + 1) / 2^53`` in (0, 1)
  and ``r = 4 - (k + 1) 2^-51`` in [4 - 2^-7, 4): every bit changes the key (both are exact
  float64 values, distinct for distinct bits); ``x0`` is never the fixed point 0 and ``r < 4``
  keeps the orbit inside [0, 1). The map is evaluated as ``(r * x) * (1 - x)`` in IEEE float64
  (no fused operations), so keys are reproducible across machines.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .cipher import PERMUTATIONS, PixelScheme, Scheme, check_images, register
from .keys import KeyStream, code_bytes_needed, uniform_codes

__all__ = ["EtcScheme", "LeScheme", "IcipScheme", "ChaosScheme", "EtcKey", "LeKey", "ChaosKey",
           "KeyExtension", "uniform_permutations", "le_unpack", "le_pack", "logistic_rc4_key",
           "rc4_keystream"]


# --------------------------------------------------------------------------------------------
# key helpers


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


def _words(material: np.ndarray, n: int) -> np.ndarray:
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
                w = _words(more(r, 8 * n)[None, :], n)[0]
            perm[r] = np.argsort(w, kind="stable")
    return perm.astype(np.int64, copy=False)


def _bits(material: np.ndarray, n: int) -> np.ndarray:
    """``n`` key bits per row (``np.unpackbits`` order), ``(N, n)`` uint8 in {0, 1}."""
    return np.unpackbits(np.ascontiguousarray(material), axis=1, count=n)


def _check_block_shape(shape, b: int) -> None:
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"images must have shape (H, W, 3), got {tuple(shape)}")
    h, w = shape[0], shape[1]
    if h % b or w % b:
        raise ValueError(f"images of {h}x{w} pixels cannot be divided into {b}x{b} blocks: choose a "
                         f"--block-size that divides both sides, or --resize the images")


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return int(block_size)


def _to_blocks(x: np.ndarray, b: int) -> np.ndarray:
    """``(N, H, W, 3) -> (N, nb, b*b*3)``: blocks row-major, values in (row, column, channel) order."""
    n, h, w, c = x.shape
    nb = (h // b) * (w // b)
    return x.reshape(n, h // b, b, w // b, b, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, nb, b * b * c)


def _from_blocks(blocks: np.ndarray, h: int, w: int, b: int) -> np.ndarray:
    n = blocks.shape[0]
    out = blocks.reshape(n, h // b, w // b, b, b, 3).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(out).reshape(n, h, w, 3)


def _same_rows(stream: KeyStream) -> bool:
    return getattr(stream, "mode", None) == "same"


# --------------------------------------------------------------------------------------------
# EtC: block scrambling (Kurihara et al.)


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
        self.block_size = _check_block_size(block_size)
        self.cs = bool(cs)

    def options(self) -> dict:
        return {"block_size": self.block_size, "cs": self.cs}

    def check_shape(self, shape) -> None:
        _check_block_shape(shape, self.block_size)

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
        perm = uniform_permutations(_words(material[:, off[0] : off[1]], nb), more)
        g = _bits(material[:, off[1] : off[2]], 3 * nb).reshape(-1, nb, 3)
        geometry = (g[..., 0] << 2 | g[..., 1] << 1 | g[..., 2]).astype(np.uint8)
        negate = _bits(material[:, off[2] : off[3]], nb).view(bool)
        codes = None
        if self.cs:
            codes = uniform_codes(material[:, off[3] : off[4]], nb, more)
        return EtcKey(perm, geometry, negate, codes)

    def derive_keys(self, stream: KeyStream, split: str, indices, shape) -> EtcKey:
        indices = np.asarray(indices, np.int64).reshape(-1)
        nbytes = self.key_nbytes(shape)
        more = KeyExtension(stream, split, indices, 4 * nbytes + 1024)
        if _same_rows(stream) and len(indices) > 1:
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
        blocks = _to_blocks(x, bs).reshape(-1, q)
        order, src, runs = self._plan(key)
        g = self._rows(blocks)[src].view(np.uint8).reshape(-1, q)  # blocks moved, grouped by code
        for c, a, b in runs:
            if c:  # code 0: no rotation, no flip, colour order (R, G, B)
                g[a:b] = g[a:b][:, table[c]]
        out = np.empty_like(blocks)
        self._rows(out)[order] = self._rows(g)
        out ^= np.negative(np.ascontiguousarray(key.negate).view(np.uint8)).reshape(-1, 1)
        return _from_blocks(out.reshape(n, key.perm.shape[1], q), h, w, bs)

    def decrypt(self, images: np.ndarray, key: EtcKey) -> np.ndarray:
        y = check_images(images)
        self._check_key(y, key)
        n, h, w, _ = y.shape
        bs = self.block_size
        q = bs * bs * 3
        inverse = _block_inverse_table(bs)
        blocks = _to_blocks(y, bs).reshape(-1, q)
        blocks ^= np.negative(np.ascontiguousarray(key.negate).view(np.uint8)).reshape(-1, 1)
        order, src, runs = self._plan(key)
        g = self._rows(blocks)[order].view(np.uint8).reshape(-1, q)
        for c, a, b in runs:
            if c:
                g[a:b] = g[a:b][:, inverse[c]]
        out = np.empty_like(blocks)
        self._rows(out)[src] = self._rows(g)
        return _from_blocks(out.reshape(n, key.perm.shape[1], q), h, w, bs)


# --------------------------------------------------------------------------------------------
# LE: Tanaka's learnable image encryption


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
        self.block_size = _check_block_size(block_size)

    def options(self) -> dict:
        return {"block_size": self.block_size}

    def check_shape(self, shape) -> None:
        _check_block_shape(shape, self.block_size)

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
        perm = uniform_permutations(_words(material, c), more)
        flip = _bits(material[:, 8 * c : nbytes], c).view(bool)
        return LeKey(perm, flip)

    def derive_keys(self, stream: KeyStream, split: str, indices, shape) -> LeKey:
        indices = np.asarray(indices, np.int64).reshape(-1)
        nbytes = self.key_nbytes(shape)
        more = KeyExtension(stream, split, indices, 4 * nbytes + 1024)
        if _same_rows(stream) and len(indices) > 1:
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


# --------------------------------------------------------------------------------------------
# ICIP 2019: the pixel transform under one common key


@register
class IcipScheme(PixelScheme):
    """The conventional pixel-based method of the ICIP 2019 paper: the pixel transform (NP, optional
    CS; key format ``PixelKey``) whose setting is one common key (``--keys same``), trained with the
    adaptation network. Same ciphertext as ``pixel`` for the same key stream."""

    name = "icip"


# --------------------------------------------------------------------------------------------
# chaos: logistic map + RC4 (Gaata and Hantoosh)


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

    def derive_keys(self, stream: KeyStream, split: str, indices, shape) -> ChaosKey:
        indices = np.asarray(indices, np.int64).reshape(-1)
        if _same_rows(stream) and len(indices) > 1:
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
