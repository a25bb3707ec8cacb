"""Flip/shift expansion of a training set, in the encrypted domain (key-free) or the plain domain.

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
    the image, else ``fill``. The default set (``variant_set()``) is flip in {no, yes} times the
    four translations (+4,+4), (+4,-4), (-4,+4), (-4,-4): x8 (50K CIFAR-10 -> 400K). Shift only:
    ``variant_set(flip=False)`` (x4); flip only: ``variant_set(shift=0)`` (x2, the identity and
    the mirror image).
Sample keys
    ``<parent key>_f<0|1>_sx<+dx>_sy<+dy>``, e.g. ``train_000123_f1_sx+4_sy-4`` (no dots; the
    signs are always written).
Keys of variants
    Encrypted domain: the parent's key moved like the pixels (``transform_key``); the fill
    region gets the identity key (no NP, CS code 0), so decrypting a variant with it gives the
    plain variant on *every* pixel, fill included. Plain domain: copy ``v`` of image ``i`` is
    encrypted under the key of index ``i * V + v`` (V variants, in manifest order).
Order
    ``augment_folder`` writes the expanded split in a seeded random order: a uniform permutation
    of all N * V samples when the split fits in memory (CIFAR-10 does), else per random bucket of
    input images; memory stays bounded (see ``augment_folder`` and ``docs/augment.md``).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .cipher import PixelKey
from .errors import PpdataError
from .fileio import file_sha256
from .names import check_path_text, check_split
from .shards import (MANIFEST, OutputFolder, Samples, ShardSet, WriterThread, make_writer, new_manifest,
                     read_manifest, tar_records)

log = logging.getLogger("ppdata")

# schemes whose key acts on every pixel value on its own, so that a flip/shift of the ciphertext
# is the encryption of the flipped/shifted image under the moved key
PER_PIXEL_SCHEMES = frozenset({"plain", "pixel", "icip", "chaos"})
MAX_BUCKETS = 1000  # temporary files open at once
KEY_WIDTH = 96  # bytes kept per sample key in the shuffle buckets (tar names hold at most 95)
SAMPLE_KEY = "<parent key>_f<0|1>_sx<+dx>_sy<+dy>"
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


def variant_set(flip: bool = True, shift: int = 4,
                shifts: Sequence[tuple[int, int]] | None = None) -> list[Variant]:
    """Every combination of the flips and the translations, flip-major.

    shift: the four diagonal translations (+-shift, +-shift); 0 disables shifting. shifts: an
    explicit list of (dx, dy) instead (include (0, 0) to keep the unshifted image).
    """
    if shifts is None:
        if shift < 0:
            raise ValueError("shift must be >= 0")
        shifts = [(shift, shift), (shift, -shift), (-shift, shift), (-shift, -shift)] if shift else [(0, 0)]
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
    or ``shift=N``, and optionally ``fill=V``; e.g. ``flip,shift`` (x8), ``shift`` (x4), ``flip`` (x2)."""
    flip, shift, fill = False, 0, 0
    for tok in text.replace(" ", "").lower().split(","):
        name, _, value = tok.partition("=")
        try:
            if name == "flip" and not value:
                flip = True
            elif name == "shift":
                shift = int(value) if value else 4
                if shift < 1:
                    raise ValueError
            elif name == "fill" and value:
                fill = int(value)
                if not 0 <= fill <= 255:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{tok!r} is not flip, shift, shift=N (N >= 1) or fill=V (0..255)") from None
    return variant_set(flip=flip, shift=shift), fill


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
    from .pipeline import identity_expand
    from .sources import sample_key

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


# ---------------------------------------------------------------------------------------------
# encrypted-domain expansion of a shard folder (the server side)


def default_output(directory: str | os.PathLike, factor: int) -> Path:
    """The sibling folder ``<IN>-x<factor>`` (e.g. ``shards`` -> ``shards-x8``)."""
    d = Path(directory).resolve()
    return d.with_name(f"{d.name}-x{factor}")


def _carry(src: Path, dst: Path, link: bool) -> str:
    """Hard-link ``src`` to ``dst`` (copy across file systems, or when ``link`` is False)."""
    if link:
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            pass
    shutil.copyfile(src, dst)
    return "copy"


class _Buckets:
    """Temporary bucket files ``OUT/.shuffle-NNNN.part`` of input records (a structured dtype)."""

    def __init__(self, directory: Path, count: int, dtype: np.dtype, claim=lambda *names: None):
        names = [f".shuffle-{b:04d}.part" for b in range(count)]
        claim(*names)
        self.paths = [directory / n for n in names]
        self.dtype = dtype
        self.counts = np.zeros(count, np.int64)
        self.files = []
        try:
            for p in self.paths:
                self.files.append(open(p, "wb"))
        except OSError as e:
            self.close()
            raise PpdataError(f"cannot write {p}: {e.strerror or e}") from None

    def scatter(self, recs: np.ndarray, bucket: np.ndarray) -> None:
        order = np.argsort(bucket, kind="stable")
        counts = np.bincount(bucket, minlength=len(self.files))
        recs = recs[order]
        a = 0
        for b, c in enumerate(counts.tolist()):
            if c:
                try:
                    self.files[b].write(recs[a : a + c].data)
                except OSError as e:
                    raise PpdataError(f"cannot write {self.paths[b]}: {e.strerror or e}") from None
                a += c
        self.counts += counts

    def finish(self) -> None:
        for f in self.files:
            f.close()

    def load(self, b: int) -> np.ndarray:
        recs = np.fromfile(self.paths[b], self.dtype)
        if len(recs) != self.counts[b]:
            raise PpdataError(f"temporary file {self.paths[b]} holds {len(recs)} records, expected {self.counts[b]}")
        self.paths[b].unlink()
        return recs

    def close(self) -> None:
        for f in self.files:
            if not f.closed:
                f.close()
        for p in self.paths:
            p.unlink(missing_ok=True)


def augment_folder(
    directory: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    variants: Sequence[Variant] | None = None,
    fill: int = 0,
    seed: int = 0,
    split: str = "train",
    shard_size: int | None = None,
    overwrite: bool = False,
    link: bool = True,
    resident_bytes: int = 384 << 20,
    chunk_bytes: int = 16 << 20,
    write_batch: int = 4096,
    progress: bool = True,
    verify: bool = True,
) -> dict:
    """Expand ``split`` of shard folder ``directory`` by ``variants`` into ``out``; return the manifest.

    Every input shard is checked as it is read (counts, shapes, structure; ``verify``: sha256
    too), the carried-over splits included, before the output is marked complete.

    Key-free: reads no keystore. Other splits are carried over unchanged (hard links, or copies).
    Order, fixed by ``seed``: the input is dealt uniformly at random into B buckets that each fit
    in ``resident_bytes`` (together with their flipped copy); B = 1 (no temporary files) when the
    whole split fits, e.g. CIFAR-10. Each bucket is held in memory and its n_b * V outputs are
    written in a uniformly random permutation, ``write_batch`` at a time. With B = 1 the output
    is a uniform random permutation of all N * V samples; with B > 1, of the samples within
    consecutive segments (one per bucket), images dealt to the segments at random.
    Memory: about ``resident_bytes`` plus a few write batches.
    """
    src = Path(directory)
    parent = read_manifest(directory)
    if out is not None:
        check_path_text(out, "output folder (--out)")
    variants = list(variants) if variants is not None else variant_set()
    V = len(variants)
    out = Path(out) if out is not None else default_output(src, V)
    if src.resolve() == out.resolve() or out.resolve().is_relative_to(src.resolve()):
        raise PpdataError(f"--out {out} must not be the input folder {src} or inside it")
    if split not in parent["splits"]:
        raise PpdataError(f"split {split!r} not in {src} (available: {', '.join(parent['splits']) or 'none'})")
    prev = parent.get("augment")
    if prev and prev.get("split", "train") == split:
        raise PpdataError(f"split {split} of {src} is already expanded ({prev.get('factor')}x, "
                          f"{prev.get('domain')} domain); expand its parent instead")
    shape = tuple(parent["shape"])
    try:
        check_variants(variants, shape)
    except ValueError as e:
        raise PpdataError(str(e)) from None
    scheme_name = (parent.get("scheme") or {}).get("name")
    per_pixel = scheme_name in PER_PIXEL_SCHEMES
    if not per_pixel:
        log.warning("%s images: flip and shift commute with per-pixel ciphers (%s); for %s the variants are "
                    "not shown to be encryptions of the plain variants", scheme_name,
                    ", ".join(sorted(PER_PIXEL_SCHEMES - {"plain"})), scheme_name)
    fmt = parent["format"]
    check_split(split)
    ss = ShardSet(src, split, parent, verify=verify)
    others = {sp: ShardSet(src, sp, parent, verify=verify) for sp in parent["splits"] if sp != split}
    n = len(ss)
    shard_size = shard_size or int((parent.get("options") or {}).get("shard_size") or 10000)

    rec_dtype = np.dtype([("key", f"S{KEY_WIDTH}"), ("label", "<i8"), ("image", "u1", shape)])
    per_image = rec_dtype.itemsize + (int(np.prod(shape)) if any(v.flip for v in variants) else 0)
    cap = max(1, resident_bytes // per_image)  # input images resident at once
    n_buckets = 1 if n <= cap else -(-n // max(1, int(0.95 * cap)))  # ~binomial sizes: keep 5% slack
    if n_buckets > MAX_BUCKETS:
        raise PpdataError(f"split {split} of {src} ({n} images) needs {n_buckets} temporary buckets at "
                          f"--memory {resident_bytes >> 20} MiB (at most {MAX_BUCKETS}); give it more --memory")
    entry = {
        **describe(variants, fill, "encrypted"),
        "split": split,
        "seed": seed,
        "per_pixel_scheme": per_pixel,
        "order": {"method": "bucket shuffle", "buckets": int(n_buckets),
                  "uniform": n_buckets == 1},
        "parent": {"id": parent.get("id"), "manifest_sha256": file_sha256(src / MANIFEST), "count": n,
                   "source": parent.get("source")},
    }
    manifest = new_manifest(fmt, source={"name": "augment", "parent": parent.get("id")},
                            scheme=parent.get("scheme"), keys=parent.get("keys"), shape=shape,
                            classes=parent.get("classes", []),
                            options={**(parent.get("options") or {}), "shard_size": shard_size})
    manifest["augment"] = entry

    with OutputFolder(out, overwrite=overwrite) as folder:
        carried = {}
        for sp, other in others.items():
            for i, path in enumerate(other.paths):
                for _ in other.shard_batches(i, 16384):  # the carried shard is checked whole first
                    pass
                (dst,) = folder.claim(path.name)
                carried[sp] = _carry(path, dst, link)
        entry["carried"] = carried
        info = _expand_split(ss, folder, variants, fill, seed, shard_size, rec_dtype, n_buckets,
                             max(1, chunk_bytes // rec_dtype.itemsize), write_batch, entry, progress)
        manifest["splits"] = {sp: (info if sp == split else v) for sp, v in parent["splits"].items()}
        folder.write_manifest(manifest)
    return manifest


def _write_bucket(worker, tar, keys, labels, images, variants, suffixes, fill, rng, write_batch, shape, bar) -> int:
    """Write all len(images) * V variants of one bucket in a random order; returns the count."""
    V = len(variants)
    flipped = hflip(images) if any(v.flip for v in variants) else None
    perm = rng.permutation(len(images) * V)
    for a in range(0, len(perm), write_batch):
        idx, var = np.divmod(perm[a : a + write_batch], V)
        batch = np.empty((len(idx), *shape), np.uint8)
        for j, v in enumerate(variants):
            rows = np.flatnonzero(var == j)
            if len(rows):
                src = (flipped if v.flip else images)[idx[rows]]
                batch[rows] = _shift(src, v.dx, v.dy, fill, np.empty_like(src))
        names = np.char.add(keys[idx], suffixes[var])  # ASCII bytes
        if tar:  # records are built here; the writer thread writes and hashes them
            worker.put(tar_records(names, batch, labels[idx]))
        else:
            worker.put(names.astype(str), batch, labels[idx])
        bar.update(len(idx))
    return len(perm)


def _records(s: Samples, rec_dtype) -> np.ndarray:
    recs = np.empty(len(s), rec_dtype)
    recs["key"] = np.char.encode(s.keys.astype(str), "ascii")
    recs["label"] = s.labels
    recs["image"] = s.images
    return recs


def _expand_split(ss: ShardSet, folder: OutputFolder, variants, fill, seed, shard_size, rec_dtype, n_buckets, chunk,
                  write_batch, entry, progress) -> dict:
    out = folder.path
    V = len(variants)
    n = len(ss)
    total = n * V
    suffix_room = KEY_WIDTH - 1 - max(len(v.name) + 1 for v in variants)
    suffixes = np.array([("_" + v.name).encode() for v in variants])
    bar = tqdm(total=total + (n if n_buckets > 1 else 0), desc=f"augment {ss.split}", unit="img",
               disable=not progress, leave=False)
    buckets = _Buckets(out, n_buckets, rec_dtype, folder.claim) if n_buckets > 1 else None
    if buckets is None:  # the whole split stays in memory: keys, labels, images (contiguous)
        res_keys = np.empty(n, f"S{KEY_WIDTH}")
        res_labels = np.empty(n, np.int64)
        res_images = np.empty((n, *ss.shape), np.uint8)
    written = 0
    try:
        # pass 1: read the input; one bucket: keep it; several: deal images to buckets at random
        deal = np.random.default_rng([seed, 0])
        seen = 0
        for s in ss.batches(chunk):
            m = len(s)
            lengths = np.char.str_len(s.keys.astype(str))
            if m and lengths.max() > suffix_room:
                raise PpdataError(f"sample key {s.keys[int(lengths.argmax())]!r} is too long to take a variant "
                                  f"suffix (at most {suffix_room} characters)")
            if seen + m > n:
                raise PpdataError(f"{ss.directory}: split {ss.split} holds more samples than the manifest's {n}")
            if buckets is None:
                res_keys[seen : seen + m] = np.char.encode(s.keys.astype(str), "ascii")
                res_labels[seen : seen + m] = s.labels
                res_images[seen : seen + m] = s.images
            else:
                buckets.scatter(_records(s, rec_dtype), deal.integers(0, n_buckets, size=m))
                bar.update(m)
            seen += m
        if seen != n:
            raise PpdataError(f"{ss.directory}: split {ss.split} holds {seen} samples, the manifest says {n}")
        if buckets is not None:
            buckets.finish()
        # pass 2: per bucket, all n_b * V outputs in a seeded random order
        writer = make_writer(ss.format, out, ss.split, ss.shape, shard_size,
                             attrs={"classes": ss.classes, "scheme": ss.scheme, "augment": entry}, claim=folder.claim)
        # tar: records are built here, written and hashed in the writer thread (balances the two cores)
        tar = ss.format == "webdataset"
        with WriterThread(writer, "write_records" if tar else "write") as worker:
            for b in range(n_buckets):
                if buckets is None:
                    keys, labels, images = res_keys, res_labels, res_images
                    del res_keys, res_labels, res_images
                else:
                    recs = buckets.load(b)
                    keys, labels, images = recs["key"].copy(), recs["label"].copy(), recs["image"].copy()
                    del recs
                written += _write_bucket(worker, tar, keys, labels, images, variants, suffixes, fill,
                                         np.random.default_rng([seed, 1, b]), write_batch, ss.shape, bar)
                del images, keys, labels
            shards = worker.finish()
    finally:
        if buckets is not None:
            buckets.close()
        bar.close()
    if written != total:
        raise PpdataError(f"wrote {written} samples, expected {total}")
    return {"count": total, "skipped": {"count": 0, "files": []}, "shards": [s.to_json() for s in shards]}
