"""HDF5 split files: ``<split>.h5`` with ``images`` (N,H,W,3) uint8, ``labels`` (N,) int64 and
``keys`` (N,) ASCII strings; attributes ``split``, ``count``, ``classes``/``scheme`` (JSON),
``ppdata_version``.

``images`` is chunked by whole images, about 1 MiB per chunk (``hdf5_chunk_images``), uncompressed:
training reads contiguous runs of samples, never single random images. ``read_h5`` reads in
blocks that are whole multiples of the chunk and checks, against the manifest: the datasets'
presence, dtypes and shapes, the count, labels within the classes, the keys' form, and (``sha256``)
the file's hash, read before the file is opened. h5py's errors come back naming the file.

A split file is read only if its data lies in the file itself (``check_storage``, before any
data is read): each of the three datasets a hard link (no soft or external link), not virtual,
without external storage, contiguous, chunked or compact, without filters (no compression), and
its declared shape, chunk and storage fit the file's size. So an HDF5 file cannot take its
images from another file (whose bytes its sha256 would not cover), and a 2 KB file declaring a
million images is refused before anything is allocated.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .. import __version__
from ..errors import PpdataError
from ..fileio import file_sha256, io_error
from ..names import SAMPLE_KEY_RE, h5_name
from .manifest import ShardInfo
from .samples import Samples


def hdf5_chunk_images(shape) -> int:
    """Images per HDF5 chunk: about 1 MiB of pixels, at least 1."""
    return max(1, (1 << 20) // int(np.prod(shape)))


class HDF5Writer:
    """Writes ``<split>.h5`` into ``out`` (an ``OutputFolder`` or a local folder path, as
    ``WebDatasetWriter``): images, labels, keys + attributes, through a file ppdata created."""

    format = "hdf5"

    def __init__(self, out, split: str, shape, attrs: dict | None = None, **_):
        import h5py

        from .store import as_folder

        self.folder = as_folder(out)
        self.split = split
        self.shape = tuple(shape)
        self.name = name = h5_name(split)
        self._part = self.folder.writing_path(name)
        self.count = 0
        self._file = self.folder.create(name, readable=True)
        try:
            self._h5 = h5py.File(self._file, "w")
            chunk = hdf5_chunk_images(self.shape)
            self._images = self._h5.create_dataset(
                "images", shape=(0, *self.shape), maxshape=(None, *self.shape), dtype=np.uint8,
                chunks=(chunk, *self.shape))
            self._labels = self._h5.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.int64,
                                                   chunks=(max(chunk, 4096),))
            self._keys = self._h5.create_dataset("keys", shape=(0,), maxshape=(None,),
                                                 dtype=h5py.string_dtype("ascii"), chunks=(max(chunk, 4096),))
            for k, v in (attrs or {}).items():
                self._h5.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
            self._h5.attrs["split"] = split
            self._h5.attrs["ppdata_version"] = __version__
        except (OSError, ValueError) as e:
            self.abort()
            raise io_error(e, self._part) if isinstance(e, OSError) else PpdataError(f"{self._part}: {e}") from None
        self.shards: list[ShardInfo] = []

    def write(self, keys: Sequence[str], images: np.ndarray, labels: np.ndarray) -> None:
        if images.shape[1:] != self.shape:
            raise PpdataError(f"image shape {images.shape[1:]} differs from the folder's {self.shape}")
        n = len(keys)
        a, b = self.count, self.count + n
        try:
            for ds in (self._images, self._labels, self._keys):
                ds.resize(b, axis=0)
            self._images[a:b] = images
            self._labels[a:b] = labels
            self._keys[a:b] = np.array(keys, dtype=object)
        except OSError as e:
            raise io_error(e, self._part) from None
        self.count = b

    def close(self) -> list[ShardInfo]:
        import hashlib

        try:
            self._h5.attrs["count"] = self.count
            self._h5.close()
            f = self._file
            f.flush()
            os.fsync(f.fileno())
            size = os.fstat(f.fileno()).st_size
            f.seek(0)
            h = hashlib.sha256()
            while chunk := f.read(1 << 22):
                h.update(chunk)
            f.close()
        except OSError as e:
            raise io_error(e, self._part) from None
        self.folder.finish(self.name)
        self.shards = [ShardInfo(self.name, self.count, h.hexdigest(), size)]
        return self.shards

    def abort(self) -> None:
        for close in (getattr(getattr(self, "_h5", None), "close", None), self._file.close):
            try:
                if close is not None:
                    close()
            except Exception:  # noqa: BLE001
                pass
        self.folder.discard(self.name)


def _fail(path, text: str) -> PpdataError:
    return PpdataError(f"HDF5 file {path}: {text}")


MAX_CHUNK_BYTES = 64 << 20  # one chunk is read whole: bound it
_DATASETS = ("images", "labels", "keys")


def check_storage(f, path, file_size: int) -> None:
    """Refuse (``PpdataError`` naming the file and the dataset) any storage but data inside the
    file, within its size (see the module docstring). Reads metadata only."""
    import h5py

    for name in _DATASETS:
        link = f.get(name, getlink=True)
        if link is None:
            raise _fail(path, f"has no {name!r} dataset")
        if isinstance(link, h5py.SoftLink):
            raise _fail(path, f"{name!r} is a soft link (to {link.path!r}); ppdata reads only datasets stored "
                              f"under their own name")
        if isinstance(link, h5py.ExternalLink):
            raise _fail(path, f"{name!r} is an external link (to {link.filename!r}); ppdata reads only data stored "
                              f"in the file itself")
        if not isinstance(link, h5py.HardLink):
            raise _fail(path, f"{name!r} is a {type(link).__name__}; ppdata reads only datasets stored in the file")
        ds = f[name]
        if not isinstance(ds, h5py.Dataset):
            raise _fail(path, f"{name!r} is not a dataset")
        if ds.is_virtual:
            raise _fail(path, f"{name!r} is a virtual dataset (its data lies in other datasets or files); ppdata "
                              f"reads only data stored in the file itself")
        if ds.external:
            raise _fail(path, f"{name!r} keeps its data in external files ({ds.external[0][0]!r}); ppdata reads only "
                              f"data stored in the file itself")
        dcpl = ds.id.get_create_plist()
        layout = dcpl.get_layout()
        if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
            raise _fail(path, f"{name!r} has a storage layout ppdata does not read ({layout})")
        if dcpl.get_nfilters():
            raise _fail(path, f"{name!r} is compressed or filtered; ppdata reads uncompressed split files")
        itemsize = 16 if ds.dtype.kind == "O" else ds.dtype.itemsize  # variable-length: heap references
        nbytes = int(np.prod(ds.shape, dtype=object)) * itemsize if ds.shape else itemsize
        if nbytes > file_size:
            raise _fail(path, f"{name!r} declares {ds.shape} {ds.dtype} ({nbytes:,} bytes), more than the file's "
                              f"{file_size:,} bytes can hold")
        if ds.chunks is not None:
            chunk = int(np.prod(ds.chunks, dtype=object)) * itemsize
            if chunk > MAX_CHUNK_BYTES:
                raise _fail(path, f"{name!r} has chunks of {chunk:,} bytes, more than the {MAX_CHUNK_BYTES:,} "
                                  f"allowed")
        if layout == h5py.h5d.CONTIGUOUS:
            offset = ds.id.get_offset()
            if offset is not None and offset + ds.id.get_storage_size() > file_size:
                raise _fail(path, f"{name!r} lies beyond the end of the file (truncated or hostile)")


def open_checked(path: Path):
    """``h5py.File`` of a split file, opened read-only once ``check_storage`` holds."""
    import h5py

    try:
        size = os.stat(path).st_size
        f = h5py.File(path, "r")
    except OSError as e:
        raise _fail(path, f"cannot be opened ({_h5_text(e)})") from None
    try:
        check_storage(f, path, size)
    except BaseException:
        f.close()
        raise
    return f


class H5Split:
    """An open ``<split>.h5`` checked against the manifest (use as a context manager)."""

    def __init__(self, path: Path, shape, count: int, *, sha256: str | None = None, size: int | None = None):
        self.path = path
        self.shape = tuple(shape)
        self.count = count
        try:
            actual = path.stat().st_size
        except OSError as e:
            raise PpdataError(f"cannot read {path}: {e.strerror or e}") from None
        if size is not None and actual != size:
            raise _fail(path, f"is {actual} bytes, the manifest says {size} (truncated, extended or replaced)")
        if sha256 and file_sha256(path) != sha256:
            raise _fail(path, "sha256 differs from the manifest (file changed or damaged)")
        self.f = open_checked(path)
        try:
            self._check()
        except BaseException:
            self.f.close()
            raise

    def _check(self) -> None:
        f, path = self.f, self.path
        images, labels, keys = f["images"], f["labels"], f["keys"]
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.shape:
            raise _fail(path, f"images are {tuple(images.shape[1:])} {images.dtype}, the manifest says "
                              f"{self.shape} uint8")
        if images.ndim != 4:
            raise _fail(path, f"images are {images.ndim}-dimensional, not (N, H, W, 3)")
        if labels.dtype.kind not in "iu":
            raise _fail(path, f"labels are {labels.dtype}, not integers")
        n = images.shape[0]
        if labels.shape != (n,) or keys.shape != (n,):
            raise _fail(path, f"holds {n} images, {labels.shape[0]} labels and {keys.shape[0]} keys")
        if n != self.count:
            raise _fail(path, f"holds {n} samples, the manifest says {self.count}")
        self.chunk = (images.chunks or (hdf5_chunk_images(self.shape),))[0]

    def blocks(self, batch_size: int, n_classes: int | None, start: int = 0, stop: int | None = None
               ) -> Iterator[Samples]:
        """Samples ``start:stop`` in blocks of about ``batch_size``, aligned to whole chunks."""
        stop = self.count if stop is None else stop
        step = max(self.chunk, (batch_size // self.chunk) * self.chunk)
        a = start
        while a < stop:
            b = min(stop, (a // step + 1) * step)
            try:
                images = self.f["images"][a:b]
                labels = self.f["labels"][a:b].astype(np.int64)
                raw = self.f["keys"][a:b]
            except (OSError, ValueError) as e:
                raise _fail(self.path, f"cannot read samples {a}..{b} ({_h5_text(e)})") from None
            if len(labels) and (labels.min() < 0 or (n_classes and labels.max() >= n_classes)):
                raise _fail(self.path, f"a label of samples {a}..{b} is outside the manifest's classes")
            keys = np.array([k.decode("ascii", "replace") if isinstance(k, bytes) else str(k) for k in raw])
            for k in keys:
                if not SAMPLE_KEY_RE.match(k):
                    raise _fail(self.path, f"sample key {k!r} is not valid")
            yield Samples(images, labels, keys)
            a = b

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "H5Split":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _h5_text(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.replace("Unable to synchronously open file", "not a valid HDF5 file").strip()
