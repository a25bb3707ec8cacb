"""Tar archives read as untrusted input: to the end, with their integrity checked.

Python's ``tarfile`` ends iteration silently at a truncated or damaged header, so an archive cut
in half reads as a smaller, valid one. Here an archive counts as read only if:

- every header parses (a damaged header mid-archive is an error, not the end);
- it ends with the end-of-archive marker: at least two zero blocks, and nothing but zeros after;
- a compressed archive (gzip, bzip2, xz; recognised by its magic bytes, not its name) decompresses
  to its end, which checks the gzip CRC-32 and length, and the bzip2/xz stream checks.

``checked_members(stream, origin)`` yields ``(TarInfo, file)`` for every member of a tar stream
(read the file before asking for the next member); ``open_archive(path)`` opens a file as a
decompressed stream; ``index_tar(path)`` lists an uncompressed tar by seeking from header to
header (member data is never read), returning each member's name, data offset, size and kind.
Failures are ``ArchiveError`` (a ``PpdataError``) naming the archive.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tarfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from .errors import PpdataError

_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_STREAM_ERRORS = (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


class ArchiveError(PpdataError):
    """A damaged, truncated or malformed archive."""


ArchiveEnd = ArchiveError  # an archive that does not end as a tar archive must


def compression(path: str | os.PathLike) -> str | None:
    """``"gzip"``, ``"bzip2"``, ``"xz"`` or None (plain tar), from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def open_archive(path: str | os.PathLike) -> BinaryIO:
    """The archive at ``path`` as a decompressed binary stream (caller closes it)."""
    kind = compression(path)
    if kind == "gzip":
        return gzip.GzipFile(filename=path, mode="rb")  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.BZ2File(path)  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(path)  # type: ignore[return-value]
    return open(path, "rb")


class _RecordingInfo(tarfile.TarInfo):
    """Records on the TarFile why header parsing stopped (tarfile itself swallows it)."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            tf._ppdata_stop = e
            raise


def _describe(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return "it ends early (truncated)"
    if isinstance(e, gzip.BadGzipFile) or "CRC" in str(e):
        return f"its compressed data is damaged ({e})"
    return str(e) or type(e).__name__


def checked_members(stream: BinaryIO, origin: str) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]:
    """Every member of the tar ``stream`` with a reader for its data (None for non-files), then
    the end-of-archive checks of the module docstring. ``origin`` names the archive in errors."""
    try:
        tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=_RecordingInfo)
    except tarfile.ReadError as e:
        raise ArchiveError(f"{origin} is not a readable tar archive ({e})") from None
    except _STREAM_ERRORS as e:
        raise ArchiveError(f"cannot read archive {origin}: {_describe(e)}") from None
    try:
        with tf:
            for m in tf:
                yield m, (tf.extractfile(m) if m.isfile() else None)
            stop = getattr(tf, "_ppdata_stop", None)
            if isinstance(stop, tarfile.EOFHeaderError):
                zeros = tarfile.BLOCKSIZE
                while chunk := tf.fileobj.read(1 << 20):
                    if chunk.count(0) != len(chunk):
                        raise ArchiveError(f"archive {origin} has data after its end-of-archive marker "
                                           f"(concatenated archives are not read)")
                    zeros += len(chunk)
                if zeros < 2 * tarfile.BLOCKSIZE:
                    raise ArchiveError(f"archive {origin} ends without its end-of-archive marker (truncated?)")
            elif isinstance(stop, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)) or stop is None:
                raise ArchiveError(f"archive {origin} ends without its end-of-archive marker: it was cut "
                                   f"short (truncated)")
            else:
                raise ArchiveError(f"archive {origin} has a damaged header at byte {tf.offset}: {stop}")
    except ArchiveError:
        raise
    except tarfile.TarError as e:
        raise ArchiveError(f"cannot read archive {origin}: {e}") from None
    except _STREAM_ERRORS as e:
        raise ArchiveError(f"cannot read archive {origin}: {_describe(e)}") from None


@dataclass(frozen=True)
class Member:
    """A member of an uncompressed tar: name, where its data starts, size, and kind (``file``,
    ``hard link``, ``symbolic link``, ``special file``; directories are not listed)."""

    name: str
    offset: int
    size: int
    kind: str = "file"


def member_kind(m: tarfile.TarInfo) -> str:
    if m.isfile():
        return "file"
    if m.islnk():
        return "hard link"
    if m.issym():
        return "symbolic link"
    if m.isdir():
        return "directory"
    return "special file"


def index_tar(path: str | os.PathLike) -> list[Member]:
    """List an uncompressed tar by seeking from header to header (see module docstring): every
    member but directories, in archive order."""
    origin = os.fspath(path)
    files: list[Member] = []
    try:
        with tarfile.open(path, mode="r:", tarinfo=_RecordingInfo) as tf:
            for m in tf:
                if not m.isdir():
                    files.append(Member(m.name, m.offset_data, m.size if m.isfile() else 0, member_kind(m)))
            stop = getattr(tf, "_ppdata_stop", None)
            end = tf.offset
    except tarfile.ReadError as e:
        raise ArchiveError(f"{origin} is not a readable tar archive ({e})") from None
    except OSError as e:
        raise ArchiveError(f"cannot read archive {origin}: {e.strerror or e}") from None
    size = os.path.getsize(path)
    if files and files[-1].offset + files[-1].size > size:
        raise ArchiveError(f"archive {origin} ends inside member {files[-1].name!r} (truncated)")
    if not isinstance(stop, tarfile.EOFHeaderError):
        if stop is None or isinstance(stop, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
            raise ArchiveError(f"archive {origin} ends without its end-of-archive marker: it was cut short (truncated)")
        raise ArchiveError(f"archive {origin} has a damaged header at byte {end}: {stop}")
    with open(path, "rb") as f:
        f.seek(end)
        rest = f.read()
    if len(rest) < 2 * tarfile.BLOCKSIZE:
        raise ArchiveError(f"archive {origin} ends without its end-of-archive marker (truncated?)")
    if rest.count(0) != len(rest):
        raise ArchiveError(f"archive {origin} has data after its end-of-archive marker "
                           f"(concatenated archives are not read)")
    return files


def read_member(f: BinaryIO | int, m: Member) -> bytes:
    """The data of member ``m`` from an open uncompressed archive (file object or descriptor)."""
    if isinstance(f, int):
        data = os.pread(f, m.size, m.offset)
    else:
        f.seek(m.offset)
        data = f.read(m.size)
    if len(data) != m.size:
        raise ArchiveError(f"member {m.name!r} is cut short")
    return data


def drain(stream: BinaryIO) -> None:
    """Read a stream to its end (decompressors check their CRC there)."""
    while stream.read(1 << 20):
        pass


def is_tar_name(name: str) -> bool:
    return name.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))


