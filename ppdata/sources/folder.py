"""ImageFolder trees as a directory or a tar archive, local or at a URL, several joined, and the
embedded sample.

``folder PATH [PATH ...]``: an ImageFolder tree given as a directory, a plain ``.tar`` (listed by
seeking from header to header; members are read by offset, by any process) or a compressed
``.tar.gz`` / ``.tar.bz2`` / ``.tar.xz`` (read as one stream, never extracted to disk; kept
uncompressed in memory between the listing and the reading when it fits ``SPOOL_BYTES``), on a local disk or
at a URL (``s3://``, ``gs://``, ``http(s)://`` for archives; see ``ppdata.remote``). Several paths
(e.g. ``train.tar.gz test.tar.gz``) are joined, each split coming from one of them
(``MultiFolderSource``).

Layout, torchvision's ``ImageFolder`` rule: ``<class>/**/<image>`` (one split, named by ``split``
or ``train``) or ``<split>/<class>/**/<image>`` with split folders ``train``, ``test``, ``val``...:
the class is the first folder level under the split, and images may lie at any depth below it. A
single wrapping folder is stripped. Classes are the sorted class-folder names over all splits.
Order: a directory in ``ImageFolder``'s order (classes sorted, then each class folder walked with
its folders and file names sorted), so index i of a split is index i of ``ImageFolder``; an
archive in archive order. Decoding follows ``sources.decode.Decode`` (EXIF orientation, RGB,
resize, crop); all images of a split must come out at one size. ``sample``: the embedded sample, a
small slice of CIFAR-10 (see ``ppdata/data/PROVENANCE.md``).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

from ..archive import Unsupported, checked_members, compression, index_tar, is_tar_name, iter_tar, member_kind
from ..errors import PpdataError
from ..names import check_class, check_path_text, printable
from ..remote import basename, check_ranges, is_url, list_files, open_url, size_of
from .base import SPLIT_NAMES, Batch, Item, Ref, Skipped, Source
from .decode import IMAGE_EXTENSIONS, MAX_PIXELS, Decode

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
    if parts and all(p[0].lower() in SPLIT_NAMES and len(p) > 1 for p in parts):
        bad = next((path for p, path in zip(parts, paths) if len(p) < 3), None)
        if bad is not None:
            raise PpdataError(f"{origin}: image {bad!r} lies directly in a split folder; expected "
                              f"<split>/<class>/.../<image>")
        return [_Entry(p[0].lower(), p[1], path) for p, path in zip(parts, paths)], True
    bad = next((path for p, path in zip(parts, paths) if len(p) < 2), None)
    if bad is not None:
        raise PpdataError(f"{origin}: expected an ImageFolder layout <class>/.../<image> or "
                          f"<split>/<class>/.../<image>; found {bad!r} outside any class folder")
    return [_Entry("", p[0], path) for p, path in zip(parts, paths)], False


def walk_images(root: str | os.PathLike) -> list[str]:
    """The image files of an ImageFolder directory as torchvision's ``ImageFolder`` finds them:
    links to folders (class folders and subfolders) are followed, folders and files sorted,
    hidden folders left out; a link back to a folder being walked (a loop) is not followed, and
    said. Paths are relative to ``root``; what is not a regular file is listed and later counted
    as a skip when it is read (never read from: a FIFO or device does not block the run)."""
    out: list[str] = []
    top = os.stat(root)
    ancestors = {os.fspath(root): frozenset({(top.st_dev, top.st_ino)})}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        above = ancestors.pop(dirpath, frozenset())
        keep = []
        for d in sorted(x for x in dirnames if not x.startswith(".")):
            path = os.path.join(dirpath, d)
            try:
                st = os.stat(path)
            except OSError:
                log.warning("folder %s cannot be read (a dangling link?); not followed", printable(path))
                continue
            key = (st.st_dev, st.st_ino)
            if key in above:
                log.warning("folder %s links back to a folder that contains it (a loop); not followed", printable(path))
                continue
            ancestors[path] = above | {key}
            keep.append(d)
        dirnames[:] = keep
        rel = Path(dirpath).relative_to(root)
        out.extend((rel / f).as_posix() for f in sorted(filenames) if _is_image(f))
    return out


def _is_image(name: str) -> bool:
    base = name.rstrip("/").rpartition("/")[2]
    stem, dot, ext = base.rpartition(".")
    return bool(dot and stem) and not base.startswith(".") and "." + ext.lower() in IMAGE_EXTENSIONS


def _unsafe_member(name: str) -> bool:
    p = PurePosixPath(name)
    return p.is_absolute() or ".." in p.parts or "\\" in name or "\0" in name


def _folder_order(e: _Entry) -> tuple:
    """ImageFolder's order within a split: class, then the walked folder, then the file name."""
    parent, _, name = e.path.rpartition("/")
    return e.cls, parent, name


class FolderSource(Source):
    """An ImageFolder tree as a directory or a tar archive, local or at a URL (module docstring).

    Archives are read to their end and checked (``ppdata.archive``): a truncated or damaged
    archive is an error, never a smaller dataset. Members that are not read are still counted
    as skipped, with their reason, and keep their index: an earlier copy of a member that the
    archive repeats (``tar -r`` appends; the later copy is the one ``tar -x`` keeps) and link
    members. A member name that leaves the archive's tree (absolute, ``..``) refuses the archive.

    ``decode``: the ``Decode`` settings (or, as before, ``resize=(H, W)`` and ``max_pixels``).
    ``workers``: processes that decode for ``batches`` (1: this process).
    """

    name = "folder"

    def __init__(self, path: str | os.PathLike, split: str | None = None, resize: tuple[int, int] | None = None,
                 strict: bool = False, decode_threads: int = 2, max_pixels: int = MAX_PIXELS,
                 decode: Decode | None = None, workers: int = 1):
        super().__init__()
        check_path_text(path, "folder source")
        self.url = is_url(str(path))
        self.location = str(path) if self.url else os.fspath(path)
        self.path = Path(self.location) if not self.url else PurePosixPath(self.location.split("://", 1)[1])
        self.settings = decode or Decode(resize=tuple(resize) if resize else None, max_pixels=max_pixels)
        self.resize = self.settings.resize
        self.max_pixels = self.settings.max_pixels
        self.strict = strict
        self.workers = max(1, int(workers or 1))
        self.shape: tuple[int, int, int] | None = self.settings.shape
        self._shape_origin: str | None = None
        self.archive = is_tar_name(self.location) if self.url else _is_archive(Path(self.location))
        self.compressed: str | None = None
        self._tarfile_only = False
        self._plain: bytes | None = None  # a compressed archive, uncompressed, when it is small
        if not self.url:
            p = Path(self.location)
            if not p.exists():
                raise PpdataError(f"folder source {p} does not exist")
            if not self.archive and not p.is_dir():
                raise PpdataError(f"folder source {p} is neither a directory nor a .tar/.tar.gz archive")
        listed = self._list()  # (name, skip reason or None, member or None)
        if not any(skip is None for _, skip, _ in listed):
            raise PpdataError(f"folder source {self.location} holds no images")
        names = [n for n, _, _ in listed]
        entries, has_splits = _layout(names, self.location)
        requested = None if split in (None, "all") else split
        if not has_splits:
            entries = [_Entry(requested or "train", e.cls, e.path) for e in entries]
        for e, (_, skip, member) in zip(entries, listed):
            e.skip = skip
            e.member = member
        for c in {e.cls for e in entries}:
            check_class(c, f"{self.location}: class folder")
        self.classes = sorted({e.cls for e in entries})
        self._by_split: dict[str, list[_Entry]] = {}
        for e in entries:
            self._by_split.setdefault(e.split, []).append(e)
        if not self.archive:
            for v in self._by_split.values():
                v.sort(key=_folder_order)
        self._label = {c: i for i, c in enumerate(self.classes)}

    @property
    def decode(self) -> Decode:
        return self.settings

    # -- listing -----------------------------------------------------------------------------

    def _list(self) -> list[tuple[str, str | None, object]]:
        if not self.archive:
            if self.url:
                return [(rel, None, None) for rel, _ in list_files(self.location) if _is_image(rel)
                        and not any(part.startswith(".") for part in PurePosixPath(rel).parts[:-1])]
            return [(rel, None, None) for rel in walk_images(self.location)]
        with self._open(stream=True) as f:
            self.compressed = compression(f.peek(6)[:6])
            if self.compressed is None and self.url:  # an uncompressed tar is listed by seeking: ranges
                size = size_of(self.location)
                check_ranges(self.location, size)  # its members are read by offset, by any process
                with self._open() as g:
                    members = [(m.name, m.kind, m) for m in index_tar(g, self.location, size)]
            elif self.compressed is None:
                members = [(m.name, m.kind, m) for m in index_tar(f, self.location, os.fstat(f.fileno()).st_size)]
            else:
                spool = _Spool(SPOOL_BYTES)
                try:
                    members = [(e.name, e.kind, e) for e in iter_tar(f, self.location, compressed=self.compressed,
                                                                     data=lambda name: False, tee=spool.add)]
                except Unsupported:
                    self._tarfile_only = True
                    members = self._list_tarfile()
                else:
                    # small enough: the uncompressed archive stays in memory and is not decompressed again
                    self._plain = spool.value()
        members = [(n, k, m) for n, k, m in members if _is_image(n) and k != "directory"]
        bad = next((n for n, _, _ in members if _unsafe_member(n)), None)
        if bad is not None:
            raise PpdataError(f"archive {self.location} holds member {bad!r}, whose name leaves the archive's tree "
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

    def _list_tarfile(self) -> list:
        with self._open(stream=True) as f, _decompressed(f, self.compressed) as stream:
            return [(m.name, member_kind(m), None) for m, _ in checked_members(stream, self.location)]

    def _open(self, stream: bool = False):
        """The archive: a stream read once from its start (``stream``; any HTTP server), or a
        seekable file (an uncompressed tar at a URL needs a server that answers range requests)."""
        if self.url:
            return open_url(self.location, stream=stream)
        try:
            return open(self.location, "rb")
        except OSError as e:
            raise PpdataError(f"cannot read {self.location}: {e.strerror or e}") from None

    # -- the Source interface ----------------------------------------------------------------

    def describe(self) -> dict:
        return {"name": "folder", "path": basename(self.location)}

    def splits(self) -> list[str]:
        return _split_order(self._by_split)

    def count(self, split: str) -> int:
        return len(self._by_split.get(split, []))

    def listing(self, split: str) -> dict:
        """The split's image names in source order, recorded compactly: count, sha256 of all
        (``<name>\n`` each), and a 16-hex-digit hash per block of ``LISTING_BLOCK`` names, so
        that a changed source can later be told apart and its first changed block named."""
        return listing_of([e.path for e in self._by_split.get(split, [])])

    def names(self, split: str) -> list[str]:
        """The split's image names (paths inside the source) in source order."""
        return [e.path for e in self._by_split.get(split, [])]

    def origin(self, path: str) -> str:
        """How an image is named in messages: the file, or ``archive:member``."""
        if self.archive:
            return f"{self.location}:{path}"
        return f"{self.location.rstrip('/')}/{path}" if self.url else str(Path(self.location) / path)

    def items(self, split: str) -> Iterator[Item]:
        """The split's images in source order: references for a directory or a plain tar (read by
        whichever process decodes them), bytes for a compressed archive (one stream)."""
        entries = self._by_split[split]
        label = self._label
        if not self.archive:
            for i, e in enumerate(entries):
                ref = Ref(self.origin(e.path))
                yield Item(i, label[e.cls], self.origin(e.path), e.path, ref=ref)
            return
        if self.compressed is None:
            for i, e in enumerate(entries):
                m = e.member
                yield Item(i, label[e.cls], self.origin(e.path), e.path, skip=e.skip,
                           ref=None if e.skip else Ref(self.location, m.offset, m.size))
            return
        if self._plain is not None:
            buf = self._plain
            for i, e in enumerate(entries):
                m = e.member
                yield Item(i, label[e.cls], self.origin(e.path), e.path, skip=e.skip,
                           data=None if e.skip else buf[m.offset:m.offset + m.size])
            return
        yield from self._stream_items(split, entries)

    def _stream_items(self, split: str, entries: list[_Entry]) -> Iterator[Item]:
        """Compressed archive: one pass; the k-th member named n is the k-th entry named n."""
        by_name: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            by_name.setdefault(e.path, []).append(i)
        seen: dict[str, int] = {}
        done = 0
        label = self._label
        with self._open(stream=True) as f:
            if self._tarfile_only:
                with _decompressed(f, self.compressed) as stream:
                    members = ((m.name, m.isfile(), fo) for m, fo in checked_members(stream, self.location))
                    for name, is_file, fo in members:
                        rows = by_name.get(name)
                        if rows is None or not _is_image(name):
                            continue
                        k = seen.get(name, 0)
                        seen[name] = k + 1
                        if k >= len(rows):
                            raise PpdataError(f"archive {self.location} changed while it was read (member {name!r})")
                        e = entries[rows[k]]
                        done += 1
                        data = None if e.skip else fo.read()
                        yield Item(rows[k], label[e.cls], self.origin(e.path), e.path, data=data, skip=e.skip)
            else:
                for m in iter_tar(f, self.location, compressed=self.compressed, data=lambda name: name in by_name):
                    rows = by_name.get(m.name)
                    if rows is None or m.kind == "directory" or not _is_image(m.name):
                        continue
                    k = seen.get(m.name, 0)
                    seen[m.name] = k + 1
                    if k >= len(rows):
                        raise PpdataError(f"archive {self.location} changed while it was read (member {m.name!r})")
                    e = entries[rows[k]]
                    done += 1
                    yield Item(rows[k], label[e.cls], self.origin(e.path), e.path,
                               data=None if e.skip else m.data, skip=e.skip)
        if done != len(entries):
            raise PpdataError(f"archive {self.location} changed while it was read: {done} of {len(entries)} "
                              f"members of split {split} found")

    def batches(self, split: str, batch_size: int = 256) -> Iterator[Batch]:
        """Decoded batches in source order (``workers`` processes decode; skips recorded in
        ``skipped``, or an error with ``strict``); every image of the split at one size."""
        from ..engines.local import decoded_batches

        yield from decoded_batches(self, split, batch_size, self.workers)

    # used by decoded_batches: one shape per source, errors naming the first odd image
    def check_shape(self, shape: tuple, origin: str) -> None:
        if self.shape is None:
            self.shape = tuple(shape)
            self._shape_origin = origin
        elif tuple(shape) != self.shape:
            h = "" if self._shape_origin is None else f" but {self._shape_origin} is {self.shape[1]}x{self.shape[0]}"
            if self._shape_origin is None:
                h = f" but the settings make {self.shape[1]}x{self.shape[0]}"
            raise PpdataError(f"image {origin} is {shape[1]}x{shape[0]}{h}; pass --resize HxW (or --resize S "
                              f"--crop HxW) to bring all images to one size")

    def record_skip(self, split: str, index: int, path: str, origin: str, reason: str) -> None:
        if self.strict:
            raise PpdataError(f"cannot read image {printable(origin)}: {printable(reason)}")
        self.skip_report.add(origin, reason)
        self.skipped.append(Skipped(split, index, path, reason))


def _spool_bytes() -> int:
    """How much of a compressed archive's uncompressed bytes to keep in memory: 2 GiB, at most an
    eighth of the machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(2 << 30, total // 8))


SPOOL_BYTES = _spool_bytes()


class _Spool:
    """Collects pieces up to ``cap`` bytes; ``value()`` is all of them, or None past the cap."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.n = cap, [], 0

    def add(self, piece: bytes) -> None:
        if self.parts is None:
            return
        self.n += len(piece)
        if self.n > self.cap:
            self.parts = None
        else:
            self.parts.append(piece)

    def value(self) -> bytes | None:
        return None if self.parts is None else b"".join(self.parts)


class _decompressed:
    """A decompressed view of an open archive file (context manager)."""

    def __init__(self, f, kind):
        self.f, self.kind = f, kind
        self.stream = None

    def __enter__(self):
        import bz2
        import gzip
        import lzma

        opener = {"gzip": lambda f: gzip.GzipFile(fileobj=f), "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}.get(self.kind)
        self.stream = opener(self.f) if opener else self.f
        return self.stream

    def __exit__(self, *exc):
        if self.stream is not self.f:
            self.stream.close()


LISTING_BLOCK = 64


def listing_of(names: list[str]) -> dict:
    """See ``FolderSource.listing``."""
    whole = hashlib.sha256()
    blocks = []
    for a in range(0, len(names), LISTING_BLOCK):
        text = "".join(n + "\n" for n in names[a:a + LISTING_BLOCK]).encode("utf-8", "surrogateescape")
        whole.update(text)
        blocks.append(hashlib.sha256(text).hexdigest()[:16])
    return {"count": len(names), "sha256": whole.hexdigest(), "block": LISTING_BLOCK, "blocks": blocks}


def first_difference(listed: dict, names: list[str]) -> int | None:
    """Index of the first image of the first block whose names differ from ``listed`` (None: the
    same listing)."""
    now = listing_of(names)
    if now["sha256"] == listed.get("sha256") and now["count"] == listed.get("count"):
        return None
    old = listed.get("blocks") if listed.get("block") == LISTING_BLOCK else None
    if not isinstance(old, list):
        return 0
    for b, (x, y) in enumerate(zip(old, now["blocks"])):
        if x != y:
            return b * LISTING_BLOCK
    return min(len(old), len(now["blocks"])) * LISTING_BLOCK


def _is_archive(path: Path) -> bool:
    return path.is_file() and is_tar_name(path.name)


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
            p.skip_report = self.skip_report
            for sp in p.splits():
                if sp in self._owner:
                    raise PpdataError(f"split {sp!r} is in both {self._owner[sp].location} and {p.location}; "
                                      f"give each split once (or --split to pick one)")
                self._owner[sp] = p
        self.strict = any(p.strict for p in self.parts)

    @property
    def decode(self) -> Decode:
        return self.parts[0].settings

    def splits(self) -> list[str]:
        return _split_order(self._owner)

    def count(self, split: str) -> int:
        return self._owner[split].count(split)

    def listing(self, split: str) -> dict:
        return self._owner[split].listing(split)

    def names(self, split: str) -> list[str]:
        return self._owner[split].names(split)

    def origin(self, split: str, path: str) -> str:
        return self._owner[split].origin(path)

    def describe(self) -> dict:
        return {"name": "folder", "path": [basename(p.location) for p in self.parts]}

    def _remap(self, part: FolderSource) -> list[int]:
        return [self.classes.index(c) for c in part.classes]

    def items(self, split: str) -> Iterator[Item]:
        part = self._owner[split]
        remap = self._remap(part)
        for it in part.items(split):
            it.label = remap[it.label]
            yield it

    def part(self, split: str) -> FolderSource:
        return self._owner[split]

    def batches(self, split: str, batch_size: int = 256) -> Iterator[Batch]:
        import numpy as np

        part = self._owner[split]
        remap = np.array(self._remap(part), np.int64)
        for b in part.batches(split, batch_size):
            yield Batch(b.images, remap[b.labels], b.index)


def sample_archive() -> Path:
    """Path of the embedded sample (an ImageFolder tar.gz with train/ and test/)."""
    return Path(str(resources.files("ppdata") / "data" / "sample.tar.gz"))


class SampleSource(FolderSource):
    """The embedded sample: 500 train + 100 test CIFAR-10 images (32x32), no network needed."""

    name = "sample"

    def __init__(self, split: str | None = None, strict: bool = False, resize=None, max_pixels: int = MAX_PIXELS,
                 decode: Decode | None = None, workers: int = 1):
        super().__init__(sample_archive(), split=split, strict=strict, resize=resize, max_pixels=max_pixels,
                         decode=decode, workers=workers)

    def describe(self) -> dict:
        return {"name": "sample"}
