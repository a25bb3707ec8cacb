"""Dataset readers: every source yields batches of ``(images, labels, index)`` per split.

Conventions: ``images`` ``(B, H, W, 3)`` uint8 RGB, ``labels`` ``(B,)`` int64, ``index``
``(B,)`` int64, the position of each image in its split in source order. The sample key of an
image is ``<split>_<index:06d>`` (``sample_key``). An image that cannot be read is skipped and
recorded in ``Source.skipped`` (its index is not reused, so keys never shift), or, with
``strict``, raises ``PpdataError`` naming the file.

Sources
-------
``cifar10``, ``cifar100``, ``stl10``
    through torchvision (``root``, ``download``); STL-10's unlabelled split is not offered.
``folder PATH [PATH ...]``
    an ImageFolder tree given as a directory or a ``.tar`` / ``.tar.gz`` archive of one (read as
    a stream, never extracted); several paths (e.g. ``train.tar.gz test.tar.gz``) are joined,
    each split coming from one of them (``MultiFolderSource``). Layout ``<class>/<file>`` (one split, named by ``split`` or
    ``train``) or ``<split>/<class>/<file>`` with split folders ``train``, ``test``, ``val``...;
    a single wrapping folder is stripped. Classes are the sorted class-folder names over all
    splits. Order: sorted paths for a directory, archive order for an archive.
``sample``
    the embedded sample, a small slice of CIFAR-10 (see ``ppdata/data/PROVENANCE.md``).
``ArraySource``
    in-memory arrays (tests, benchmarks, library use).

Image modes: L, LA, P, RGBA, CMYK, I;16 and other 16/32-bit modes are converted to 8-bit RGB
(alpha is dropped, 16-bit values are scaled by 1/257). All images of a source must have one
size unless ``resize=(H, W)`` is given (Lanczos resampling).
"""
from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .archive import checked_members, compression, drain, index_tar, open_archive, read_member
from .errors import PpdataError
from .names import check_class, check_path_text

log = logging.getLogger("ppdata")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # truncated files must fail, not decode half-grey

SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
IMAGE_EXTENSIONS = frozenset(
    ext.lower() for ext in Image.registered_extensions() if ext.lower() not in {".pdf", ".eps", ".ps"}
)


def sample_key(split: str, index: int) -> str:
    """``<split>_<index:06d>``: no dots (WebDataset splits a member name at its first dot)."""
    return f"{split}_{index:06d}"


_KEY_RE = re.compile(r"^([A-Za-z0-9]+)_(\d+)$")


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


class Source:
    """Base class of all sources."""

    name: str = "source"
    classes: list[str]
    strict: bool = False

    def __init__(self):
        self.skipped: list[Skipped] = []

    def splits(self) -> list[str]:
        raise NotImplementedError

    def count(self, split: str) -> int | None:
        """Number of images in ``split`` (before skipping), if known cheaply."""
        return None

    def batches(self, split: str, batch_size: int = 256) -> Iterator[Batch]:
        raise NotImplementedError

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


# ---------------------------------------------------------------------------------------------
# torchvision datasets

_TORCHVISION = {
    "cifar10": ("CIFAR10", ("train", "test")),
    "cifar100": ("CIFAR100", ("train", "test")),
    "stl10": ("STL10", ("train", "test")),
}


class TorchvisionSource(ArraySource):
    """CIFAR-10, CIFAR-100 or STL-10 through torchvision, read into memory as uint8 arrays."""

    def __init__(self, name: str, root: str | os.PathLike = "data", download: bool = False,
                 split: str | None = None):
        if name not in _TORCHVISION:
            raise PpdataError(f"unknown torchvision source {name!r}")
        import torchvision.datasets as tvd

        cls_name, all_splits = _TORCHVISION[name]
        cls = getattr(tvd, cls_name)
        wanted = all_splits if split in (None, "all") else (split,)
        if split not in (None, "all") and split not in all_splits:
            raise PpdataError(f"split {split!r} not in {name} (available: {', '.join(all_splits)})")
        data, classes = {}, None
        for s in wanted:
            kwargs = {"split": s} if name == "stl10" else {"train": s == "train"}
            try:
                ds = cls(root=str(root), download=download, **kwargs)
            except RuntimeError as e:
                if "not found" in str(e).lower() or "corrupted" in str(e).lower():
                    hint = "" if download else "Drop --no-download to fetch it, or pass "
                    raise PpdataError(
                        f"{name} ({s}) not found under --root {root}. {hint or 'Pass '}--root DIR where it "
                        f"already is, or use `ppdata encrypt folder PATH` for an ImageFolder tree or archive."
                    ) from None
                raise
            except OSError as e:  # network failure during download
                reason = getattr(e, "reason", None) or e.strerror or e
                raise PpdataError(
                    f"cannot download {name} into {root} ({reason}). Without network: put the dataset's "
                    f"files under --root DIR (torchvision's layout) and pass --no-download, or use "
                    f"`ppdata encrypt folder PATH` for an ImageFolder tree or archive."
                ) from None
            if name == "stl10":
                images = np.ascontiguousarray(ds.data.transpose(0, 2, 3, 1))
                labels = np.asarray(ds.labels, np.int64)
            else:
                images = np.ascontiguousarray(ds.data)
                labels = np.asarray(ds.targets, np.int64)
            data[s] = (images, labels)
            classes = list(ds.classes)
        super().__init__(data, classes, name=name)
        self.root = str(root)

    def describe(self) -> dict:
        return {"name": self.name, "root": self.root}


# ---------------------------------------------------------------------------------------------
# ImageFolder trees and archives


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha dropped, 16/32-bit scaled down)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):  # 16-bit (I;16*) and 32-bit integer images, taken as 16-bit range
        a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        a = np.clip(np.asarray(img), 0, 255)
        return Image.fromarray(np.round(a).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (about 0.25 GiB of RGBA)
MAX_SIDE = 16384  # the largest --resize side


class ImageTooLarge(ValueError):
    """An image whose header announces more pixels than the limit (a decompression bomb)."""


def decode_image(data: bytes | os.PathLike | str, resize: tuple[int, int] | None = None,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode one image file to (H, W, 3) uint8: EXIF orientation applied, mode converted to RGB,
    optional resize (H, W). An image over ``max_pixels`` (from its header) is refused before its
    pixels are decoded (``ImageTooLarge``)."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(src)
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(f"{e}; the limit is {max_pixels:,} pixels") from None
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLarge(f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                                    f"(decompression bomb?)")
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
            if resize is not None and img.size != (resize[1], resize[0]):
                img = img.resize((resize[1], resize[0]), Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8)


_REPR_RE = re.compile(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>|'<_io\.\w+ object at 0x[0-9a-fA-F]+>'")


def failure_reason(e: BaseException) -> str:
    """A short, user-facing reason why an image could not be decoded (no object reprs)."""
    if isinstance(e, ImageTooLarge):
        return str(e)
    if isinstance(e, UnidentifiedImageError):
        return "not an image format that can be read"
    text = _REPR_RE.sub("the data", str(e)).strip()
    if "truncated" in text.lower():
        return "truncated image data"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
    from .archive import member_kind

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
    if name in _TORCHVISION:
        if resize:
            raise PpdataError("--resize is only supported for folder and sample sources")
        return TorchvisionSource(name, root=root, download=download, split=split)
    raise PpdataError(f"unknown source {name!r}; expected one of cifar10, cifar100, stl10, folder, sample")


SOURCE_NAMES = ("cifar10", "cifar100", "stl10", "folder", "sample")
