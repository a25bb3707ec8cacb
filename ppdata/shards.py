"""Shard folders: WebDataset tar shards or HDF5 files, a manifest, writers and the reader API.

Layout of a shard folder ``DIR``::

    DIR/manifest.json            written last; its presence means the folder is complete
    DIR/<split>-NNNNNN.tar       format "webdataset": samples <key>.npy (uint8 HxWx3) + <key>.cls
    DIR/<split>.h5               format "hdf5": images (N,H,W,3) uint8, labels (N,) int64, keys (N,) str

Files are written under a temporary name (``*.part``) and renamed when complete; a marker
``.ppdata-incomplete`` lives in the folder while a run is in progress. Readable by plain
``webdataset.WebDataset`` and ``h5py``; in ``ppdata`` use ``open_shards(DIR, split)``.

Tar members are plain ustar entries (mtime 0, uid/gid 0, mode 0644), so equal inputs give
byte-identical shards. HDF5 ``images`` are chunked by whole images, about 1 MiB per chunk
(``hdf5_chunk_images``), uncompressed: training reads contiguous runs of samples (the whole
split when it fits in memory, or large slices), never single random images.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import __version__
from .errors import PpdataError
from .fileio import atomic_json

log = logging.getLogger("ppdata")

MANIFEST = "manifest.json"
INCOMPLETE = ".ppdata-incomplete"
MANIFEST_VERSION = 1
FORMATS = ("webdataset", "hdf5")
_SHARD_RE = re.compile(r"^[A-Za-z0-9]+-\d{6}\.tar$")
_H5_RE = re.compile(r"^[A-Za-z0-9]+\.h5$")


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def _io_error(e: OSError, path: Path) -> PpdataError:
    if e.errno == errno.ENOSPC:
        return PpdataError(f"disk full while writing {path}")
    return PpdataError(f"cannot write {path}: {e.strerror or e}")


# ---------------------------------------------------------------------------------------------
# tar records, built for a whole batch at once

_BLOCK = 512


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a C-ordered uint8 array of ``shape`` (format 1.0)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _pad(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _octal(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded octal ASCII digits of ``values``, ``(len, width)`` uint8."""
    shifts = 3 * np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values.astype(np.int64)[:, None] >> shifts) & 7).astype(np.uint8) + ord("0")


def _header_template() -> np.ndarray:
    info = tarfile.TarInfo("x")
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
    hdr = np.frombuffer(info.tobuf(format=tarfile.USTAR_FORMAT), np.uint8).copy()
    hdr[0:100] = 0  # name
    hdr[148:156] = ord(" ")  # checksum counts as spaces
    return hdr


_TEMPLATE = _header_template()


def tar_records(keys: Sequence[str], images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Tar bytes of the samples ``<key>.npy`` + ``<key>.cls``, ``(B, record)`` uint8.

    One record per sample: npy header block, npy payload (padded), cls header block, cls
    payload block. Vectorised over the batch: headers differ only in name, size and checksum.
    """
    B = len(keys)
    shape = images.shape[1:]
    npy_head = npy_header(shape)
    npy_len = len(npy_head) + int(np.prod(shape))
    npy_blocks = _pad(npy_len)
    rec = _BLOCK + npy_blocks + _BLOCK + _BLOCK
    out = np.empty((B, rec), np.uint8)
    if B == 0:
        return out
    keys = np.asarray(keys)
    if keys.dtype.kind not in "US":
        keys = keys.astype(str)
    name_len = np.char.str_len(keys).astype(np.int64)
    if name_len.max() > 95:
        raise ValueError("sample keys must be at most 95 characters")
    name_bytes = np.ascontiguousarray(keys.astype("S96")).view(np.uint8).reshape(B, 96)  # ASCII only

    def headers(suffix: bytes, sizes: np.ndarray) -> np.ndarray:
        h = np.broadcast_to(_TEMPLATE, (B, _BLOCK)).copy()
        h[:, :96] = name_bytes
        suf = np.frombuffer(suffix, np.uint8)
        cols = name_len[:, None] + np.arange(len(suf))
        h[np.arange(B)[:, None], cols] = suf
        h[:, 124:135] = _octal(sizes, 11)
        h[:, 135] = 0
        chk = h.sum(axis=1, dtype=np.int64)
        h[:, 148:154] = _octal(chk, 6)
        h[:, 154] = 0
        h[:, 155] = ord(" ")
        return h

    out[:, :_BLOCK] = headers(b".npy", np.full(B, npy_len))
    o = _BLOCK
    out[:, o : o + len(npy_head)] = np.frombuffer(npy_head, np.uint8)
    out[:, o + len(npy_head) : o + npy_len] = images.reshape(B, -1)
    out[:, o + npy_len : o + npy_blocks] = 0  # padding
    o += npy_blocks
    cls = np.ascontiguousarray(np.asarray(labels).astype(np.int64).astype("S21"))  # decimal text
    out[:, o : o + _BLOCK] = headers(b".cls", np.char.str_len(cls).astype(np.int64))
    out[:, o + _BLOCK : o + _BLOCK + 21] = cls.view(np.uint8).reshape(B, 21)
    out[:, o + _BLOCK + 21 :] = 0
    return out


# ---------------------------------------------------------------------------------------------
# writers


@dataclass
class ShardInfo:
    name: str
    count: int
    sha256: str
    bytes: int

    def to_json(self) -> dict:
        return {"name": self.name, "count": self.count, "sha256": self.sha256, "bytes": self.bytes}


class WebDatasetWriter:
    """Writes ``DIR/<split>-NNNNNN.tar`` with ``shard_size`` samples each (temporary ``.part``)."""

    format = "webdataset"

    def __init__(self, directory: str | os.PathLike, split: str, shape, shard_size: int = 10000, **_):
        if shard_size < 1:
            raise PpdataError("--shard-size must be at least 1")
        self.dir = Path(directory)
        self.split = split
        self.shape = tuple(shape)
        self.shard_size = shard_size
        self.shards: list[ShardInfo] = []
        self._f = None
        self._hash = None
        self._count = 0
        self._bytes = 0
        self._part: Path | None = None

    def _open(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._part = self.dir / (name + ".part")
        try:
            self._f = open(self._part, "wb")
        except OSError as e:
            raise _io_error(e, self._part) from None
        self._hash = hashlib.sha256()
        self._count = 0
        self._bytes = 0

    def _write(self, data) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise _io_error(e, self._part) from None
        self._hash.update(data)
        self._bytes += len(data) if isinstance(data, bytes) else data.nbytes

    def _finish(self) -> None:
        self._write(bytes(2 * _BLOCK))
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            final = self.dir / shard_name(self.split, len(self.shards))
            os.replace(self._part, final)
        except OSError as e:
            raise _io_error(e, self._part) from None
        self.shards.append(ShardInfo(final.name, self._count, self._hash.hexdigest(), self._bytes))
        self._f = None

    def write(self, keys: Sequence[str], images: np.ndarray, labels: np.ndarray) -> None:
        """Append a batch: keys (B,) str, images (B,H,W,3) uint8, labels (B,) int."""
        if images.shape[1:] != self.shape:
            raise PpdataError(f"image shape {images.shape[1:]} differs from the folder's {self.shape}")
        self.write_records(tar_records(keys, images, labels))

    def write_records(self, recs: np.ndarray) -> None:
        """Append records made by ``tar_records`` for this folder's shape, (B, record) uint8 (so
        that a caller can build them in another thread than the one that writes and hashes)."""
        want = 3 * _BLOCK + _pad(len(npy_header(self.shape)) + int(np.prod(self.shape)))
        if recs.ndim != 2 or recs.shape[1] != want or recs.dtype != np.uint8:
            raise ValueError(f"records must be (B, {want}) uint8 for images of shape {self.shape}")
        a = 0
        while a < len(recs):
            if self._f is None:
                self._open()
            take = min(len(recs) - a, self.shard_size - self._count)
            self._write(recs[a : a + take])
            self._count += take
            a += take
            if self._count == self.shard_size:
                self._finish()

    def close(self) -> list[ShardInfo]:
        if self._f is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._part is not None and self._part.exists():
            self._part.unlink()


def hdf5_chunk_images(shape) -> int:
    """Images per HDF5 chunk: about 1 MiB of pixels, at least 1."""
    return max(1, (1 << 20) // int(np.prod(shape)))


class HDF5Writer:
    """Writes ``DIR/<split>.h5`` (temporary ``.part``): images, labels, keys + attributes."""

    format = "hdf5"

    def __init__(self, directory: str | os.PathLike, split: str, shape, attrs: dict | None = None, **_):
        import h5py

        self.dir = Path(directory)
        self.split = split
        self.shape = tuple(shape)
        self.final = self.dir / f"{split}.h5"
        self._part = self.dir / f"{split}.h5.part"
        self.count = 0
        try:
            self._h5 = h5py.File(self._part, "w")
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
        except OSError as e:
            raise _io_error(e, self._part) from None
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
            raise _io_error(e, self._part) from None
        self.count = b

    def close(self) -> list[ShardInfo]:
        try:
            self._h5.attrs["count"] = self.count
            self._h5.close()
            h = hashlib.sha256()
            with open(self._part, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                os.fsync(f.fileno())
            size = self._part.stat().st_size
            os.replace(self._part, self.final)
        except OSError as e:
            raise _io_error(e, self._part) from None
        self.shards = [ShardInfo(self.final.name, self.count, h.hexdigest(), size)]
        return self.shards

    def abort(self) -> None:
        try:
            self._h5.close()
        except Exception:  # noqa: BLE001
            pass
        if self._part.exists():
            self._part.unlink()


class WriterThread:
    """Feeds a writer from a background thread through a bounded queue, so that preparing the
    next batch (encryption, augmentation) overlaps writing and hashing this one.

    Use as a context manager; ``finish()`` drains the queue and closes the writer (returning its
    ``ShardInfo`` list); leaving the block by an exception stops the thread and aborts the writer,
    so no partial file survives. ``put(*args)`` calls ``writer.<method>(*args)`` in the thread and
    re-raises, in the caller's thread, any error the writer hit.
    """

    def __init__(self, writer, method: str = "write", depth: int = 3):
        import queue
        import threading

        self.writer = writer
        self._call = getattr(writer, method)
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self._done = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self.error is None:
                try:
                    self._call(*item)
                except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
                    self.error = e

    def put(self, *item) -> None:
        if self.error is not None:
            raise self.error
        self._q.put(item)

    def _stop(self) -> None:
        if not self._done:
            self._done = True
            self._q.put(None)
            self._t.join()

    def finish(self) -> list:
        self._stop()
        if self.error is not None:
            raise self.error
        return self.writer.close()

    def __enter__(self) -> "WriterThread":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stop()
            self.writer.abort()


def make_writer(fmt: str, directory, split: str, shape, shard_size: int = 10000, attrs: dict | None = None):
    if fmt == "webdataset":
        return WebDatasetWriter(directory, split, shape, shard_size)
    if fmt == "hdf5":
        return HDF5Writer(directory, split, shape, attrs=attrs)
    raise PpdataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------
# output folder life cycle


def _is_ppdata_file(name: str) -> bool:
    return (name in (MANIFEST, INCOMPLETE) or bool(_SHARD_RE.match(name)) or bool(_H5_RE.match(name))
            or name.endswith(".part") or (name.startswith(".manifest") and name.endswith(".tmp")))


class OutputFolder:
    """Prepare a folder for a run and mark it complete only at the end.

    - missing or empty: created; non-empty: refused unless ``overwrite`` (then ppdata's own
      files there are removed, the manifest first; other files are left alone);
    - left by an interrupted run (marker present, no manifest): its files are removed and the
      run starts again;
    - on failure, temporary files are removed and no manifest is written.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite

    def __enter__(self) -> "OutputFolder":
        p = self.path
        if p.exists() and not p.is_dir():
            raise PpdataError(f"output {p} exists and is not a folder")
        if p.exists():
            entries = sorted(os.listdir(p))
            interrupted = INCOMPLETE in entries and MANIFEST not in entries
            if entries and not (self.overwrite or interrupted):
                raise PpdataError(
                    f"output folder {p} is not empty ({len(entries)} entries); pass --overwrite to replace "
                    f"ppdata's files there, or choose another --out"
                )
            if interrupted and not self.overwrite:
                log.warning("output folder %s holds an interrupted run; starting it again", p)
            if MANIFEST in entries:
                (p / MANIFEST).unlink()
            for name in entries:
                if name != MANIFEST and _is_ppdata_file(name):
                    (p / name).unlink()
        try:
            p.mkdir(parents=True, exist_ok=True)
            (p / INCOMPLETE).write_text("a ppdata run is writing this folder; it is complete once manifest.json exists\n")
        except OSError as e:
            raise _io_error(e, p) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            (self.path / INCOMPLETE).unlink(missing_ok=True)
            return
        for name in os.listdir(self.path):
            if name.endswith(".part"):
                (self.path / name).unlink(missing_ok=True)


def write_manifest(directory: str | os.PathLike, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically (temporary file, fsync, rename)."""
    return atomic_json(Path(directory) / MANIFEST, manifest)


def new_manifest(fmt: str, *, source: dict, scheme: dict, keys: dict | None, shape, classes: list[str],
                 options: dict) -> dict:
    """The common head of a manifest; ``splits`` is filled in as splits complete."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "ppdata_version": __version__,
        "id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "format": fmt,
        "source": source,
        "scheme": scheme,
        "keys": keys,
        "shape": list(shape) if shape is not None else None,
        "classes": list(classes),
        "sample_key": "<split>_<index:06d>",
        "options": options,
        "splits": {},
    }


def read_manifest(directory: str | os.PathLike) -> dict:
    """Read and check ``DIR/manifest.json``; a clear error if the folder is not a complete run."""
    d = Path(directory)
    if not d.is_dir():
        raise PpdataError(f"shard folder {d} does not exist")
    path = d / MANIFEST
    if not path.exists():
        if (d / INCOMPLETE).exists():
            raise PpdataError(f"{d} holds an interrupted run (no manifest.json); run the command again")
        raise PpdataError(f"{d} has no manifest.json; is it a ppdata shard folder?")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PpdataError(f"cannot read {path}: {e}") from None
    for field in ("format", "splits", "shape"):
        if field not in m:
            raise PpdataError(f"{path} is missing {field!r}")
    return m


# ---------------------------------------------------------------------------------------------
# reader API


@dataclass
class Samples:
    """A batch read from shards: images (B,H,W,3) uint8, labels (B,) int64, keys (B,) str."""

    images: np.ndarray
    labels: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item) -> "Samples":
        return Samples(self.images[item], self.labels[item], self.keys[item])


class ShardSet:
    """One split of a shard folder, either format. Create with ``open_shards``.

    Attributes: ``directory``, ``split``, ``format``, ``manifest``, ``shape`` (H, W, 3),
    ``classes``, ``scheme`` (the manifest's scheme dict), ``key_mode``, ``paths`` (shard files
    in order), ``len()``.
    """

    def __init__(self, directory: str | os.PathLike, split: str, manifest: dict | None = None):
        self.directory = Path(directory)
        self.manifest = manifest or read_manifest(directory)
        self.split = split
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
        self.paths = [self.directory / s["name"] for s in self.shards]
        for p in self.paths:
            if not p.exists():
                raise PpdataError(f"shard {p} listed in the manifest is missing")

    def __len__(self) -> int:
        return int(self.info["count"])

    def __repr__(self) -> str:
        return f"ShardSet({str(self.directory)!r}, split={self.split!r}, format={self.format}, n={len(self)})"

    @property
    def urls(self) -> list[str]:
        """Shard paths as strings, for ``webdataset.WebDataset`` (webdataset format only)."""
        return [str(p) for p in self.paths]

    def batches(self, batch_size: int = 4096) -> Iterator[Samples]:
        """Samples in stored order, ``batch_size`` at a time (memory bounded by the batch)."""
        if self.format == "hdf5":
            yield from self._h5_batches(batch_size)
            return
        buf: list[Samples] = []
        have = 0
        for path, info in zip(self.paths, self.shards):
            for s in _read_tar(path, self.shape, info.get("count"), batch_size):
                buf.append(s)
                have += len(s)
                while have >= batch_size:
                    merged = _concat(buf)
                    yield merged[:batch_size]
                    rest = merged[batch_size:]
                    buf = [rest] if len(rest) else []
                    have = len(rest)
        if have:
            yield _concat(buf)

    def _h5_batches(self, batch_size: int) -> Iterator[Samples]:
        import h5py

        with h5py.File(self.paths[0], "r") as f:
            n = f["labels"].shape[0]
            for a in range(0, n, batch_size):
                b = min(n, a + batch_size)
                keys = np.array([k.decode() if isinstance(k, bytes) else k for k in f["keys"][a:b]])
                yield Samples(f["images"][a:b], f["labels"][a:b].astype(np.int64), keys)

    def load(self) -> Samples:
        """The whole split in memory (images (N,H,W,3) uint8)."""
        n = len(self)
        images = np.empty((n, *self.shape), np.uint8)
        labels = np.empty(n, np.int64)
        keys = []
        o = 0
        for s in self.batches(16384):
            images[o : o + len(s)] = s.images
            labels[o : o + len(s)] = s.labels
            keys.extend(s.keys.tolist())
            o += len(s)
        if o != n:
            raise PpdataError(f"{self.directory}: split {self.split} holds {o} samples, manifest says {n}")
        return Samples(images, labels, np.array(keys))

    def verify(self) -> list[str]:
        """Re-hash every shard; returns a list of problems (empty if all match the manifest)."""
        problems = []
        for path, info in zip(self.paths, self.shards):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            if h.hexdigest() != info["sha256"]:
                problems.append(f"{path}: sha256 differs from the manifest (file changed or damaged)")
        return problems


def _concat(parts: list[Samples]) -> Samples:
    if len(parts) == 1:
        return parts[0]
    return Samples(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                   np.concatenate([p.keys for p in parts]))


def record_size(shape) -> int:
    """Bytes of one ppdata tar record (npy header block, padded payload, cls header and payload)."""
    return _BLOCK + _pad(len(npy_header(shape)) + int(np.prod(shape))) + 2 * _BLOCK


def _read_tar(path: Path, shape, count: int | None, chunk: int = 16384) -> Iterator[Samples]:
    """Read one tar shard: ppdata's fixed-size records ``chunk`` at a time (memory bounded by the
    chunk, whatever the shard size), else a generic parse of any webdataset tar."""
    done = 0
    if count:
        rec = record_size(shape)
        with open(path, "rb") as f:
            while done < count:
                k = min(chunk, count - done)
                s = _fast_records(np.fromfile(f, np.uint8, k * rec), shape, k)
                if s is None:
                    break
                yield s
                done += k
    if done == 0:
        yield from _generic_tar(path, shape)
    elif done < count:
        raise PpdataError(f"shard {path}: unexpected record layout after {done} of {count} samples")


def _fast_records(data: np.ndarray, shape, count: int | None) -> Samples | None:
    if not count:
        return None
    head = npy_header(shape)
    npy_len = len(head) + int(np.prod(shape))
    rec = record_size(shape)
    if len(data) < count * rec:
        return None
    r = data[: count * rec].reshape(count, rec)
    o = _BLOCK
    hb = np.frombuffer(head, np.uint8)
    if not (r[:, o : o + len(hb)] == hb).all():
        return None
    names = r[:, :100].copy().view("S100").reshape(-1)
    cls_names = r[:, o + _pad(npy_len) : o + _pad(npy_len) + 100].copy().view("S100").reshape(-1)
    keys = np.char.rpartition(names, b".")[:, 0]
    cls_keys = np.char.rpartition(cls_names, b".")[:, 0]
    if not ((np.char.endswith(names, b".npy")).all() and np.char.endswith(cls_names, b".cls").all()
            and (keys == cls_keys).all()):
        return None
    images = r[:, o + len(hb) : o + npy_len].reshape(count, *shape)
    cls = r[:, o + _pad(npy_len) + _BLOCK : o + _pad(npy_len) + 2 * _BLOCK].copy().view(f"S{_BLOCK}").reshape(-1)
    labels = cls.astype(np.int64)
    return Samples(images, labels, keys.astype(str))


def _generic_tar(path: Path, shape) -> Iterator[Samples]:
    """Any tar with <key>.npy and <key>.cls members (e.g. written by webdataset's TarWriter)."""
    images, labels, keys = [], [], []
    pending: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r|") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                entry = pending.setdefault(key, {})
                entry[ext] = tf.extractfile(m).read()
                if "npy" in entry and "cls" in entry:
                    arr = np.load(io.BytesIO(entry["npy"]), allow_pickle=False)
                    if arr.shape != tuple(shape) or arr.dtype != np.uint8:
                        raise PpdataError(f"{path}: sample {key} has shape {arr.shape} {arr.dtype}, expected {shape} uint8")
                    images.append(arr)
                    labels.append(int(entry["cls"].decode()))
                    keys.append(key)
                    del pending[key]
    except (tarfile.TarError, OSError, ValueError) as e:
        raise PpdataError(f"cannot read shard {path}: {e}") from None
    if pending:
        raise PpdataError(f"{path}: samples without both .npy and .cls: {', '.join(sorted(pending)[:3])}")
    if images:
        yield Samples(np.stack(images), np.asarray(labels, np.int64), np.array(keys))


def open_shards(directory: str | os.PathLike, split: str = "train") -> ShardSet:
    """Open one split of a ppdata shard folder (WebDataset or HDF5) for reading."""
    return ShardSet(directory, split)


def splits_of(directory: str | os.PathLike) -> list[str]:
    return list(read_manifest(directory)["splits"])
