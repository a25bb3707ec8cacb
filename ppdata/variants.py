"""Flip/shift variants of images and of their keys: the transforms, their names, and the
plain-domain expansion hook of ``encrypt --augment``.

The pixel cipher acts on every pixel independently, so a spatial transform commutes with it:
``f(Enc_k(x)) = Enc_{f(k)}(f(x))`` where ``f(k)`` moves the key arrays (``PixelKey.np_mask``,
``PixelKey.cs_code``) the same way as the pixels. A server can therefore enlarge encrypted
training data without any key (the paper's "augmentation in the encrypted domain"). The
alternative framework, Enc(f_d(T)), expands *before* encryption and gives every copy its own key
(``ppdata encrypt ... --augment flip,shift``, see ``plain_expand``).

Variants
    A ``Variant(flip, dx, dy)``: optional horizontal flip, *then* a translation by ``dx`` columns
    (positive: content moves right) and ``dy`` rows (positive: content moves down); vacated
    pixels take the fill value: ``out[y, x] = flipped[y - dy, x - dx]`` where that lies inside
    the image, else ``fill``. The default set (``variant_set()``, the paper's x8: 50K CIFAR-10 ->
    400K) is flip in {no, yes} times the translations (0,0), (+4,0), (0,+4), (+4,+4): the paper
    "doubled [the images] by horizontal flipping" and shifted them "by four pixels on both the
    horizontal and vertical axes", which "increases" them "fourfold", so each factor counts the
    original. ``shifts="diagonal"`` is the earlier reading, (+-4, +-4) without the original
    (kept so that earlier results stay reproducible). Shift only: ``variant_set(flip=False)``
    (x4); flip only: ``variant_set(shift=0)`` (x2, the identity and the mirror image).
Sample keys
    ``<parent key>_f<0|1>_sx<+dx>_sy<+dy>``, e.g. ``train_000123_f1_sx+4_sy-4`` (no dots; the
    signs are always written).
Keys of variants
    Encrypted domain: the parent's key moved like the pixels (``transform_key``); the fill
    region gets the identity key (no NP, CS code 0), so decrypting a variant with it gives the
    plain variant on *every* pixel, fill included. Plain domain: copy ``v`` of image ``i`` is
    encrypted under the key of index ``i * V + v`` (V variants, in manifest order).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .cipher import PixelKey
from .errors import PpdataError
from .sources import identity_expand, sample_key

SAMPLE_KEY = "<parent key>_f<0|1>_sx<+dx>_sy<+dy>"
SHIFT_SETS = ("paper", "diagonal")
_VARIANT_RE = re.compile(r"^f([01])_sx([+-]\d+)_sy([+-]\d+)$")
_VARIANT_KEY_RE = re.compile(r"^(.+)_(f[01]_sx[+-]\d+_sy[+-]\d+)$")


# ---------------------------------------------------------------------------------------------
# variants


@dataclass(frozen=True)
class Variant:
    """Horizontal flip (optional), then a translation by ``dx`` columns, ``dy`` rows."""

    flip: bool
    dx: int
    dy: int

    @property
    def name(self) -> str:
        return f"f{int(self.flip)}_sx{self.dx:+d}_sy{self.dy:+d}"

    @classmethod
    def parse(cls, name: str) -> "Variant":
        m = _VARIANT_RE.match(name)
        if not m:
            raise ValueError(f"{name!r} is not a variant name like f1_sx+4_sy-4")
        return cls(m.group(1) == "1", int(m.group(2)), int(m.group(3)))

    @property
    def identity(self) -> bool:
        return not self.flip and self.dx == 0 and self.dy == 0


def shift_set(name: str, shift: int = 4) -> list[tuple[int, int]]:
    """A named translation set of size ``shift``: ``paper`` (0,0), (s,0), (0,s), (s,s) or
    ``diagonal`` (s,s), (s,-s), (-s,s), (-s,-s); ``shift=0``: the identity only."""
    if shift < 0:
        raise ValueError("shift must be >= 0")
    if not shift:
        return [(0, 0)]
    if name == "paper":
        return [(0, 0), (shift, 0), (0, shift), (shift, shift)]
    if name == "diagonal":
        return [(shift, shift), (shift, -shift), (-shift, shift), (-shift, -shift)]
    raise ValueError(f"unknown shift set {name!r}; expected one of {', '.join(SHIFT_SETS)} or dx:dy,...")


def variant_set(flip: bool = True, shift: int = 4,
                shifts: Sequence[tuple[int, int]] | str | None = None) -> list[Variant]:
    """Every combination of the flips and the translations, flip-major.

    shifts: a named set (``"paper"``, the default, or ``"diagonal"``; see ``shift_set``) of size
    ``shift``, or an explicit list of (dx, dy) (include (0, 0) to keep the unshifted image).
    """
    if shifts is None or isinstance(shifts, str):
        shifts = shift_set(shifts or "paper", shift)
    shifts = [(int(dx), int(dy)) for dx, dy in shifts]
    if not shifts:
        raise ValueError("the shift set is empty")
    if len(set(shifts)) != len(shifts):
        raise ValueError(f"the shift set repeats a translation: {shifts}")
    out = [Variant(f, dx, dy) for f in ((False, True) if flip else (False,)) for dx, dy in shifts]
    if len(out) == 1 and out[0].identity:
        raise ValueError("no flip and no shift: the expansion would only copy the data")
    return out


def parse_shifts(text: str) -> list[tuple[int, int]]:
    """``"4:4,4:-4,-4:4,-4:-4"`` -> [(4, 4), (4, -4), (-4, 4), (-4, -4)] (dx:dy pairs)."""
    out = []
    for part in text.replace(" ", "").split(","):
        try:
            dx, dy = (int(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"{part!r} is not a translation dx:dy (e.g. 4:-4)") from None
        out.append((dx, dy))
    return out


def parse_spec(text: str) -> tuple[list[Variant], int]:
    """``encrypt --augment`` spec -> (variants, fill): comma-separated ``flip``, ``shift`` (4 pixels)
    or ``shift=N``, optionally ``diagonal`` (the earlier shift set instead of the paper's) and
    ``fill=V``; e.g. ``flip,shift`` (x8), ``shift`` (x4), ``flip`` (x2)."""
    flip, shift, fill, set_name = False, 0, 0, "paper"
    for tok in text.replace(" ", "").lower().split(","):
        name, _, value = tok.partition("=")
        try:
            if name == "flip" and not value:
                flip = True
            elif name == "shift":
                shift = int(value) if value else 4
                if shift < 1:
                    raise ValueError
            elif tok in SHIFT_SETS:
                set_name = tok
            elif name == "fill" and value:
                fill = int(value)
                if not 0 <= fill <= 255:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{tok!r} is not flip, shift, shift=N (N >= 1), diagonal or fill=V (0..255)") from None
    return variant_set(flip=flip, shift=shift, shifts=set_name), fill


def check_variants(variants: Sequence[Variant], shape) -> None:
    """Raise ValueError if a translation moves the whole image out of an ``(H, W, ...)`` frame."""
    h, w = shape[0], shape[1]
    for v in variants:
        if abs(v.dx) >= w or abs(v.dy) >= h:
            raise ValueError(f"translation {v.name} moves every pixel of a {h}x{w} image out of the frame")


def _shift(src: np.ndarray, dx: int, dy: int, fill, out: np.ndarray) -> np.ndarray:
    """``out[:, y, x] = src[:, y - dy, x - dx]`` inside the frame, ``fill`` elsewhere (N, H, W, ...)."""
    h, w = src.shape[1], src.shape[2]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = \
        src[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    if dy > 0:
        out[:, :dy] = fill
    elif dy < 0:
        out[:, h + dy :] = fill
    if dx > 0:
        out[:, :, :dx] = fill
    elif dx < 0:
        out[:, :, w + dx :] = fill
    return out


def hflip(x: np.ndarray) -> np.ndarray:
    """Horizontal flip of (N, H, W, ...) as a new C-contiguous array (RGB pixels moved as units)."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    if x.ndim == 4 and x.dtype == np.uint8 and x.shape[-1] == 3:
        pix = np.dtype((np.void, 3))  # one 3-byte pixel per element: ~1.5x faster than a uint8 copy
        out.view(pix)[:] = x.view(pix)[:, :, ::-1]
    else:
        out[:] = x[:, :, ::-1]
    return out


def apply_variant(x: np.ndarray, v: Variant, fill=0, out: np.ndarray | None = None) -> np.ndarray:
    """``v`` applied to a batch ``x`` of shape (N, H, W, ...) of any dtype (images or key arrays).

    Flip, then translate; vacated positions get ``fill``. ``out`` (same shape and dtype, may be
    a strided view) receives the result; a new array otherwise.
    """
    h, w = x.shape[1], x.shape[2]
    if abs(v.dx) >= w or abs(v.dy) >= h:
        raise ValueError(f"translation {v.name} moves every pixel of a {h}x{w} image out of the frame")
    if out is None:
        out = np.empty_like(x)
    return _shift(x[:, :, ::-1] if v.flip else x, v.dx, v.dy, fill, out)


def fill_mask(shape, v: Variant) -> np.ndarray:
    """(H, W) bool, True where variant ``v`` writes fill (pixels moved in from outside)."""
    h, w = shape[0], shape[1]
    keep = apply_variant(np.ones((1, h, w), bool), v, fill=False)[0]
    return ~keep


def expand_images(images: np.ndarray, variants: Sequence[Variant], fill=0,
                  out: np.ndarray | None = None) -> np.ndarray:
    """All variants of a batch: (N, H, W, C) -> (N * V, H, W, C), row ``i * V + v`` = variant v of i."""
    n, V = len(images), len(variants)
    if out is None:
        out = np.empty((n * V, *images.shape[1:]), images.dtype)
    grouped = out.reshape(n, V, *images.shape[1:])
    if not np.shares_memory(grouped, out):  # never silently write into a copy
        raise ValueError("out must be reshapeable to (N, V, ...) without a copy")
    check_variants(variants, images.shape[1:])
    flipped = hflip(images) if any(v.flip for v in variants) else None
    for j, v in enumerate(variants):
        _shift(flipped if v.flip else images, v.dx, v.dy, fill, grouped[:, j])
    return out


def transform_key(key: PixelKey, v: Variant) -> PixelKey:
    """The key of ``v(Enc_key(x))``: the key arrays moved like the pixels, identity key in the fill.

    ``scheme.decrypt(apply_variant(scheme.encrypt(x, key), v, fill), transform_key(key, v))
    == apply_variant(x, v, fill)`` on every pixel.
    """
    mask = apply_variant(key.np_mask, v, fill=False)
    codes = None if key.cs_code is None else apply_variant(key.cs_code, v, fill=0)
    return PixelKey(mask, codes)


def variant_keys(parent_keys: Sequence[str] | np.ndarray, variants: Sequence[Variant]) -> np.ndarray:
    """Sample keys of all variants, (N * V,) str, in the order of ``expand_images``."""
    parents = np.asarray(parent_keys).astype(str)
    suffixes = np.array(["_" + v.name for v in variants])
    return np.char.add(np.repeat(parents, len(variants)), np.tile(suffixes, len(parents)))


def split_variant_key(key: str) -> tuple[str, Variant]:
    """``"train_000123_f1_sx+4_sy-4"`` -> (``"train_000123"``, Variant(True, 4, -4))."""
    m = _VARIANT_KEY_RE.match(str(key))
    if not m:
        raise PpdataError(f"sample key {key!r} does not name a variant (<parent>_f<0|1>_sx<dx>_sy<dy>)")
    return m.group(1), Variant.parse(m.group(2))


def describe(variants: Sequence[Variant], fill, domain: str) -> dict:
    """The ``augment`` entry of a manifest (completed by the caller)."""
    return {"domain": domain, "variants": [v.name for v in variants], "factor": len(variants),
            "fill": fill, "sample_key": SAMPLE_KEY}


def variants_from_manifest(entry: dict) -> list[Variant]:
    return [Variant.parse(n) for n in entry["variants"]]


# ---------------------------------------------------------------------------------------------
# plain-domain framework: Enc(f_d(T)), through the ``expand`` hook of ``pipeline.encrypt``


def plain_expand(variants: Sequence[Variant], fill=0, split: str = "train"):
    """An ``expand`` hook for ``pipeline.encrypt``: every image of ``split`` becomes its V variants
    (in source order, the V copies of an image adjacent), copy ``v`` of image ``i`` under the key
    of index ``i * V + v``; other splits pass through unchanged."""
    variants = list(variants)
    V = len(variants)

    def expand(batch, sp):
        if sp != split:
            return identity_expand(batch, sp)
        check_variants(variants, batch.images.shape[1:])
        images = expand_images(batch.images, variants, fill)
        names = variant_keys([sample_key(sp, int(i)) for i in batch.index], variants).tolist()
        labels = np.repeat(batch.labels, V)
        kidx = (np.repeat(np.asarray(batch.index, np.int64), V) * V + np.tile(np.arange(V), len(batch)))
        return names, images, labels, kidx

    return expand


def plain_manifest_entry(variants: Sequence[Variant], fill, split: str = "train") -> dict:
    """The manifest's ``augment`` entry for ``encrypt --augment``."""
    return {**describe(variants, fill, "plain"), "split": split,
            "key_index": "<index> * factor + <variant>",
            "note": "copy <variant> (position in variants) of image <index> is encrypted under the key of "
                    "index <index> * factor + <variant>"}


def key_indexer(entry: dict, default):
    """``f(sample_keys, split) -> key indices`` for a folder with an ``augment`` manifest entry.

    Plain domain: ``<index> * V + <variant>`` for the expanded split, ``default`` for the others.
    Encrypted domain: a variant's key is its parent's key moved like the pixels, not a key
    index; ``pipeline.decrypt`` cannot use it (decrypt the parent folder instead).
    """
    domain = entry.get("domain")
    split = entry.get("split", "train")
    if domain == "encrypted":
        def refuse(sample_keys, sp):
            if sp != split:
                return default(sample_keys, sp)
            raise PpdataError(
                f"split {sp} was expanded in the encrypted domain (ppdata augment): its keys are the parent's "
                f"keys moved like the pixels, not key indices; decrypt the parent folder "
                f"(manifest id {entry.get('parent', {}).get('id')}) instead")
        return refuse
    if domain != "plain":
        raise PpdataError(f"unknown augmentation domain {domain!r} in the manifest")
    variants = variants_from_manifest(entry)
    number = {v.name: j for j, v in enumerate(variants)}
    V = len(variants)

    def index(sample_keys, sp):
        if sp != split:
            return default(sample_keys, sp)
        parents, which = [], []
        for k in sample_keys:
            parent, v = split_variant_key(k)
            if v.name not in number:
                raise PpdataError(f"sample key {k!r}: variant {v.name} is not in the manifest's variants")
            parents.append(parent)
            which.append(number[v.name])
        return default(parents, sp) * V + np.asarray(which, np.int64)

    return index
