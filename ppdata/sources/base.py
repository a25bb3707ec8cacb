"""The source interface: batches of ``(images, labels, index)`` per split, sample keys, skips.

Conventions: ``images`` ``(B, H, W, 3)`` uint8 RGB, ``labels`` ``(B,)`` int64, ``index``
``(B,)`` int64, the position of each image in its split in source order. The sample key of an
image is ``<split>_<index:06d>`` (``sample_key``). An image that cannot be read is skipped and
recorded in ``Source.skipped`` (its index is not reused, so keys never shift), or, with
``strict``, raises ``PpdataError`` naming the file.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from ..errors import PpdataError

SPLIT_NAMES = ("train", "test", "val", "valid", "validation")


def sample_key(split: str, index: int) -> str:
    """``<split>_<index:06d>``: no dots (WebDataset splits a member name at its first dot)."""
    return f"{split}_{index:06d}"


_KEY_RE = re.compile(r"^([A-Za-z0-9]+)_(\d+)\Z")


def key_index(sample_keys, split: str) -> np.ndarray:
    """Source index (= key-stream index) of samples named ``<split>_<index>``, (N,) int64."""
    out = np.empty(len(sample_keys), np.int64)
    for i, k in enumerate(sample_keys):
        m = _KEY_RE.match(str(k))
        if not m or m.group(1) != split:
            raise PpdataError(f"sample key {k!r} does not name an image of split {split!r}; "
                              f"its key cannot be derived")
        out[i] = int(m.group(2))
    return out


def identity_expand(batch: "Batch", split: str):
    """The default ``expand`` hook of ``pipeline.encrypt``: one output per source image, keyed
    ``<split>_<index>`` with key index = source index. Returns (sample keys, images, labels, key
    indices)."""
    keys = [sample_key(split, int(i)) for i in batch.index]
    return keys, batch.images, batch.labels, batch.index


@dataclass
class Batch:
    """A batch from a source: images (B,H,W,3) uint8, labels (B,) int64, index (B,) int64."""

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class Skipped:
    split: str
    index: int
    path: str
    reason: str


@dataclass(frozen=True)
class Ref:
    """Where an image file's bytes are: a local path or a URL, and for a member of an
    uncompressed tar its data offset and size. Read with ``ppdata.remote.read_ref``."""

    path: str
    offset: int | None = None
    size: int | None = None


@dataclass
class Item:
    """One image of a split before decoding: its index (source order), label, a name for
    messages (``origin``, the file or ``archive:member``), and its bytes (``data``), or where to
    read them (``ref``), or why it is never read (``skip``)."""

    index: int
    label: int
    origin: str
    path: str  # the path recorded for a skipped image (relative to the source)
    data: bytes | None = None
    ref: Ref | None = None
    skip: str | None = None


SHOW_SKIPS = 5


class SkipReport:
    """Warnings about skipped images, summarised: the first ``SHOW_SKIPS`` are named one per line,
    the rest counted by reason and said in one line by ``flush()`` (an archive of 200,000 empty
    members gives a few lines, not 200,000). Names and reasons are printed with control
    characters escaped."""

    def __init__(self, what: str = "skipping unreadable image"):
        self.what = what
        self.shown = 0
        self.hidden: Counter = Counter()

    def add(self, origin: str, reason: str) -> None:
        from ..names import printable

        if self.shown < SHOW_SKIPS:
            self.shown += 1
            logging.getLogger("ppdata").warning("%s %s: %s", self.what, printable(origin), printable(reason))
        else:
            self.hidden[re.sub(r"\d[\d,]*", "N", printable(reason))[:120]] += 1

    def flush(self) -> None:
        """Say how many more were skipped, and why (the commonest reasons first)."""
        if self.hidden:
            total = sum(self.hidden.values())
            why = "; ".join(f"{n:,}: {r}" for r, n in self.hidden.most_common(3))
            more = len(self.hidden) - 3
            logging.getLogger("ppdata").warning("... and %s more skipped images (%s%s)", f"{total:,}", why,
                                                f"; {more} other reasons" if more > 0 else "")
        self.shown = 0
        self.hidden = Counter()


class Source:
    """Base class of all sources."""

    name: str = "source"
    classes: list[str]
    strict: bool = False

    def __init__(self):
        self.skipped: list[Skipped] = []
        self.skip_report = SkipReport()

    def splits(self) -> list[str]:
        raise NotImplementedError

    def count(self, split: str) -> int | None:
        """Number of images in ``split`` (before skipping), if known cheaply."""
        return None

    def batches(self, split: str, batch_size: int = 256) -> Iterator[Batch]:
        raise NotImplementedError

    def items(self, split: str) -> Iterator[Item] | None:
        """Encoded sources (image files): the split's ``Item`` s in source order, for engines that
        decode in other processes or machines. None for sources of decoded arrays."""
        return None

    @property
    def decode(self):
        """The ``sources.decode.Decode`` settings of an encoded source (None for arrays)."""
        return None

    def describe(self) -> dict:
        return {"name": self.name}

    def select_splits(self, split: str | None) -> list[str]:
        """``None`` or ``"all"``: every split; otherwise the named one (error if absent)."""
        available = self.splits()
        if split in (None, "all"):
            return available
        if split not in available:
            raise PpdataError(
                f"split {split!r} not in source {self.name} (available: {', '.join(available) or 'none'})"
            )
        return [split]


class ArraySource(Source):
    """In-memory arrays: ``{split: (images (N,H,W,3) uint8, labels (N,))}``."""

    name = "arrays"

    def __init__(self, data: dict[str, tuple[np.ndarray, np.ndarray]], classes: Sequence[str] | None = None,
                 name: str = "arrays"):
        super().__init__()
        self.name = name
        self.data = {}
        for split, (images, labels) in data.items():
            images = np.asarray(images)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"split {split}: images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
            labels = np.asarray(labels, np.int64).reshape(-1)
            if len(labels) != len(images):
                raise ValueError(f"split {split}: {len(images)} images but {len(labels)} labels")
            self.data[split] = (images, labels)
        n_classes = max((int(l.max()) + 1 for _, l in self.data.values() if len(l)), default=0)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n_classes)]

    def splits(self) -> list[str]:
        return list(self.data)

    def count(self, split: str) -> int:
        return len(self.data[split][1])

    def batches(self, split: str, batch_size: int = 256) -> Iterator[Batch]:
        images, labels = self.data[split]
        for a in range(0, len(labels), batch_size):
            b = min(len(labels), a + batch_size)
            yield Batch(np.ascontiguousarray(images[a:b]), labels[a:b], np.arange(a, b, dtype=np.int64))


def originals(source: Source, split: str, keys) -> np.ndarray:
    """The plain images of samples ``keys`` (``<split>_<index>``) from ``source``, in that order,
    (N, H, W, 3) uint8. Reads the split once, stopping after the largest wanted index."""
    idx = key_index(keys, split)
    want: dict[int, list[int]] = {}
    for row, i in enumerate(idx):
        want.setdefault(int(i), []).append(row)
    out = None
    found = 0
    last = int(idx.max()) if len(idx) else -1
    for b in source.batches(split, 512):
        for i, img in zip(b.index, b.images):
            rows = want.get(int(i))
            if rows is None:
                continue
            if out is None:
                out = np.empty((len(idx), *img.shape), np.uint8)
            elif img.shape != out.shape[1:]:
                raise PpdataError(f"{source.name}: image {sample_key(split, int(i))} is {img.shape}, others {out.shape[1:]}")
            for r in rows:
                out[r] = img
            found += len(rows)
        if found == len(idx) or (len(b.index) and int(b.index.max()) >= last):
            break
    if found < len(idx):
        raise PpdataError(f"only {found} of {len(idx)} originals found in split {split} of {source.name}; "
                          f"is it the source these shards were made from?")
    return out
