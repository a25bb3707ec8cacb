"""Dataset readers: every source yields batches of ``(images, labels, index)`` per split.

Modules: ``base`` (the source interface, sample keys ``<split>_<index:06d>``, skips, in-memory
arrays, ``originals``), ``decode`` (``Decode``: every setting that turns an image file into RGB
uint8 pixels), ``folder`` (ImageFolder trees as directories or tar archives, local or at a URL,
the embedded sample), ``standard`` (CIFAR-10/100 and STL-10 from their official archives, without
torch). ``open_source(name, path, ...)`` opens one by its CLI name: ``cifar10``, ``cifar100``,
``stl10``, ``folder PATH...``, ``sample``; ``open_source_as(manifest, name, path)`` reopens the
plain source of a shard folder exactly as the folder was made (decode settings from its manifest).
"""
from __future__ import annotations

import os
from typing import Sequence

from ..errors import PpdataError
from .base import (SPLIT_NAMES, ArraySource, Batch, Item, Ref, Skipped, Source, identity_expand, key_index,
                   originals, sample_key)
from .decode import (DECODERS, IMAGE_EXTENSIONS, INTERPOLATIONS, MAX_PIXELS, MAX_SIDE, Decode, DecoderMismatch,
                     ImageTooLarge, decode_image, failure_reason, to_rgb)
from .folder import FolderSource, MultiFolderSource, SampleSource, first_difference, sample_archive
from .standard import DATASETS, StandardSource, TorchvisionSource

SOURCE_NAMES = ("cifar10", "cifar100", "stl10", "folder", "sample")


def open_source(name: str, path: str | Sequence[str] | None = None, *, split: str | None = None,
                root: str = "data", download: bool = False, resize: tuple[int, int] | int | None = None,
                strict: bool = False, max_pixels: int = MAX_PIXELS, decode: Decode | None = None,
                workers: int = 1) -> Source:
    """Open a source by CLI name: cifar10, cifar100, stl10, folder (needs one or more ``path``:
    directories, archives or URLs), sample. ``decode``: the ``Decode`` settings of image files
    (or ``resize`` and ``max_pixels`` alone); ``workers``: processes decoding for ``batches``."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path or [])
    settings = decode or Decode(resize=tuple(resize) if isinstance(resize, (list, tuple)) else resize,
                                max_pixels=max_pixels)
    if name == "folder":
        if not paths:
            raise PpdataError("source 'folder' needs a PATH (a directory or .tar/.tar.gz archive)")
        parts = [FolderSource(p, split=split, strict=strict, decode=settings, workers=workers) for p in paths]
        return parts[0] if len(parts) == 1 else MultiFolderSource(parts)
    if paths:
        raise PpdataError(f"source {name!r} takes no PATH (use --root DIR for torchvision data)")
    if name == "sample":
        return SampleSource(split=split, strict=strict, decode=settings, workers=workers)
    if name in DATASETS:
        if settings.resize is not None or settings.crop is not None:
            raise PpdataError("--resize and --crop are only supported for folder and sample sources")
        return StandardSource(name, root=root, download=download, split=split)
    raise PpdataError(f"unknown source {name!r}; expected one of cifar10, cifar100, stl10, folder, sample")


def open_source_as(manifest: dict, name: str, path: str | Sequence[str] | None = None, *, split: str | None = None,
                   root: str = "data", download: bool = False, check: bool = True) -> Source:
    """The plain source of a shard folder, opened exactly as the folder's manifest says it was
    made: the same decode settings (resize, crop, interpolation, EXIF orientation, decoder, pixel
    limit) read from the manifest, never typed again.

    ``check``: the source must still be what was encrypted: every split the manifest lists (or
    ``split``) exists with the recorded listing (names in order, when recorded) and image count;
    decoding then checks each image's size against the manifest's shape, and an image that no
    longer fits is an error naming it. Use with ``originals(source, split, keys)``.
    """
    from .decode import torchvision_available

    d = Decode.from_manifest(manifest)
    if d.decoder == "torchvision" and not torchvision_available():
        d = d.with_decoder("pillow")  # torchvision was used only where it gives Pillow's pixels
    elif d.decoder == "auto":
        d = d.with_decoder("pillow")
    src = open_source(name, path, split=split, root=root, download=download, decode=d)
    shape = manifest.get("shape")
    if isinstance(src, (FolderSource, MultiFolderSource)) and shape:
        parts = src.parts if isinstance(src, MultiFolderSource) else [src]
        for p in parts:
            if p.shape is None:
                p.shape = tuple(shape)
            elif tuple(p.shape) != tuple(shape):
                raise PpdataError(f"the manifest's shape {shape} is not what its decode settings make ({p.shape})")
    if check:
        _check_listing(manifest, src, split)
    return src


def _check_listing(manifest: dict, src: Source, split: str | None) -> None:
    from ..shards.manifest import augment_entry

    for sp, info in (manifest.get("splits") or {}).items():
        if split not in (None, "all") and sp != split:
            continue
        if augment_entry(manifest, sp) and not isinstance(info.get("source_listing"), dict):
            continue  # an expansion: its own count is not the source's
        if sp not in src.splits():
            if split in (None, "all"):
                continue
            raise PpdataError(f"the source has no split {sp!r}, which the shard folder was made from")
        listed = info.get("source_listing")
        if isinstance(listed, dict) and hasattr(src, "names"):
            names = src.names(sp)
            at = first_difference(listed, names)
            if at is not None:
                owner = src.part(sp) if isinstance(src, MultiFolderSource) else src
                block = listed.get("block") or len(names)
                if at < len(names):
                    where = (f"first among images {at}..{min(at + block, len(names)) - 1}, which now start at "
                             f"{owner.origin(names[at])}")
                else:
                    where = f"after its last image ({len(names)} images now, {listed.get('count')} then)"
                raise PpdataError(f"split {sp} of the source is not what the shard folder was made from: its image "
                                  f"names differ from the recorded ones, {where}; the originals cannot be matched "
                                  f"to the encrypted images")
        elif src.count(sp) is not None and not augment_entry(manifest, sp):
            skipped = (info.get("skipped") or {}).get("count", 0)
            if src.count(sp) != info.get("count", 0) + skipped:
                raise PpdataError(f"split {sp} of the source holds {src.count(sp)} images; the shard folder was made "
                                  f"from {info.get('count', 0) + skipped}: it is not the source these shards came from")


__all__ = ["DATASETS", "DECODERS", "IMAGE_EXTENSIONS", "INTERPOLATIONS", "MAX_PIXELS", "MAX_SIDE", "SOURCE_NAMES",
           "SPLIT_NAMES", "ArraySource", "Batch", "Decode", "DecoderMismatch", "FolderSource", "ImageTooLarge", "Item",
           "MultiFolderSource", "Ref", "SampleSource", "Skipped", "Source", "StandardSource", "TorchvisionSource",
           "decode_image", "failure_reason", "identity_expand", "key_index", "open_source", "open_source_as",
           "originals", "sample_archive", "sample_key", "to_rgb"]
