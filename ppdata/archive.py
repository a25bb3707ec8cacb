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
``iter_tar(stream, origin)`` is the fast reader of a tar *stream* (a compressed archive, a remote
file): the same checks and member semantics as ``tarfile`` (GNU long names, pax headers, ustar
prefixes, links and special files), with the header checksums verified in batches by numpy, so
that archives of millions of small members are read at the speed of their decompression; members
it does not know (sparse files) raise ``Unsupported`` and the caller reads with ``tarfile``.
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
from typing import BinaryIO, Callable, Iterator

import numpy as np

from .errors import PpdataError
from .names import printable

_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_STREAM_ERRORS = (EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


class ArchiveError(PpdataError):
    """A damaged, truncated or malformed archive."""


ArchiveEnd = ArchiveError  # an archive that does not end as a tar archive must


def compression(path: str | os.PathLike | bytes) -> str | None:
    """``"gzip"``, ``"bzip2"``, ``"xz"`` or None (plain tar), from the file's first bytes (or the
    first bytes themselves)."""
    if isinstance(path, bytes):
        head = path[:6]
    else:
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


MAX_MEMBER_BYTES = 1 << 40  # no member of an image archive is a terabyte: a size beyond is hostile
MAX_EXTENDED_BYTES = 1 << 20  # pax headers and GNU long names


def member_size_problem(size, name: str, extended: bool = False) -> str | None:
    """Why a member's declared size is refused (negative, or beyond any real member), or None."""
    limit = MAX_EXTENDED_BYTES if extended else MAX_MEMBER_BYTES
    what = "extended header before" if extended else "member"
    if not isinstance(size, int) or size < 0:
        return f"{what} {printable(name)!r} declares a negative or invalid size ({printable(size)})"
    if size > limit:
        return f"{what} {printable(name)!r} declares a size of {size:,} bytes, more than the {limit:,} allowed"
    return None


class _RecordingInfo(tarfile.TarInfo):
    """Records on the TarFile why header parsing stopped (tarfile itself swallows it), and refuses
    a member whose size (from its header or a pax record) is negative or absurd before tarfile
    moves by it (a negative size would send it back to an earlier header, forever)."""

    @classmethod
    def fromtarfile(cls, tf):
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            tf._ppdata_stop = e
            raise

    def _proc_member(self, tf):
        problem = member_size_problem(self.size, self.name, self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE,
                                                                          tarfile.GNUTYPE_LONGNAME,
                                                                          tarfile.GNUTYPE_LONGLINK))
        if problem:
            raise tarfile.InvalidHeaderError(problem)
        return super()._proc_member(tf)

    def _apply_pax_info(self, pax_headers, encoding, errors):
        super()._apply_pax_info(pax_headers, encoding, errors)
        if "size" in pax_headers:
            try:
                declared = int(pax_headers["size"])
            except ValueError:
                declared = pax_headers["size"]
            problem = member_size_problem(declared, self.name)
            if problem:
                raise tarfile.InvalidHeaderError(f"a pax record: {problem}")


def _describe(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return "it ends early (truncated)"
    if isinstance(e, (gzip.BadGzipFile, zlib.error)) or "CRC" in str(e):
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


def index_tar(path: str | os.PathLike | BinaryIO, origin: str | None = None, size: int | None = None) -> list[Member]:
    """List an uncompressed tar by seeking from header to header (see module docstring): every
    member but directories, in archive order. ``path``: a file path, or a seekable binary file
    object at offset 0 (then ``origin`` names it and ``size`` is its length)."""
    if isinstance(path, (str, os.PathLike)):
        origin = origin or os.fspath(path)
        try:
            with open(path, "rb") as f:
                return index_tar(f, origin, os.fstat(f.fileno()).st_size)
        except OSError as e:
            raise ArchiveError(f"cannot read archive {origin}: {e.strerror or e}") from None
    f, origin = path, origin or "archive"
    head = f.read(6)
    f.seek(0)
    if compression(head) is not None:
        raise ArchiveError(f"{origin} is compressed; only an uncompressed tar can be listed by seeking")
    try:
        return [Member(e.name, e.offset, e.size if e.kind == "file" else 0, e.kind)
                for e in iter_tar(f, origin, chunk=64 << 10, data=lambda name: False, seekable=True, size=size)
                if e.kind != "directory"]
    except Unsupported:
        f.seek(0)
        return _index_tarfile(f, origin, size)


def _index_tarfile(f: BinaryIO, origin: str, size: int | None) -> list[Member]:
    """``index_tar`` through ``tarfile`` (the members the fast reader does not know)."""
    files: list[Member] = []
    try:
        with tarfile.open(fileobj=f, mode="r:", tarinfo=_RecordingInfo) as tf:
            for m in tf:
                if not m.isdir():
                    files.append(Member(m.name, m.offset_data, m.size if m.isfile() else 0, member_kind(m)))
            stop = getattr(tf, "_ppdata_stop", None)
            end = tf.offset
    except tarfile.ReadError as e:
        raise ArchiveError(f"{origin} is not a readable tar archive ({e})") from None
    except OSError as e:
        raise ArchiveError(f"cannot read archive {origin}: {e.strerror or e}") from None
    if size is None:
        size = f.seek(0, 2)
    if files and files[-1].offset + files[-1].size > size:
        raise ArchiveError(f"archive {origin} ends inside member {files[-1].name!r} (truncated)")
    if not isinstance(stop, tarfile.EOFHeaderError):
        if stop is None or isinstance(stop, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
            raise ArchiveError(f"archive {origin} ends without its end-of-archive marker: it was cut short (truncated)")
        raise ArchiveError(f"archive {origin} has a damaged header at byte {end}: {stop}")
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




# ---------------------------------------------------------------------------------------------
# the fast stream reader


class Unsupported(ArchiveError):
    """A member kind the fast reader does not handle (sparse files): read with ``tarfile``."""


@dataclass(frozen=True)
class Entry:
    """A member of a tar stream: name (as ``tarfile`` gives it), kind (``member_kind``'s words),
    offset of its data in the uncompressed archive, size, and its data (regular files only)."""

    name: str
    kind: str
    offset: int
    size: int
    data: bytes | None = None


_REGULAR = (b"0", b"\0", b"7")
_KINDS = {b"1": "hard link", b"2": "symbolic link", b"5": "directory", b"3": "special file", b"4": "special file",
          b"6": "special file"}
_PAX = (b"x", b"g", b"X")
_GNU_LONG = (b"L", b"K")
_HEADER_BATCH = 512
_BATCH_BYTES = 16 << 20


def _nts(b: bytes) -> str:
    p = b.find(b"\0")
    return (b if p < 0 else b[:p]).decode("utf-8", "surrogateescape")


def _nti(b: bytes) -> int:
    """A tar number field: octal text, or base-256 (GNU) when the first byte is 0x80 / 0xff."""
    if b[0] in (0o200, 0o377):
        n = int.from_bytes(b[1:], "big")
        return n - 256 ** (len(b) - 1) if b[0] == 0o377 else n
    p = b.find(b"\0")
    text = (b if p < 0 else b[:p]).strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise ValueError("a number field is not octal") from None


def _checksums_ok(headers: list[bytes]) -> np.ndarray:
    """Per header: does its checksum field match (unsigned or signed sum, as ``tarfile``)?"""
    h = np.frombuffer(b"".join(headers), np.uint8).reshape(-1, BLOCK)
    body = np.concatenate([h[:, :148], h[:, 156:]], axis=1)
    unsigned = body.sum(axis=1, dtype=np.int64) + 256
    signed = body.view(np.int8).sum(axis=1, dtype=np.int64) + 256
    stored = np.empty(len(headers), np.int64)
    for i, hdr in enumerate(headers):
        try:
            stored[i] = _nti(hdr[148:156])
        except ValueError:
            stored[i] = -1
    return (stored == unsigned) | (stored == signed)


BLOCK = tarfile.BLOCKSIZE


def _pax_records(buf: bytes, into: dict) -> None:
    """Parse pax records ``"%d %s=%s\\n"`` into ``into`` (as ``tarfile``)."""
    pos = 0
    while pos < len(buf):
        sp = buf.find(b" ", pos)
        if sp < 0 or not buf[pos:sp].isdigit():
            break
        length = int(buf[pos:sp])
        eq = buf.find(b"=", sp)
        if length == 0 or eq < 0 or eq >= pos + length:
            raise ValueError("invalid pax record")
        key = buf[sp + 1:eq].decode("utf-8", "surrogateescape")
        value = buf[eq + 1:pos + length - 1]
        into[key] = value.decode("utf-8", "surrogateescape")
        pos += length


def _chunks_of(stream: BinaryIO, kind: str | None, chunk: int) -> Callable[[], bytes]:
    """A function returning the next piece of the *decompressed* archive (b"" at its end).

    gzip is decompressed with zlib directly (every member of a multi-member file, zero padding
    after the last allowed, CRC-32 and length checked at each member's end); bzip2 and xz through
    their file objects (which check their streams)."""
    if kind is None:
        return lambda: stream.read(chunk)
    if kind != "gzip":
        f = bz2.BZ2File(stream) if kind == "bzip2" else lzma.LZMAFile(stream)
        return lambda: f.read(chunk)
    state = {"d": zlib.decompressobj(31), "done": False}

    def more() -> bytes:
        while not state["done"]:
            d = state["d"]
            if d.unconsumed_tail:
                out = d.decompress(d.unconsumed_tail, chunk)
            elif d.eof:  # a member ended: another member (after optional zero padding), or the end
                rest = d.unused_data.lstrip(b"\0")
                while not rest:
                    raw = stream.read(chunk)
                    if not raw:
                        state["done"] = True
                        return b""
                    rest = raw.lstrip(b"\0")
                state["d"] = zlib.decompressobj(31)
                out = state["d"].decompress(rest, chunk)
            else:
                raw = stream.read(chunk)
                if not raw:
                    raise EOFError("compressed data ends before its end-of-stream marker")
                out = d.decompress(raw, chunk)
            if out:
                return out
        return b""

    return more


class _Reader:
    """Bytes of a stream by absolute offset, read forward in pieces; ``seek``: the stream's own
    (uncompressed, seekable streams), used to skip data that is not wanted."""

    def __init__(self, more: Callable[[], bytes], seek: Callable[[int], object] | None = None,
                 size: int | None = None, read: Callable[[int], bytes] | None = None, chunk: int = 1 << 16):
        self.more = more if read is None else self._adaptive
        self.seek = seek
        self.size = size
        self._read, self._chunk, self._step = read, chunk, chunk
        self.buf = b""
        self.pos = 0  # position in buf
        self.base = 0  # absolute offset of buf[0]

    def _adaptive(self) -> bytes:
        """Read-ahead that starts small after a seek (a header) and doubles while reading on."""
        piece = self._read(self._step)
        self._step = min(self._chunk, self._step * 2)
        return piece

    def skip(self, n: int) -> None:
        """Move ``n`` bytes forward without keeping them."""
        avail = len(self.buf) - self.pos
        if n <= avail:
            self.pos += n
            return
        target = self.offset + n
        if self.seek is not None:
            self.seek(target)
            self._step = 4096
        else:
            left = n - avail
            while left > 0:
                piece = self.more()
                if not piece:
                    break
                if len(piece) > left:  # keep what lies beyond the target
                    self.buf, self.pos, self.base = piece, left, target - left
                    return
                left -= len(piece)
        self.buf, self.pos, self.base = b"", 0, target

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer only at the end of the stream)."""
        if len(self.buf) - self.pos < n:
            parts = [self.buf[self.pos:]]
            have = len(parts[0])
            while have < n:
                piece = self.more()
                if not piece:
                    break
                parts.append(piece)
                have += len(piece)
            self.base += self.pos
            self.buf = b"".join(parts)
            self.pos = 0
        out = self.buf[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def rest_is_zeros(self) -> bool:
        if self.buf[self.pos:].count(0) != len(self.buf) - self.pos:
            return False
        while piece := self.more():
            if piece.count(0) != len(piece):
                return False
        return True


def iter_tar(stream: BinaryIO, origin: str, *, compressed: str | None = None, chunk: int = 4 << 20,
             data: Callable[[str], bool] | None = None, seekable: bool = False,
             size: int | None = None, tee: Callable[[bytes], object] | None = None) -> Iterator[Entry]:
    """Every member of the tar ``stream`` (``compressed``: ``"gzip"``, ``"bzip2"``, ``"xz"`` or None),
    then the end-of-archive checks of the module docstring. ``data(name)``: whether to keep a
    regular file's bytes (default: all). ``seekable`` (an uncompressed stream at offset 0 of
    ``size`` bytes): data that is not kept is skipped by seeking. ``tee(piece)``: called with
    every piece of the uncompressed archive, in order. Checksums are checked before a member is
    yielded; an ``Entry``'s offset is its data's position in the uncompressed archive."""
    if seekable and compressed is None:
        rd = _Reader(None, stream.seek, size, read=stream.read, chunk=chunk)
    else:
        more = _chunks_of(stream, compressed, chunk)
        if tee is not None:
            inner = more

            def more():
                piece = inner()
                tee(piece)
                return piece
        rd = _Reader(more, None, size)
    pending: list[Entry] = []
    headers: list[bytes] = []
    offsets: list[int] = []
    size_pending = 0
    glob: dict = {}

    def flush() -> Iterator[Entry]:
        nonlocal size_pending
        if headers:
            ok = _checksums_ok(headers)
            if not ok.all():
                raise ArchiveError(f"archive {origin} has a damaged header at byte {offsets[int(np.argmin(ok))]}: "
                                   f"bad checksum")
        out = list(pending)
        pending.clear(), headers.clear(), offsets.clear()
        size_pending = 0
        yield from out

    def header() -> tuple[bytes, int] | None:
        at = rd.offset
        hdr = rd.take(BLOCK)
        if len(hdr) < BLOCK:
            raise ArchiveError(f"archive {origin} ends without its end-of-archive marker: it was cut short "
                               f"(truncated)")
        if hdr.count(0) == BLOCK:
            return None
        headers.append(hdr)
        offsets.append(at)
        return hdr, at

    def body(size: int, what: str) -> bytes:
        padded = -(-size // BLOCK) * BLOCK
        b = rd.take(padded)
        if len(b) < padded:
            raise ArchiveError(f"archive {origin} ends inside member {what!r} (truncated)")
        return b[:size]

    try:
        while True:
            got = header()
            if got is None:
                break
            hdr, at = got
            local: dict = {}
            long_name = None
            # extension headers (GNU long names, pax) describe the member that follows
            while hdr[156:157] in _PAX + _GNU_LONG:
                t = hdr[156:157]
                size = _nti(hdr[124:136])
                problem = member_size_problem(size, _nts(hdr[0:100]), extended=True)
                if problem:
                    raise ArchiveError(f"archive {origin} has a damaged header at byte {at}: {problem}")
                ext = body(size, "extended header")
                if t in _GNU_LONG:
                    if t == b"L":
                        long_name = _nts(ext)
                else:
                    _pax_records(ext, glob if t == b"g" else local)
                nxt = header()
                if nxt is None:
                    raise ArchiveError(f"archive {origin} has an extended header with no member after it")
                hdr, _ = nxt
            t = hdr[156:157]
            if t == b"S" or any(k.startswith("GNU.sparse") for k in (*glob, *local)):
                raise Unsupported(f"archive {origin} holds a sparse member")
            pax = {**glob, **local}
            name = _nts(hdr[0:100])
            size = _nti(hdr[124:136])
            prefix = _nts(hdr[345:500])
            if t == b"\0" and name.endswith("/"):
                t = b"5"
            if t == b"5":
                name = name.rstrip("/")
            if prefix:
                name = prefix + "/" + name
            if long_name is not None:
                name = long_name.removesuffix("/") if t == b"5" else long_name
            if "path" in pax:
                name = pax["path"].rstrip("/")
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    size = pax["size"]
                problem = member_size_problem(size, name)
                if problem:
                    raise ArchiveError(f"archive {origin} has a damaged header at byte {at}: a pax record: {problem}")
            else:
                problem = member_size_problem(size, name)
                if problem:
                    raise ArchiveError(f"archive {origin} has a damaged header at byte {at}: {problem}")
            if t in _REGULAR:
                kind = "file"
            else:
                kind = _KINDS.get(t, "special file")
            offset = rd.offset
            payload = None
            if t in _REGULAR or t not in _KINDS:  # data follows (unknown kinds too, as tarfile)
                if t in _REGULAR and (data is None or data(name)):
                    payload = body(size, name)
                    size_pending += size
                elif rd.size is not None and offset + size > rd.size:
                    raise ArchiveError(f"archive {origin} ends inside member {name!r} (truncated)")
                else:
                    rd.skip(-(-size // BLOCK) * BLOCK)
            pending.append(Entry(name, kind, offset, size, payload))
            if len(pending) >= _HEADER_BATCH or size_pending >= _BATCH_BYTES:
                yield from flush()
        yield from flush()
        # end: the zero block just read, at least one more, nothing but zeros after
        second = rd.take(BLOCK)
        if len(second) < BLOCK or second.count(0) != BLOCK:
            if len(second) < BLOCK:
                raise ArchiveError(f"archive {origin} ends without its end-of-archive marker (truncated?)")
            raise ArchiveError(f"archive {origin} has data after its end-of-archive marker "
                               f"(concatenated archives are not read)")
        if not rd.rest_is_zeros():
            raise ArchiveError(f"archive {origin} has data after its end-of-archive marker "
                               f"(concatenated archives are not read)")
    except ArchiveError as e:
        if headers:  # a damaged header earlier in the batch is the better explanation
            yield from flush()
        raise e
    except ValueError as e:
        at = offsets[-1] if offsets else 0
        if headers:
            yield from flush()
        raise ArchiveError(f"archive {origin} has a damaged header at byte {at}: {e}") from None
    except _STREAM_ERRORS as e:
        raise ArchiveError(f"cannot read archive {origin}: {_describe(e)}") from None
