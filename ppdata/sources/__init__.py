"""Dataset readers: every source yields batches of ``(images, labels, index)`` per split.

Modules: ``base`` (the source interface, sample keys ``<split>_<index:06d>``, skips, in-memory
arrays, ``originals``), ``decode`` (one image file to RGB uint8), ``folder`` (ImageFolder trees as
directories or tar archives, the embedded sample), ``standard`` (CIFAR-10/100 and STL-10 from
their official archives, without torch). ``open_source(name, path, ...)`` opens one by its CLI
name: ``cifar10``, ``cifar100``, ``stl10``, ``folder PATH...``, ``sample``.
"""
from __future__ import annotations

import os
from typing import Sequence

from ..errors import PpdataError
from .base import (SPLIT_NAMES, ArraySource, Batch, Skipped, Source, identity_expand, key_index, originals,
                   sample_key)
from .decode import IMAGE_EXTENSIONS, MAX_PIXELS, MAX_SIDE, ImageTooLarge, decode_image, failure_reason, to_rgb
from .folder import FolderSource, MultiFolderSource, SampleSource, sample_archive
from .standard import DATASETS, StandardSource, TorchvisionSource

SOURCE_NAMES = ("cifar10", "cifar100", "stl10", "folder", "sample")


def open_source(name: str, path: str | Sequence[str] | None = None, *, split: str | None = None,
                root: str = "data", download: bool = False, resize: tuple[int, int] | None = None,
                strict: bool = False, max_pixels: int = MAX_PIXELS) -> Source:
    """Open a source by CLI name: cifar10, cifar100, stl10, folder (needs one or more ``path``), sample."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path or [])
    if name == "folder":
        if not paths:
            raise PpdataError("source 'folder' needs a PATH (a directory or .tar/.tar.gz archive)")
        parts = [FolderSource(p, split=split, resize=resize, strict=strict, max_pixels=max_pixels) for p in paths]
        return parts[0] if len(parts) == 1 else MultiFolderSource(parts)
    if paths:
        raise PpdataError(f"source {name!r} takes no PATH (use --root DIR for torchvision data)")
    if name == "sample":
        return SampleSource(split=split, strict=strict, resize=resize, max_pixels=max_pixels)
    if name in DATASETS:
        if resize:
            raise PpdataError("--resize is only supported for folder and sample sources")
        return StandardSource(name, root=root, download=download, split=split)
    raise PpdataError(f"unknown source {name!r}; expected one of cifar10, cifar100, stl10, folder, sample")


__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "MAX_PIXELS", "MAX_SIDE", "SOURCE_NAMES", "SPLIT_NAMES", "ArraySource",
           "Batch", "FolderSource", "ImageTooLarge", "MultiFolderSource", "SampleSource", "Skipped", "Source",
           "StandardSource", "TorchvisionSource", "decode_image", "failure_reason", "identity_expand", "key_index",
           "open_source", "originals", "sample_archive", "sample_key", "to_rgb"]
