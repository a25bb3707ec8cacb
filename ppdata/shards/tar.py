"""WebDataset tar shards: a vectorised record builder, the writer, and a reader that trusts nothing.

A ppdata shard is a plain ustar archive of fixed-size records, one per sample: the ``<key>.npy``
header block, the npy payload (uint8 H x W x 3, padded to 512), the ``<key>.cls`` header block and
its payload block (the label in ASCII decimal); then two zero blocks. Headers have mode 0644,
uid/gid 0, mtime 0, so equal inputs give byte-identical shards.

``read_tar`` checks, for every shard it reads: the file's size against the record layout and the
manifest, every header's checksum, name and size fields, the npy header, that the two members of a
record name the same valid sample key, labels within the class list, the end-of-archive blocks,
the per-shard count and (``verify=True``, the default of every consumer) the sha256 of every byte.
Tars from other writers (e.g. ``webdataset.TarWriter``) go through a generic parse with the same
count, shape, label and end-of-archive checks. Any mismatch is a ``PpdataError`` naming the file.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import PpdataError
from ..fileio import io_error
from ..names import SAMPLE_KEY_RE, shard_name
from .manifest import ShardInfo
from .samples import Samples

BLOCK = 512
_END = 2 * BLOCK


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a C-ordered uint8 array of ``shape`` (format 1.0)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _pad(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def record_size(shape) -> int:
    """Bytes of one ppdata tar record (npy header block, padded payload, cls header and payload)."""
    return BLOCK + _pad(len(npy_header(shape)) + int(np.prod(shape))) + 2 * BLOCK


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
    rec = BLOCK + npy_blocks + BLOCK + BLOCK
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
        h = np.broadcast_to(_TEMPLATE, (B, BLOCK)).copy()
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

    out[:, :BLOCK] = headers(b".npy", np.full(B, npy_len))
    o = BLOCK
    out[:, o : o + len(npy_head)] = np.frombuffer(npy_head, np.uint8)
    out[:, o + len(npy_head) : o + npy_len] = images.reshape(B, -1)
    out[:, o + npy_len : o + npy_blocks] = 0  # padding
    o += npy_blocks
    cls = np.ascontiguousarray(np.asarray(labels).astype(np.int64).astype("S21"))  # decimal text
    out[:, o : o + BLOCK] = headers(b".cls", np.char.str_len(cls).astype(np.int64))
    out[:, o + BLOCK : o + BLOCK + 21] = cls.view(np.uint8).reshape(B, 21)
    out[:, o + BLOCK + 21 :] = 0
    return out


# ---------------------------------------------------------------------------------------------
# writer


class WebDatasetWriter:
    """Writes ``<split>-NNNNNN.tar`` with ``shard_size`` samples each into ``out``: an
    ``OutputFolder`` (each file claimed in its journal, written under a temporary name, then
    renamed or uploaded), or a local folder path (``store.DirectFolder``: new files only, never
    through a link)."""

    format = "webdataset"

    def __init__(self, out, split: str, shape, shard_size: int = 10000, **_):
        from .store import as_folder

        if shard_size < 1:
            raise PpdataError("--shard-size must be at least 1")
        self.folder = as_folder(out)
        self.split = split
        self.shape = tuple(shape)
        self.shard_size = shard_size
        self.shards: list[ShardInfo] = []
        self._f = None
        self._hash = None
        self._count = 0
        self._bytes = 0
        self._part: str | None = None
        self._name: str | None = None
        shard_name(split, 0)  # validates the split name

    def _open(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._part = self.folder.writing_path(name)
        self._f = self.folder.create(name)
        self._name = name
        self._hash = hashlib.sha256()
        self._count = 0
        self._bytes = 0

    def _write(self, data) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise io_error(e, self._part) from None
        self._hash.update(data)
        self._bytes += len(data) if isinstance(data, bytes) else data.nbytes

    def _finish(self) -> None:
        self._write(bytes(_END))
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        except OSError as e:
            raise io_error(e, self._part) from None
        self._f = None
        self.folder.finish(self._name)
        self.shards.append(ShardInfo(self._name, self._count, self._hash.hexdigest(), self._bytes))
        self._name = None

    def write(self, keys: Sequence[str], images: np.ndarray, labels: np.ndarray) -> None:
        """Append a batch: keys (B,) str, images (B,H,W,3) uint8, labels (B,) int."""
        if images.shape[1:] != self.shape:
            raise PpdataError(f"image shape {images.shape[1:]} differs from the folder's {self.shape}")
        self.write_records(tar_records(keys, images, labels))

    def write_records(self, recs: np.ndarray) -> None:
        """Append records made by ``tar_records`` for this folder's shape, (B, record) uint8 (so
        that a caller can build them in another thread than the one that writes and hashes)."""
        want = record_size(self.shape)
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

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards) + (self._count if self._f is not None else 0)

    def close(self) -> list[ShardInfo]:
        if self._f is not None:
            self._finish()
        return self.shards

    def abort(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
            self._f = None
        if self._name is not None:
            self.folder.discard(self._name)
            self._name = None


# ---------------------------------------------------------------------------------------------
# reader

# bytes allowed in the name field of a ppdata member: the sample-key alphabet, '.', NUL padding
_NAME_OK = np.zeros(256, bool)
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+-.\0":
    _NAME_OK[_c] = True


def _fail(path, text: str) -> PpdataError:
    return PpdataError(f"shard {path}: {text}")


def _check_headers(h: np.ndarray, path, first: int, suffix: bytes, size: int | None) -> np.ndarray:
    """Check a (B, 512) block of tar headers; return their sample keys (B,) as bytes."""
    stored = h[:, 148:156].copy()
    hh = h.astype(np.int64)
    hh[:, 148:156] = ord(" ")
    chk = hh.sum(axis=1)
    digits = stored[:, :6].astype(np.int64) - ord("0")
    ok = ((digits >= 0) & (digits <= 7)).all(axis=1)
    value = (digits << (3 * np.arange(5, -1, -1))).sum(axis=1)
    bad = ~ok | (value != chk)
    if bad.any():
        raise _fail(path, f"header checksum of sample {first + int(np.argmax(bad))} is wrong (damaged file)")
    if ((h[:, 156] != ord("0")) & (h[:, 156] != 0)).any():
        raise _fail(path, "holds a member that is not a regular file")
    if size is not None:
        want = np.frombuffer(b"%011o\0" % size, np.uint8)
        bad = (h[:, 124:136] != want).any(axis=1)
        if bad.any():
            raise _fail(path, f"member size of sample {first + int(np.argmax(bad))} does not fit the record layout")
    names = np.ascontiguousarray(h[:, :100])
    if not _NAME_OK[names].all() or (names[:, 0] == 0).any():
        raise _fail(path, "a member name holds characters outside the sample-key alphabet")
    if ((names == ord(".")).sum(axis=1) != 1).any():
        raise _fail(path, "a member name is not <sample key>.<ext>")
    names = names.view("S100").reshape(-1)
    if not np.char.endswith(names, suffix).all():
        raise _fail(path, f"a record does not hold its {suffix.decode()} member where expected")
    return np.char.rpartition(names, b".")[:, 0]


def _labels(payload: np.ndarray, path, n_classes: int | None, first: int) -> np.ndarray:
    text = np.ascontiguousarray(payload).view(f"S{payload.shape[1]}").reshape(-1)
    try:
        labels = text.astype(np.int64)
    except ValueError:
        raise _fail(path, f"a label near sample {first} is not a decimal integer") from None
    if len(labels) and (labels.min() < 0 or (n_classes and labels.max() >= n_classes)):
        raise _fail(path, f"a label is outside 0..{(n_classes or 1) - 1} (the manifest's classes)")
    return labels


def parse_records(data: np.ndarray, shape, path, first: int = 0, n_classes: int | None = None) -> Samples:
    """Check and decode ``count`` ppdata records ``(count, record)`` uint8 (see module docstring)."""
    count = len(data)
    head = np.frombuffer(npy_header(shape), np.uint8)
    npy_len = len(head) + int(np.prod(shape))
    o = BLOCK
    c = o + _pad(npy_len)
    keys = _check_headers(data[:, :BLOCK], path, first, b".npy", npy_len)
    cls_keys = _check_headers(data[:, c : c + BLOCK], path, first, b".cls", None)
    if not (keys == cls_keys).all():
        raise _fail(path, "a record's .npy and .cls members name different samples")
    if not (data[:, o : o + len(head)] == head).all():
        raise _fail(path, f"an npy header differs from the manifest's shape {tuple(shape)} uint8")
    labels = _labels(data[:, c + BLOCK : c + 2 * BLOCK], path, n_classes, first)
    images = data[:, o + len(head) : o + npy_len].reshape(count, *shape)
    keys = keys.astype(str)
    for k in keys:  # names were restricted to the alphabet above; this checks the shape of the key
        if not SAMPLE_KEY_RE.match(k):
            raise _fail(path, f"sample key {k!r} is not valid")
    return Samples(images, labels, keys)


def read_tar(path: Path, shape, count: int, *, sha256: str | None = None, size: int | None = None,
             n_classes: int | None = None, chunk: int = 16384) -> Iterator[Samples]:
    """The samples of one shard, ``chunk`` at a time; every check of the module docstring.

    count: the manifest's sample count for this shard. sha256: check the file's hash (None: not
    checked). size: the manifest's byte count, if any."""
    rec = record_size(shape)
    try:
        actual = path.stat().st_size
    except OSError as e:
        raise PpdataError(f"cannot read shard {path}: {e.strerror or e}") from None
    if size is not None and actual != size:
        raise _fail(path, f"is {actual} bytes, the manifest says {size} (truncated, extended or replaced)")
    h = hashlib.sha256() if sha256 else None
    if actual != count * rec + _END and _ppdata_layout(path, shape, rec, actual):
        have = (actual - _END) / rec
        raise _fail(path, f"is {actual} bytes, which is {have:g} records of {tuple(shape)} images, but the manifest "
                          f"says {count} samples (truncated, extended or the manifest was edited)")
    if actual == count * rec + _END:
        done = 0
        try:
            with open(path, "rb") as f:
                while done < count:
                    k = min(chunk, count - done)
                    raw = np.fromfile(f, np.uint8, k * rec)
                    if len(raw) < k * rec:
                        raise _fail(path, f"ends after {done + len(raw) // rec} of {count} samples")
                    if h is not None:
                        h.update(raw)
                    yield parse_records(raw.reshape(k, rec), shape, path, done, n_classes)
                    done += k
                tail = f.read()
        except OSError as e:
            raise PpdataError(f"cannot read shard {path}: {e.strerror or e}") from None
        if tail != bytes(_END):
            raise _fail(path, "does not end with the two zero blocks of a tar archive")
        if h is not None:
            h.update(tail)
    else:
        got = 0
        for s in _generic_tar(path, shape, n_classes, h, chunk):
            got += len(s)
            if got > count:
                raise _fail(path, f"holds more than the manifest's {count} samples")
            yield s
        if got != count:
            raise _fail(path, f"holds {got} samples, the manifest says {count}")
    if h is not None and h.hexdigest() != sha256:
        raise _fail(path, "sha256 differs from the manifest (file changed or damaged)")


def _ppdata_layout(path: Path, shape, rec: int, actual: int) -> bool:
    """True if the shard's first record is a ppdata record for ``shape`` (then its whole file must
    follow that layout; other writers' tars take the generic path)."""
    if actual < rec:
        return False
    try:
        with open(path, "rb") as f:
            first = np.frombuffer(f.read(rec), np.uint8)
        parse_records(first.reshape(1, rec), shape, path)
    except (OSError, PpdataError, ValueError):
        return False
    return True


class _HashingReader(io.RawIOBase):
    """A read-only file wrapper that feeds every byte read to a hash (``tarfile`` stream mode)."""

    def __init__(self, f, h):
        self.f, self.h = f, h

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        if n and self.h is not None:
            self.h.update(memoryview(b)[:n])
        return n


def _generic_tar(path: Path, shape, n_classes, h, chunk) -> Iterator[Samples]:
    """Any tar of ``<key>.npy`` + ``<key>.cls`` members (e.g. webdataset's TarWriter)."""
    from ..archive import ArchiveEnd, checked_members

    images, labels, keys = [], [], []
    pending: dict[str, dict] = {}
    seen: set[str] = set()
    most = len(npy_header(shape)) + int(np.prod(shape)) + 4096  # the largest member a sample may have
    try:
        with open(path, "rb") as raw:
            stream = io.BufferedReader(_HashingReader(raw, h), 1 << 20)
            for m, f in checked_members(stream, str(path)):
                if not m.isfile():
                    raise _fail(path, f"member {m.name!r} is not a regular file")
                base = m.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if not SAMPLE_KEY_RE.match(key) or key in seen:
                    raise _fail(path, f"member {m.name!r}: invalid or repeated sample key")
                entry = pending.setdefault(key, {})
                if ext in entry:
                    raise _fail(path, f"member {m.name!r} appears twice")
                if m.size > most:
                    raise _fail(path, f"member {m.name!r} declares a size of {m.size:,} bytes, more than a sample of "
                                      f"{tuple(shape)} takes")
                entry[ext] = f.read()
                if "npy" in entry and "cls" in entry:
                    try:
                        arr = np.load(io.BytesIO(entry["npy"]), allow_pickle=False)
                        label = int(entry["cls"].decode("ascii").strip())
                    except (ValueError, UnicodeDecodeError, OSError):
                        raise _fail(path, f"sample {key} is not a valid .npy/.cls pair") from None
                    if arr.shape != tuple(shape) or arr.dtype != np.uint8:
                        raise _fail(path, f"sample {key} has shape {arr.shape} {arr.dtype}, expected {tuple(shape)} uint8")
                    if label < 0 or (n_classes and label >= n_classes):
                        raise _fail(path, f"sample {key} has label {label}, outside the manifest's classes")
                    images.append(arr)
                    labels.append(label)
                    keys.append(key)
                    seen.add(key)
                    del pending[key]
                    if len(images) == chunk:
                        yield Samples(np.stack(images), np.asarray(labels, np.int64), np.array(keys))
                        images, labels, keys = [], [], []
            while stream.read(1 << 20):  # hash every byte, padding included
                pass
    except ArchiveEnd as e:
        raise _fail(path, str(e)) from None
    except tarfile.TarError as e:
        raise _fail(path, f"is not a readable tar archive ({e})") from None
    except OSError as e:
        raise PpdataError(f"cannot read shard {path}: {e.strerror or e}") from None
    if pending:
        raise _fail(path, f"samples without both .npy and .cls: {', '.join(sorted(pending)[:3])}")
    if images:
        yield Samples(np.stack(images), np.asarray(labels, np.int64), np.array(keys))
