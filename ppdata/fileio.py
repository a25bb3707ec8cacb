"""File helpers shared by every package: atomic writes and file hashes.

``atomic_write(path, data)`` writes a temporary file in the same folder, fsyncs it and renames it
over ``path`` (``os.replace``), so a reader sees the old file or the whole new one, never a part.
``mode`` sets the permission bits of the new file (0600 for keystores). Errors come back as
``PpdataError`` naming ``path`` (``disk full while writing PATH`` for ENOSPC).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from .errors import PpdataError


def io_error(e: OSError, path: os.PathLike | str, verb: str = "write") -> PpdataError:
    """A one-line error for an OSError hit while working on ``path``."""
    if e.errno == errno.ENOSPC:
        return PpdataError(f"disk full while writing {path}")
    return PpdataError(f"cannot {verb} {path}: {e.strerror or e}")


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable, *, mode: int | None = None,
                 fsync: bool = True, tmp: str | os.PathLike | None = None, replace: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically. ``data``: bytes, text (UTF-8), or a callable that
    writes into the binary file object it is given (e.g. ``lambda f: torch.save(obj, f)``).

    ``tmp``: the temporary file's path (default: a fresh random name beside ``path``); it must not
    exist (it is created, never opened through a link).
    ``replace=False``: never replace an existing ``path`` (the new file is linked into place, which
    fails if ``path`` exists: ``PpdataError`` saying so, the old file untouched)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        if tmp is None:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                         0o644 if mode is None else mode)  # a new file, never through a link
    except OSError as e:
        raise io_error(e, path) from None
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PpdataError(f"{path} already exists; ppdata does not replace it") from None
            os.unlink(tmp)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise io_error(e, path) from None
    except PpdataError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_json(path: str | os.PathLike, obj, **kw) -> Path:
    """``obj`` as indented JSON (trailing newline), written atomically (``atomic_write``'s options)."""
    return atomic_write(path, json.dumps(obj, indent=2) + "\n", **kw)


def file_sha256(path: str | os.PathLike, block: int = 1 << 22) -> str:
    """Hex sha256 of a file, read ``block`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# reading input files: regular files only, bounded


def kind_of(mode: int) -> str:
    """``file``, ``folder``, ``link`` or ``other`` (FIFO, device, socket) for an ``st_mode``."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


_WORDS = {"link": "a symbolic link", "folder": "a folder", "other": "a special file (FIFO, device or socket)",
          "file": "a file", "missing": "missing"}


def describe_kind(kind: str) -> str:
    return _WORDS.get(kind, kind)


def read_fd(fd: int, where: str, limit: int) -> bytes:
    """The bytes of the open file ``fd`` if it is a regular file of at most ``limit`` bytes, else
    ``PpdataError`` naming ``where`` (a FIFO or device is refused before any read, so it never
    blocks or streams without end)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise PpdataError(f"{where} is {describe_kind(kind_of(st.st_mode))}, not a regular file")
    if st.st_size > limit:
        raise PpdataError(f"{where} is {st.st_size:,} bytes, more than the {limit:,} allowed")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    parts, n = [], 0
    while True:
        b = os.read(fd, min(1 << 20, limit + 1 - n))
        if not b:
            break
        parts.append(b)
        n += len(b)
        if n > limit:
            raise PpdataError(f"{where} grew past the {limit:,} bytes allowed while it was read")
    return b"".join(parts)


def read_regular(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of the input file ``path`` (links followed, as for any input): a regular file of
    at most ``limit`` bytes, else one ``PpdataError`` line naming it and ``what`` it is."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PpdataError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise PpdataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return read_fd(fd, f"{what} {path}", limit)
    except OSError as e:
        raise PpdataError(f"cannot read {what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
