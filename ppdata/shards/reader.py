"""The reader API: ``open_shards(DIR, split)`` -> ``ShardSet``, either format, checked as it reads.

Every path comes from the (checked) manifest and is proven to lie inside ``DIR``. Reading checks
each shard against the manifest as it goes (counts, shapes, labels, keys, record structure; with
``verify=True``, the default, also the sha256 of every shard read whole) and raises
``PpdataError`` naming the file at the first mismatch. A short read is an error, never a smaller
dataset: ``load()`` and ``batches()`` yield exactly the manifest's count or fail; ``head(n)``
gives exactly ``n`` samples or fails.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import PpdataError
from ..names import check_split, inside
from .hdf5 import H5Split
from .manifest import augment_entry, read_manifest
from .samples import Samples, concat
from .tar import read_tar


class ShardSet:
    """One split of a shard folder, either format. Create with ``open_shards``.

    Attributes: ``directory``, ``split``, ``format``, ``manifest``, ``shape`` (H, W, 3),
    ``classes``, ``scheme`` (the manifest's scheme dict), ``key_mode``, ``shards`` (the manifest's
    entries), ``paths`` (shard files in order), ``verify_hash`` (whether reads check sha256 by
    default), ``len()``.
    """

    def __init__(self, directory: str | os.PathLike, split: str, manifest: dict | None = None,
                 verify: bool = True):
        self.directory = Path(directory)
        self.manifest = manifest if manifest is not None else read_manifest(directory)
        self.split = check_split(split)
        splits = self.manifest["splits"]
        if split not in splits:
            raise PpdataError(f"split {split!r} not in {self.directory} (available: {', '.join(splits) or 'none'})")
        self.info = splits[split]
        self.format = self.manifest["format"]
        self.shape = tuple(self.manifest["shape"])
        self.classes = list(self.manifest.get("classes", []))
        self.scheme = self.manifest.get("scheme") or {}
        self.key_mode = (self.manifest.get("keys") or {}).get("mode")
        self.shards = self.info["shards"]
        self.verify_hash = verify
        self.paths = [inside(self.directory, s["name"]) for s in self.shards]
        per = int(np.prod(self.shape))  # the pixels of one sample: every format stores at least these
        for s, p in zip(self.shards, self.paths):
            if not p.is_file():
                raise PpdataError(f"shard {p} listed in the manifest is missing (or not a regular file)")
            size = p.stat().st_size
            if int(s["count"]) * per > size:  # bounds every allocation a count leads to by the file's size
                raise PpdataError(f"shard {p}: the manifest says {s['count']:,} samples of {self.shape[0]}x"
                                  f"{self.shape[1]}, more than its {size:,} bytes can hold")
        if verify and any(not s.get("sha256") for s in self.shards):
            raise PpdataError(f"{self.directory}: the manifest lists no sha256 for a shard of split {split}; "
                              f"it cannot be verified (read it with verify=False / --no-verify)")

    def __len__(self) -> int:
        return int(self.info["count"])

    @property
    def augment(self) -> dict | None:
        """This split's augmentation record (``manifest.augment_entry``), or None."""
        return augment_entry(self.manifest, self.split)

    def __repr__(self) -> str:
        return f"ShardSet({str(self.directory)!r}, split={self.split!r}, format={self.format}, n={len(self)})"

    @property
    def urls(self) -> list[str]:
        """Shard paths as strings, for ``webdataset.WebDataset`` (webdataset format only)."""
        return [str(p) for p in self.paths]

    @property
    def counts(self) -> list[int]:
        return [int(s["count"]) for s in self.shards]

    def _n_classes(self) -> int | None:
        return len(self.classes) or None

    def shard_batches(self, i: int, batch_size: int = 4096, verify: bool | None = None) -> Iterator[Samples]:
        """The samples of shard ``i`` (for HDF5: the split file) in stored order, checked."""
        verify = self.verify_hash if verify is None else verify
        s, path = self.shards[i], self.paths[i]
        sha = s.get("sha256") if verify else None
        if self.format == "hdf5":
            with H5Split(path, self.shape, int(s["count"]), sha256=sha, size=s.get("bytes")) as h5:
                yield from h5.blocks(batch_size, self._n_classes())
            return
        yield from read_tar(path, self.shape, int(s["count"]), sha256=sha, size=s.get("bytes"),
                            n_classes=self._n_classes(), chunk=batch_size)

    def batches(self, batch_size: int = 4096, verify: bool | None = None) -> Iterator[Samples]:
        """All samples in stored order, ``batch_size`` at a time (memory bounded by the batch)."""
        buf: list[Samples] = []
        have = 0
        total = 0
        for i in range(len(self.shards)):
            for s in self.shard_batches(i, batch_size, verify):
                buf.append(s)
                have += len(s)
                total += len(s)
                while have >= batch_size:
                    merged = concat(buf)
                    yield merged[:batch_size]
                    rest = merged[batch_size:]
                    buf = [rest] if len(rest) else []
                    have = len(rest)
        if have:
            yield concat(buf)
        if total != len(self):
            raise PpdataError(f"{self.directory}: split {self.split} holds {total} samples, the manifest says {len(self)}")

    def head(self, n: int, verify: bool = False) -> Samples:
        """Exactly the first ``n`` samples (all checks but the hash of shards not read whole)."""
        if n > len(self):
            raise PpdataError(f"{self.directory}: split {self.split} holds {len(self)} samples, {n} were asked for")
        parts, have = [], 0
        for i in range(len(self.shards)):
            for s in self.shard_batches(i, min(n, 4096), verify):
                parts.append(s[: n - have])
                have += len(parts[-1])
                if have == n:
                    return concat(parts)
        raise PpdataError(f"{self.directory}: split {self.split} ended after {have} of {n} samples")

    def load(self, verify: bool | None = None) -> Samples:
        """The whole split in memory (images (N,H,W,3) uint8)."""
        n = len(self)
        images = np.empty((n, *self.shape), np.uint8)
        labels = np.empty(n, np.int64)
        keys = []
        o = 0
        for s in self.batches(16384, verify):
            images[o : o + len(s)] = s.images
            labels[o : o + len(s)] = s.labels
            keys.extend(s.keys.tolist())
            o += len(s)
        return Samples(images, labels, np.array(keys))

    def verify(self) -> list[str]:
        """Read every shard whole with every check (hash included); the problems, one per shard."""
        problems = []
        for i, path in enumerate(self.paths):
            try:
                for _ in self.shard_batches(i, 16384, verify=True):
                    pass
            except PpdataError as e:
                problems.append(str(e))
        return problems


def open_shards(directory: str | os.PathLike, split: str = "train", verify: bool = True) -> ShardSet:
    """Open one split of a ppdata shard folder (WebDataset or HDF5) for reading."""
    return ShardSet(directory, split, verify=verify)


def splits_of(directory: str | os.PathLike) -> list[str]:
    return list(read_manifest(directory)["splits"])
