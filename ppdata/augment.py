"""Expansion of a shard folder's training split by flips and shifts in the encrypted domain,
without any key (the server side); the transforms themselves live in ``ppdata.variants``.

The pixel cipher acts on every pixel independently, so a spatial transform commutes with it:
``f(Enc_k(x)) = Enc_{f(k)}(f(x))`` where ``f(k)`` moves the key arrays the same way as the
pixels (``variants.transform_key``). A server can therefore enlarge encrypted training data
without any key (the paper's "augmentation in the encrypted domain"). The default set is the
paper's x8 (``variants.variant_set``).

Order
    ``augment_folder`` writes the expanded split in a seeded random order: a uniform permutation
    of all N * V samples when the split fits in memory (CIFAR-10 does), else per random bucket of
    input images; memory stays bounded (see ``augment_folder`` and ``docs/augment.md``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .errors import PpdataError
from .fileio import file_sha256
from .names import check_path_text, check_split
from .shards import OutputFolder, Samples, ShardSet, WriterThread, make_writer, new_manifest, read_manifest, tar_records
from .shards.manifest import MANIFEST, augment_entry
from .variants import (SAMPLE_KEY, Variant, _shift, apply_variant, check_variants, describe, expand_images,  # noqa: F401
                       fill_mask, hflip, parse_shifts, parse_spec, plain_expand, plain_manifest_entry, shift_set,
                       split_variant_key, transform_key, variant_keys, variant_set, variants_from_manifest)

log = logging.getLogger("ppdata")

PER_PIXEL_SCHEMES = frozenset({"plain", "pixel", "icip", "chaos"})
MAX_BUCKETS = 1000  # temporary files open at once
KEY_WIDTH = 96  # bytes kept per sample key in the shuffle buckets (tar names hold at most 95)


# ---------------------------------------------------------------------------------------------
# encrypted-domain expansion of a shard folder (the server side)


def default_output(directory: str | os.PathLike, factor: int) -> Path:
    """The sibling folder ``<IN>-x<factor>`` (e.g. ``shards`` -> ``shards-x8``)."""
    d = Path(directory).resolve()
    return d.with_name(f"{d.name}-x{factor}")


class _Buckets:
    """Temporary bucket files ``.shuffle-NNNN.part`` of input records (a structured dtype), made
    in the output folder through its policy (claimed, new regular files, never through a link)."""

    def __init__(self, folder, count: int, dtype: np.dtype):
        self.folder = folder
        self.names = [f".shuffle-{b:04d}.part" for b in range(count)]
        folder.claim(*self.names)
        self.dtype = dtype
        self.counts = np.zeros(count, np.int64)
        self.files = []
        try:
            for n in self.names:
                self.files.append(folder.create(n, readable=True, temporary=False))
        except BaseException:
            self.close()
            raise

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
                    raise PpdataError(f"cannot write {self.folder.where(self.names[b])}: {e.strerror or e}") from None
                a += c
        self.counts += counts

    def finish(self) -> None:
        for f in self.files:
            f.flush()

    def load(self, b: int) -> np.ndarray:
        f = self.files[b]
        f.seek(0)
        recs = np.fromfile(f, self.dtype)
        if len(recs) != self.counts[b]:
            raise PpdataError(f"temporary file {self.folder.where(self.names[b])} holds {len(recs)} records, expected "
                              f"{self.counts[b]}")
        f.close()
        self.folder.discard(self.names[b], temporary=False)
        return recs

    def close(self) -> None:
        for f in self.files:
            if not f.closed:
                f.close()
        for n in self.names:
            self.folder.discard(n, temporary=False)


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
    """Expand ``split`` of shard folder ``directory`` by ``variants``; return the new manifest.

    ``out`` None: in place: the expansion is added to ``directory`` as split ``<split>x<V>``
    (e.g. ``trainx8``), its manifest rewritten atomically at the end to list it, nothing else in
    the folder touched (``--overwrite`` replaces an earlier expansion of that name). ``out`` a
    folder: a new shard folder whose ``split`` is the expansion and whose other splits are carried
    over (hard links, or copies).

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
    in_place = out is None
    if not in_place:
        check_path_text(out, "output folder (--out)")
    variants = list(variants) if variants is not None else variant_set()
    V = len(variants)
    out = src if in_place else Path(out)
    if not in_place and (src.resolve() == out.resolve() or out.resolve().is_relative_to(src.resolve())):
        raise PpdataError(f"--out {out} must not be the input folder {src} or inside it (leave --out out to add "
                          f"the expansion to {src} itself)")
    check_split(split)
    if split not in parent["splits"]:
        raise PpdataError(f"split {split!r} not in {src} (available: {', '.join(parent['splits']) or 'none'})")
    prev = augment_entry(parent, split)
    if prev:
        raise PpdataError(f"split {split} of {src} is already expanded ({prev.get('factor')}x, "
                          f"{prev.get('domain')} domain); expand its parent instead")
    out_split = check_split(f"{split}x{V}", "expanded split") if in_place else split
    if in_place and out_split in parent["splits"] and not overwrite:
        raise PpdataError(f"{src} already holds split {out_split} (an earlier expansion); pass --overwrite to "
                          f"replace it")
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
    others = {} if in_place else {sp: ShardSet(src, sp, parent, verify=verify) for sp in parent["splits"]
                                  if sp != split}
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
                   "source": parent.get("source"), "split": split},
    }
    if in_place:
        return _augment_in_place(src, parent, ss, out_split, entry, variants, fill, seed, shard_size, rec_dtype,
                                 n_buckets, max(1, chunk_bytes // rec_dtype.itemsize), write_batch, progress)
    manifest = new_manifest(fmt, source={"name": "augment", "parent": parent.get("id")},
                            scheme=parent.get("scheme"), keys=parent.get("keys"), shape=shape,
                            classes=parent.get("classes", []),
                            options={**(parent.get("options") or {}), "shard_size": shard_size})
    manifest["augment"] = entry
    if parent.get("scheme_check"):
        manifest["scheme_check"] = parent["scheme_check"]

    with OutputFolder(out, overwrite=overwrite) as folder:
        carried = {}
        for sp, other in others.items():
            for i, path in enumerate(other.paths):
                for _ in other.shard_batches(i, 16384):  # the carried shard is checked whole first
                    pass
                carried[sp] = folder.link_in(path, path.name, link)
        entry["carried"] = carried
        info = _expand_split(ss, folder, split, variants, fill, seed, shard_size, rec_dtype, n_buckets,
                             max(1, chunk_bytes // rec_dtype.itemsize), write_batch, entry, progress)
        manifest["splits"] = {sp: (info if sp == split else v) for sp, v in parent["splits"].items()}
        folder.write_manifest(manifest)
    return manifest


def _augment_in_place(src: Path, parent: dict, ss: ShardSet, out_split: str, entry: dict, variants, fill, seed,
                      shard_size, rec_dtype, n_buckets, chunk, write_batch, progress) -> dict:
    """Add ``out_split`` to ``src`` (see ``augment_folder``)."""
    import copy

    with OutputFolder(src, extend=True) as folder:
        manifest = copy.deepcopy(parent)
        if out_split in manifest["splits"]:  # --overwrite: first unlist the earlier expansion, then remove it
            old = manifest["splits"].pop(out_split)
            folder.write_manifest(manifest)
            folder.complete = False
            for s in old["shards"]:
                folder.remove_listed(s["name"])
        info = _expand_split(ss, folder, out_split, variants, fill, seed, shard_size, rec_dtype, n_buckets, chunk,
                             write_batch, entry, progress)
        info["augment"] = entry
        manifest["splits"][out_split] = info
        manifest["options"] = {**(manifest.get("options") or {})}
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


def _expand_split(ss: ShardSet, folder: OutputFolder, out_split: str, variants, fill, seed, shard_size, rec_dtype,
                  n_buckets, chunk, write_batch, entry, progress) -> dict:
    V = len(variants)
    n = len(ss)
    total = n * V
    suffix_room = KEY_WIDTH - 1 - max(len(v.name) + 1 for v in variants)
    suffixes = np.array([("_" + v.name).encode() for v in variants])
    bar = tqdm(total=total + (n if n_buckets > 1 else 0), desc=f"augment {ss.split}", unit="img",
               disable=not progress, leave=False)
    buckets = _Buckets(folder, n_buckets, rec_dtype) if n_buckets > 1 else None
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
        writer = make_writer(ss.format, folder, out_split, ss.shape, shard_size,
                             attrs={"classes": ss.classes, "scheme": ss.scheme, "augment": entry})
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
