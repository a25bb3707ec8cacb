"""Where an output folder's files live, with the operations the folder policy needs and nothing
that could follow a link.

``LocalStore(path)`` is a local folder opened once, by descriptor (``O_DIRECTORY | O_NOFOLLOW``):
every later operation is relative to that descriptor and never follows a symbolic link. Files are
created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (so an existing name, a dangling link included, is
never opened for writing), renamed and removed with ``dir_fd``-relative calls after an ``lstat``
check, and reached in subfolders (the PNG tree of ``decrypt --format png``) only through real
folders, each opened with ``O_NOFOLLOW``. A link anywhere is an error naming it; nothing is ever
written, renamed or deleted through one. Files are read only if they are regular files (a FIFO or
device never blocks a read) and no larger than the caller's limit.

The object-storage counterpart is ``ppdata.remote.ObjectStore`` (no links exist there); both
have the same methods, so ``shards.folder.OutputFolder`` states each rule once for both:

=================  ==========================================================================
``entry(rel)``     ``Entry(kind, size)`` (kind ``file``, ``folder``, ``link``, ``other``) or None
``list(rel)``      the entries directly inside a folder, by name
``read(rel, n)``   a regular file's bytes (None if absent); more than ``n`` bytes is an error
``create(rel)``    a new, empty regular file open for writing (never an existing name)
``finish(t, rel)`` move the finished temporary ``t`` to ``rel`` (a rename, or an upload)
``remove(rel)``    remove a regular file (never a link or a folder)
``mkdir``/``rmdir`` create a new folder / remove an empty real folder
``lock(record)``   one writer at a time (an OS lock, or a lock object with a heartbeat)
=================  ==========================================================================

``DirectFolder(path)`` gives the writers (``shards.tar``, ``shards.hdf5``) the same create-only,
no-link rules on a plain local folder, without lock or journal (library use and tests).
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import PpdataError
from ..fileio import io_error, read_fd
from ..names import printable

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_NEW_FLAGS = os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class Entry:
    """What a name in a folder is: ``kind`` (``file``, ``folder``, ``link``, ``other``) and size."""

    kind: str
    size: int = 0


from ..fileio import kind_of  # noqa: E402


from ..fileio import describe_kind  # noqa: E402  (one wording for every message)


class LinkRefused(PpdataError):
    """A link (or another kind of entry than expected) where ppdata was to write or delete."""


class LocalStore:
    """A local output folder opened by descriptor (see the module docstring).

    ``create_missing``: create the folder (and its parents) when it does not exist; ``created``
    then says so. The folder itself must not be a link: ppdata never writes through one, not
    even at the top (its parent folders are the user's choice and are not checked)."""

    lock_records = False  # the journal's header is the lock owner's record (an OS lock has none)
    links = True

    def __init__(self, path: str | os.PathLike, create_missing: bool = True, what: str = "output folder"):
        self.path = Path(path)
        self.what = what
        self.created = False
        self._locked = False
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if not create_missing:
                raise PpdataError(f"{what} {self.path} does not exist") from None
            try:
                os.makedirs(self.path)
                self.created = True
            except FileExistsError:
                pass
            except OSError as e:
                raise io_error(e, self.path, "create") from None
            st = os.lstat(self.path)
        except OSError as e:
            raise io_error(e, self.path, "read") from None
        if stat.S_ISLNK(st.st_mode):
            raise LinkRefused(f"{what} {self.path} is a symbolic link; ppdata never writes through a link: give "
                              f"the folder it points to ({os.path.realpath(self.path)})")
        if not stat.S_ISDIR(st.st_mode):
            raise PpdataError(f"{what} {self.path} exists and is not a folder")
        try:
            self.fd = os.open(self.path, _DIR_FLAGS)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise LinkRefused(f"{what} {self.path} changed into a link or a file; ppdata never writes "
                                  f"through a link") from None
            raise io_error(e, self.path, "open") from None

    # -- names --------------------------------------------------------------------------------------

    def where(self, rel: str = "") -> str:
        return str(self.path / rel) if rel else str(self.path)

    @staticmethod
    def _parts(rel: str) -> list[str]:
        parts = rel.split("/")
        if not rel or any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise PpdataError(f"{printable(rel)!r} is not a path inside the output folder")
        return parts

    def _parent(self, rel: str) -> tuple[int, str]:
        """(descriptor of the folder holding ``rel``, its last component); the descriptor is
        this store's own for a name directly inside (the caller closes any other)."""
        parts = self._parts(rel)
        fd = self.fd
        for i, p in enumerate(parts[:-1]):
            try:
                nxt = os.open(p, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if fd != self.fd:
                    os.close(fd)
                sub = "/".join(parts[: i + 1])
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    kind = self._kind_at(sub)
                    raise LinkRefused(f"{self.where(sub)} is {describe_kind(kind)}, not a folder ppdata made; ppdata "
                                      f"never writes through a link: move it away") from None
                raise io_error(e, self.where(sub), "open") from None
            if fd != self.fd:
                os.close(fd)
            fd = nxt
        return fd, parts[-1]

    def _kind_at(self, rel: str) -> str:
        e = self.entry(rel)
        return e.kind if e else "missing"

    def _close(self, fd: int) -> None:
        if fd != self.fd:
            os.close(fd)

    # -- reading ------------------------------------------------------------------------------------

    def entry(self, rel: str) -> Entry | None:
        """What ``rel`` is (links are reported as links, never followed); None if absent."""
        try:
            fd, name = self._parent(rel)
        except LinkRefused:
            return Entry("link")
        except PpdataError:
            return None
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        except OSError as e:
            raise io_error(e, self.where(rel), "read") from None
        finally:
            self._close(fd)
        return Entry(kind_of(st.st_mode), st.st_size)

    def list(self, rel: str = "") -> dict[str, Entry]:
        """The entries directly inside the folder ``rel`` ("" for the top), links not followed."""
        if rel:
            fd, name = self._parent(rel)
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise LinkRefused(f"{self.where(rel)} is not a real folder ({e.strerror})") from None
            finally:
                self._close(fd)
        else:
            sub = os.dup(self.fd)
        try:
            out = {}
            with os.scandir(sub) as it:
                for d in it:
                    st = d.stat(follow_symlinks=False)
                    out[d.name] = Entry(kind_of(st.st_mode), st.st_size)
            return out
        except OSError as e:
            raise io_error(e, self.where(rel), "list") from None
        finally:
            os.close(sub)

    def read(self, rel: str, limit: int) -> bytes | None:
        """A regular file's bytes, None if it does not exist; a link, a special file or more than
        ``limit`` bytes is ``PpdataError`` naming it."""
        fd, name = self._parent(rel)
        try:
            try:
                f = os.open(name, _READ_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise LinkRefused(f"{self.where(rel)} is a symbolic link; ppdata does not follow links in an "
                                      f"output folder") from None
                raise io_error(e, self.where(rel), "read") from None
        finally:
            self._close(fd)
        try:
            return read_fd(f, self.where(rel), limit)
        finally:
            os.close(f)

    # -- writing ------------------------------------------------------------------------------------

    def create(self, rel: str, readable: bool = False, mode: int = 0o644) -> BinaryIO:
        """A new regular file ``rel`` open for writing (and reading, ``readable``); an existing
        name of any kind, a dangling link included, is ``PpdataError`` naming it."""
        fd, name = self._parent(rel)
        try:
            f = os.open(name, _NEW_FLAGS | (os.O_RDWR if readable else os.O_WRONLY), mode, dir_fd=fd)
        except FileExistsError:
            kind = self._kind_at(rel)
            raise LinkRefused(f"{self.where(rel)} already exists ({describe_kind(kind)}) and is not a file this run "
                              f"wrote; ppdata does not replace it") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise LinkRefused(f"{self.where(rel)} is a symbolic link; ppdata never writes through a link") from None
            raise io_error(e, self.where(rel)) from None
        finally:
            self._close(fd)
        return os.fdopen(f, "w+b" if readable else "wb")

    def finish(self, temp: str, rel: str, replace: bool = False) -> None:
        """Rename the finished file ``temp`` to ``rel`` (the same folder). ``rel`` must not exist,
        or (``replace``) be a regular file, which the rename replaces atomically."""
        fd, name = self._parent(rel)
        try:
            tfd, tname = self._parent(temp)
            try:
                self._expect_file(tfd, tname, temp)
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and not (replace and stat.S_ISREG(st.st_mode)):
                    raise LinkRefused(f"{self.where(rel)} appeared while this run wrote it "
                                      f"({describe_kind(kind_of(st.st_mode))}); ppdata does not replace it")
                os.rename(tname, name, src_dir_fd=tfd, dst_dir_fd=fd)
            finally:
                self._close(tfd)
        except OSError as e:
            raise io_error(e, self.where(rel)) from None
        finally:
            self._close(fd)

    def _expect_file(self, fd: int, name: str, rel: str) -> None:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise LinkRefused(f"{self.where(rel)} is {describe_kind(kind_of(st.st_mode))}, not a file ppdata wrote; "
                              f"ppdata leaves it alone")

    def remove(self, rel: str, missing_ok: bool = True) -> None:
        """Remove the regular file ``rel``; a link, folder or special file there is ``LinkRefused``
        (it is left alone)."""
        try:
            fd, name = self._parent(rel)
        except LinkRefused:
            raise
        try:
            try:
                self._expect_file(fd, name, rel)
            except FileNotFoundError:
                if missing_ok:
                    return
                raise
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            if not missing_ok:
                raise PpdataError(f"{self.where(rel)} does not exist") from None
        except OSError as e:
            raise io_error(e, self.where(rel), "remove") from None
        finally:
            self._close(fd)

    def mkdir(self, rel: str) -> None:
        """Create the new folder ``rel`` (its parent must be a real folder)."""
        fd, name = self._parent(rel)
        try:
            os.mkdir(name, 0o755, dir_fd=fd)
        except FileExistsError:
            kind = self._kind_at(rel)
            raise LinkRefused(f"{self.where(rel)} already exists ({describe_kind(kind)}) and is not a folder this run "
                              f"made; ppdata does not write into it") from None
        except OSError as e:
            raise io_error(e, self.where(rel), "create") from None
        finally:
            self._close(fd)

    def rmdir(self, rel: str) -> bool:
        """Remove ``rel`` if it is an empty real folder; True if it was removed."""
        try:
            fd, name = self._parent(rel)
        except PpdataError:
            return False
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                return False
            os.rmdir(name, dir_fd=fd)
            return True
        except OSError:
            return False
        finally:
            self._close(fd)

    def hardlink(self, source: str | os.PathLike, rel: str) -> bool:
        """Hard-link the file ``source`` (outside this folder) as the new name ``rel``; False where
        the file system cannot (the caller copies)."""
        fd, name = self._parent(rel)
        try:
            os.link(source, name, dst_dir_fd=fd)
            return True
        except FileExistsError:
            kind = self._kind_at(rel)
            raise LinkRefused(f"{self.where(rel)} already exists ({describe_kind(kind)}); ppdata does not replace "
                              f"it") from None
        except OSError:
            return False
        finally:
            self._close(fd)

    def temp_name(self, name: str) -> str:
        """The name a file is written under until it is complete (then renamed to ``name``)."""
        return name + ".part"

    def local_path(self, rel: str) -> Path:
        return self.path / rel

    def discard(self, rel: str) -> None:
        self.remove(rel)

    def put(self, rel: str, data: bytes, temp: str) -> None:
        """Write ``rel`` whole and atomically: a new ``temp``, fsynced, renamed over ``rel`` (which
        may only be a regular file)."""
        f = self.create(temp)
        try:
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.finish(temp, rel, replace=True)
        except BaseException:
            try:
                self.remove(temp)
            except PpdataError:
                pass
            raise

    def start_journal(self, rel: str, header: str):
        """Create the journal ``rel`` with its header line, durable; returns the open file."""
        f = self.create(rel)
        return self.append_journal(rel, f, [header.rstrip("\n")], header)

    def append_journal(self, rel: str, f, lines: list[str], header: str):
        """Append ``lines`` to the open journal ``f``, durable before the call returns."""
        try:
            f.write("".join(line + "\n" for line in lines).encode())
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            raise io_error(e, self.where(rel)) from None
        return f

    # -- one writer at a time -------------------------------------------------------------------------

    def lock(self, record: dict | None = None) -> dict | None:
        """An exclusive, non-blocking OS lock (``flock``) on the folder for this run. Returns the
        previous owner's record (None here: an OS lock keeps none; the journal's header is it);
        ``FolderBusy`` if another process holds the lock."""
        import fcntl

        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusy(None) from None
            raise io_error(e, self.path, "lock") from None
        self._locked = True
        return None

    def alive(self) -> str | None:
        """Why this run no longer owns the folder (None: it does). An OS lock cannot be lost."""
        return None

    def settled(self) -> None:
        """An earlier run's leftovers were dealt with (an OS lock keeps no record to drop)."""

    def unlock(self) -> None:
        self._locked = False  # released with the descriptor

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None

    def remove_folder_if_created(self) -> None:
        """Remove the output folder itself if this run created it and it is empty."""
        if self.created:
            try:
                os.rmdir(self.path)
            except OSError:
                pass


class FolderBusy(Exception):
    """Another process holds the folder's lock; ``held``: its lock record, if the store keeps one."""

    def __init__(self, held: dict | None, age: float | None = None):
        super().__init__("folder busy")
        self.held, self.age = held, age


class DirectFolder:
    """A plain local folder for the shard writers, without lock or journal (library use, tests):
    files are still created only as new regular files, never through a link, and renamed into
    place. The writers' interface: ``create(name)``, ``finish(name)``, ``discard(name)``,
    ``where(name)``, ``temp_name(name)``."""

    def __init__(self, path: str | os.PathLike):
        self.store = LocalStore(path)
        self.path = Path(path)

    def temp_name(self, name: str) -> str:
        return name + ".part"

    def where(self, name: str) -> str:
        return self.store.where(name)

    def writing_path(self, name: str) -> str:
        """Where ``name``'s bytes are while it is written (for messages)."""
        return self.store.where(self.temp_name(name))

    def create(self, name: str, readable: bool = False, temporary: bool = True) -> BinaryIO:
        return self.store.create(self.temp_name(name) if temporary else name, readable)

    def finish(self, name: str) -> None:
        self.store.finish(self.temp_name(name), name)

    def discard(self, name: str, temporary: bool = True) -> None:
        try:
            self.store.remove(self.temp_name(name) if temporary else name)
        except PpdataError:
            pass

    def close(self) -> None:
        self.store.close()


def as_folder(out):
    """The writers' folder: ``out`` itself when it has the folder interface (an ``OutputFolder``),
    else a ``DirectFolder`` on the local path ``out``."""
    return out if hasattr(out, "create") and hasattr(out, "finish") else DirectFolder(out)
