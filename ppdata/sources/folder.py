"""ImageFolder trees as a directory or a tar archive, several joined, and the embedded sample.

``folder PATH [PATH ...]``: an ImageFolder tree given as a directory or a ``.tar`` / ``.tar.gz``
archive of one (read as a stream, never extracted); several paths (e.g. ``train.tar.gz
test.tar.gz``) are joined, each split coming from one of them (``MultiFolderSource``). Layout
``<class>/<file>`` (one split, named by ``split`` or ``train``) or ``<split>/<class>/<file>`` with
split folders ``train``, ``test``, ``val``...; a single wrapping folder is stripped. Classes are
the sorted class-folder names over all splits. Order: sorted paths for a directory, archive order
for an archive. All images of a source must have one size unless ``resize=(H, W)`` is given
(Lanczos resampling). ``sample``: the embedded sample, a small slice of CIFAR-10 (see
``ppdata/data/PROVENANCE.md``).
"""
from __future__ import annotations

import logging
import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np

from ..archive import checked_members, compression, drain, index_tar, open_archive, read_member
from ..errors import PpdataError
from ..names import check_class, check_path_text
from .base import SPLIT_NAMES, Batch, Skipped, Source
from .decode import IMAGE_EXTENSIONS, MAX_PIXELS, decode_image, failure_reason

log = logging.getLogger("ppdata")


@dataclass
class _Entry:
    split: str
    cls: str
    path: str  # relative path (directory) or member name (archive)
    skip: str | None = None  # why this entry is never read (a superseded duplicate, a link member)
    member: object = None  # its ppdata.archive.Member in an uncompressed tar


def _layout(paths: list[str], origin: str) -> tuple[list[_Entry], bool]:
    """Map image paths to (split, class); True if the tree has split folders."""
    parts = [PurePosixPath(p).parts for p in paths]
    # strip wrapping folders shared by all paths (not split names)
    while parts and all(len(p) > 2 for p in parts):
        first = {p[0] for p in parts}
        if len(first) != 1 or next(iter(first)).lower() in SPLIT_NAMES:
            break
        parts = [p[1:] for p in parts]
    depths = {len(p) for p in parts}
    if depths == {3} and all(p[0].lower() in SPLIT_NAMES for p in parts):
        return [_Entry(p[0].lower(), p[1], path) for p, path in zip(parts, paths)], True
    if depths == {2}:
        return [_Entry("", p[0], path) for p, path in zip(parts, paths)], False
    bad = next((path for p, path in zip(parts, paths) if len(p) != 2), paths[0])
    raise PpdataError(
        f"{origin}: expected an ImageFolder layout <class>/<image> or <split>/<class>/<image>; "
        f"found {bad!r}"
    )


def _is_image(name: str) -> bool:
    base = PurePosixPath(name).name
    return not base.startswith(".") and PurePosixPath(base).suffix.lower() in IMAGE_EXTENSIONS


def _member_kind(m) -> str:
    from ..archive import member_kind

    return member_kind(m)


def _is_archive(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


def _unsafe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return p.is_absolute() or ".." in p.parts or "\\" in name or "\0" in name


class FolderSource(Source):
    """An ImageFolder tree as a directory or a tar archive (streamed). See module docstring.

    Archives are read to their end and checked (``ppdata.archive``): a truncated or damaged
    archive is an error, never a smaller dataset. Members that are not read are still counted
    as skipped, with their reason, and keep their index: an earlier copy of a member that the
    archive repeats (``tar -r`` appends; the later copy is the one ``tar -x`` keeps) and link
    members. A member name that leaves the archive's tree (absolute, ``..``) refuses the archive.
    """

    name = "folder"

    def __init__(self, path: str | os.PathLike, split: str | None = None, resize: tuple[int, int] | None = None,
                 strict: bool = False, decode_threads: int = 2, max_pixels: int = MAX_PIXELS):
        super().__init__()
        check_path_text(path, "folder source")
        self.path = Path(path)
        self.resize = resize
        self.strict = strict
        self.decode_threads = decode_threads
        self.max_pixels = max_pixels
        self.shape: tuple[int, int, int] | None = (resize[0], resize[1], 3) if resize else None
        self._shape_origin: str | None = None
        if not self.path.exists():
            raise PpdataError(f"folder source {self.path} does not exist")
        self.archive = _is_archive(self.path)
        if not self.archive and not self.path.is_dir():
            raise PpdataError(f"folder source {self.path} is neither a directory nor a .tar/.tar.gz archive")
        listed = self._list()  # (name, skip reason or None, member or None)
        if not any(skip is None for _, skip, _ in listed):
            raise PpdataError(f"folder source {self.path} holds no images")
        names = [n for n, _, _ in listed]
        entries, has_splits = _layout(names, str(self.path))
        requested = None if split in (None, "all") else split
        if not has_splits:
            entries = [_Entry(requested or "train", e.cls, e.path) for e in entries]
        for e, (_, skip, member) in zip(entries, listed):
            e.skip = skip
            e.member = member
        for c in {e.cls for e in entries}:
            check_class(c, f"{self.path}: class folder")
        self.classes = sorted({e.cls for e in entries})
        self._by_split: dict[str, list[_Entry]] = {}
        for e in entries:
            self._by_split.setdefault(e.split, []).append(e)
        if not self.archive:
            for v in self._by_split.values():
                v.sort(key=lambda e: (e.cls, e.path))
        self._label = {c: i for i, c in enumerate(self.classes)}

    def _list(self) -> list[tuple[str, str | None, object]]:
        if not self.archive:
            out = []
            for dirpath, dirnames, filenames in os.walk(self.path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = Path(dirpath).relative_to(self.path)
                out.extend(((rel / f).as_posix(), None, None) for f in sorted(filenames) if _is_image(f))
            return out
        if compression(self.path) is None:
            members = [(m.name, m.kind, m) for m in index_tar(self.path)]
        else:
            with open_archive(self.path) as stream:
                members = [(m.name, "file" if m.isfile() else _member_kind(m), None)
                           for m, _ in checked_members(stream, str(self.path))]
        members = [(n, k, m) for n, k, m in members if _is_image(n)]
        bad = next((n for n, _, _ in members if _unsafe_member(n)), None)
        if bad is not None:
            raise PpdataError(f"archive {self.path} holds member {bad!r}, whose name leaves the archive's tree "
                              f"(absolute or '..'); refusing the archive")
        last = {n: i for i, (n, _, _) in enumerate(members)}
        out = []
        for i, (name, kind, member) in enumerate(members):
            skip = None
            if kind != "file":
                skip = f"{kind} in the archive; not followed"
            elif last[name] != i:
                skip = "superseded by a later member of the same name in the archive (tar -r append)"
            out.append((name, skip, member))
        return out

    def describe(self) -> dict:
        return {"name": "folder", "path": self.path.name}

    def splits(self) -> list[str]:
        return _split_order(self._by_split)

    def count(self, split: str) -> int:
        return len(self._by_split.get(split, []))

    def _raw(self, split: str) -> Iterator[tuple[int, _Entry, bytes | None, str | None]]:
        """(index, entry, bytes or None, error) in source order."""
        entries = self._by_split[split]
        if not self.archive:
            for i, e in enumerate(entries):
                try:
                    yield i, e, (self.path / e.path).read_bytes(), None
                except OSError as err:
                    yield i, e, None, str(err.strerror or err)
            return
        if compression(self.path) is None:  # plain tar: read members by offset, no stream
            with open(self.path, "rb") as f:
                for i, e in enumerate(entries):
                    if e.skip:
                        yield i, e, None, e.skip
                    else:
                        yield i, e, read_member(f, e.member), None
            return
        # compressed: one pass over the stream; the k-th member named n is the k-th entry named n
        by_name: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            by_name.setdefault(e.path, []).append(i)
        seen: Counter = Counter()
        done = 0
        with open_archive(self.path) as stream:
            for m, f in checked_members(stream, str(self.path)):
                name = m.name
                rows = by_name.get(name)
                if rows is None or not _is_image(m.name):
                    continue
                k = seen[name]
                seen[name] += 1
                if k >= len(rows):
                    raise PpdataError(f"archive {self.path} changed while it was read (member {m.name!r})")
                i = rows[k]
                e = entries[i]
                done += 1
                if e.skip:
                    yield i, e, None, e.skip
                else:
                    yield i, e, f.read(), None
            drain(stream)
        if done != len(entries):
            raise PpdataError(f"archive {self.path} changed while it was read: {done} of {len(entries)} "
                              f"members of split {split} found")

    def _decode(self, item):
        i, e, data, err = item
        if err is None:
            try:
                return i, e, decode_image(data, self.resize, self.max_pixels), None
            except Exception as ex:  # noqa: BLE001  (Pillow raises many types for bad files)
                return i, e, None, failure_reason(ex)
        return i, e, None, err

    def _origin(self, e: _Entry) -> str:
        return f"{self.path}:{e.path}" if self.archive else str(self.path / e.path)

    def batches(self, split: str, batch_size: int = 256) -> Iterator[Batch]:
        images, labels, index = [], [], []
        window: deque = deque()
        chunk: list = []

        def decode_chunk(items):
            return [self._decode(item) for item in items]

        with ThreadPoolExecutor(max(1, self.decode_threads)) as pool:
            # decode chunks of files in worker threads (Pillow releases the GIL while decoding),
            # with a bounded number in flight: memory stays bounded by the batch size
            def drain(limit):
                while len(window) > limit:
                    for result in window.popleft().result():
                        if self._accept(split, result, images, labels, index) >= batch_size:
                            yield self._flush(images, labels, index)

            for item in self._raw(split):
                chunk.append(item)
                if len(chunk) == 128:
                    window.append(pool.submit(decode_chunk, chunk))
                    chunk = []
                    yield from drain(2 * self.decode_threads)
            if chunk:
                window.append(pool.submit(decode_chunk, chunk))
            yield from drain(0)
        if images:
            yield self._flush(images, labels, index)

    @staticmethod
    def _flush(images, labels, index) -> Batch:
        b = Batch(np.stack(images), np.asarray(labels, np.int64), np.asarray(index, np.int64))
        images.clear(), labels.clear(), index.clear()
        return b

    def _accept(self, split, result, images, labels, index) -> int:
        """Check one decoded image, append it (or record it as skipped); return the batch size."""
        i, e, arr, err = result
        origin = self._origin(e)
        if err is not None:
            if self.strict:
                raise PpdataError(f"cannot read image {origin}: {err}")
            log.warning("skipping unreadable image %s: %s", origin, err)
            self.skipped.append(Skipped(split, i, e.path, err))
            return len(images)
        if self.shape is None:
            self.shape = arr.shape
            self._shape_origin = origin
        elif arr.shape != self.shape:
            raise PpdataError(
                f"image {origin} is {arr.shape[1]}x{arr.shape[0]} but {self._shape_origin} is "
                f"{self.shape[1]}x{self.shape[0]}; pass --resize HxW to bring all images to one size"
            )
        images.append(arr)
        labels.append(self._label[e.cls])
        index.append(i)
        return len(images)


def _split_order(names) -> list[str]:
    """Splits in a conventional order: train, test, val, ..., then others by name."""
    order = {s: i for i, s in enumerate(SPLIT_NAMES)}
    return sorted(names, key=lambda s: (order.get(s, 99), s))


class MultiFolderSource(Source):
    """Several folder sources as one, e.g. ``train.tar.gz`` and ``test.tar.gz``.

    Each split must come from exactly one of them; labels follow the sorted union of their class
    names, so a class keeps one label across splits.
    """

    name = "folder"

    def __init__(self, parts: Sequence[FolderSource]):
        super().__init__()
        self.parts = list(parts)
        self.classes = sorted(set().union(*(p.classes for p in self.parts)))
        self._owner: dict[str, FolderSource] = {}
        for p in self.parts:
            p.skipped = self.skipped  # one list, in processing order
            for sp in p.splits():
                if sp in self._owner:
                    raise PpdataError(f"split {sp!r} is in both {self._owner[sp].path} and {p.path}; "
                                      f"give each split once (or --split to pick one)")
                self._owner[sp] = p

    def splits(self) -> list[str]:
        return _split_order(self._owner)

    def count(self, split: str) -> int:
        return self._owner[split].count(split)

    def describe(self) -> dict:
        return {"name": "folder", "path": [p.path.name for p in self.parts]}

    def batches(self, split: str, batch_size: int = 256) -> Iterator[Batch]:
        part = self._owner[split]
        remap = np.array([self.classes.index(c) for c in part.classes], np.int64)
        for b in part.batches(split, batch_size):
            yield Batch(b.images, remap[b.labels], b.index)


def sample_archive() -> Path:
    """Path of the embedded sample (an ImageFolder tar.gz with train/ and test/)."""
    return Path(str(resources.files("ppdata") / "data" / "sample.tar.gz"))


class SampleSource(FolderSource):
    """The embedded sample: 500 train + 100 test CIFAR-10 images (32x32), no network needed."""

    name = "sample"

    def __init__(self, split: str | None = None, strict: bool = False, resize=None, max_pixels: int = MAX_PIXELS):
        super().__init__(sample_archive(), split=split, strict=strict, resize=resize, max_pixels=max_pixels)

    def describe(self) -> dict:
        return {"name": "sample"}
