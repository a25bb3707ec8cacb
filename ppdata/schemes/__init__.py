"""Perceptual encryption schemes as objects, one module each, and the registry.

``get_scheme(name, **options)`` / ``scheme_from_manifest(desc)``; modules: ``base`` (the interface,
key separation), ``pixel`` (the paper's cipher and ``plain``), ``etc``, ``le``, ``icip``, ``chaos``
(the comparison schemes of the paper), ``material`` (shared key-format helpers).

Conventions (``base``): images are ``(N, H, W, 3)`` uint8 (R, G, B), every scheme
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

from .base import PERMUTATIONS, SCHEMES, Scheme, check_images, register
from .chaos import ChaosKey, ChaosScheme, _rc4_numpy, logistic_rc4_key, rc4_keystream
from .etc import EtcKey, EtcScheme, _geometry_table
from .icip import IcipScheme
from .le import LeKey, LeScheme, le_pack, le_unpack
from .material import KeyExtension, uniform_permutations
from .pixel import PixelKey, PixelScheme, PlainScheme, fold


def get_scheme(name: str, **options) -> Scheme:
    """Instantiate a registered scheme by name; unknown options raise TypeError."""
    try:
        cls = SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; known: {', '.join(sorted(SCHEMES))}") from None
    return cls(**options)


def scheme_from_manifest(desc: dict) -> Scheme:
    """Rebuild a scheme from the ``scheme`` entry of a manifest or keystore (``Scheme.describe()``).

    The entry must name a registered scheme and hold exactly the options that scheme records, of
    their types (what ``describe()`` of the rebuilt scheme gives back); anything else is a
    ``ValueError`` naming the scheme and the option."""
    import inspect
    import json

    if not isinstance(desc, dict) or not isinstance(desc.get("name"), str):
        raise ValueError("is not an object with a name")
    name = desc["name"]
    if name not in SCHEMES:
        raise ValueError(f"{name!r} is not known (known: {', '.join(sorted(SCHEMES))})")
    cls = SCHEMES[name]
    opts = {k: v for k, v in desc.items() if k not in ("name", "encrypted")}
    unknown = sorted(set(opts) - set(inspect.signature(cls).parameters))
    if unknown:
        raise ValueError(f"{name} has no option {unknown[0]!r}")
    try:
        scheme = cls(**opts)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: {e}") from None
    want = scheme.describe()
    for k in sorted(set(want) | set(desc)):
        got = desc.get(k, "<missing>")
        if json.dumps(got) != json.dumps(want.get(k, "<none>")):
            raise ValueError(f"{name}: option {k} is {json.dumps(got)}, expected {json.dumps(want.get(k))}")
    return scheme


__all__ = ["PERMUTATIONS", "SCHEMES", "ChaosKey", "ChaosScheme", "EtcKey", "EtcScheme", "IcipScheme", "KeyExtension",
           "LeKey", "LeScheme", "PixelKey", "PixelScheme", "PlainScheme", "Scheme", "check_images", "fold",
           "get_scheme", "le_pack", "le_unpack", "logistic_rc4_key", "rc4_keystream", "register",
           "scheme_from_manifest", "uniform_permutations", "_geometry_table", "_rc4_numpy"]
